"""Diffusion: schedules against the published formulas, samplers on an analytic denoiser,
objectives, and the DDPM model wiring."""

from __future__ import annotations

import math

import pytest
import torch

from genmnist import precision
from genmnist.diffusion import (
    OBJECTIVES,
    SAMPLERS,
    SCHEDULES,
    spaced_timesteps,
)
from genmnist.errors import ConfigError
from genmnist.losses import DIFFUSION_WEIGHTINGS
from genmnist.models import create_model, load
from genmnist.models.base import SampleNoise


# ---------------------------------------------------------------- schedules
def test_linear_schedule_matches_ho_et_al():
    s = SCHEDULES.create("linear", timesteps=1000)
    assert s.timesteps == 1000
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(0.02)
    expected = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    torch.testing.assert_close(s.alphas_cumprod, expected)


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_short_schedules_stay_valid_and_too_short_ones_are_refused(name):
    s = SCHEDULES.create(name, timesteps=10)  # linear's scaled betas would pass 1 here
    assert bool(((s.betas > 0) & (s.betas < 1)).all())
    assert bool((s.alphas_cumprod > 0).all()) and bool(
        torch.isfinite(s.log_snr(torch.arange(10))).all()
    )
    for bad in (1, 0, -3, 2.5):
        with pytest.raises(ConfigError, match="timesteps must be an integer >= 2"):
            SCHEDULES.create(name, timesteps=bad)


def test_cosine_schedule_matches_nichol_dhariwal():
    T, offset = 1000, 0.008
    s = SCHEDULES.create("cosine", timesteps=T)

    def f(t):
        return math.cos((t / T + offset) / (1 + offset) * math.pi / 2) ** 2

    for t in (0, 10, 500, 900):
        # alpha_bar at step t is f(t + 1) / f(0) while no beta was clipped.
        assert s.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert s.betas.max().item() <= 0.999 + 1e-12
    assert s.betas[-1].item() == pytest.approx(0.999)  # the last beta is clipped


