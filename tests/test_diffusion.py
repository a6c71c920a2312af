"""Diffusion: schedules against the published formulas, samplers on an analytic denoiser,
objectives, and the DDPM model wiring."""

from __future__ import annotations

import json
import math

import pytest
import torch

from genmnist.data import InMemoryDataset
from genmnist.diffusion import (
    OBJECTIVES,
    SAMPLERS,
    SCHEDULES,
    autoguidance,
    classifier_free_guidance,
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
# are first order, DPM-Solver++(2M) and Heun second order; Heun needs the linear
# schedule, whose noise level at step T-1 is far lower than the cosine schedule's).
@pytest.mark.parametrize(
    "sampler, steps, schedule_name",
    [
        ("ddpm", 200, "cosine"),
        ("ddim", 100, "cosine"),
        ("dpmpp-2m", 50, "cosine"),
        ("euler", 100, "cosine"),
        ("heun", 25, "linear"),
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


def test_ddpm_samples_in_bf16_by_default_close_to_fp32():
    torch.manual_seed(0)
    model = create_model("ddpm", **TINY)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    assert model.sampling_precision == "bf16"
    default = model.sample(4, seed=3, steps=5)
    assert torch.equal(default, model.sample(4, seed=3, steps=5, precision="bf16"))
    full = model.sample(4, seed=3, steps=5, precision="fp32")
    assert not torch.equal(default, full)
    assert (default - full).abs().mean() < 0.05


def _ddpm_pair():
    torch.manual_seed(0)
    model = create_model("ddpm", **TINY)
    guide = create_model("ddpm", **{**TINY, "channels": (4, 8, 8)})
    for p in [*model.parameters(), *guide.parameters()]:
        p.data.add_(torch.randn_like(p) * 0.05)
    return model, guide


def test_ddpm_with_guide_samples_with_autoguidance_and_round_trips(tmp_path):
    model, guide = _ddpm_pair()
    guided = model.with_guide(guide, scale=2.0)
    assert guided.config.guide_channels == (4, 8, 8) and guided.takes_guidance
    assert not model.takes_guidance and guided.name == "ddpm"
    # scale 1 is the model alone; the default scale moves the samples
    alone = model.sample(3, seed=1, precision="fp32")
    torch.testing.assert_close(guided.sample(3, seed=1, precision="fp32", guidance=1.0), alone)
    default = guided.sample(3, seed=1, precision="fp32")
    assert (default - alone).abs().mean() > 1e-3
    torch.testing.assert_close(default, guided.sample(3, seed=1, precision="fp32", guidance=2.0))
    # the guide's weights travel with the model
    loaded = load(guided.save_pretrained(tmp_path / "guided"))
    assert loaded.config.guide_channels == (4, 8, 8) and loaded.config.guidance_scale == 2.0
    torch.testing.assert_close(loaded.sample(3, seed=1, precision="fp32"), default)


def test_ddpm_guide_must_match_and_guided_models_do_not_train():
    model, guide = _ddpm_pair()
    with pytest.raises(ConfigError, match="objective"):
        model.with_guide(create_model("ddpm", **{**TINY, "objective": "eps"}), 2.0)
    with pytest.raises(ConfigError, match="unconditional"):
        model.with_guide(create_model("ddpm-cfg", **TINY), 2.0)
    with pytest.raises(ConfigError, match="unconditional"):
        create_model("ddpm-cfg", **TINY, guide_channels=(4, 8, 8))
    guided = model.with_guide(guide, 2.0)
    with pytest.raises(ConfigError, match="with_guide"):
        guided.training_loss(torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long), 0)
    with pytest.raises(ConfigError, match="neither clusters nor a guide network"):
        model.sample(2, guidance=2.0)


def test_cli_guidance_applies_to_a_guided_ddpm(capsys, tmp_path):
    model, guide = _ddpm_pair()
    folder = model.with_guide(guide, 2.0).save_pretrained(tmp_path / "ddpm")
    out = tmp_path / "g.npy"
    code, _, err = _cli(
        capsys, "sample", "ddpm", "--checkpoint", folder, "-n", "2", "--guidance", "1.5",
        "--seed", "0", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    import numpy as np

    expected = load(folder).sample(2, seed=0, guidance=1.5).numpy()
    assert np.allclose(np.load(out), expected, atol=1e-6)


def _teacher_folder(tmp_path, scale=3.0):
    """A tiny autoguided DDPM saved as a folder, the teacher of a distillation run."""
    model, guide = _ddpm_pair()
    return model.with_guide(guide, scale).save_pretrained(tmp_path / "teacher")


#: A stand-in training split for `prepare_training` of models that do not read it.
_MNIST = InMemoryDataset(
    torch.zeros(4, 28, 28, dtype=torch.uint8), torch.zeros(4), "mnist", "train"
)


def _images(n=16):
    return torch.rand(n, 1, 28, 28), torch.zeros(n, dtype=torch.long)


def test_distillation_starts_from_the_teacher_and_learns_its_guided_estimate(tmp_path):
    teacher_dir = _teacher_folder(tmp_path)
    teacher = load(teacher_dir)
    student = create_model("ddpm", **TINY, distill_teacher=str(teacher_dir), precision="fp32")
    assert student.distilled and not student.takes_guidance
    student.prepare_training(_MNIST, resume=False)
    for key, value in teacher.unet.state_dict().items():
        assert torch.equal(student.unet.state_dict()[key], value)
    assert not any(k.startswith("_teacher") for k in student.state_dict())

    x_t, t = torch.randn(4, 1, 28, 28), torch.tensor([5, 20, 35, 49])
    # the target is the teacher's guided estimate (scale 3, its default) ...
    torch.testing.assert_close(student._teacher_x0(x_t, t, None), teacher.denoiser(None)(x_t, t))
    # ... and at scale 1 the teacher is its U-Net alone, which the student starts as
    student.config = student.config.replace(distill_guidance=1.0)
    torch.testing.assert_close(student._teacher_x0(x_t, t, None), student.predict_x0(x_t, t))

    def loss(guidance):
        student.config = student.config.replace(distill_guidance=guidance)
        torch.manual_seed(0)
        return float(student.training_loss(*_images(), step=0)["loss"].detach())

    assert loss(3.0) > 5 * loss(1.0)  # guidance is what the student has to learn


def test_distillation_training_moves_the_student_to_the_guided_teacher(tmp_path, tiny_dataset):
    from genmnist.training import Trainer, TrainOptions

    student = create_model(
        "ddpm", **TINY, distill_teacher=str(_teacher_folder(tmp_path)), lr=1e-3,
        warmup_steps=0, ema_decay=None, batch_size=32, precision="fp32",
    )  # fmt: skip
    images, labels = tiny_dataset.batch(torch.arange(64))

    def distance_to_teacher():  # the distillation loss at fixed noise levels and noise
        torch.manual_seed(5)
        with torch.no_grad():
            return float(student.training_loss(images, labels, step=0)["loss"])

    student.prepare_training(_MNIST, resume=False)
    before = distance_to_teacher()
    options = TrainOptions(out=tmp_path / "run", max_steps=40, progress=False, device="cpu")
    Trainer(student, options, dataset=tiny_dataset, log=lambda line: None).fit()
    assert distance_to_teacher() < 0.7 * before
    # sampling takes one U-Net call per step, and refuses a guidance scale
    calls = []
    student.unet.register_forward_hook(lambda *args: calls.append(1))
    student.sample(2, seed=0, steps=4)
    assert len(calls) == 4
    with pytest.raises(ConfigError, match="distilled"):
        student.sample(2, guidance=2.0)
    # resuming keeps the trained weights instead of starting from the teacher again
    loaded = load(tmp_path / "run")
    loaded.prepare_training(_MNIST, resume=True)
    torch.testing.assert_close(loaded.unet.state_dict(), student.unet.state_dict())


def test_distillation_checks_its_teacher(tmp_path):
    teacher_dir = _teacher_folder(tmp_path)
    with pytest.raises(ConfigError, match="guide_channels"):
        create_model("ddpm", **TINY, distill_teacher="x", guide_channels=(4, 8, 8))
    wide = create_model(
        "ddpm", **{**TINY, "channels": (8, 16, 32)}, distill_teacher=str(teacher_dir)
    )
    with pytest.raises(ConfigError, match="channels"):
        wide.prepare_training(_MNIST, resume=False)
    plain = create_model("ddpm", **TINY).save_pretrained(tmp_path / "plain")
    with pytest.raises(ConfigError, match="no guidance to distil"):
        create_model("ddpm", **TINY, distill_teacher=str(plain)).prepare_training(_MNIST, False)
    student = create_model("ddpm", **TINY, distill_teacher=str(teacher_dir))
    with pytest.raises(ConfigError, match="prepare_training"):
        student.training_loss(*_images(2), step=0)
    with pytest.raises(ConfigError, match="guide"):
        student.with_guide(create_model("ddpm", **TINY), 2.0)


def test_cli_trains_and_resumes_a_distillation_run(capsys, tmp_path, idx_root):
    recipe = tmp_path / "distill.json"
    teacher = _teacher_folder(tmp_path)
    recipe.write_text(json.dumps({**TINY, "distill_teacher": str(teacher), "batch_size": 16}))
    out = tmp_path / "student"
    base = ["train", "ddpm", "--data-dir", idx_root, "--out", out, "--quiet", "--device", "cpu"]
    code, _, err = _cli(capsys, *base, "--config", recipe, "--max-steps", "2")
    assert code == 0, err
    code, _, err = _cli(capsys, *base, "--resume", "--max-steps", "3")
    assert code == 0, err
    assert "Resumed" in err and load(out).config.distill_teacher == str(teacher)
    code, _, err = _cli(capsys, "sample", "ddpm", "--checkpoint", out, "--guidance", "2")
    assert code == 2 and "has its guidance distilled into it" in err
    recipe.write_text(
        json.dumps({**TINY, "distill_teacher": str(tmp_path / "no"), "batch_size": 16})
    )
    bad = ["train", "ddpm", "--data-dir", idx_root, "--out", tmp_path / "bad", "--quiet"]
    code, _, err = _cli(capsys, *bad, "--config", recipe)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "distill_teacher" in err, err


# ---------------------------------------------------------------- the command line
@pytest.fixture
def tiny_cfg_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("ddpm-cfg", **TINY)
    return model.save_pretrained(tmp_path / "ddpm-cfg")


def _cli(capsys, *args):
    from genmnist.cli import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_cli_samples_with_sampler_steps_guidance_and_gif(capsys, tmp_path, tiny_cfg_checkpoint):
    from PIL import Image

    grid, gif = tmp_path / "g.png", tmp_path / "t.gif"
    code, out, err = _cli(
        capsys, "sample", "ddpm-cfg", "--checkpoint", tiny_cfg_checkpoint, "-n", "4",
        "--label", "3", "--sampler", "ddim", "--steps", "3", "--guidance", "1.5",
        "--spacing", "log-snr",
        "--gif", gif, "-o", grid, "--seed", "0",
    )  # fmt: skip
    assert code == 0, err
    assert Image.open(grid).size == (4 * 30 + 2, 30 + 2)
    animation = Image.open(gif)
    assert animation.n_frames == 3  # one frame per step, the last one the samples


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--guidance", "2"], "takes no --guidance"),
        (["--sampler", "dpmpp-3m"], "unknown sampler 'dpmpp-3m'"),
        (["--steps", "0"], "--steps"),
        (["--spacing", "karras"], "unknown --spacing 'karras'"),
    ],
)
def test_cli_diffusion_options_are_checked(capsys, tmp_path, args, fragment):
    model = create_model("ddpm", **TINY)
    folder = model.save_pretrained(tmp_path / "ddpm")
    code, _, err = _cli(capsys, "sample", "ddpm", "--checkpoint", folder, "-n", "2", *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err, err


def test_cli_diffusion_options_on_a_vae_are_usage_errors(capsys, tmp_path):
    folder = create_model("vae-mlp", hidden_dims=(16,), latent_dim=2).save_pretrained(
        tmp_path / "v"
    )
    code, _, err = _cli(capsys, "sample", "vae-mlp", "--checkpoint", folder, "--steps", "5")
    assert code == 2 and "takes no --steps" in err
    code, _, err = _cli(capsys, "sample", "vae-mlp", "--checkpoint", folder, "--temperature", "0")
    assert code == 2 and "--temperature must be a positive number" in err
    out = tmp_path / "s.npy"
    code, _, err = _cli(
        capsys, "sample", "vae-mlp", "--checkpoint", folder, "--temperature", "0.5", "-n", "3",
        "-o", out, "--seed", "1",
    )  # fmt: skip
    assert code == 0, err
    import numpy as np

    expected = load(folder).sample(3, seed=1, temperature=0.5).numpy()
    assert np.allclose(np.load(out), expected, atol=1e-6)


def test_cli_temperature_on_a_ddpm_is_a_usage_error(capsys, tmp_path):
    folder = create_model("ddpm", **TINY).save_pretrained(tmp_path / "d")
    code, _, err = _cli(capsys, "sample", "ddpm", "--checkpoint", folder, "--temperature", "1")
    assert code == 2 and "takes no --temperature" in err


def _unet_labels(model):
    """Record the labels of every U-Net call of ``model``."""
    seen = []
    model.unet.register_forward_hook(lambda module, args, out: seen.append(args[2].clone()))
    return seen


def test_self_guided_ddpm_clusters_its_data_and_conditions_on_the_clusters(tiny_dataset):
    with pytest.raises(ConfigError, match="at least 2"):
        create_model("ddpm", **TINY, clusters=1)
    with pytest.raises(ConfigError, match="unconditional"):
        create_model("ddpm-cfg", **TINY, clusters=4)
    with pytest.raises(ConfigError, match="one kind of guidance"):
        create_model("ddpm", **TINY, clusters=4, guide_channels=(4, 8, 8))

    model = create_model("ddpm", **TINY, clusters=10, label_dropout=0.0, precision="fp32")
    for p in model.parameters():  # an untrained U-Net's zero output layer ignores labels
        p.data.add_(torch.randn_like(p) * 0.05)
    assert model.self_guided and model.takes_guidance and not model.conditional
    model.prepare_training(tiny_dataset, resume=False)
    # the ten bar positions of the synthetic data are its ten clusters
    class_shares = torch.bincount(tiny_dataset.labels).float() / len(tiny_dataset)
    assert torch.equal(model.cluster_shares.sort().values, class_shares.sort().values)
    images, labels = tiny_dataset.batch(torch.arange(40))
    clusters = model.cluster_of(images)
    assert len(set(zip(clusters.tolist(), labels.tolist(), strict=True))) == 10
    # training conditions the U-Net on each image's cluster
    seen = _unet_labels(model)
    model.training_loss(images, labels, step=0)
    assert torch.equal(seen[-1], clusters)

    # sampling draws clusters by their share, from each sample's own noise stream, and
    # guides toward them (the null cluster is the other half of each guided call)
    model.cluster_shares.copy_(torch.nn.functional.one_hot(torch.tensor(7), 10).float())
    first = model.sample(3, seed=1, steps=2)
    assert {int(label) for batch in seen[1:] for label in batch} == {7, model.null_label}
    model.cluster_shares.fill_(0.1)
    seen.clear()
    model.sample(12, seed=1, steps=2)
    drawn = seen[0][:12]
    assert len(set(drawn.tolist())) > 3
    seen.clear()
    model.sample(5, seed=1, steps=2)
    assert torch.equal(seen[0][:5], drawn[:5])  # sample i does not depend on the batch
    assert not torch.allclose(model.sample(2, seed=0, guidance=3.0), model.sample(2, seed=0))
    assert first.shape == (3, 1, 28, 28)


def test_self_guided_runs_save_their_clusters_and_resume_without_refitting(tmp_path, tiny_dataset):
    from genmnist.training import Trainer, TrainOptions

    model = create_model("ddpm", **TINY, clusters=4, batch_size=32, ema_decay=0.9)
    options = TrainOptions(out=tmp_path / "run", max_steps=3, progress=False, device="cpu")
    Trainer(model, options, dataset=tiny_dataset, log=lambda line: None).fit()
    trained = load(tmp_path / "run")
    assert trained.cluster_centers.abs().sum() > 0  # the EMA export keeps the clusters
    torch.testing.assert_close(trained.cluster_centers, model.cluster_centers)
    torch.testing.assert_close(trained.cluster_shares.sum(), torch.tensor(1.0))
    resumed = load(tmp_path / "run")
    resumed.cluster_centers.zero_()
    resumed.prepare_training(tiny_dataset, resume=True)  # the checkpoint brings them back
    assert resumed.cluster_centers.abs().sum() == 0


def test_distilling_a_self_guided_teacher_keeps_its_clusters(tmp_path, tiny_dataset):
    teacher = create_model("ddpm", **TINY, clusters=10, guidance_scale=3.0, precision="fp32")
    teacher.prepare_training(tiny_dataset, resume=False)
    for p in teacher.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    folder = teacher.save_pretrained(tmp_path / "teacher")
    student = create_model("ddpm", **TINY, clusters=10, distill_teacher=str(folder))
    assert not student.takes_guidance
    student.prepare_training(tiny_dataset, resume=False)
    torch.testing.assert_close(student.cluster_centers, teacher.cluster_centers)
    images, labels = tiny_dataset.batch(torch.arange(8))
    clusters = teacher.cluster_of(images)
    x_t, t = torch.randn(8, 1, 28, 28), torch.full((8,), 30)
    torch.testing.assert_close(
        student._teacher_x0(x_t, t, clusters), teacher.denoiser(clusters)(x_t, t)
    )
    seen = _unet_labels(student)
    student.training_loss(images, labels, step=0)
    assert torch.equal(seen[-1], clusters)  # no label dropout: it learns every cluster
    with pytest.raises(ConfigError, match="clusters"):
        create_model("ddpm", **TINY, clusters=4, distill_teacher=str(folder)).prepare_training(
            tiny_dataset, False
        )


def test_cli_trains_a_self_guided_ddpm_and_samples_it_with_guidance(capsys, tmp_path, idx_root):
    recipe = tmp_path / "sg.json"
    recipe.write_text(json.dumps({**TINY, "clusters": 3, "batch_size": 16}))
    out, grid = tmp_path / "sg", tmp_path / "g.png"
    base = ["train", "ddpm", "--data-dir", idx_root, "--out", out, "--quiet", "--device", "cpu"]
    code, _, err = _cli(capsys, *base, "--config", recipe, "--max-steps", "2")
    assert code == 0, err
    assert load(out).cluster_centers.abs().sum() > 0
    code, _, err = _cli(capsys, "sample", "ddpm", "--checkpoint", out, "-n", "4", "--steps", "2",
                        "--guidance", "2.5", "-o", grid)  # fmt: skip
    assert code == 0 and grid.is_file(), err
    recipe.write_text(json.dumps({**TINY, "clusters": 1}))
    code, _, err = _cli(capsys, *base[:-3], "--out", tmp_path / "bad", "--config", recipe)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "clusters" in err, err
