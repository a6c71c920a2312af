"""Model API: sampling, labels, persistence, losses and the VAE's extras."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from genmnist.errors import CheckpointError, ConfigError, RegistryError
from genmnist.io import load_tensors
from genmnist.losses import (
    RECONSTRUCTION_LOSSES,
    bce_reconstruction,
    gaussian_kl,
    kl_weight,
    l1_reconstruction,
    mse_reconstruction,
)
from genmnist.models import VAE, VAEConfig, create_model, load
from genmnist.models.base import CONFIG_FILE, CONFIG_FORMAT, WEIGHTS_FILE, SampleNoise
from genmnist.models.vae import interpolate_latents
from genmnist.nn import DECODERS
from genmnist.registry import MODELS

ALL_MODELS = ["vae-mlp", "vae-conv", "cvae"]


# --------------------------------------------------------------------------- creation
def test_create_model_applies_registered_defaults_and_overrides():
    model = create_model("cvae", latent_dim=3, hidden_dims=[4, 8])
    assert isinstance(model, VAE) and model.name == "cvae"
    cfg = model.config
    assert (cfg.encoder, cfg.decoder, cfg.norm, cfg.num_classes) == ("conv", "conv", "batch", 10)
    assert cfg.latent_dim == 3 and cfg.hidden_dims == (4, 8)  # lists become tuples
    assert model.conditional
    assert not create_model("vae-mlp", hidden_dims=(8,), latent_dim=2).conditional


def test_create_model_errors():
    with pytest.raises(RegistryError, match="did you mean 'vae-mlp'"):
        create_model("vae-mpl")
    with pytest.raises(ConfigError, match="unknown VAEConfig field.*latnet_dim"):
        create_model("vae-mlp", latnet_dim=3)
    with pytest.raises(ConfigError, match="latent_dim must be positive"):
        create_model("vae-mlp", latent_dim=0)
    with pytest.raises(RegistryError, match="unknown reconstruction loss 'bce2'"):
        create_model("vae-mlp", reconstruction="bce2")
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("vae-mlp", num_classes=-1)


#: Architecture values no network can be built from, and the field each error names.
UNBUILDABLE = [
    ("ddpm", {"channels": [0]}, "channels must be positive"),
    ("ddpm", {"channels": []}, "channels needs at least one"),
    ("ddpm", {"channels": [8, 8, 8, 8]}, "4 levels"),
    ("ddpm", {"blocks_per_level": 0}, "blocks_per_level"),
    ("ddpm", {"attention_levels": [5]}, "attention_levels"),
    ("ddpm", {"dropout": 1.0}, "dropout"),
    ("ddpm", {"timesteps": 1}, "timesteps must be an integer >= 2"),
    ("ddpm", {"sampling_steps": 2000}, "cannot exceed timesteps"),
    ("ddpm", {"min_snr_gamma": 0}, "min_snr_gamma"),
    ("flow", {"channels": [16, -16]}, "channels must be positive"),
    ("flow", {"blocks_per_level": 0}, "blocks_per_level"),
    ("vae-conv", {"hidden_dims": []}, "hidden_dims needs at least one"),
    ("vae-conv", {"hidden_dims": [0, 8]}, "hidden_dims must be positive"),
    ("vae-mlp", {"hidden_dims": [0]}, "hidden_dims must be positive"),
    ("vae-conv", {"beta": -1}, "beta"),
    ("vae-conv", {"kl_warmup_steps": -1}, "kl_warmup_steps"),
    ("dcgan", {"g_hidden_dims": [0, 8]}, "g_hidden_dims"),
    ("dcgan", {"g_hidden_dims": []}, "hidden_dims needs at least one"),
    ("gan-mlp", {"d_hidden_dims": [-4]}, "d_hidden_dims"),
    ("dcgan", {"d_dropout": 1.5}, "dropout"),
    ("dcgan", {"d_lr": -1}, "d_lr"),
    ("cgan", {"embed_dim": 0}, "embed_dim"),  # else the labels would be ignored
]


@pytest.mark.parametrize("name, overrides, match", UNBUILDABLE)
def test_unbuildable_architectures_are_refused_by_name(name, overrides, match):
    with pytest.raises(ConfigError, match=match):
        create_model(name, **overrides)


def test_odd_u_net_widths_build_and_sample():
    model = create_model("ddpm", channels=[3, 5], attention_levels=[1], sampling_steps=2)
    images = model.sample(2, seed=0)
    assert images.shape == (2, 1, 28, 28) and bool(torch.isfinite(images).all())


def test_config_dict_round_trip():
    cfg = VAEConfig(hidden_dims=(3, 5), betas=(0.5, 0.9), ema_decay=0.99)
    data = cfg.to_dict()
    assert data["hidden_dims"] == [3, 5] and data["betas"] == [0.5, 0.9]
    assert json.loads(json.dumps(data)) == data
    assert VAEConfig.from_dict(data) == cfg
    assert cfg.replace(latent_dim=7).latent_dim == 7
    with pytest.raises(ConfigError):
        cfg.replace(nonsense=1)


# --------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("name", ALL_MODELS)
def test_sample_shape_range_dtype(tiny_model, name):
    model = tiny_model(name)
    images = model.sample(6, seed=0)
    assert images.shape == (6, 1, 28, 28)
    assert images.dtype == torch.float32
    assert images.device.type == "cpu"
    assert images.min() >= 0 and images.max() <= 1
    assert images.std() > 0  # not a constant image
    assert model.training  # sampling restores the training mode


@pytest.mark.parametrize("name", ALL_MODELS)
def test_sample_seed_reproducible(tiny_model, name):
    model = tiny_model(name)
    a = model.sample(4, seed=123)
    b = model.sample(4, seed=123)
    c = model.sample(4, seed=124)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])  # samples in a batch differ


@pytest.mark.parametrize("name", ALL_MODELS)
def test_sample_independent_of_batch_size(tiny_model, name):
    model = tiny_model(name)
    big = model.sample(5, seed=7)
    small = model.sample(3, seed=7, batch_size=2)
    one_by_one = model.sample(5, seed=7, batch_size=1)
    torch.testing.assert_close(big[:3], small, atol=1e-5, rtol=0)
    torch.testing.assert_close(big, one_by_one, atol=1e-5, rtol=0)


def test_sample_without_seed_is_random_and_generator_reproducible(tiny_model):
    model = tiny_model("vae-mlp")
    a, b = model.sample(3), model.sample(3)
    assert a.shape == (3, 1, 28, 28) and not torch.equal(a, b)
    g1 = torch.Generator().manual_seed(5)
    g2 = torch.Generator().manual_seed(5)
    assert torch.equal(model.sample(3, generator=g1), model.sample(3, generator=g2))


@pytest.mark.parametrize("seed", [0, -1, 2**40, 2**63 - 1])
def test_sample_accepts_any_int64_seed(tiny_model, seed):
    seeds = SampleNoise.sample_seeds(3, seed=seed)
    assert seeds == [(seed * 1_000_003 + i) % 2**64 for i in range(3)]
    assert all(0 <= s < 2**64 for s in seeds)  # what torch generators accept
    model = tiny_model("vae-mlp")
    images = model.sample(3, seed=seed)
    # per-sample seeds wrap modulo 2**64, so seed and seed + 2**64 draw the same images
    assert torch.equal(images, model.sample(3, seed=seed + 2**64))
    assert not torch.equal(images, model.sample(3, seed=seed + 1))


def test_sample_noise_streams_are_per_sample():
    noise = SampleNoise([11, 12])
    first = noise.randn(3)
    assert first.shape == (2, 3)
    again = SampleNoise([12])
    assert torch.equal(again.randn(3)[0], first[1])
    assert torch.equal(again.rand(2)[0], noise.rand(2)[1])  # next values of each stream
    assert SampleNoise.sample_seeds(3, seed=2) == [2_000_006, 2_000_007, 2_000_008]


def test_sample_rejects_non_positive_n(tiny_model):
    model = tiny_model("vae-mlp")
    for n in (0, -3):
        with pytest.raises(ConfigError, match="positive"):
            model.sample(n)


# --------------------------------------------------------------------------- labels
def test_cvae_labels(tiny_model):
    model = tiny_model("cvae")
    as_int = model.sample(4, labels=3, seed=1)
    as_list = model.sample(4, labels=[3, 3, 3, 3], seed=1)
    as_tensor = model.sample(4, labels=torch.tensor([3, 3, 3, 3]), seed=1)
    assert torch.equal(as_int, as_list) and torch.equal(as_int, as_tensor)
    # default labels cycle 0..9
    cycle = model.sample(12, seed=1)
    assert torch.equal(cycle, model.sample(12, labels=[i % 10 for i in range(12)], seed=1))


def test_cvae_label_changes_output(tiny_model):
    model = tiny_model("cvae")
    zero = model.sample(3, labels=0, seed=4)
    nine = model.sample(3, labels=9, seed=4)
    assert not torch.allclose(zero, nine)


@pytest.mark.parametrize("labels", [10, -1, [0, 1, 10], [0, 1]])
def test_cvae_rejects_bad_labels(tiny_model, labels):
    with pytest.raises(ConfigError):
        tiny_model("cvae").sample(3, labels=labels, seed=0)


@pytest.mark.parametrize("name", ["vae-mlp", "vae-conv"])
def test_unconditional_models_reject_labels(tiny_model, name):
    with pytest.raises(ConfigError, match="unconditional"):
        tiny_model(name).sample(2, labels=1, seed=0)


def test_conditional_encode_requires_labels(tiny_model):
    model = tiny_model("cvae")
    with pytest.raises(ConfigError, match="labels are required"):
        model.encode(torch.rand(2, 1, 28, 28))


# --------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("name", ALL_MODELS)
def test_save_pretrained_then_load_gives_identical_samples(tiny_model, tmp_path, name):
    model = tiny_model(name)
    # move BatchNorm statistics away from their initial values so they must be saved
    model.training_loss(torch.rand(8, 1, 28, 28), torch.arange(8), step=0)
    model.eval()
    folder = model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    record = json.loads((folder / CONFIG_FILE).read_text())
    assert record["format"] == CONFIG_FORMAT == "genmnist-model"
    assert record["model"] == name
    assert record["config_version"] == VAE.config_version
    assert record["config"] == model.config.to_dict()
    _, metadata = load_tensors(folder / WEIGHTS_FILE)
    assert metadata["model"] == name

    loaded = load(folder)
    assert type(loaded) is VAE and loaded.name == name and not loaded.training
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    labels = 2 if model.conditional else None
    assert torch.equal(loaded.sample(5, labels, seed=9), model.sample(5, labels, seed=9))
    assert isinstance(VAE.from_pretrained(folder), VAE)


def test_save_pretrained_half_precision(tiny_model, tmp_path):
    model = tiny_model("vae-mlp").eval()
    folder = model.save_pretrained(tmp_path / "half", dtype=torch.float16)
    tensors, _ = load_tensors(folder / WEIGHTS_FILE)
    assert all(t.dtype == torch.float16 for t in tensors.values())
    loaded = load(folder)
    assert next(loaded.parameters()).dtype == torch.float32
    torch.testing.assert_close(loaded.sample(3, seed=0), model.sample(3, seed=0), atol=2e-3, rtol=0)


@pytest.fixture
def saved_folder(tiny_model, tmp_path):
    return tiny_model("vae-mlp").save_pretrained(tmp_path / "model")


def _edit_config(folder, change):
    path = folder / CONFIG_FILE
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda r: r.update(config_version=99), "newer than this genmnist supports"),
        (lambda r: r.pop("config_version"), "config_version"),
        (lambda r: r.update(model="no-such-model"), "unknown model 'no-such-model'"),
        (lambda r: r.update(format="something-else"), "not a genmnist model config"),
        (lambda r: r["config"].update(flux_capacitor=1), "unknown VAEConfig field"),
        (lambda r: r["config"].update(latent_dim=5), "has shape"),
        (lambda r: r["config"].update(hidden_dims=[32, 32]), "weights do not match"),
        (lambda r: r.update(config=[1, 2]), "'config' must be an object"),
    ],
)
def test_load_broken_config_raises_checkpoint_error(saved_folder, change, match):
    _edit_config(saved_folder, change)
    with pytest.raises(CheckpointError, match=match) as info:
        load(saved_folder)
    assert str(saved_folder) in str(info.value)


def test_load_missing_or_broken_files(saved_folder, tmp_path):
    (saved_folder / WEIGHTS_FILE).write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(CheckpointError, match="Git LFS"):
        load(saved_folder)
    (saved_folder / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="file not found"):
        load(saved_folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json here"):
        load(empty)
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load(tmp_path / "does" / "not" / "exist")


def test_load_name_without_shipped_weights(tiny_model):
    MODELS.register("test-only-vae", VAE, hidden_dims=(8,), latent_dim=2)
    with pytest.raises(RegistryError, match="no pretrained weights ship for 'test-only-vae'"):
        load("test-only-vae")


def test_from_pretrained_checks_the_class(saved_folder):
    class OtherModel(VAE):
        pass

    with pytest.raises(CheckpointError, match="not a OtherModel"):
        OtherModel.from_pretrained(saved_folder)


# --------------------------------------------------------------------------- training loss
@pytest.mark.parametrize("name", ALL_MODELS)
def test_training_loss_is_finite_and_differentiable(tiny_model, tiny_dataset, name):
    model = tiny_model(name)
    images, labels = tiny_dataset.batch(torch.arange(8))
    losses = model.training_loss(images, labels, step=0)
    assert {"loss", "reconstruction", "kl"} <= set(losses)
    for key, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), key
    assert losses["kl"] >= 0 and losses["reconstruction"] > 0
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    expected = losses["reconstruction"] + model.config.beta * losses["kl"]
    torch.testing.assert_close(losses["loss"].detach(), expected)


def test_training_loss_kl_annealing(tiny_model, tiny_dataset):
    model = tiny_model("vae-mlp", beta=2.0, kl_warmup_steps=10)
    images, labels = tiny_dataset.batch(torch.arange(8))
    at_start = model.training_loss(images, labels, step=0)
    assert torch.equal(at_start["loss"].detach(), at_start["reconstruction"])
    halfway = model.training_loss(images, labels, step=5)
    expected = halfway["reconstruction"] + 1.0 * halfway["kl"]
    torch.testing.assert_close(halfway["loss"].detach(), expected)
    late = model.training_loss(images, labels, step=50)
    torch.testing.assert_close(late["loss"].detach(), late["reconstruction"] + 2.0 * late["kl"])


# --------------------------------------------------------------------------- losses
def _sig(x):
    return 1 / (1 + math.exp(-x))


LOGITS = [[0.0, math.log(3.0)], [-1.0, 2.0]]  # two "images" of two pixels
TARGET = [[1.0, 0.0], [0.5, 1.0]]


def _per_image(fn):
    rows = [
        sum(fn(x, t) for x, t in zip(xs, ts, strict=True))
        for xs, ts in zip(LOGITS, TARGET, strict=True)
    ]
    return sum(rows) / len(rows)


@pytest.mark.parametrize(
    ("loss", "pixel"),
    [
        (
            bce_reconstruction,
            lambda x, t: -(t * math.log(_sig(x)) + (1 - t) * math.log(1 - _sig(x))),
        ),
        (mse_reconstruction, lambda x, t: (_sig(x) - t) ** 2),
        (l1_reconstruction, lambda x, t: abs(_sig(x) - t)),
    ],
)
def test_reconstruction_losses_match_hand_computation(loss, pixel):
    logits = torch.tensor(LOGITS).reshape(2, 1, 1, 2)
    target = torch.tensor(TARGET).reshape(2, 1, 1, 2)
    value = loss(logits, target)
    assert value.ndim == 0
    assert value.item() == pytest.approx(_per_image(pixel), rel=1e-6)


def test_reconstruction_losses_are_registered():
    assert RECONSTRUCTION_LOSSES.list() == ["bce", "l1", "mse"]
    assert RECONSTRUCTION_LOSSES.get("bce") is bce_reconstruction


def test_bce_known_value():
    # logit 0 is p = 0.5: ln 2 nats per pixel whatever the target, summed over 784 pixels
    value = bce_reconstruction(torch.zeros(3, 1, 28, 28), torch.rand(3, 1, 28, 28))
    assert value.item() == pytest.approx(784 * math.log(2), rel=1e-6)


def test_gaussian_kl_hand_computed():
    mean = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # row 0: 0.5 * (1 + 1 - 1 - 0) + 0.5 * (0 + 2 - 1 - ln 2); row 1: 0 (the prior itself)
    row0 = 0.5 + 0.5 * (1 - math.log(2.0))
    assert gaussian_kl(mean, logvar).item() == pytest.approx(row0 / 2, rel=1e-6)
    assert gaussian_kl(torch.zeros(4, 3), torch.zeros(4, 3)).item() == 0.0


def test_kl_weight_annealing():
    assert kl_weight(0) == 1.0
    assert kl_weight(100, beta=4.0) == 4.0
    assert kl_weight(0, beta=2.0, warmup_steps=10) == 0.0
    assert kl_weight(5, beta=2.0, warmup_steps=10) == pytest.approx(1.0)
    assert kl_weight(10, beta=2.0, warmup_steps=10) == pytest.approx(2.0)
    assert kl_weight(1000, beta=2.0, warmup_steps=10) == pytest.approx(2.0)


# --------------------------------------------------------------------------- interpolation
@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("method", ["slerp", "linear"])
def test_interpolate_endpoints_are_reconstructions(tiny_model, tiny_dataset, name, method):
    model = tiny_model(name).eval()
    images, labels = tiny_dataset.batch(torch.tensor([0, 3]))
    label = labels[:1] if model.conditional else None
    path = model.interpolate(images[0], images[1], steps=6, labels=label, method=method)
    assert path.shape == (6, 1, 28, 28)
    assert path.min() >= 0 and path.max() <= 1
    pair_labels = None if label is None else label.repeat(2)
    ends = model.reconstruct(images, pair_labels)
    torch.testing.assert_close(path[0], ends[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(path[-1], ends[1], atol=1e-5, rtol=0)
    assert not torch.allclose(path[2], path[0])


def test_reconstruct_leaves_a_training_model_unchanged(tiny_model, tiny_dataset):
    model = tiny_model("vae-conv")
    assert model.training
    images, _ = tiny_dataset.batch(torch.arange(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    together = model.reconstruct(images)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    torch.testing.assert_close(together[:1], model.reconstruct(images[:1]), atol=1e-5, rtol=0)


def test_vae_temperature_scales_the_prior_draws():
    model = create_model("cvae", latent_dim=3, hidden_dims=[4, 8], temperature=1.0)
    seen = []
    decode = model.decode
    model.decode = lambda z, labels=None: seen.append(z.clone()) or decode(z, labels)
    model.sample(4, seed=5)
    model.sample(4, seed=5, temperature=0.5)
    torch.testing.assert_close(seen[1], 0.5 * seen[0])
    # the config's temperature is the default
    model.config = model.config.replace(temperature=0.5)
    model.sample(4, seed=5)
    torch.testing.assert_close(seen[2], seen[1])
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="temperature"):
            model.sample(2, temperature=bad)
    with pytest.raises(ConfigError, match="temperature"):
        create_model("vae-mlp", temperature=0.0)


def test_gan_temperature_scales_the_noise():
    model = create_model("cgan", latent_dim=3, g_hidden_dims=[4, 8], d_hidden_dims=[4, 8])
    seen = []
    generate_images = model.generate_images
    model.generate_images = lambda z, labels=None: (
        seen.append(z.clone()) or generate_images(z, labels)
    )
    plain = model.sample(4, seed=5, labels=[0, 1, 2, 3])
    model.sample(4, seed=5, labels=[0, 1, 2, 3], temperature=0.5)
    torch.testing.assert_close(seen[1], 0.5 * seen[0])
    model.config = model.config.replace(temperature=0.5)
    model.sample(4, seed=5, labels=[0, 1, 2, 3])
    torch.testing.assert_close(seen[2], seen[1])
    assert not torch.equal(model.sample(4, seed=5, labels=[0, 1, 2, 3]), plain)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match="temperature"):
            model.sample(2, labels=[0, 1], temperature=bad)
    with pytest.raises(ConfigError, match="temperature"):
        create_model("dcgan", temperature=-0.5)


def test_interpolate_latents_linear_and_slerp():
    start, end = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 3.0, 0.0])
    linear = interpolate_latents(start, end, 5, "linear")
    assert linear.shape == (5, 3)
    assert torch.equal(linear[0], start) and torch.equal(linear[-1], end)
    torch.testing.assert_close(linear[2], torch.tensor([1.5, 1.5, 0.0]))
    slerp = interpolate_latents(start, end, 5, "slerp")
    torch.testing.assert_close(slerp[0], start, atol=1e-5, rtol=0)
    torch.testing.assert_close(slerp[-1], end, atol=1e-5, rtol=0)
    # slerp keeps the norm of equal-norm endpoints along the path (linear shrinks it)
    torch.testing.assert_close(slerp.norm(dim=1), torch.full((5,), 3.0), atol=1e-4, rtol=0)
    assert linear[2].norm() < 2.2
    # nearly parallel endpoints fall back to linear interpolation
    parallel = interpolate_latents(start, 2 * start, 3, "slerp")
    torch.testing.assert_close(parallel[1], 1.5 * start)


def test_interpolate_latents_errors():
    a, b = torch.zeros(2), torch.ones(2)
    with pytest.raises(ConfigError, match="at least 2 steps"):
        interpolate_latents(a, b, 1)
    with pytest.raises(ConfigError, match="unknown interpolation method 'cubic'"):
        interpolate_latents(a, b, 3, "cubic")


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("beta", "x", "must be a finite number"),
        ("beta", True, "must be a finite number"),
        ("kl_warmup_steps", 1.5, "must be an integer"),
        ("num_classes", True, "must be an integer"),
        ("hidden_dims", [16, "a"], "tuple[int, ...]"),
        ("betas", [0.9], "tuple[float, float]"),
        ("grad_clip", "1", "float | None"),
        ("encoder", 3, "must be a string"),
    ],
)
def test_config_fields_are_type_checked(field, value, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        VAEConfig.from_dict({field: value})
    with pytest.raises(ConfigError, match=field):
        create_model("vae-mlp", **{field: value})


def test_config_type_check_accepts_json_spellings():
    cfg = VAEConfig.from_dict({"beta": 2, "hidden_dims": [8, 16], "grad_clip": None})
    assert cfg.beta == 2 and cfg.hidden_dims == (8, 16) and cfg.grad_clip is None


# --------------------------------------------------------------------------- decoders
def test_conv_decoder_keeps_the_layer_numbering_its_saved_weights_use():
    decoder = DECODERS.create("conv", in_features=4, hidden_dims=(8, 16))
    assert [k for k in decoder.state_dict() if k.endswith("weight")] == [
        "project.0.weight", "net.0.weight", "net.1.weight", "net.3.weight", "net.4.weight",
        "net.6.weight",
    ]  # fmt: skip


def test_residual_decoder_refines_every_resolution_and_reduces_to_the_plain_one():
    plain = DECODERS.create("conv", in_features=4, hidden_dims=(8, 16), cond_features=2)
    residual = DECODERS.create("conv-res", in_features=4, hidden_dims=(8, 16), cond_features=2)
    sizes = []
    for module in residual.modules():
        if type(module).__name__ == "_ResidualBlock":
            module.register_forward_hook(lambda m, args, out: sizes.append(tuple(out.shape[1:])))
    z, cond = torch.randn(3, 4), torch.randn(3, 2)
    assert residual(z, cond).shape == (3, 1, 28, 28)
    assert sizes == [
        (16, 7, 7),
        (8, 14, 14),
        (8, 28, 28),
    ]  # after the projection and each upsampling
    # with each block's last normalisation zeroed, a block is relu(relu(x)) = relu(x), so the
    # decoder computes exactly what the plain decoder with the same other weights computes
    plain_layers = [m for m in plain.net if not isinstance(m, torch.nn.Identity)]
    residual_layers = []
    for module in residual.net:
        if type(module).__name__ == "_ResidualBlock":
            torch.nn.init.zeros_(module.body[-1].weight)
            torch.nn.init.zeros_(module.body[-1].bias)
        else:
            residual_layers.append(module)
    for mine, theirs in zip(residual_layers, plain_layers, strict=True):
        mine.load_state_dict(theirs.state_dict())
    residual.project.load_state_dict(plain.project.state_dict())
    plain.eval(), residual.eval()
    assert torch.allclose(residual(z, cond), plain(z, cond), atol=1e-6)


def test_vae_with_residual_decoder_trains_and_round_trips(tiny_dataset, tmp_path):
    model = create_model("cvae", latent_dim=3, hidden_dims=(4, 8), decoder="conv-res")
    images, labels = tiny_dataset.batch(torch.arange(8))
    loss = model.training_loss(images, labels, step=0)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.decoder.parameters())
    model.save_pretrained(tmp_path / "m")
    again = load(tmp_path / "m")
    assert torch.equal(again.sample(4, labels=1, seed=3), model.sample(4, labels=1, seed=3))
