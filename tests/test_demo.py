"""``genmnist demo``: the callbacks behind its buttons (plain functions, no Gradio needed),
the command's errors, and the Gradio layout when Gradio is installed.

The browser test that drives the running app is ``tests/test_demo_browser.py`` (slow).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genmnist.demo import callbacks
from genmnist.demo.callbacks import ModelStore
from genmnist.errors import ConfigError, GenmnistError
from genmnist.models import load, pretrained_dir
from genmnist.models.vae import VAE

PRETRAINED = Path(__file__).resolve().parents[1] / "src" / "genmnist" / "pretrained"


def grid_size(count: int, per_row: int, zoom: int = callbacks.ZOOM) -> tuple[int, int]:
    """Width and height of a grid of ``count`` 28x28 images with 2-pixel padding."""
    cols = min(count, per_row)
    rows = -(-count // cols)
    return ((cols * 30 + 2) * zoom, (rows * 30 + 2) * zoom)


def pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image))


def cell(image: Image.Image, index: int, cols: int, zoom: int = callbacks.ZOOM) -> torch.Tensor:
    """Image ``index`` of a grid with ``cols`` per row, at its original size, as floats
    in ``[0, 255]``."""
    y, x = divmod(index, cols)
    grid = pixels(image)[::zoom, ::zoom].float()
    return grid[2 + 30 * y : 30 + 30 * y, 2 + 30 * x : 30 + 30 * x]


@pytest.fixture
def store() -> ModelStore:
    return ModelStore()


# --------------------------------------------------------------------------- values
@pytest.mark.parametrize(
    ("value", "expected"), [(3, 3), (3.0, 3), ("3", 3), (" 12 ", 12), (0, 0), (64, 64)]
)
def test_integer_takes_what_a_form_sends(value, expected):
    assert callbacks.integer(value, "count", 0, 64) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "it is empty"),
        ("", "it is empty"),
        ("abc", "got 'abc'"),
        (2.5, "got 2.5"),
        (float("nan"), "got nan"),
        (65, "got 65"),
        (-1, "got -1"),
        (True, "got True"),
    ],
)
def test_integer_refuses_in_one_line_naming_the_range(value, fragment):
    with pytest.raises(ConfigError) as info:
        callbacks.integer(value, "number of images", 0, 64)
    message = str(info.value)
    assert message.startswith("number of images must be a whole number from 0 to 64")
    assert fragment in message and "\n" not in message


def test_empty_optional_values_mean_the_models_default():
    assert callbacks.optional_integer("", "steps", 1, 100) is None
    assert callbacks.optional_integer(None, "steps", 1, 100) is None
    assert callbacks.optional_integer("7", "steps", 1, 100) == 7
    assert callbacks.optional_number(" ", "guidance") is None
    assert callbacks.optional_number("1.5", "guidance") == 1.5
    for bad in ("x", "inf", "nan"):
        with pytest.raises(ConfigError, match="guidance must be a"):
            callbacks.optional_number(bad, "guidance")


def test_label_choices_name_the_classes():
    mnist = callbacks.label_choices("mnist")
    assert mnist[0] == ("balanced (0, 1, ..., 9)", callbacks.BALANCED)
    assert mnist[1:] == [(str(i), str(i)) for i in range(10)]
    assert callbacks.label_choices("fashion-mnist")[10] == ("9: Ankle boot", "9")
    assert callbacks.label_value(callbacks.BALANCED) is None
    assert callbacks.label_value("7") == 7
    with pytest.raises(GenmnistError, match="unknown dataset 'kmnist'"):
        callbacks.label_choices("kmnist")


# --------------------------------------------------------------------------- model pickers
def shipped_on_disk(dataset: str) -> list[str]:
    return sorted(p.parent.name for p in (PRETRAINED / dataset).glob("*/config.json"))


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_pickers_list_every_model_with_shipped_weights(dataset):
    listed = callbacks.shipped_models(dataset)
    assert listed == shipped_on_disk(dataset)
    vaes = callbacks.shipped_models(dataset, callbacks.has_latent_space)
    diffusion = callbacks.shipped_models(dataset, callbacks.shows_trajectory)
    assert vaes and set(vaes) < set(listed)
    assert all(name.startswith(("vae", "cvae")) for name in vaes)
    assert diffusion and all(name.startswith(("ddpm", "flow", "reflow")) for name in diffusion)


def test_pickers_include_plugins_with_their_own_weights(
    tmp_path, monkeypatch, plugin_registry, fake_entry_point
):
    # a plugin package shipping weights for its model, as `pretrained_package` describes
    package = tmp_path / "demo_plugin_weights"
    shutil.copytree(PRETRAINED / "mnist" / "vae-conv", package / "mnist" / "plugin-vae")
    (package / "__init__.py").write_text("")
    config = json.loads((package / "mnist" / "plugin-vae" / "config.json").read_text())
    config["model"] = "plugin-vae"
    (package / "mnist" / "plugin-vae" / "config.json").write_text(json.dumps(config))
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = type("PluginVAE", (VAE,), {"pretrained_package": "demo_plugin_weights"})
    plugin_registry(fake_entry_point("plugin-vae", plugin))

    assert "plugin-vae" in callbacks.shipped_models("mnist")
    assert "plugin-vae" in callbacks.shipped_models("mnist", callbacks.has_latent_space)
    assert "plugin-vae" not in callbacks.shipped_models("fashion-mnist")
    result = callbacks.sample("plugin-vae", "mnist", seed=1, count=2, store=ModelStore())
    assert "plugin-vae" in result.message
    assert result.image.size == grid_size(2, 8)


@pytest.mark.parametrize(
    ("name", "conditional", "diffusion", "guidance", "temperature"),
    [
        ("vae-conv", False, False, False, True),
        ("cvae", True, False, False, True),
        ("cgan", True, False, False, True),
        ("ddpm", False, True, True, False),  # distilled, its null label tuned: takes some
        ("ddpm-cfg", True, True, True, False),
    ],
)
def test_controls_follow_the_model(store, name, conditional, diffusion, guidance, temperature):
    found = callbacks.controls(name, "mnist", store=store)
    assert (found.conditional, found.diffusion, found.guidance, found.temperature) == (
        conditional,
        diffusion,
        guidance,
        temperature,
    )
    assert found.about.startswith(f"**{name}**")
    model = load(name)
    if temperature:
        assert found.defaults == {"temperature": model.config.temperature}
    if diffusion:
        assert found.defaults["steps"] == model.config.sampling_steps
        assert ("guidance" in found.defaults) is guidance


# --------------------------------------------------------------------------- sample
def test_sample_draws_the_same_images_as_the_model(store):
    result = callbacks.sample("vae-conv", "mnist", seed=3, count=4, store=store)
    assert result.image.size == grid_size(4, 8) == (366, 96)
    assert result.image.mode == "L"
    expected = callbacks.grid_image(load("vae-conv").sample(4, seed=3), 8)
    assert torch.equal(pixels(result.image), pixels(expected))
    assert "4 images of **vae-conv** (shipped weights (mnist)), seed 3" in result.message
    assert f"{result.seconds:.2f} s" in result.message


def test_sample_passes_diffusion_options_and_labels(store):
    result = callbacks.sample(
        "ddpm-cfg", "mnist", seed=0, count=2, label="7", sampler="ddim", steps="2",
        guidance="1.0", store=store,
    )  # fmt: skip
    model = load("ddpm-cfg")
    expected = model.sample(2, labels=7, seed=0, sampler="ddim", steps=2, guidance=1.0)
    assert torch.equal(pixels(result.image), pixels(callbacks.grid_image(expected, 8)))
    assert "ignored" not in result.message


def test_sample_names_the_settings_a_model_does_not_take(store):
    result = callbacks.sample(
        "vae-conv", "mnist", count=2, label="3", steps="5", guidance="2", store=store
    )
    assert "ignored, as 'vae-conv' takes none: steps, guidance, label" in result.message
    unconditional = callbacks.sample(
        "ddpm", "fashion-mnist", count=1, steps="2", guidance="2", store=store
    )
    assert "ignored, as 'ddpm' takes none: guidance" in unconditional.message


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"count": 0}, "number of images must be a whole number from 1 to 64, got 0"),
        ({"count": 65}, "number of images must be a whole number from 1 to 64, got 65"),
        ({"seed": -1}, "seed must be a whole number from 0 to 2147483647, got -1"),
        ({"seed": "x"}, "seed must be a whole number"),
        ({"temperature": "-1"}, "temperature must be a positive number"),
        ({"temperature": "lots"}, "temperature must be a number, got 'lots'"),
        ({"name": "nope"}, "unknown model 'nope'"),
        ({"name": None}, "pick a model"),
        ({"checkpoint": "/no/such/folder"}, "/no/such/folder is not a folder"),
        ({"name": "ddpm", "steps": "101"}, "steps must be a whole number from 1 to 100"),
        ({"name": "ddpm", "sampler": "warp"}, "unknown sampler 'warp'"),
        ({"name": "ddpm-cfg", "guidance": "inf"}, "guidance must be a finite number"),
        ({"name": "cgan", "label": "10"}, "label must be a whole number from 0 to 9"),
        ({"name": "vae-conv", "dataset": "kmnist"}, "unknown dataset 'kmnist'"),
        ({"name": "vae-mlp", "dataset": "fashion-mnist"}, "no pretrained weights ship"),
    ],
)
def test_sample_refuses_bad_values_in_one_line(store, settings, fragment):
    arguments = {"name": "vae-conv", "dataset": "mnist", "count": 2, **settings}
    with pytest.raises(GenmnistError) as info:
        callbacks.sample(**arguments, store=store)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_a_model_whose_default_steps_are_too_many_needs_a_number(tmp_path, store):
    model = load("ddpm")
    model.config = model.config.replace(sampling_steps=500)
    folder = model.save_pretrained(tmp_path / "slow-ddpm")
    with pytest.raises(ConfigError, match="samples with 500 steps by default; the demo runs"):
        callbacks.sample(None, "mnist", str(folder), count=1, store=store)
    result = callbacks.sample(None, "mnist", str(folder), count=1, steps="2", store=store)
    assert result.image.size == (84, 84)


def test_sample_from_a_checkpoint_folder_which_wins_over_the_picker(tmp_path, store, tiny_model):
    folder = tiny_model("vae-mlp").save_pretrained(tmp_path / "mine")
    result = callbacks.sample("cgan", "mnist", f"  {folder}  ", seed=2, count=3, store=store)
    expected = callbacks.grid_image(load(folder).sample(3, seed=2), 8)
    assert torch.equal(pixels(result.image), pixels(expected))
    assert f"**vae-mlp** ({folder})" in result.message
    (folder / "config.json").write_text("{}")
    with pytest.raises(GenmnistError, match="not a genmnist model config"):
        callbacks.sample(None, "mnist", str(folder), store=store)  # changed: loaded again


def test_the_store_keeps_the_last_models(store):
    small = ModelStore(size=1)
    first = small.get("vae-mlp", "mnist")
    assert first.seconds > 0 and first.source == "shipped weights (mnist)"
    again = small.get("vae-mlp", "mnist")
    assert again.model is first.model and again.seconds == 0
    small.get("vae-conv", "mnist")
    assert small.get("vae-mlp", "mnist").model is not first.model  # evicted, reloaded


# --------------------------------------------------------------------------- latent space
def test_interpolation_between_seeds_starts_and_ends_at_their_samples(store):
    result = callbacks.interpolation(
        "vae-conv", "mnist", ends="seeds", first=4, last=9, frames=5, position=1, store=store
    )
    assert result.path.size == grid_size(5, 5)
    assert result.point.size == (28 * 8, 28 * 8)
    model = load("vae-conv")
    ends = torch.cat([model.sample(1, seed=4), model.sample(1, seed=9)])
    first, last = cell(result.path, 0, 5), cell(result.path, 4, 5)
    assert (first - ends[0, 0] * 255).abs().max() <= 1
    assert (last - ends[1, 0] * 255).abs().max() <= 1
    assert torch.equal(pixels(result.point)[::8, ::8].float(), last)  # position 1: the end
    assert "between seeds 4 and 9, slerp; shown at 1.00" in result.message


def test_interpolation_between_test_digits(tmp_path, monkeypatch, store, make_mnist_folder):
    written = make_mnist_folder(tmp_path)
    monkeypatch.setenv("GENMNIST_DATA", str(tmp_path))
    monkeypatch.setattr(callbacks, "_TEST_SPLITS", {})
    result = callbacks.interpolation(
        "cvae", "mnist", ends="test digits", first=2, last=5, frames=3, store=store
    )
    labels = written["t10k-labels-idx1-ubyte"]
    assert f"test digits 2 and 5 (labels {labels[2]} and {labels[5]})" in result.message
    assert f"label {labels[2]}, slerp" in result.message  # the first digit's label
    assert result.path.size == grid_size(3, 3)
    with pytest.raises(ConfigError, match="last test digit must be a whole number from 0 to 31"):
        callbacks.interpolation("cvae", "mnist", first=0, last=32, store=store)


def test_interpolation_falls_back_to_seeds_without_test_data(tmp_path, monkeypatch, store):
    monkeypatch.setenv("GENMNIST_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr(callbacks, "_TEST_SPLITS", {})
    result = callbacks.interpolation("vae-mlp", "mnist", ends="test digits", store=store)
    assert result.message.startswith("No test digits to start from (mnist not found under")
    assert "interpolated between seeds instead" in result.message
    assert "between seeds 0 and 1" in result.message


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"name": "ddpm"}, "'ddpm' is not a VAE: it has no latent space"),
        ({"frames": 1}, "frames must be a whole number from 2 to 32, got 1"),
        ({"frames": 33}, "frames must be a whole number from 2 to 32, got 33"),
        ({"position": 1.5}, "position must be from 0 to 1, got 1.5"),
        ({"ends": "corners"}, "unknown ends 'corners'; choose from test digits, seeds"),
        ({"method": "cubic"}, "unknown interpolation method 'cubic'"),
    ],
)
def test_interpolation_refuses_bad_values(store, settings, fragment):
    arguments = {"name": "vae-conv", "dataset": "mnist", "ends": "seeds", **settings}
    with pytest.raises(GenmnistError, match=fragment):
        callbacks.interpolation(**arguments, store=store)


# --------------------------------------------------------------------------- denoising
def test_trajectory_keeps_every_step(store):
    result = callbacks.trajectory("ddpm", "mnist", seed=1, count=2, steps="3", store=store)
    assert [caption for _, caption in result.frames] == [f"step {i} of 3" for i in (1, 2, 3)]
    assert all(frame.size == grid_size(4, 2) for frame, _ in result.frames)  # x_t over x0
    expected = load("ddpm").sample(2, seed=1, steps=3)
    assert torch.equal(pixels(result.final), pixels(callbacks.grid_image(expected, 2)))
    assert not torch.equal(pixels(result.frames[0][0]), pixels(result.frames[-1][0]))


def test_trajectory_refuses_models_without_steps_and_too_much_work(store):
    with pytest.raises(ConfigError, match="'vae-conv' is not a diffusion model"):
        callbacks.trajectory("vae-conv", "mnist", store=store)
    with pytest.raises(ConfigError, match="steps must be a whole number from 1 to 50"):
        callbacks.trajectory("ddpm", "mnist", steps=51, store=store)
    with pytest.raises(ConfigError, match="number of images must be a whole number from 1 to 16"):
        callbacks.trajectory("ddpm", "mnist", count=17, store=store)


# --------------------------------------------------------------------------- compare
def test_compare_draws_both_and_tables_their_cards(store):
    result = callbacks.compare("vae-conv", "cgan", "mnist", seed=5, count=2, label="4", store=store)
    first, second = result.images
    assert torch.equal(
        pixels(first), pixels(callbacks.grid_image(load("vae-conv").sample(2, seed=5), 8))
    )
    expected = load("cgan").sample(2, labels=4, seed=5)
    assert torch.equal(pixels(second), pixels(callbacks.grid_image(expected, 8)))
    assert "**vae-conv**" in result.message and "ignored" in result.message  # label
    cards = [
        json.loads((pretrained_dir(n) / "card.json").read_text()) for n in ("vae-conv", "cgan")
    ]
    fids = [card["evaluation"]["metrics"]["fid"] for card in cards]
    floor = cards[0]["evaluation"]["metrics"]["fid_floor"]
    assert f"| FID (lower is better) | {fids[0]:.3f} | {fids[1]:.3f} | {floor:.3f} |" in (
        result.table.splitlines()
    )
    assert result.table.splitlines()[0] == "| metric | vae-conv | cgan | real data |"


def test_card_table_without_metrics():
    assert callbacks.card_table([("a", {}), ("b", {})]).startswith("No model card records")
    table = callbacks.card_table([("a", {"fid": 2.0}), ("b", {})]).splitlines()
    assert table[2] == "| FID (lower is better) | 2.000 | - | - |"


# --------------------------------------------------------------------------- the command
def test_demo_without_gradio_says_how_to_install_it(run_cli, assert_one_line_error, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio fails
    code, out, err = run_cli("demo", "--port", "7999")
    assert code == 1
    assert_one_line_error(err, 'pip install "genmnist[demo]"')


def test_the_cli_and_the_callbacks_never_import_gradio(run_python):
    code = (
        "import sys\n"
        "import genmnist, genmnist.cli.app, genmnist.demo.callbacks\n"
        "from genmnist.cli import main\n"
        "for argv in (['--help'], ['demo', '--help'], ['list']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (argv, exc.code)\n"
        "print('GRADIO:', sorted(m for m in sys.modules if m.split('.')[0] == 'gradio'))\n"
    )
    result = run_python(code=code)
    assert result.returncode == 0, result.stderr
    assert "GRADIO: []" in result.stdout
    assert "Start the local web demo" in result.stdout


# --------------------------------------------------------------------------- the layout
def test_the_app_builds_and_shows_errors_in_one_line():
    gr = pytest.importorskip("gradio", reason="the demo extra is not installed")
    from genmnist.demo import app

    blocks = app.build_app(ModelStore())
    assert isinstance(blocks, gr.Blocks)
    ids = {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
    assert {"sample-button", "sample-image", "latent-button", "denoise-button"} <= ids

    def refuse():
        raise ConfigError("seed must be a whole number")

    with pytest.raises(gr.Error) as info:
        app.shown(refuse)()
    assert info.value.message == "seed must be a whole number"

    def crash():
        raise RuntimeError("boom\nsecond line")

    with pytest.raises(gr.Error) as info:
        app.shown(crash)()
    assert info.value.message == "unexpected RuntimeError: boom"
