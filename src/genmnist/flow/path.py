"""The straight path between data and noise that flow matching learns to follow.

``x_t = (1 - t) * x + t * eps`` for time ``t`` in ``[0, 1]``: data at ``t = 0``, standard
normal noise at ``t = 1`` (the convention of rectified flow, Liu et al., 2022, and of
Stable Diffusion 3; Lipman et al., 2023, run time the other way). Its velocity
``dx_t/dt = eps - x`` is what the network learns to predict; sampling integrates
``dx/dt = v(x, t)`` from ``t = 1`` down to 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LinearPath:
    """Conditional optimal-transport path (Lipman et al., 2023) with ``sigma_min = 0``,
    the same as rectified flow's linear interpolation.

    Attributes:
        time_scale: What the network's time input is multiplied by (its sinusoidal time
            embedding was made for diffusion steps in ``0..1000``).
    """

    time_scale: float = 1000.0

    @staticmethod
    def interpolate(x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t`` for data ``x``, noise ``eps`` and per-sample times ``t`` ``(b,)``."""
        t = t.to(x.dtype)[:, None, None, None]
        return (1 - t) * x + t * eps

    @staticmethod
    def velocity(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The path's velocity ``eps - x``: the training target."""
        return eps - x

    @staticmethod
    def to_x0(x_t: torch.Tensor, t: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        """The clean-data estimate ``x_t - t * v`` a velocity implies at ``(x_t, t)``."""
        return x_t - t.to(x_t.dtype)[:, None, None, None] * velocity

    @staticmethod
    def log_snr(t: torch.Tensor) -> torch.Tensor:
        """``log((1 - t)^2 / t^2)``: the noise level in the unit guidance intervals use
        (``+inf`` at ``t = 0``, ``-inf`` at ``t = 1``), so one interval means the same noise
        levels for a flow and a diffusion model."""
        t = t.double()
        return 2 * (torch.log1p(-t) - torch.log(t))