def test_sigmoid_schedule_is_a_valid_schedule():
    s = SCHEDULES.create("sigmoid", timesteps=200)
    a = s.alphas_cumprod
    assert torch.all(a[1:] < a[:-1]) and 0 < a[-1] < a[0] < 1
    assert torch.all((s.betas > 0) & (s.betas <= 0.999))


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_schedule_helpers_are_consistent(name):
    s = SCHEDULES.create(name, timesteps=100)
    t = torch.arange(100)
    torch.testing.assert_close(
        s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones(100, dtype=torch.float64)
    )
    log_snr = s.log_snr(t)
    assert torch.all(log_snr[1:] < log_snr[:-1])
    torch.testing.assert_close(log_snr, torch.log(s.alpha(t) ** 2 / s.sigma(t) ** 2))
    # Step -1 is clean data.
    assert s.alpha(torch.tensor(-1)).item() == 1.0 and s.sigma(torch.tensor(-1)).item() == 0.0
    # Continuous time hits the discrete grid at its ends and in between.
    ends = s.log_snr_continuous(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(ends, log_snr[[0, -1]])
    mid = s.log_snr_continuous(torch.tensor([0.5 / 99]))
    assert log_snr[1] < mid < log_snr[0]


def test_spaced_timesteps_cover_both_ends_for_any_count():
    for steps in (1, 2, 7, 20, 333, 1000):
        ts = spaced_timesteps(1000, steps)
        assert len(ts) == steps and ts[0] == 999
        assert len(set(ts.tolist())) == steps and torch.all(ts[1:] < ts[:-1])
        if steps > 1:
            assert ts[-1] == 0
    assert torch.equal(spaced_timesteps(1000, 1000), torch.arange(999, -1, -1))
    for bad in (0, 1001):
        with pytest.raises(ConfigError):
            spaced_timesteps(1000, bad)


def test_trailing_spacing_ends_one_gap_above_zero():
    assert spaced_timesteps(1000, 6, "trailing").tolist() == [999, 832, 666, 499, 332, 166]
    for steps in (1, 2, 3, 7, 20, 333, 999, 1000):
        ts = spaced_timesteps(1000, steps, "trailing")
        assert len(ts) == steps and ts[0] == 999
        assert torch.all(ts[1:] < ts[:-1]) and ts[-1] >= 0
        gaps = (ts[:-1] - ts[1:]).tolist() + [ts[-1].item() + 1]  # the last gap ends at -1
        assert max(gaps) - min(gaps) <= 1  # even up to rounding
    assert torch.equal(spaced_timesteps(1000, 1000, "trailing"), torch.arange(999, -1, -1))


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_log_snr_spacing_is_even_in_log_snr_after_the_first_step(name):
    schedule = SCHEDULES.create(name, timesteps=1000)
    for steps in (3, 8, 12, 25, 100, 999, 1000):
        ts = spaced_timesteps(1000, steps, "log-snr", schedule)
        assert len(ts) == steps and ts[0] == 999 and ts[-1] == 0
        assert torch.all(ts[1:] < ts[:-1])
    ts = spaced_timesteps(1000, 12, "log-snr", schedule)
    gaps = schedule.log_snr(ts[2:]) - schedule.log_snr(ts[1:-1])
    # Equal log-SNR gaps up to rounding to integer steps, which is coarse at both ends
    # (one step of t spans much log-SNR there).
    assert torch.all(gaps > 0)
    assert gaps[2:-2].std() / gaps[2:-2].mean() < 0.1
    assert not torch.equal(ts, spaced_timesteps(1000, 12))


def test_unknown_spacing_and_missing_schedule_are_errors():
    with pytest.raises(ConfigError, match="unknown step spacing"):
        spaced_timesteps(1000, 10, "karras-ish")
    with pytest.raises(ConfigError, match="needs the noise schedule"):
        spaced_timesteps(1000, 10, "log-snr")
    with pytest.raises(ConfigError, match="unknown step spacing"):
        create_model("ddpm", **TINY, spacing="nope")


def test_log_snr_spacing_helps_dpm_solver_at_few_steps():
    # On Gaussian data the exact probability-flow endpoint is known; with 8 steps,
    # log-SNR spacing is much closer to it than uniform spacing (measured ~6x closer).
    schedule = SCHEDULES.create("cosine", timesteps=1000)
    x_T = torch.randn(512, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    exact = exact_ode_endpoint(schedule, x_T)
    errors = {}
    for spacing in ("uniform", "log-snr"):
        ts = spaced_timesteps(1000, 8, spacing, schedule)
        out = SAMPLERS.get("dpmpp-2m")(gaussian_denoiser(schedule), x_T.clone(), schedule, ts)
        errors[spacing] = (out - exact).abs().mean().item()
    assert errors["log-snr"] < errors["uniform"] / 2, errors


# ---------------------------------------------------------------- samplers
MU, STD = 0.3, 0.5  # data: every pixel independent N(MU, STD^2)


def gaussian_denoiser(schedule):
    """The exact E[x0 | x_t] for Gaussian data."""

    def denoise(x, t):
        alpha = schedule.alpha(t).float()[:, None, None, None]
        sigma = schedule.sigma(t).float()[:, None, None, None]
        gain = alpha * STD**2 / (alpha**2 * STD**2 + sigma**2)
        return MU + gain * (x - alpha * MU)

    return denoise


def exact_ode_endpoint(schedule, x_T):
    """The probability-flow ODE maps x_T to x_0 linearly for Gaussian data."""
    t = torch.tensor(schedule.timesteps - 1)
    alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
    scaled_sigma = sigma / alpha
    return MU + (x_T / alpha - MU) * STD / math.sqrt(STD**2 + scaled_sigma**2)


# Step counts where each sampler has converged on this problem (measured: DDIM and Euler
# are first order, DPM-Solver++(2M) and Heun second order).
@pytest.mark.parametrize(
    "sampler, steps, schedule_name",
    [
        ("ddpm", 200, "cosine"),
        ("ddim", 100, "cosine"),
        ("dpmpp-2m", 50, "cosine"),
        ("euler", 100, "cosine"),
        ("heun", 25, "linear"),
        ("heun", 25, "cosine"),
    ],
)
def test_samplers_land_on_the_data_distribution(sampler, steps, schedule_name):
    schedule = SCHEDULES.create(schedule_name, timesteps=1000)
    n = 4000
    noise = SampleNoise(range(n))
    x = noise.randn(1, 2, 2)
    out = SAMPLERS.get(sampler)(
        gaussian_denoiser(schedule), x, schedule, spaced_timesteps(1000, steps), noise
    )
    assert out.mean().item() == pytest.approx(MU, abs=0.02)
    assert out.std().item() == pytest.approx(STD, rel=0.05)


@pytest.mark.parametrize("spacing", ["uniform", "trailing"])
def test_heun_is_accurate_at_few_steps_on_a_cosine_schedule(spacing):
    """The cosine schedule's first step jumps from sigma/alpha ~ 20,000; Heun's correction
    across it would be far off, so it takes that step as Euler and stays close to the
    exact endpoint (and closer than Euler) at 8 steps."""
    schedule = SCHEDULES.create("cosine", timesteps=1000)
    x_T = torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    exact = exact_ode_endpoint(schedule, x_T)
    ts = spaced_timesteps(1000, 8, spacing, schedule)
    errors = {
        name: (SAMPLERS.get(name)(gaussian_denoiser(schedule), x_T.clone(), schedule, ts) - exact)
        .abs()
        .mean()
        .item()
        for name in ("heun", "euler")
    }
    # measured: 0.017 (uniform) and 0.021 (trailing); 12.4 and 7.4 with a Heun first step
    assert errors["heun"] < 0.03 and errors["heun"] < errors["euler"] / 2, errors


def test_ddim_eta0_with_all_steps_equals_the_deterministic_limit():
    schedule = SCHEDULES.create("linear", timesteps=1000)
    x_T = torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    out = SAMPLERS.get("ddim")(
        gaussian_denoiser(schedule), x_T.clone(), schedule, spaced_timesteps(1000, 1000)
    )
    torch.testing.assert_close(out, exact_ode_endpoint(schedule, x_T), atol=5e-3, rtol=1e-2)
    # DPM-Solver++(2M) solves the same ODE, second order: 200 steps are enough.
    fast = SAMPLERS.get("dpmpp-2m")(
        gaussian_denoiser(schedule), x_T.clone(), schedule, spaced_timesteps(1000, 200)
    )
    torch.testing.assert_close(fast, exact_ode_endpoint(schedule, x_T), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS.list()))
def test_samplers_are_deterministic_and_report_each_step(sampler):
    schedule = SCHEDULES.create("cosine", timesteps=100)
    seen = []
    runs = []
    for _ in range(2):
        noise = SampleNoise([7, 8, 9])
        runs.append(
            SAMPLERS.get(sampler)(
                gaussian_denoiser(schedule),
                noise.randn(1, 4, 4),
                schedule,
                spaced_timesteps(100, 6),
                noise,
                callback=lambda i, x, x0: seen.append((i, x.shape, x0.shape)),
            )
        )
    assert runs[0].shape == (3, 1, 4, 4)
    assert torch.equal(runs[0], runs[1])
    assert [i for i, _, _ in seen[:6]] == list(range(6))


# ---------------------------------------------------------------- objectives and losses
@pytest.mark.parametrize("name", ["eps", "x0", "v"])
def test_objectives_invert_their_targets(name):
    objective = OBJECTIVES.get(name)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 1, 3, 3, generator=g), torch.randn(5, 1, 3, 3, generator=g)
    alpha = torch.rand(5, 1, 1, 1, generator=g) * 0.9 + 0.05
    sigma = (1 - alpha**2).sqrt()
    x_t = alpha * x0 + sigma * eps
    target = objective.target(x0, eps, alpha, sigma)
    torch.testing.assert_close(objective.to_x0(target, x_t, alpha, sigma), x0)


