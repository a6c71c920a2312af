"""Distributions of training times ``t`` in ``(0, 1)``, registered by name.

Where the training times fall decides which noise levels the network learns best. Uniform
times spend as much effort near pure noise and near clean data as in between; a
logit-normal (Esser et al., 2024, "Scaling Rectified Flow Transformers", the choice of
Stable Diffusion 3) puts more of it at middle times, where the velocity is hardest to
predict. Each entry is ``fn(n, device) -> t``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from genmnist.registry import Registry

TimeDistribution = Callable[[int, torch.device], torch.Tensor]

#: Training-time distributions by name: ``uniform``, ``logit-normal``.
TIME_DISTRIBUTIONS: Registry[TimeDistribution] = Registry("time distribution")

#: Keeps times off the ends of ``[0, 1]``, where the path's log-SNR is infinite.
EDGE = 1e-5


@TIME_DISTRIBUTIONS.register("uniform")
def uniform_times(n: int, device: torch.device) -> torch.Tensor:
    """``t ~ U(0, 1)``, kept ``EDGE`` away from both ends."""
    return torch.rand(n, device=device) * (1 - 2 * EDGE) + EDGE


@TIME_DISTRIBUTIONS.register("logit-normal")
def logit_normal_times(n: int, device: torch.device) -> torch.Tensor:
    """``t = sigmoid(u)`` with ``u ~ N(0, 1)``: most times in the middle of the path."""
    return torch.sigmoid(torch.randn(n, device=device)).clamp(EDGE, 1 - EDGE)
