"""The GAN family: discriminators, GAN losses, the three models, training and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from genmnist.errors import ConfigError, RegistryError
from genmnist.losses import (
    GAN_LOSSES,
    bce_discriminator_loss,
    gradient_penalty,
    hinge_discriminator_loss,
    hinge_generator_loss,
    nonsaturating_generator_loss,
    r1_penalty,
)
from genmnist.models import GAN, GANConfig, create_model, load
from genmnist.models.gan import MonitorReference
from genmnist.nn import DECODERS, DISCRIMINATORS, ConvDiscriminator, MLPDiscriminator
from genmnist.training import METRICS_FILE, Trainer, TrainOptions

NAMES = ["gan-mlp", "dcgan", "cgan"]
#: Overrides that make each GAN tiny (milliseconds per step).
TINY = {
    "gan-mlp": {"latent_dim": 4, "g_hidden_dims": (16,), "d_hidden_dims": (16,)},
    "dcgan": {"latent_dim": 4, "g_hidden_dims": (4, 8), "d_hidden_dims": (4, 8)},
    "cgan": {"latent_dim": 4, "g_hidden_dims": (4, 8), "d_hidden_dims": (4, 8), "embed_dim": 3},
}
FP32 = {"precision": "fp32", "metrics_samples": 8}


def tiny_gan(name: str, seed: int = 0, **overrides) -> GAN:
    torch.manual_seed(seed)
    return create_model(name, **{**TINY[name], **FP32, **overrides})


def images_and_labels(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 10


# --------------------------------------------------------------------------- registry
def test_presets_are_registered_with_their_architecture():
    mlp, dcgan, cgan = (create_model(n) for n in NAMES)
    assert all(isinstance(m, GAN) for m in (mlp, dcgan, cgan))
    assert isinstance(mlp.generator, DECODERS.get("mlp-norm"))  # one decoder for VAE and GAN
    assert [type(m).__name__ for m in mlp.generator.net][:3] == [
        "Linear", "BatchNorm", "LeakyReLU"
    ]  # fmt: skip
    assert isinstance(mlp.discriminator, MLPDiscriminator)
    assert mlp.config.g_activation == "leaky_relu" and mlp.config.latent_dim == 64
    assert mlp.config.loss == "hinge" and mlp.config.spectral_norm
    assert (mlp.config.lr, mlp.config.d_lr, mlp.config.betas) == (1e-4, 4e-4, (0.0, 0.9))
    assert isinstance(dcgan.generator, DECODERS.get("conv"))
    assert isinstance(dcgan.discriminator, ConvDiscriminator)
    assert not dcgan.conditional and cgan.conditional and cgan.config.num_classes == 10
    assert cgan.config.real_target == 0.9 and cgan.config.conditioning == "projection"
    assert dcgan.config.betas == (0.5, 0.999) and dcgan.config.lr == 2e-4
    assert set(DISCRIMINATORS.list()) == {"conv", "mlp"}
    assert set(GAN_LOSSES.list()) == {"bce", "hinge"}


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"loss": "wasserstein"}, "unknown GAN loss 'wasserstein'"),
        ({"loss": "hinge", "real_target": 0.9}, "does not apply to 'hinge'"),
        ({"real_target": 0.0}, "real_target"),
        ({"penalty": "r2"}, "unknown penalty 'r2'"),
        ({"penalty_every": 0}, "penalty_every"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"conditioning": "concat", "num_classes": 10}, "unknown conditioning 'concat'"),
        ({"init": "xavier"}, "unknown init 'xavier'"),
        ({"discriminator": "resnet"}, "unknown discriminator 'resnet'"),
    ],
)
def test_config_errors(overrides, match):
    with pytest.raises((ConfigError, RegistryError), match=match):
        create_model("dcgan", **{**TINY["dcgan"], **overrides})


# --------------------------------------------------------------------------- discriminators
@pytest.mark.parametrize("name", ["mlp", "conv"])
@pytest.mark.parametrize("conditioning", ["projection", "embedding"])
@pytest.mark.parametrize("spectral_norm", [False, True])
def test_discriminator_shapes_and_label_wiring(name, conditioning, spectral_norm):
    torch.manual_seed(0)
    d = DISCRIMINATORS.create(
        name,
        hidden_dims=(8, 16),
        num_classes=10,
        conditioning=conditioning,
        spectral_norm=spectral_norm,
        dropout=0.1,
    ).eval()
    images, labels = images_and_labels(5)
    logits = d(images, labels)
    assert logits.shape == (5,) and torch.isfinite(logits).all()
    assert not torch.allclose(d(images, (labels + 1) % 10), logits)  # labels matter
    with pytest.raises(ConfigError, match="labels are required"):
        d(images)
    unconditional = DISCRIMINATORS.create(name, hidden_dims=(8,), spectral_norm=spectral_norm)
    assert unconditional(images).shape == (5,)
    assert unconditional.projection is None and unconditional.input_embedding is None


def test_spectral_norm_bounds_every_weight():
    torch.manual_seed(0)
    d = ConvDiscriminator(hidden_dims=(8, 16), num_classes=10, spectral_norm=True).train()
    images, labels = images_and_labels(4)
    for _ in range(30):  # power iteration converges while the weights stay fixed
        d(images, labels)
    layers = [m for m in d.modules() if isinstance(m, nn.Linear | nn.Conv2d | nn.Embedding)]
    assert len(layers) == 4  # two convolutions, the head, the projection
    for layer in layers:
        assert hasattr(layer, "parametrizations")
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.05)


def test_conv_discriminator_dropout_and_depth_errors():
    d = ConvDiscriminator(hidden_dims=(8,), dropout=0.5)
    assert any(isinstance(m, nn.Dropout) for m in d.modules())
    with pytest.raises(ConfigError, match="shrink"):
        ConvDiscriminator(hidden_dims=(2, 2, 2, 2, 2))


# --------------------------------------------------------------------------- losses
def test_bce_losses_hand_computed():
    zero = torch.zeros(3)
    assert bce_discriminator_loss(zero, zero) == pytest.approx(2 * math.log(2))
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    sig = 1 / (1 + math.exp(-2.0))
    expected = -math.log(sig) - math.log(1 - 1 / (1 + math.exp(1.0)))
    assert bce_discriminator_loss(real, fake) == pytest.approx(expected, rel=1e-6)
    # one-sided label smoothing: the real target is 0.9, fakes still aim at 0
    smoothed = -(0.9 * math.log(sig) + 0.1 * math.log(1 - sig)) + math.log(1 + math.exp(-1.0))
    assert bce_discriminator_loss(real, fake, 0.9) == pytest.approx(smoothed, rel=1e-6)
    # non-saturating generator loss: -log sigmoid(D(G(z))), a mean over the batch
    logits = torch.tensor([0.0, 3.0])
    expected = (math.log(2) + math.log(1 + math.exp(-3.0))) / 2
    assert nonsaturating_generator_loss(logits) == pytest.approx(expected, rel=1e-6)


def test_hinge_losses_hand_computed():
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-2.0, 0.5])
    # real: relu(1 - 0.5) = 0.5, relu(1 - 2) = 0 -> 0.25; fake: 0, relu(1.5) -> 0.75
    assert hinge_discriminator_loss(real, fake) == pytest.approx(1.0)
    assert hinge_generator_loss(fake) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="bce"):
        hinge_discriminator_loss(real, fake, 0.9)
    assert GAN_LOSSES.get("hinge").smoothing is False and GAN_LOSSES.get("bce").smoothing


def test_r1_penalty_of_a_linear_and_a_quadratic_critic():
    w = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    linear = r1_penalty((x * w).flatten(1).sum(1), x).item()
    assert linear == pytest.approx(float(w.pow(2).sum()), rel=1e-5)
    y = torch.rand(4, 1, 28, 28, requires_grad=True)
    penalty = r1_penalty(y.pow(2).flatten(1).sum(1), y)  # gradient 2y
    expected = float(4 * y.detach().pow(2).flatten(1).sum(1).mean())
    assert penalty.item() == pytest.approx(expected, rel=1e-5)
    penalty.backward()  # differentiable: the penalty trains the discriminator
    assert torch.allclose(y.grad, 8 * y.detach() / 4)


def test_gradient_penalty_hand_computed():
    w = torch.zeros(1, 1, 28, 28)
    w[0, 0, 0, :3] = torch.tensor([1.0, 2.0, 2.0])  # ||w|| = 3
    critic = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731
    real, fake = torch.rand(5, 1, 28, 28), torch.rand(5, 1, 28, 28)
    assert gradient_penalty(critic, real, fake) == pytest.approx(4.0)  # (3 - 1)^2
    half = gradient_penalty(critic, real, fake, alpha=torch.full((5, 1, 1, 1), 0.5))
    assert half == pytest.approx(4.0)


# --------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("name", NAMES)
def test_sample_shape_range_and_seed(name):
    model = tiny_gan(name)
    images = model.sample(7, seed=1)
    assert images.shape == (7, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, model.sample(7, seed=1))
    assert not torch.equal(images, model.sample(7, seed=2))
    assert model.training  # sample() restores the mode


@pytest.mark.parametrize("name", ["dcgan", "cgan"])
def test_batchnorm_generator_samples_do_not_depend_on_the_batch(name):
    model = tiny_gan(name)
    labels = torch.arange(16) % 10 if model.conditional else None
    model.generator(torch.randn(16, 4), model._cond(labels))
    stats = model.generator.net[1].running_mean.clone()  # BatchNorm saw a batch: stats != 0
    assert stats.abs().sum() > 0
    big = model.sample(12, seed=3, batch_size=12)
    assert torch.allclose(model.sample(5, seed=3), big[:5], atol=1e-6)
    assert torch.allclose(model.sample(12, seed=3, batch_size=2), big, atol=1e-6)
    assert torch.equal(model.generator.net[1].running_mean, stats)  # sampling leaves them


def test_cgan_label_changes_the_output_and_labels_are_checked():
    model = tiny_gan("cgan")
    fours, fives = model.sample(6, labels=4, seed=0), model.sample(6, labels=5, seed=0)
    assert not torch.allclose(fours, fives)
    assert torch.equal(fours, model.sample(6, labels=[4] * 6, seed=0))
    mixed = model.sample(2, labels=[4, 5], seed=0)
    assert torch.allclose(mixed[0], fours[0]) and not torch.allclose(mixed[1], fours[1])
    with pytest.raises(ConfigError, match=r"labels must be in 0\.\.9"):
        model.sample(2, labels=10)
    with pytest.raises(ConfigError, match="unconditional"):
        tiny_gan("dcgan").sample(2, labels=1)


# --------------------------------------------------------------------------- training hooks
@pytest.mark.parametrize("name", NAMES)
def test_phases_update_only_their_own_network(name):
    model = tiny_gan(name)
    groups = {k: list(v) for k, v in model.optimizer_groups().items()}
    assert list(groups) == ["discriminator", "generator"]
    d_ids, g_ids = {id(p) for p in groups["discriminator"]}, {id(p) for p in groups["generator"]}
    assert not d_ids & g_ids and d_ids | g_ids == {id(p) for p in model.parameters()}
    images, labels = images_and_labels(6)

    d_out = model.training_loss(images, labels, 0, "discriminator")
    assert {"loss", "real_accuracy", "fake_accuracy"} <= set(d_out)
    d_out["loss"].backward()
    assert all(p.grad is None for p in groups["generator"])
    assert all(p.grad is not None for p in groups["discriminator"])
    model.zero_grad(set_to_none=True)

    g_out = model.training_loss(images, labels, 0, "generator")
    assert set(g_out) == {"loss", "fooled"}
    g_out["loss"].backward()
    assert all(p.grad is None for p in groups["discriminator"])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups["generator"])
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="phases"):
        model.training_loss(images, labels, 0, "model")


def test_generator_phase_reuses_the_discriminator_phase_fakes():
    model = tiny_gan("dcgan")
    images, labels = images_and_labels(6)
    model.training_loss(images, labels, 7, "discriminator")
    fakes = model._fakes[1]
    state = torch.get_rng_state()
    model.training_loss(images, labels, 7, "generator")
    assert torch.equal(torch.get_rng_state(), state)  # no new noise drawn
    assert model._fakes is None and fakes.grad_fn is not None
    model.training_loss(images, labels, 8, "generator")  # alone: draws its own fakes
    assert not torch.equal(torch.get_rng_state(), state)


def test_ttur_learning_rates():
    model = tiny_gan("dcgan", lr=1e-4, d_lr=4e-4)
    assert model.optimizer_options("discriminator") == {"lr": 4e-4}
    assert model.optimizer_options("generator") == {}
    assert tiny_gan("dcgan").optimizer_options("discriminator") == {}


@pytest.mark.parametrize("penalty, key", [("r1", "r1"), ("gp", "gp")])
def test_penalties_are_added_to_the_discriminator_loss(penalty, key):
    images, labels = images_and_labels(6)
    plain = tiny_gan("cgan", d_norm="none")
    torch.manual_seed(1)
    base = plain.training_loss(images, labels, 0, "discriminator")
    model = tiny_gan("cgan", d_norm="none", penalty=penalty, penalty_weight=4.0)
    torch.manual_seed(1)
    out = model.training_loss(images, labels, 0, "discriminator")
    weight = 2.0 if penalty == "r1" else 4.0  # R1 adds gamma / 2
    assert out[key] > 0
    assert out["loss"].item() == pytest.approx(base["loss"].item() + weight * out[key].item())
    out["loss"].backward()
    lazy = tiny_gan("cgan", d_norm="none", penalty=penalty, penalty_every=4)
    assert key not in lazy.training_loss(images, labels, 1, "discriminator")
    assert key in lazy.training_loss(images, labels, 4, "discriminator")


def test_training_metrics_track_diversity_without_touching_the_rng():
    model = tiny_gan("cgan", metrics_samples=20)
    state = torch.get_rng_state()
    first = model.training_metrics(0)
    assert torch.equal(torch.get_rng_state(), state) and model.training
    assert set(first) == {"sample_diversity", "class_diversity"}
    assert first == model.training_metrics(0)  # a fixed batch: same number until G changes
    assert first["sample_diversity"] > 0
    # a collapsed generator (constant output) scores zero diversity
    for p in model.generator.parameters():
        nn.init.zeros_(p)
    collapsed = model.training_metrics(0)
    assert collapsed["sample_diversity"] == pytest.approx(0.0, abs=1e-6)
    assert collapsed["class_diversity"] == pytest.approx(0.0, abs=1e-6)
    assert tiny_gan("dcgan", metrics_samples=0).training_metrics(0) == {}


def test_monitor_recall_sees_a_generator_that_drops_modes(tiny_dataset):
    """The collapse monitor's recall: real images score the real level, a generator that
    repeats a few images scores far below it and raises the warning."""
    reference = MonitorReference.from_data(tiny_dataset, 64)
    assert reference.real.shape == (64, 784) and 0.5 < reference.real_recall <= 1.0
    order = torch.randperm(len(tiny_dataset), generator=torch.Generator().manual_seed(1))
    fresh, _ = tiny_dataset.batch(order[:64])
    healthy = reference.score(fresh.flatten(1))["sample_recall"]
    repeated = reference.score(fresh[:2].repeat(32, 1, 1, 1).flatten(1))["sample_recall"]
    assert healthy > 0.5 * reference.real_recall and repeated < 0.1
    model = tiny_gan("dcgan")
    assert model.training_warnings({"sample_recall": healthy, "real_recall": 0.9}) == {}
    warned = model.training_warnings({"sample_recall": repeated, "real_recall": 0.9})
    assert list(warned) == ["mode collapse"] and "0.90" in warned["mode collapse"]
    nan = reference.score(torch.full((8, 784), math.nan))  # a diverged generator: no crash
    assert math.isnan(nan["sample_recall"])
    assert model.training_warnings({"sample_recall": math.nan, "real_recall": 0.9}) == {}


def test_training_metrics_add_recall_once_prepared(tiny_dataset):
    model = tiny_gan("dcgan", metrics_samples=32)
    assert "sample_recall" not in model.training_metrics(0)  # no data seen yet
    model.prepare_training(tiny_dataset, resume=False)
    metrics = model.training_metrics(0)
    assert {"sample_diversity", "sample_recall", "real_recall"} <= set(metrics)
    for p in model.generator.parameters():  # a constant generator covers no real image
        nn.init.zeros_(p)
    assert model.training_metrics(0)["sample_recall"] == 0.0


def test_trainer_shows_a_lasting_late_warning_once(tmp_path, tiny_dataset):
    """Warnings of the first half of a run, and one-off ones, stay quiet; a warning two
    records in a row in the second half is shown once."""
    model = tiny_gan("dcgan", batch_size=16)
    warn_at = {6, 10, 14, 16, 18}
    model.training_warnings = lambda metrics: {"kind": "trouble"} if model._step in warn_at else {}
    original = model.training_metrics

    def metrics_noting_the_step(step):
        model._step = step
        return original(step)

    model.training_metrics = metrics_noting_the_step
    lines: list[str] = []
    options = TrainOptions(out=tmp_path / "run", max_steps=20, log_every=2, progress=False)
    Trainer(model, options, tiny_dataset, log=lines.append).fit()
    warnings = [line for line in lines if "trouble" in line]
    assert warnings == ["Warning at step 16: trouble"]  # 6 is early, 10 alone, 18 again


# --------------------------------------------------------------------------- training, files
SN_HINGE_BF16 = {"spectral_norm": True, "d_norm": "none", "loss": "hinge", "precision": "bf16"}


@pytest.mark.parametrize("name, extra", [("cgan", {}), ("dcgan", SN_HINGE_BF16)])
def test_trainer_runs_a_gan_and_logs_its_health(tmp_path, tiny_dataset, name, extra):
    model = tiny_gan(name, batch_size=16, **extra)
    options = TrainOptions(out=tmp_path / "run", max_steps=6, log_every=3, progress=False)
    result = Trainer(model, options, tiny_dataset, log=lambda _: None).fit()
    assert result.step == 6
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS_FILE).open()]
    assert [r["step"] for r in records] == [3, 6]
    keys = {
        "discriminator_loss",
        "discriminator_real_accuracy",
        "discriminator_fake_accuracy",
        "generator_loss",
        "generator_fooled",
        "sample_diversity",
    }
    assert keys <= set(records[-1])
    assert all(0 <= records[-1][k] <= 1 for k in keys if "accuracy" in k or "fooled" in k)
    loaded = load(tmp_path / "run")  # EMA weights (ema_decay is on by default)
    assert isinstance(loaded, GAN) and loaded.name == name
    labels = 3 if loaded.conditional else None
    assert loaded.sample(4, labels=labels, seed=0).shape == (4, 1, 28, 28)


def test_discriminator_learns_on_tiny_data(tiny_dataset):
    model = tiny_gan("gan-mlp", real_target=1.0, d_dropout=0.0)
    images, labels = tiny_dataset.batch(torch.arange(64))
    torch.manual_seed(0)
    before = model.training_loss(images, labels, 0, "discriminator")["loss"].item()
    optimizer = torch.optim.Adam(model.discriminator.parameters(), lr=1e-3)
    for step in range(40):  # train D alone against the fixed generator
        optimizer.zero_grad()
        model.training_loss(images, labels, step, "discriminator")["loss"].backward()
        optimizer.step()
    after = model.training_loss(images, labels, 40, "discriminator")
    assert after["loss"].item() < before / 2
    assert after["real_accuracy"] == 1 and after["fake_accuracy"] == 1


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_round_trip(tmp_path, name):
    model = tiny_gan(name, spectral_norm=name == "cgan")
    model.training_loss(*images_and_labels(6), 0, "discriminator")  # move BatchNorm stats
    folder = model.save_pretrained(tmp_path / name)
    loaded = load(folder)
    assert type(loaded) is GAN and loaded.config == model.config and not loaded.training
    labels = [1, 7, 7] if model.conditional else None
    assert torch.equal(
        loaded.sample(3, labels=labels, seed=5), model.sample(3, labels=labels, seed=5)
    )
    assert GAN.from_pretrained(folder).config == model.config
    assert isinstance(model.config, GANConfig)


def test_cli_samples_every_cgan_label(tmp_path, capsys):
    from genmnist.cli import main

    folder = tiny_gan("cgan").save_pretrained(tmp_path / "cgan")
    for label in (0, 9):
        out = tmp_path / f"{label}.pt"
        with pytest.raises(SystemExit) as info:
            main(
                ["sample", "cgan", "--checkpoint", str(folder), "-n", "5"]
                + ["--label", str(label), "-o", str(out), "--seed", "1"]
            )
        assert info.value.code == 0, capsys.readouterr().err
        images = torch.load(out)
        expected = load(folder).sample(5, labels=label, seed=1)
        assert torch.equal(images, expected)
    with pytest.raises(SystemExit) as info:
        main(["sample", "dcgan", "--checkpoint", str(folder), "-n", "2"])
    assert info.value.code != 0 and "cgan" in capsys.readouterr().err


def test_cli_samples_a_gan_at_a_temperature(tmp_path, capsys):
    from genmnist.cli import main

    folder = tiny_gan("dcgan").save_pretrained(tmp_path / "dcgan")
    out = tmp_path / "cool.pt"
    with pytest.raises(SystemExit) as info:
        main(["sample", "dcgan", "--checkpoint", str(folder), "-n", "3", "--temperature", "0.5"]
             + ["-o", str(out), "--seed", "1"])  # fmt: skip
    assert info.value.code == 0, capsys.readouterr().err
    expected = load(folder).sample(3, seed=1, temperature=0.5)
    assert torch.equal(torch.load(out), expected)
    assert not torch.equal(expected, load(folder).sample(3, seed=1))
    with pytest.raises(SystemExit) as info:
        main(["sample", "dcgan", "--checkpoint", str(folder), "--temperature", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--temperature must be a positive number" in err and "Traceback" not in err


def test_bf16_autocast_loss_is_close_to_fp32():
    model = tiny_gan("dcgan")
    images, labels = images_and_labels(8)
    torch.manual_seed(0)
    fp32 = model.training_loss(images, labels, 0, "discriminator")["loss"]
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.training_loss(images, labels, 0, "discriminator")["loss"]
    assert bf16.dtype == torch.float32  # losses are computed in float32
    assert bf16.item() == pytest.approx(fp32.item(), abs=0.05)