def test_min_snr_weights():
    log_snr = torch.log(torch.tensor([0.5, 5.0, 50.0]))
    snr = log_snr.exp()
    w = DIFFUSION_WEIGHTINGS.get("min-snr")
    torch.testing.assert_close(w(log_snr, "x0", 5.0), torch.tensor([0.5, 5.0, 5.0]))
    torch.testing.assert_close(w(log_snr, "eps", 5.0), torch.tensor([0.5, 5.0, 5.0]) / snr)
    torch.testing.assert_close(w(log_snr, "v", 5.0), torch.tensor([0.5, 5.0, 5.0]) / (snr + 1))
    torch.testing.assert_close(DIFFUSION_WEIGHTINGS.get("uniform")(log_snr, "v"), torch.ones(3))


# ---------------------------------------------------------------- the model
TINY = dict(channels=(8, 16, 16), timesteps=50, sampling_steps=4)


def test_ddpm_builds_from_components_named_in_its_config():
    from genmnist import DDPM

    model = DDPM(schedule="linear", objective="eps", **TINY)
    assert model.schedule.name == "linear" and model.objective.name == "eps"
    assert model.schedule.timesteps == 50
    with pytest.raises(Exception, match="unknown noise schedule 'nope'"):
        DDPM(schedule="nope", **TINY)
    with pytest.raises(Exception, match="unknown sampler"):
        DDPM(sampler="nope", **TINY)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_ddpm_training_loss_is_finite_and_has_gradients(objective):
    model = create_model("ddpm-cfg", objective=objective, **TINY)
    losses = model.training_loss(torch.rand(6, 1, 28, 28), torch.arange(6), step=0)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_ddpm_save_load_round_trip_gives_identical_samples(tmp_path):
    torch.manual_seed(0)
    model = create_model("ddpm-cfg", **TINY)
    for p in model.parameters():  # zero-initialised output layers would make samples trivial
        p.data.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "m")
    loaded = load(tmp_path / "m")
    assert loaded.name == "ddpm-cfg" and loaded.config == model.config
    for sampler in ("ddpm", "dpmpp-2m"):
        a = model.sample(3, labels=[1, 2, 3], seed=5, sampler=sampler)
        b = loaded.sample(3, labels=[1, 2, 3], seed=5, sampler=sampler)
        assert torch.equal(a, b)
    other_label = model.sample(3, labels=[4, 4, 4], seed=5)
    assert not torch.allclose(other_label, model.sample(3, labels=[1, 2, 3], seed=5))


