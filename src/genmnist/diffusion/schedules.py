"""Noise schedules for variance-preserving diffusion, as plain data.

A schedule is a frozen `NoiseSchedule` holding ``betas`` and
``alphas_cumprod`` (written ``ᾱ``) for ``T`` discrete steps. A noisy image at step ``t`` is
``x_t = alpha_t * x_0 + sigma_t * eps`` with ``alpha_t = sqrt(ᾱ_t)`` and
``sigma_t = sqrt(1 - ᾱ_t)``. Nothing in a schedule changes after it is made, so one
schedule can serve any number of samplers at once.

Schedules register by name in `SCHEDULES`: ``SCHEDULES.create("cosine", timesteps=1000)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from genmnist.errors import ConfigError
from genmnist.registry import Registry

#: Schedule factories by name: ``fn(timesteps) -> NoiseSchedule``.
SCHEDULES: Registry = Registry("noise schedule")


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete variance-preserving noise schedule (float64 tensors of length ``T``).

    Attributes:
        name: Name it was registered under.
        betas: Per-step noise variances ``β_t``.
        alphas_cumprod: ``ᾱ_t = prod_{s <= t} (1 - β_s)``.
    """

    name: str
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor

    @classmethod
    def from_betas(cls, name: str, betas: torch.Tensor) -> NoiseSchedule:
        """Build a schedule from ``β_t``; ``ᾱ`` follows.

        Raises:
            ConfigError: fewer than two steps.
        """
        if betas.ndim != 1 or betas.shape[0] < 2:
            raise ConfigError("a noise schedule needs at least 2 timesteps")
        betas = betas.double()
        return cls(name, betas, torch.cumprod(1.0 - betas, dim=0))

    @property
    def timesteps(self) -> int:
        """Number of discrete steps ``T``."""
        return self.betas.shape[0]

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``alpha_t = sqrt(ᾱ_t)`` for integer steps ``t``; step ``-1`` means clean data (1)."""
        return self._alphas_cumprod_at(t).sqrt()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma_t = sqrt(1 - ᾱ_t)``; 0 at step ``-1``."""
        return (1.0 - self._alphas_cumprod_at(t)).clamp(min=0).sqrt()

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """``log(alpha_t^2 / sigma_t^2)``, the log signal-to-noise ratio (``+inf`` at -1)."""
        a = self._alphas_cumprod_at(t)
        return torch.log(a) - torch.log1p(-a)

    def log_snr_continuous(self, u: torch.Tensor) -> torch.Tensor:
        """Log-SNR at continuous time ``u`` in ``[0, 1]`` (0: first step, 1: step ``T-1``),
        linearly interpolated between the discrete steps."""
        grid = self.log_snr(torch.arange(self.timesteps))
        pos = u.double().clamp(0, 1) * (self.timesteps - 1)
        low = pos.floor().long().clamp(max=self.timesteps - 2)
        frac = pos - low
        return grid[low] * (1 - frac) + grid[low + 1] * frac

    def _alphas_cumprod_at(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).long()
        padded = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod])
        return padded[t + 1]


def _check_timesteps(timesteps: int) -> None:
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 2:
        raise ConfigError(f"timesteps must be an integer >= 2, got {timesteps!r}")


def _betas_from_alphas_cumprod(alpha_bar, timesteps: int, max_beta: float = 0.999):
    """``β_t = 1 - ᾱ(t+1)/ᾱ(t)`` for a continuous ``ᾱ`` on ``[0, 1]``, clipped at ``max_beta``."""
    t = torch.arange(timesteps + 1, dtype=torch.float64, device="cpu") / timesteps
    values = alpha_bar(t)
    return (1 - values[1:] / values[:-1]).clamp(max=max_beta)


@SCHEDULES.register("linear")
def linear_schedule(timesteps: int = 1000) -> NoiseSchedule:
    """Ho et al. (2020): ``β`` linear from 1e-4 to 0.02 for ``T = 1000``, scaled by
    ``1000 / T`` for other ``T`` (as in Nichol & Dhariwal, 2021), clipped at 0.999."""
    _check_timesteps(timesteps)
    scale = 1000 / timesteps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64, device="cpu")
    betas = betas.clamp(max=0.999)  # under 20 steps the scaled betas would pass 1
    return NoiseSchedule.from_betas("linear", betas)


@SCHEDULES.register("cosine")
def cosine_schedule(timesteps: int = 1000, s: float = 0.008) -> NoiseSchedule:
    """Nichol & Dhariwal (2021): ``ᾱ(t) = f(t)/f(0)``, ``f(t) = cos²((t + s)/(1 + s) · π/2)``,
    ``β`` clipped at 0.999."""
    _check_timesteps(timesteps)

    def alpha_bar(t):
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return f / math.cos(s / (1 + s) * math.pi / 2) ** 2

    return NoiseSchedule.from_betas("cosine", _betas_from_alphas_cumprod(alpha_bar, timesteps))


@SCHEDULES.register("sigmoid")
def sigmoid_schedule(
    timesteps: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0
) -> NoiseSchedule:
    """Sigmoid schedule (Jabri et al., 2022; Chen, 2023):
    ``ᾱ(t) ∝ sigmoid(end/τ) - sigmoid((t(end - start) + start)/τ)``, normalised to
    ``ᾱ(0) = 1``, ``β`` clipped at 0.999."""
    _check_timesteps(timesteps)
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64, device="cpu"))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64, device="cpu"))

    def alpha_bar(t):
        return (v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)

    return NoiseSchedule.from_betas("sigmoid", _betas_from_alphas_cumprod(alpha_bar, timesteps))
