"""Flow matching: the path, training-time distributions, ODE samplers on an analytic
velocity field, guidance on velocities, and the model wiring."""

from __future__ import annotations

import math

import pytest
import torch

from genmnist.diffusion.guidance import classifier_free_guidance, guide
from genmnist.errors import ConfigError, RegistryError, SamplingError
from genmnist.flow import FLOW_SAMPLERS, TIME_DISTRIBUTIONS, LinearPath, flow_times
from genmnist.models import FlowMatching, create_model, load

TINY = dict(channels=(8, 16, 16), sampling_steps=3)


# ---------------------------------------------------------------- the path
def test_linear_path_ends_velocity_and_clean_estimate():
    x, eps = torch.randn(3, 1, 28, 28), torch.randn(3, 1, 28, 28)
    ends = LinearPath.interpolate(x, eps, torch.tensor([0.0, 1.0, 0.25]))
    torch.testing.assert_close(ends[0], x[0])
    torch.testing.assert_close(ends[1], eps[1])
    torch.testing.assert_close(ends[2], 0.75 * x[2] + 0.25 * eps[2])
    t = torch.tensor([0.3, 0.6, 0.9])
    x_t = LinearPath.interpolate(x, eps, t)
    # The path's velocity is its time derivative, and it points back to the data.
    step = 1e-3
    slope = (LinearPath.interpolate(x, eps, t + step) - x_t) / step
    torch.testing.assert_close(slope, LinearPath.velocity(x, eps), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(LinearPath.to_x0(x_t, t, LinearPath.velocity(x, eps)), x)


def test_log_snr_matches_the_path_coefficients():
    t = torch.tensor([0.1, 0.5, 0.9])
    expected = torch.log((1 - t) ** 2 / t**2).double()
    torch.testing.assert_close(LinearPath.log_snr(t), expected)
    assert LinearPath.log_snr(torch.tensor([0.5])).item() == 0.0


@pytest.mark.parametrize("name", ["uniform", "logit-normal"])
def test_time_distributions_stay_inside_the_unit_interval(name):
    torch.manual_seed(0)
    t = TIME_DISTRIBUTIONS.get(name)(20_000, torch.device("cpu"))
    assert t.shape == (20_000,) and bool(((t > 0) & (t < 1)).all())
    assert abs(t.mean().item() - 0.5) < 0.01  # both are symmetric about 1/2
    middle = ((t > 0.25) & (t < 0.75)).float().mean().item()
    # Logit-normal puts more of its mass in the middle than uniform (0.5).
    expected = 0.5 if name == "uniform" else math.erf(math.log(3) / math.sqrt(2))
    assert middle == pytest.approx(expected, abs=0.015)


# ---------------------------------------------------------------- sampling times
def test_flow_times_even_and_shifted():
    torch.testing.assert_close(
        flow_times(4), torch.tensor([1, 0.75, 0.5, 0.25, 0], dtype=torch.float64)
    )
    shifted = flow_times(4, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and bool((shifted[1:] < shifted[:-1]).all())
    assert bool((shifted[1:-1] > flow_times(4)[1:-1]).all())  # crowded toward noise
    assert bool((flow_times(4, shift=0.5)[1:-1] < flow_times(4)[1:-1]).all())
    for steps, shift in ((0, 1.0), (1001, 1.0), (2.5, 1.0), (4, 0.0), (4, -1.0), (4, math.inf)):
        with pytest.raises(ConfigError):
            flow_times(steps, shift)


# ---------------------------------------------------------------- samplers, analytically
# Data x ~ N(mu, s^2) per pixel: x_t is Gaussian with mean (1 - t) mu and standard
# deviation d_t = sqrt((1 - t)^2 s^2 + t^2), and the flow that carries noise z at t = 1 to
# data maps x_t = (1 - t) mu + d_t z for every t. Its exact velocity is known in closed
# form, so every sampler must land on mu + s z, up to its order of accuracy.
MU, S = 0.3, 0.5


def exact_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.double()[:, None, None, None]
    d = ((1 - t) ** 2 * S**2 + t**2).sqrt()
    d_dot = (t - (1 - t) * S**2) / d
    return (-MU + d_dot / d * (x.double() - (1 - t) * MU)).to(x.dtype)


def sampling_error(name: str, steps: int, **options) -> float:
    z = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    end = FLOW_SAMPLERS.get(name)(exact_velocity, z, flow_times(steps), **options)
    return (end - (MU + S * z)).abs().max().item()


@pytest.mark.parametrize(
    "name,order,bound", [("euler", 1, 0.1), ("midpoint", 2, 1e-3), ("heun", 2, 5e-3)]
)
def test_fixed_step_samplers_converge_at_their_order(name, order, bound):
    coarse, fine = sampling_error(name, 16), sampling_error(name, 32)
    assert fine < bound
    # Halving the step divides the error by at least about 2**order.
    assert coarse / fine > 0.75 * 2**order
    if order == 1:
        assert coarse / fine < 2.5  # and Euler is no better than first order


def test_adaptive_sampler_meets_its_tolerance_and_counts_steps():
    assert sampling_error("adaptive", 4, rtol=1e-6, atol=1e-6) < 1e-5
    calls = []

    def counted(x, t):
        calls.append(float(t[0]))
        return exact_velocity(x, t)

    z = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    FLOW_SAMPLERS.get("adaptive")(counted, z, flow_times(4), rtol=1e-2, atol=1e-2)
    loose = len(calls)
    calls.clear()
    FLOW_SAMPLERS.get("adaptive")(counted, z, flow_times(4), rtol=1e-7, atol=1e-7)
    assert len(calls) > loose  # tighter tolerance, more evaluations
    assert (len(calls) - 1) % 6 == 0  # six per step after the first evaluation
    assert all(0.0 <= t <= 1.0 for t in calls)


def test_adaptive_sampler_gives_up_on_an_impossible_tolerance():
    def stiff(x, t):
        return torch.randn_like(x) * 1e3  # no step is ever accurate

    with pytest.raises(SamplingError, match="more than 1000 steps"):
        FLOW_SAMPLERS.get("adaptive")(stiff, torch.zeros(1, 1, 2, 2), flow_times(2), rtol=0, atol=0)


def test_samplers_report_each_step_with_a_clean_estimate():
    seen = []
    z = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    FLOW_SAMPLERS.get("heun")(
        exact_velocity, z, flow_times(5), lambda i, x, x0: seen.append((i, x0))
    )
    assert [i for i, _ in seen] == list(range(5))
    # At t = 1, x_1 is pure noise, independent of the data: the best clean estimate is
    # the data mean.
    torch.testing.assert_close(seen[0][1], torch.full_like(z, MU), atol=1e-9, rtol=0)


# ---------------------------------------------------------------- guidance on velocities
def test_guidance_on_velocities_equals_guidance_on_clean_estimates():
    torch.manual_seed(0)
    x, t = torch.randn(4, 1, 28, 28), torch.full((4,), 0.4)
    labels = torch.tensor([0, 1, 2, 0])
    weights = torch.randn(1, 1, 28, 28)

    def velocity(x, t, labels):
        return x * (1 + labels[:, None, None, None]) + weights

    def clean(x, t, labels):
        return LinearPath.to_x0(x, t, velocity(x, t, labels))

    guided_v = classifier_free_guidance(velocity, labels, 3, 2.5)(x, t)
    guided_x0 = classifier_free_guidance(clean, labels, 3, 2.5)(x, t)
    torch.testing.assert_close(LinearPath.to_x0(x, t, guided_v), guided_x0)


def test_guidance_interval_uses_the_flow_noise_levels():
    labels = torch.zeros(3, dtype=torch.long)

    def predict(x, t, labels):
        return torch.where(labels[:, None, None, None] == 1, 0 * x, x)  # null label: 0

    x = torch.ones(3, 1, 2, 2)
    t = torch.tensor([0.05, 0.5, 0.95])  # log-SNR 5.9, 0, -5.9
    out = guide(predict, labels, 1, 2.0, (-1.0, 1.0), LinearPath())(x, t)
    # The conditional prediction is x (1), the unconditional 0: guidance 2 doubles it,
    # but only at t = 0.5, inside the interval.
    assert out[:, 0, 0, 0].tolist() == [1.0, 2.0, 1.0]


# ---------------------------------------------------------------- the model
def randomized(model: FlowMatching) -> FlowMatching:
    """``model`` with random weights everywhere: a new U-Net's zero-initialised output
    layer would make every velocity 0, and every sampler alike."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.unet.parameters():
            parameter.normal_(0, 0.1)
    return model.eval()


def test_flow_model_trains_samples_and_round_trips(tmp_path, tiny_dataset):
    torch.manual_seed(0)
    model = create_model("flow", **TINY, clusters=3)
    assert isinstance(model, FlowMatching) and model.guidance_problem is None
    model.prepare_training(tiny_dataset, resume=False)
    images, labels = tiny_dataset.batch(torch.arange(16))
    loss = model.training_loss(images, labels, 0)["loss"]
    loss.backward()
    assert math.isfinite(loss.item()) and model.unet.stem.weight.grad is not None
    randomized(model)
    a = model.sample(4, seed=1, sampler="heun", steps=2)
    assert a.shape == (4, 1, 28, 28) and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(model.sample(4, seed=1, sampler="heun", steps=2), a)
    assert not torch.equal(model.sample(4, seed=1, sampler="euler", steps=2), a)
    model.save_pretrained(tmp_path / "flow")
    loaded = load(tmp_path / "flow")
    torch.testing.assert_close(loaded.sample(4, seed=1, sampler="heun", steps=2), a)
    torch.testing.assert_close(loaded.conditioning.shares, model.conditioning.shares)


def test_flow_guidance_and_its_refusals():
    model = randomized(create_model("flow-cfg", **TINY))
    plain = model.sample(3, labels=[1, 2, 3], seed=0, guidance=1.0)
    guided = model.sample(3, labels=[1, 2, 3], seed=0, guidance=3.0)
    assert not torch.equal(plain, guided)
    nowhere = model.sample(3, labels=[1, 2, 3], seed=0, guidance=3.0, guidance_interval=(50, 60))
    torch.testing.assert_close(nowhere, plain)
    unconditional = create_model("flow", **TINY).eval()
    assert "unconditional" in unconditional.guidance_problem
    with pytest.raises(ConfigError, match="takes no guidance"):
        unconditional.sample(2, seed=0, guidance=2.0)
    with pytest.raises(ConfigError, match="label dropout"):
        create_model("flow-cfg", **TINY, label_dropout=0.0).sample(2, labels=1, guidance=2.0)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"sampler": "rk9"}, "flow sampler"),
        ({"time_distribution": "beta"}, "time distribution"),
        ({"sampling_steps": 0}, "steps"),
        ({"time_shift": 0.0}, "shift"),
        ({"label_dropout": 1.0}, "label_dropout"),
        ({"guidance_scale": math.nan}, "guidance_scale"),
        ({"guidance_interval": (2.0, 1.0)}, "LOW <= HIGH"),
    ],
)
def test_flow_config_errors(change, match):
    with pytest.raises((ConfigError, RegistryError), match=match):
        create_model("flow", **{**TINY, **change})


# ---------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--sampler", "rk9"], "unknown flow sampler 'rk9'"),
        (["--time-shift", "0"], "--time-shift must be a positive finite number"),
        (["--spacing", "trailing"], "'flow' takes no --spacing"),
        (["--guidance", "2"], "takes no guidance"),
    ],
)
def test_cli_flow_options_are_checked(run_cli, tmp_path, args, fragment):
    folder = create_model("flow", **TINY).save_pretrained(tmp_path / "flow")
    code, _, err = run_cli("sample", "flow", "--checkpoint", folder, "-n", "2", *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err, err


def test_cli_samples_a_flow_model_with_its_options(run_cli, tmp_path):
    folder = randomized(create_model("flow", **TINY, clusters=2)).save_pretrained(tmp_path / "f")
    out = tmp_path / "s.npy"
    code, _, err = run_cli(
        "sample", "flow", "--checkpoint", folder, "-n", "3", "-o", out, "--seed", "2",
        "--sampler", "euler", "--steps", "3", "--time-shift", "2", "--guidance", "1.5",
    )  # fmt: skip
    assert code == 0, err
    import numpy as np

    expected = load(folder).sample(
        3, seed=2, sampler="euler", steps=3, time_shift=2.0, guidance=1.5
    )
    assert np.allclose(np.load(out), expected.numpy(), atol=1e-6)
    code, _, err = run_cli("sample", "ddpm", "--time-shift", "2", "-n", "1")
    assert code == 2 and "takes no --time-shift" in err


@pytest.mark.parametrize("name", ["heun", "adaptive"])
def test_samplers_never_evaluate_the_velocity_at_clean_data(name):
    """At t = 0 the network sees clean data, where its learned velocity is not the one
    trajectories arrive with: the samplers must not rely on it."""
    times_seen = []

    def recording(x, t):
        times_seen.append(float(t.min()))
        return exact_velocity(x, t)

    z = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    FLOW_SAMPLERS.get(name)(recording, z, flow_times(4))
    assert min(times_seen) > 0