def test_ddpm_sampling_options_are_checked():
    model = create_model("ddpm", **TINY)
    images = model.sample(2, seed=0, sampler="heun", steps=3)
    assert images.shape == (2, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    with pytest.raises(ConfigError, match="unconditional"):
        model.sample(2, guidance=2.0)
    with pytest.raises(ConfigError, match="takes no sampling option"):
        model.sample(2, temperature=0.5)
    with pytest.raises(ConfigError):
        model.sample(2, steps=51)
    with pytest.raises(ConfigError, match="precision"):
        model.sample(2, precision="fp8")


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_ddpm_samples_in_bf16_by_default_where_bf16_is_native(monkeypatch, fast_bf16):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast_bf16)
    torch.manual_seed(0)
    model = create_model("ddpm", **TINY)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    assert model.sampling_precision == "bf16"
    # without native bf16 kernels (an AVX2-only CPU) emulated bf16 is slower than fp32
    expected = "bf16" if fast_bf16 else "fp32"
    assert model.default_sampling_precision() == expected
    default = model.sample(4, seed=3, steps=5)
    assert torch.equal(default, model.sample(4, seed=3, steps=5, precision=expected))
    other = model.sample(4, seed=3, steps=5, precision={"bf16": "fp32", "fp32": "bf16"}[expected])
    assert not torch.equal(default, other)
    assert (default - other).abs().mean() < 0.05
    vae = create_model("vae-mlp", hidden_dims=(8,), latent_dim=2)
    assert vae.default_sampling_precision() == "fp32"


# ---------------------------------------------------------------- the command line
@pytest.fixture
def tiny_cfg_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("ddpm-cfg", **TINY)
    return model.save_pretrained(tmp_path / "ddpm-cfg")


def test_cli_samples_with_sampler_steps_guidance_and_gif(run_cli, tmp_path, tiny_cfg_checkpoint):
    from PIL import Image

    grid, gif = tmp_path / "g.png", tmp_path / "t.gif"
    code, out, err = run_cli(
        "sample", "ddpm-cfg", "--checkpoint", tiny_cfg_checkpoint, "-n", "4",
        "--label", "3", "--sampler", "ddim", "--steps", "3", "--guidance", "1.5",
        "--spacing", "log-snr", "--guidance-interval", "-3.4", "2.6",
        "--gif", gif, "-o", grid, "--seed", "0",
    )  # fmt: skip
    assert code == 0, err
    assert Image.open(grid).size == (4 * 30 + 2, 30 + 2)
    animation = Image.open(gif)
    assert animation.n_frames == 3  # one frame per step, the last one the samples


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--guidance", "2"], "takes no guidance"),
        (["--sampler", "dpmpp-3m"], "unknown sampler 'dpmpp-3m'"),
        (["--steps", "0"], "--steps"),
        (["--spacing", "karras"], "unknown step spacing 'karras'"),
    ],
)
def test_cli_diffusion_options_are_checked(run_cli, tmp_path, args, fragment):
    model = create_model("ddpm", **TINY)
    folder = model.save_pretrained(tmp_path / "ddpm")
    code, _, err = run_cli("sample", "ddpm", "--checkpoint", folder, "-n", "2", *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err, err


def test_cli_diffusion_options_on_a_vae_are_usage_errors(run_cli, tmp_path):
    folder = create_model("vae-mlp", hidden_dims=(16,), latent_dim=2).save_pretrained(
        tmp_path / "v"
    )
    code, _, err = run_cli("sample", "vae-mlp", "--checkpoint", folder, "--steps", "5")
    assert code == 2 and "takes no --steps" in err
    code, _, err = run_cli("sample", "vae-mlp", "--checkpoint", folder, "--temperature", "0")
    assert code == 2 and "--temperature must be a positive number" in err
    out = tmp_path / "s.npy"
    code, _, err = run_cli(
        "sample", "vae-mlp", "--checkpoint", folder, "--temperature", "0.5", "-n", "3",
        "-o", out, "--seed", "1",
    )  # fmt: skip
    assert code == 0, err
    import numpy as np

    expected = load(folder).sample(3, seed=1, temperature=0.5).numpy()
    assert np.allclose(np.load(out), expected, atol=1e-6)


def test_cli_temperature_on_a_ddpm_is_a_usage_error(run_cli, tmp_path):
    folder = create_model("ddpm", **TINY).save_pretrained(tmp_path / "d")
    code, _, err = run_cli("sample", "ddpm", "--checkpoint", folder, "--temperature", "1")
    assert code == 2 and "takes no --temperature" in err
