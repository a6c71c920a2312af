"""The generic Registry and plugin discovery through entry points."""

from __future__ import annotations

import importlib.metadata
import warnings

import pytest

from genmnist.errors import GenmnistError, RegistryError
from genmnist.models import VAE, create_model
from genmnist.models.base import GenerativeModel
from genmnist.registry import BUILTIN_SOURCE, MODELS, Registry


class Point:
    """A point in the plane.

    Second line of the docstring.
    """

    def __init__(self, x: int = 0, y: int = 0) -> None:
        self.x, self.y = x, y


class PluginVAE(VAE):
    """A VAE shipped by a third-party package."""


# --------------------------------------------------------------------------- basics
def test_register_get_create_with_defaults_and_overrides():
    reg = Registry("shape")
    reg.register("origin", Point)
    reg.register("unit-x", Point, x=1)
    assert reg.get("origin") is Point
    p = reg.create("unit-x")
    assert (p.x, p.y) == (1, 0)
    q = reg.create("unit-x", x=5, y=2)  # overrides beat registered defaults
    assert (q.x, q.y) == (5, 2)
    assert reg.entry("unit-x").defaults == {"x": 1}
    assert reg.entry("unit-x").source == BUILTIN_SOURCE
    assert "origin" in reg and "nothing" not in reg
    assert len(reg) == 2
    assert [e.name for e in reg] == ["origin", "unit-x"]


def test_register_as_decorator_returns_the_object():
    reg = Registry("function")

    @reg.register("double")
    def double(x):
        return 2 * x

    assert double(3) == 6
    assert reg.get("double") is double


def test_summary_is_description_else_docstring_first_line():
    reg = Registry("shape")
    reg.register("described", Point, description="explicit words")
    reg.register("documented", Point)
    reg.register("bare", lambda: None)
    assert reg.entry("described").summary == "explicit words"
    assert reg.entry("documented").summary == "A point in the plane."
    assert reg.entry("bare").summary == ""


def test_list_sorted_with_wildcards():
    reg = Registry("thing")
    for name in ("vae-conv", "gan", "vae-mlp", "cvae"):
        reg.register(name, object)
    assert reg.list() == ["cvae", "gan", "vae-conv", "vae-mlp"]
    assert reg.list("vae*") == ["vae-conv", "vae-mlp"]
    assert reg.list("*vae*") == ["cvae", "vae-conv", "vae-mlp"]
    assert reg.list("vae-???") == ["vae-mlp"]
    assert reg.list("VAE*") == []  # case-sensitive
    assert reg.list("diffusion*") == []


def test_unknown_name_suggests_close_matches():
    reg = Registry("model")
    for name in ("vae-mlp", "vae-conv", "cvae", "dcgan"):
        reg.register(name, object)
    with pytest.raises(RegistryError) as info:
        reg.get("vae-mpl")
    message = str(info.value)
    assert "unknown model 'vae-mpl'" in message
    assert "did you mean" in message and "'vae-mlp'" in message
    assert "dcgan" not in message
    assert isinstance(info.value, GenmnistError) and isinstance(info.value, KeyError)
    reg.register("gan-sc", object)
    with pytest.raises(RegistryError) as info:  # nothing close: the names it knows instead
        reg.get("nosuch")
    assert "did you mean" not in str(info.value)
    assert "known: cvae, dcgan, gan-sc, vae-conv, vae-mlp" in str(info.value)
    assert not message.startswith('"')  # not KeyError's quoting


def test_unknown_name_without_close_match_lists_known_names():
    reg = Registry("model")
    reg.register("vae-mlp", object)
    reg.register("cvae", object)
    with pytest.raises(RegistryError, match="known: cvae, vae-mlp"):
        reg.get("transformer-xl")
    with pytest.raises(RegistryError, match="no widgets are registered"):
        Registry("widget").get("anything")


def test_duplicate_register_names_both_sources():
    reg = Registry("model")
    reg.register("vae", Point, source="package-one")
    with pytest.raises(RegistryError) as info:
        reg.register("vae", object, source="package-two")
    assert "registered twice" in str(info.value)
    assert "package-one" in str(info.value) and "package-two" in str(info.value)
    assert reg.get("vae") is Point  # the first registration is kept


def test_builtin_models_are_registered():
    assert {"vae-mlp", "vae-conv", "cvae"} <= set(MODELS.list())
    assert MODELS.list("vae*") == ["vae-conv", "vae-gmm", "vae-mlp"]
    assert MODELS.get("cvae") is VAE
    assert MODELS.entry("cvae").defaults["num_classes"] == 10
    assert MODELS.entry("vae-mlp").source == BUILTIN_SOURCE
    assert MODELS.entry("vae-conv").summary  # every built-in has a one-line description


def test_check_model_class():
    MODELS.check(VAE)
    for bad in (Point, VAE(hidden_dims=(8,), latent_dim=2), "vae", GenerativeModel.sample):
        with pytest.raises(TypeError, match="not a subclass"):
            MODELS.check(bad)


# --------------------------------------------------------------------------- plugins
def _fresh_registry(monkeypatch, *eps) -> Registry:
    monkeypatch.delenv("GENMNIST_DISABLE_PLUGINS", raising=False)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: list(eps))
    return Registry("model", "genmnist.models", validate=MODELS.check)


def test_working_plugin_is_registered_with_its_source(monkeypatch, fake_entry_point):
    ep = fake_entry_point("my-vae", PluginVAE, dist="my-genmnist-plugin")
    reg = _fresh_registry(monkeypatch, ep)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reg.list() == ["my-vae"]
    entry = reg.entry("my-vae")
    assert entry.obj is PluginVAE
    assert "my-genmnist-plugin 1.0" in entry.source
    assert "entry point my-vae = my-genmnist-plugin.models:my_vae" in entry.source
    assert entry.summary == "A VAE shipped by a third-party package."


