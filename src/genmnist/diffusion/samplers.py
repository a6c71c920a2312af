"""Diffusion samplers as plain functions with one signature.

Every sampler is:

    sampler(denoise, x, schedule, timesteps, noise, callback=None, **options) -> x_0

* ``denoise(x_t, t) -> x0_hat``: the model's prediction of clean data from ``x_t`` at
  integer steps ``t`` (a ``(b,)`` long tensor). Guidance and objectives are folded into it
  (see `genmnist.diffusion.guidance`), so samplers know nothing about the network.
* ``x``: the starting noise ``x_T`` (standard normal).
* ``schedule``: a `NoiseSchedule`.
* ``timesteps``: the descending steps to visit (`spaced_timesteps`); after the last
  one the sampler jumps to clean data.
* ``noise``: where stochastic samplers draw fresh noise, per sample
  (`SampleNoise`).
* ``callback(i, x_t, x0_hat)``: called after each step, e.g. to animate the trajectory.

Samplers register by name in `SAMPLERS`; adding one is writing one such function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from genmnist.diffusion.guidance import Denoiser
from genmnist.diffusion.schedules import NoiseSchedule
from genmnist.errors import ConfigError
from genmnist.registry import Registry
from genmnist.values import whole_number

Callback = Callable[[int, torch.Tensor, torch.Tensor], None] | None

#: Sampler functions by name (``ddpm``, ``ddim``, ``dpmpp-2m``, ``euler``, ``heun``).
SAMPLERS: Registry = Registry("sampler")


#: Names of the step spacings `spaced_timesteps` knows.
SPACINGS = ("uniform", "trailing", "log-snr")


def check_spacing(spacing: str) -> str:
    """Return ``spacing`` if `spaced_timesteps` knows it, else raise `ConfigError`."""
    if spacing not in SPACINGS:
        raise ConfigError(f"unknown step spacing '{spacing}' (choose from {', '.join(SPACINGS)})")
    return spacing


def spaced_timesteps(
    total: int,
    steps: int,
    spacing: str = "uniform",
    schedule: NoiseSchedule | None = None,
) -> torch.Tensor:
    """``steps`` distinct descending steps, the first at ``total - 1``.

    Starting exactly at the last step matters: spacings that start below it (the
    "leading" spacing of some DDIM implementations) never begin from pure noise and waste
    one step at the clean end.

    Args:
        total: Number of steps ``T`` of the schedule.
        steps: How many steps to visit (1..``T``).
        spacing: ``"uniform"``: evenly spaced in ``t`` from ``T - 1`` down to 0.
            ``"trailing"`` (Lin et al., 2024, "Common Diffusion Noise Schedules and Sample
            Steps are Flawed"): evenly spaced ``T/steps`` apart from ``T - 1`` down to
            ``T/steps - 1``; the sampler then jumps to clean data. Every model call does
            useful work, where the uniform spacing spends its last one at ``t = 0``, on an
            image that is already clean, which matters most at few steps.
            ``"log-snr"``: evenly spaced in
            log signal-to-noise ratio between ``t = T - 2`` and 0, plus ``T - 1`` first (the
            spacing DPM-Solver recommends for low-resolution images; the first step is kept
            separate because a cosine schedule's last step has an extreme log-SNR that
            would otherwise pull every step towards pure noise). Needs ``schedule``.
        schedule: The schedule, for log-SNR spacing.
    """
    steps = whole_number("steps", steps)
    if not 1 <= steps <= total:
        raise ConfigError(f"steps must be in 1..{total}, got {steps}")
    check_spacing(spacing)
    if steps == 1:
        return torch.tensor([total - 1])
    if spacing == "trailing":
        width = total / steps
        return (total - width * torch.arange(steps, dtype=torch.float64)).round().long() - 1
    if spacing == "uniform" or steps == 2:
        return torch.linspace(total - 1, 0, steps, dtype=torch.float64).round().long()
    if schedule is None:
        raise ConfigError(f"'{spacing}' step spacing needs the noise schedule")
    grid = schedule.log_snr(torch.arange(total - 1))  # increasing in log-SNR as t falls
    targets = torch.linspace(float(grid[-1]), float(grid[0]), steps - 1, dtype=torch.float64)
    # log-SNR decreases with t: flip so searchsorted sees an ascending sequence.
    ascending = grid.flip(0)
    index = torch.searchsorted(ascending, targets).clamp(max=total - 2)
    chosen = [total - 1] + (total - 2 - index).tolist()
    # Keep the steps strictly descending and ending at 0 (rounding can collide).
    chosen[-1] = 0
    for i in range(len(chosen) - 2, 0, -1):
        chosen[i] = max(chosen[i], chosen[i + 1] + 1)
    for i in range(1, len(chosen)):
        chosen[i] = min(chosen[i], chosen[i - 1] - 1)
    return torch.tensor(chosen, dtype=torch.long)


def _coefficients(schedule: NoiseSchedule, t: int, x: torch.Tensor):
    step = torch.tensor(t)
    return (
        schedule.alpha(step).item(),
        schedule.sigma(step).item(),
        torch.full((x.shape[0],), t, dtype=torch.long, device=x.device),
    )


def _next_step(timesteps: torch.Tensor, i: int) -> int:
    return int(timesteps[i + 1]) if i + 1 < len(timesteps) else -1


@SAMPLERS.register("ddim")
def sample_ddim(
    denoise: Denoiser,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    noise=None,
    callback: Callback = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM (Song et al., 2021). ``eta=0`` is deterministic (the probability-flow limit);
    ``eta=1`` is ancestral DDPM sampling."""
    for i, t in enumerate(timesteps.tolist()):
        s = _next_step(timesteps, i)
        alpha_t, sigma_t, t_batch = _coefficients(schedule, t, x)
        alpha_s, sigma_s, _ = _coefficients(schedule, s, x)
        x0 = denoise(x, t_batch)
        if s < 0:
            x = x0
        else:
            eps = (x - alpha_t * x0) / sigma_t
            # Std of the fresh noise: eta * posterior std of q(x_s | x_t, x_0).
            std = eta * (sigma_s / sigma_t) * (1 - (alpha_t / alpha_s) ** 2) ** 0.5
            x = alpha_s * x0 + max(sigma_s**2 - std**2, 0.0) ** 0.5 * eps
            if std > 0:
                x = x + std * noise.randn(*x.shape[1:]).to(x.dtype)
        if callback is not None:
            callback(i, x, x0)
    return x


@SAMPLERS.register("ddpm")
def sample_ddpm(denoise, x, schedule, timesteps, noise=None, callback: Callback = None):
    """Ancestral sampling (Ho et al., 2020): DDIM with ``eta=1``, on any step spacing."""
    return sample_ddim(denoise, x, schedule, timesteps, noise, callback, eta=1.0)


@SAMPLERS.register("dpmpp-2m")
def sample_dpmpp_2m(denoise, x, schedule, timesteps, noise=None, callback: Callback = None):
    """DPM-Solver++(2M) (Lu et al., 2022): second-order multistep solver of the
    probability-flow ODE in log-SNR time, on data predictions. Deterministic; good in
    10-25 steps."""
    previous_x0, previous_h = None, None
    for i, t in enumerate(timesteps.tolist()):
        s = _next_step(timesteps, i)
        alpha_t, sigma_t, t_batch = _coefficients(schedule, t, x)
        alpha_s, sigma_s, _ = _coefficients(schedule, s, x)
        x0 = denoise(x, t_batch)
        if s < 0:
            x = x0
        else:
            lambda_t = torch.log(torch.tensor(alpha_t / sigma_t))
            lambda_s = torch.log(torch.tensor(alpha_s / sigma_s))
            h = (lambda_s - lambda_t).item()
            d = x0
            if previous_x0 is not None:
                r = previous_h / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous_x0
            x = (sigma_s / sigma_t) * x - alpha_s * torch.expm1(torch.tensor(-h)).item() * d
            previous_x0, previous_h = x0, h
        if callback is not None:
            callback(i, x, x0)
    return x


def _karras_sigma(schedule: NoiseSchedule, t: int) -> float:
    """Noise level of the scaled variable ``x / alpha_t``: ``sigma_t / alpha_t``."""
    step = torch.tensor(t)
    return (schedule.sigma(step) / schedule.alpha(step)).item()


#: Highest noise level ``sigma / alpha`` at which Heun's method corrects its Euler step
#: (Karras et al.'s ``sigma_max``). A cosine schedule starts near 20,000, and across such a
#: jump the average of the two slopes is far off where the Euler step (DDIM) is exact for
#: the first step's pure noise, so the first step stays an Euler step.
HEUN_MAX_SIGMA = 80.0


def _ode_sampler(denoise, x, schedule, timesteps, callback, second_order: bool):
    # Work with y = x / alpha_t, for which the probability-flow ODE is dy/dsigma = (y - x0)/sigma.
    y = x / schedule.alpha(torch.tensor(int(timesteps[0]))).item()
    for i, t in enumerate(timesteps.tolist()):
        s = _next_step(timesteps, i)
        sigma_t, sigma_s = (
            _karras_sigma(schedule, t),
            (_karras_sigma(schedule, s) if s >= 0 else 0.0),
        )
        alpha_t, _, t_batch = _coefficients(schedule, t, x)
        x0 = denoise(y * alpha_t, t_batch)
        slope = (y - x0) / sigma_t
        y_next = y + (sigma_s - sigma_t) * slope
        if second_order and s >= 0 and sigma_t <= HEUN_MAX_SIGMA:
            alpha_s, _, s_batch = _coefficients(schedule, s, x)
            slope_next = (y_next - denoise(y_next * alpha_s, s_batch)) / sigma_s
            y_next = y + (sigma_s - sigma_t) * (slope + slope_next) / 2
        y = y_next
        if callback is not None:
            alpha_s = schedule.alpha(torch.tensor(s)).item()
            callback(i, y * alpha_s, x0)
    return y


@SAMPLERS.register("euler")
def sample_euler(denoise, x, schedule, timesteps, noise=None, callback: Callback = None):
    """Euler's method on the probability-flow ODE (Karras et al., 2022, in ``x/alpha``)."""
    return _ode_sampler(denoise, x, schedule, timesteps, callback, second_order=False)


@SAMPLERS.register("heun")
def sample_heun(denoise, x, schedule, timesteps, noise=None, callback: Callback = None):
    """Heun's second-order method (Karras et al., 2022): two model calls per step but the
    last, so ``steps`` steps cost ``2 * steps - 1`` evaluations. Steps that start above
    `HEUN_MAX_SIGMA` (the first of a cosine schedule) take one call, as Euler's. Suits the
    uniform and trailing spacings; with log-SNR spacing, whose steps span large ratios of
    noise levels, DPM-Solver++ is the better choice."""
    return _ode_sampler(denoise, x, schedule, timesteps, callback, second_order=True)


def sample_images(
    sample_fn, denoise: Denoiser, noise, schedule: NoiseSchedule, timesteps, callback=None
) -> torch.Tensor:
    """Draw ``x_T`` from ``noise`` (a `SampleNoise`), run the sampler ``sample_fn`` over
    ``denoise`` (which works in ``[-1, 1]``) and return images in ``[0, 1]``;
    ``callback(i, x_t, x0_hat)`` sees ``[0, 1]`` images too."""

    def report(i: int, x_t: torch.Tensor, x0: torch.Tensor) -> None:
        callback(i, ((x_t + 1) / 2).clamp(0, 1), (x0 + 1) / 2)

    x = noise.randn(1, 28, 28)
    x0 = sample_fn(denoise, x, schedule, timesteps, noise, report if callback else None)
    return (x0 + 1) / 2
