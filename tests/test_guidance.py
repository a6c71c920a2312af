"""Guidance wrappers on analytic denoisers, the DDPM's guidance options, autoguidance by a
second model, and loading configs saved before guidance became wrappers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from genmnist.diffusion import (
    SAMPLERS,
    SCHEDULES,
    autoguidance,
    classifier_free_guidance,
    limited_interval,
    spaced_timesteps,
)
from genmnist.errors import CheckpointError, ConfigError
from genmnist.io import load_tensors, save_tensors
from genmnist.models import Autoguided, create_model, load
from genmnist.models.base import SampleNoise

TINY = dict(channels=(8, 16, 16), timesteps=50, sampling_steps=4)
STD = 0.5


def gaussian_denoiser(schedule, mean):
    """The exact E[x0 | x_t] for data whose pixels are independent N(mean, STD^2)."""

    def denoise(x, t):
        alpha = schedule.alpha(t).float()[:, None, None, None]
        sigma = schedule.sigma(t).float()[:, None, None, None]
        gain = alpha * STD**2 / (alpha**2 * STD**2 + sigma**2)
        return mean + gain * (x - alpha * mean)

    return denoise


def ode_endpoint(schedule, x_T, mean):
    """Where the probability-flow ODE takes x_T for Gaussian data N(mean, STD^2)."""
    t = torch.tensor(schedule.timesteps - 1)
    alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
    return mean + (x_T / alpha - mean) * STD / math.sqrt(STD**2 + (sigma / alpha) ** 2)


def _ode(denoise, schedule, x_T):
    """DPM-Solver++(2M) at 200 steps: converged on Gaussian data (see test_diffusion)."""
    timesteps = spaced_timesteps(schedule.timesteps, 200, "uniform")
    return SAMPLERS.get("dpmpp-2m")(denoise, x_T.clone(), schedule, timesteps)


def test_classifier_free_guidance_combines_predictions():
    def predict(x, t, labels):
        return labels.float()[:, None, None, None] + torch.zeros_like(x)

    labels = torch.tensor([3, 5])
    x, t = torch.zeros(2, 1, 1, 1), torch.zeros(2, dtype=torch.long)
    guided = classifier_free_guidance(predict, labels, null_label=10, scale=2.0)(x, t)
    # uncond (10) + 2 * (cond - uncond)
    torch.testing.assert_close(
        guided.flatten(), torch.tensor([10 + 2 * (3 - 10.0), 10 + 2 * (5 - 10.0)])
    )
    plain = classifier_free_guidance(predict, labels, null_label=10, scale=1.0)(x, t)
    torch.testing.assert_close(plain.flatten(), torch.tensor([3.0, 5.0]))


def test_classifier_free_guidance_of_gaussians_samples_the_extrapolated_gaussian():
    # Guidance between two exact Gaussian denoisers is the exact denoiser of the Gaussian
    # whose mean is extrapolated, so the ODE lands on that mean's endpoint.
    schedule = SCHEDULES.create("linear", timesteps=1000)
    conditional, unconditional = 0.4, 0.1
    means = torch.tensor([conditional, unconditional])

    def predict(x, t, labels):  # label 0: the class, label 1: the null label
        return gaussian_denoiser(schedule, means[labels][:, None, None, None])(x, t)

    x_T = torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(256, dtype=torch.long)
    x0 = _ode(classifier_free_guidance(predict, labels, null_label=1, scale=3.0), schedule, x_T)
    extrapolated = unconditional + 3.0 * (conditional - unconditional)
    torch.testing.assert_close(x0, ode_endpoint(schedule, x_T, extrapolated), atol=1e-2, rtol=1e-2)


def test_autoguidance_extrapolates_away_from_the_guide():
    x, t = torch.zeros(2, 1, 1, 1), torch.zeros(2, dtype=torch.long)
    calls = []

    def model(x, t):
        calls.append("model")
        return torch.full_like(x, 3.0)

    def guide(x, t):
        calls.append("guide")
        return torch.full_like(x, 1.0)

    # guide + 2.5 * (model - guide) = 1 + 2.5 * 2
    torch.testing.assert_close(autoguidance(model, guide, 2.5)(x, t), torch.full_like(x, 6.0))
    calls.clear()
    torch.testing.assert_close(autoguidance(model, guide, 1.0)(x, t), torch.full_like(x, 3.0))
    assert calls == ["model"]  # scale 1 never runs the guide


def test_limited_interval_guides_only_inside_its_log_snr_range():
    schedule = SCHEDULES.create("cosine", timesteps=1000)
    calls = []

    def guided(x, t):
        calls.append("guided")
        return torch.full_like(x, 1.0)

    def plain(x, t):
        calls.append("plain")
        return torch.zeros_like(x)

    log_snr = schedule.log_snr(torch.arange(1000))
    inside = torch.tensor([500])
    low, high = float(log_snr[600]), float(log_snr[400])  # log-SNR falls as t grows
    denoise = limited_interval(guided, plain, schedule, (low, high))
    x = torch.zeros(3, 1, 1, 1)
    assert denoise(x, inside.expand(3)).unique().tolist() == [1.0] and calls == ["guided"]
    calls.clear()
    assert denoise(x, torch.full((3,), 900)).unique().tolist() == [0.0] and calls == ["plain"]
    mixed = denoise(x, torch.tensor([100, 500, 900])).flatten().tolist()
    assert mixed == [0.0, 1.0, 0.0]
    # the edges belong to the interval
    assert denoise(x[:1], torch.tensor([600])).item() == 1.0


def test_limited_interval_on_gaussians_moves_between_plain_and_guided_endpoints():
    schedule = SCHEDULES.create("linear", timesteps=1000)
    conditional, unconditional = 0.4, 0.1
    means = torch.tensor([conditional, unconditional])

    def predict(x, t, labels):
        return gaussian_denoiser(schedule, means[labels][:, None, None, None])(x, t)

    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(64, dtype=torch.long)
    guided = classifier_free_guidance(predict, labels, 1, 3.0)
    plain = classifier_free_guidance(predict, labels, 1, 1.0)
    everywhere = _ode(
        limited_interval(guided, plain, schedule, (-math.inf, math.inf)), schedule, x_T
    )
    torch.testing.assert_close(everywhere, _ode(guided, schedule, x_T))
    nowhere = _ode(limited_interval(guided, plain, schedule, (50.0, 60.0)), schedule, x_T)
    torch.testing.assert_close(nowhere, _ode(plain, schedule, x_T))
    middle = _ode(limited_interval(guided, plain, schedule, (-3.4, 2.6)), schedule, x_T)
    low, high = ode_endpoint(schedule, x_T, conditional), ode_endpoint(schedule, x_T, 1.0)
    assert bool(((middle > low + 1e-3) & (middle < high - 1e-3)).all())


@pytest.mark.parametrize("interval", [(2.0, 1.0), (math.nan, 1.0), ("a", 1.0), (1.0,), None, 3.0])
def test_bad_guidance_intervals_are_config_errors(interval):
    schedule = SCHEDULES.create("cosine", timesteps=10)
    with pytest.raises(ConfigError, match="interval"):
        limited_interval(lambda x, t: x, lambda x, t: x, schedule, interval)


@pytest.mark.parametrize("scale", [math.inf, -math.inf, math.nan, 1e400, "2", True])
def test_non_finite_or_non_numeric_guidance_scales_are_config_errors(scale):
    with pytest.raises(ConfigError, match="finite number"):
        classifier_free_guidance(lambda x, t, y: x, torch.zeros(1), 1, scale)
    with pytest.raises(ConfigError, match="finite number"):
        autoguidance(lambda x, t: x, lambda x, t: x, scale)


# ---------------------------------------------------------------- guidance of a DDPM
def _noisy(model):
    torch.manual_seed(0)
    for p in model.parameters():  # an untrained U-Net's zero output layer ignores labels
        p.data.add_(torch.randn_like(p) * 0.05)
    return model


def test_ddpm_guidance_interval_option_and_config_default():
    model = _noisy(create_model("ddpm-cfg", **TINY, precision="fp32"))
    options = dict(seed=2, labels=3, precision="fp32")
    guided, plain = model.sample(3, **options), model.sample(3, guidance=1.0, **options)
    assert not torch.allclose(guided, plain)
    everywhere = model.sample(3, guidance_interval=(-math.inf, math.inf), **options)
    torch.testing.assert_close(everywhere, guided)
    torch.testing.assert_close(model.sample(3, guidance_interval=(90.0, 99.0), **options), plain)
    partly = model.sample(3, guidance_interval=(-3.4, 2.6), **options)
    assert not torch.allclose(partly, guided) and not torch.allclose(partly, plain)
    # the config's interval is the default
    model.config = model.config.replace(guidance_interval=(-3.4, 2.6))
    torch.testing.assert_close(model.sample(3, **options), partly)
    with pytest.raises(ConfigError, match="interval"):
        create_model("ddpm-cfg", **TINY, guidance_interval=(3.0, 1.0))
    with pytest.raises(ConfigError, match="finite"):
        model.sample(1, guidance=math.inf)


def test_which_ddpms_take_guidance_follows_from_what_they_are():
    unconditional = create_model("ddpm", **TINY)
    with pytest.raises(ConfigError, match="is unconditional.*takes no guidance"):
        unconditional.sample(1, guidance=2.0)
    with pytest.raises(ConfigError, match="takes no guidance"):
        unconditional.sample(1, guidance_interval=(0.0, 1.0))
    no_dropout = create_model("ddpm-cfg", **TINY, label_dropout=0.0)
    assert "label dropout" in no_dropout.guidance_problem
    with pytest.raises(ConfigError, match="label dropout"):
        no_dropout.sample(1, guidance=2.0)
    assert create_model("ddpm-cfg", **TINY).guidance_problem is None
    assert create_model("ddpm", **TINY, clusters=3).guidance_problem is None


# ---------------------------------------------------------------- autoguidance composite
def _pair():
    model = _noisy(create_model("ddpm", **TINY))
    guide = _noisy(create_model("ddpm", **{**TINY, "channels": (4, 8, 8)}))
    return model, guide


def test_autoguided_samples_saves_as_two_folders_and_round_trips(tmp_path):
    model, guide = _pair()
    guided = Autoguided(model=model, guide=guide, guidance_scale=2.0)
    alone = model.sample(3, seed=1, precision="fp32")
    torch.testing.assert_close(guided.sample(3, seed=1, precision="fp32", guidance=1.0), alone)
    default = guided.sample(3, seed=1, precision="fp32")
    assert (default - alone).abs().mean() > 1e-3
    folder = guided.save_pretrained(tmp_path / "auto")
    assert (folder / "model" / "model.safetensors").is_file()
    assert (folder / "guide" / "model.safetensors").is_file()
    assert not (folder / "model.safetensors").exists()
    loaded = load(folder)
    assert isinstance(loaded, Autoguided) and loaded.config.guidance_scale == 2.0
    torch.testing.assert_close(loaded.sample(3, seed=1, precision="fp32"), default)


def test_autoguided_checks_its_parts_and_does_not_train():
    model, guide = _pair()
    with pytest.raises(ConfigError, match="objective"):
        Autoguided(model=model, guide=create_model("ddpm", **{**TINY, "objective": "eps"}))
    with pytest.raises(ConfigError, match="unconditional"):
        Autoguided(model=create_model("ddpm-cfg", **TINY), guide=guide)
    with pytest.raises(ConfigError, match="only samples"):
        Autoguided(model=model, guide=guide).training_loss(torch.rand(2, 1, 28, 28), None, 0)


# ---------------------------------------------------------------- configs of version 1
def _as_version_1(folder, **fields):
    record = json.loads((folder / "config.json").read_text())
    record["config_version"] = 1
    record["config"].update(fields)
    (folder / "config.json").write_text(json.dumps(record))


def test_version_1_ddpm_configs_and_weights_still_load(tmp_path):
    model = _noisy(create_model("ddpm", **TINY, clusters=3))
    model.conditioning.centers.normal_()
    folder = model.save_pretrained(tmp_path / "sg")
    # version 1 kept the clusters as top-level buffers and the distillation in the config
    tensors, metadata = load_tensors(folder / "model.safetensors")
    tensors["cluster_centers"] = tensors.pop("conditioning.centers")
    tensors["cluster_shares"] = tensors.pop("conditioning.shares")
    save_tensors(folder / "model.safetensors", tensors, metadata)
    _as_version_1(folder, guide_channels=[], distill_teacher="runs/t", distill_guidance=2.0)
    loaded = load(folder)
    torch.testing.assert_close(loaded.conditioning.centers, model.conditioning.centers)
    assert loaded.config.label_dropout == 0.0 and loaded.guidance_problem  # distilled
    _as_version_1(folder, guide_channels=[4, 8, 8])
    with pytest.raises(CheckpointError, match="autoguidance guide"):
        load(folder)


def test_the_shipped_self_guided_student_guides_only_its_first_step():
    shipped = load("ddpm")
    assert shipped.config.clusters == 128 and shipped.conditioning.shares.sum() > 0.99
    # distilled, then its null label tuned: it takes guidance, by default below scale 1
    assert shipped.guidance_problem is None and shipped.config.label_dropout > 0
    assert shipped.config.guidance_scale < 1
    noise = SampleNoise([0, 1], "cpu")
    assert shipped.conditioning.sampling_labels(noise, None).shape == (2,)
    batches = []
    shipped.unet.register_forward_hook(lambda module, args, out: batches.append(len(args[0])))
    shipped.sample(2, seed=0)
    assert batches == [4] + [2] * (shipped.config.sampling_steps - 1)
    batches.clear()
    shipped.sample(2, seed=0, guidance=1.0)  # the distilled student alone
    assert batches == [2] * shipped.config.sampling_steps