def test_plugins_are_discovered_lazily_and_once(monkeypatch, fake_entry_point):
    calls = []
    ep = fake_entry_point("lazy-vae", PluginVAE)

    def entry_points(**params):
        calls.append(params)
        return [ep]

    monkeypatch.delenv("GENMNIST_DISABLE_PLUGINS", raising=False)
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    reg = Registry("model", "genmnist.models", validate=MODELS.check)
    assert calls == [] and not ep.loaded
    assert "lazy-vae" in reg
    reg.list()
    reg.get("lazy-vae")
    assert calls == [{"group": "genmnist.models"}]


def test_plugin_without_dist_is_named_by_its_value(monkeypatch, fake_entry_point):
    ep = fake_entry_point("loose-vae", PluginVAE, dist=None)
    reg = _fresh_registry(monkeypatch, ep)
    assert f"plugin '{ep.value}'" in reg.entry("loose-vae").source


def test_broken_plugin_warns_and_does_not_break_listing(monkeypatch, fake_entry_point):
    good = fake_entry_point("good-vae", PluginVAE, dist="goodpkg")
    bad = fake_entry_point("bad-vae", error=ImportError("No module named 'tensorflow'"))
    reg = _fresh_registry(monkeypatch, bad, good)
    with pytest.warns(RuntimeWarning, match="bad-vae") as record:
        names = reg.list()
    assert names == ["good-vae"]
    assert any("tensorflow" in str(w.message) for w in record)
    assert "bad-vae" in reg.problems()
    assert "ImportError" in reg.problems()["bad-vae"]
    with pytest.raises(RegistryError, match="failed to load"):
        reg.get("bad-vae")
    assert reg.get("good-vae") is PluginVAE


def test_plugin_that_is_not_a_model_class_is_reported(monkeypatch, fake_entry_point):
    eps = [
        fake_entry_point("not-a-class", lambda: None),
        fake_entry_point("wrong-class", Point),
        fake_entry_point("an-instance", VAE(hidden_dims=(8,), latent_dim=2)),
    ]
    reg = _fresh_registry(monkeypatch, *eps)
    with pytest.warns(RuntimeWarning) as record:
        assert reg.list() == []
    messages = " | ".join(str(w.message) for w in record)
    for ep in eps:
        assert f"entry point {ep.name} =" in messages
        assert ep.name in reg.problems()
        with pytest.raises(RegistryError, match="GenerativeModel"):
            reg.get(ep.name)


def test_plugin_clashing_with_builtin_errors_on_use_naming_both(plugin_registry, fake_entry_point):
    ep = fake_entry_point("vae-mlp", PluginVAE, dist="clashpkg")
    other = fake_entry_point("extra-vae", PluginVAE, dist="extrapkg")
    registry = plugin_registry(ep, other)
    with pytest.warns(RuntimeWarning, match="registered twice"):
        names = registry.list()
    assert "vae-mlp" not in names
    assert {"extra-vae", "vae-conv", "cvae"} <= set(names)
    with pytest.raises(RegistryError) as info:
        create_model("vae-mlp")
    assert BUILTIN_SOURCE in str(info.value) and "clashpkg 1.0" in str(info.value)
    assert not ep.loaded  # a clashing plugin is never imported
    # other names keep working
    assert isinstance(create_model("vae-conv", hidden_dims=(4, 8), latent_dim=2), VAE)
    assert isinstance(create_model("extra-vae", hidden_dims=(8,), latent_dim=2), PluginVAE)


def test_two_plugins_with_one_name_clash(monkeypatch, fake_entry_point):
    first = fake_entry_point("shared-name", PluginVAE, dist="pkg-a")
    second = fake_entry_point("shared-name", PluginVAE, dist="pkg-b")
    third = fake_entry_point("shared-name", PluginVAE, dist="pkg-c")
    reg = _fresh_registry(monkeypatch, first, second, third)
    with pytest.warns(RuntimeWarning):
        assert reg.list() == []
    with pytest.raises(RegistryError) as info:
        reg.get("shared-name")
    for dist in ("pkg-a", "pkg-b", "pkg-c"):
        assert dist in str(info.value)


def test_disable_plugins_env_var(monkeypatch, fake_entry_point):
    ep = fake_entry_point("my-vae", PluginVAE)
    reg = _fresh_registry(monkeypatch, ep)
    monkeypatch.setenv("GENMNIST_DISABLE_PLUGINS", "1")
    assert reg.list() == []
    assert not ep.loaded
    reg2 = _fresh_registry(monkeypatch, ep)
    monkeypatch.setenv("GENMNIST_DISABLE_PLUGINS", "0")  # "0" means enabled
    assert reg2.list() == ["my-vae"]


def test_plugin_model_is_usable_through_create_model(plugin_registry, fake_entry_point):
    plugin_registry(fake_entry_point("plugin-vae", PluginVAE, dist="plugpkg"))
    model = create_model("plugin-vae", hidden_dims=(8,), latent_dim=2)
    assert isinstance(model, PluginVAE)
    assert model.name == "plugin-vae"
    assert model.sample(2, seed=0).shape == (2, 1, 28, 28)


def test_isolated_undoes_registrations_and_rediscovery_keeps_builtins():
    reg = Registry("thing")
    reg.register("kept", int)
    with reg.isolated():
        reg.register("temporary", float)
        assert "temporary" in reg
    assert reg.list() == ["kept"]
    reg.register("manual", str, source="plugin 'x'")
    reg.rediscover_plugins()  # plugin entries go; built-ins stay
    assert reg.list() == ["kept"]
