"""What a diffusion network predicts: ε (noise), x₀ (clean data) or v (velocity).

Each objective says what the training target is, and how to turn the network's output
back into a prediction of clean data, which is all the samplers need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from genmnist.registry import Registry

Tensor = torch.Tensor


@dataclass(frozen=True)
class Objective:
    """A parameterisation of the network output.

    Attributes:
        name: Registered name.
        target: ``fn(x0, eps, alpha, sigma) -> training target``.
        to_x0: ``fn(output, x_t, alpha, sigma) -> predicted clean data``.
        formula: ``to_x0`` in words, for people running an exported network.
    """

    name: str
    target: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    to_x0: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    formula: str = ""


#: Objectives by name: ``eps``, ``x0``, ``v``.
OBJECTIVES: Registry[Objective] = Registry("diffusion objective")
OBJECTIVES.register(
    "eps",
    Objective(
        "eps",  # Ho et al. (2020)
        target=lambda x0, eps, alpha, sigma: eps,
        to_x0=lambda out, x, alpha, sigma: (x - sigma * out) / alpha,
        formula="x0 = (x_t - sigma_t * output) / alpha_t (output: the noise)",
    ),
)
OBJECTIVES.register(
    "x0",
    Objective(
        "x0",
        target=lambda x0, eps, alpha, sigma: x0,
        to_x0=lambda out, x, alpha, sigma: out,
        formula="x0 = output",
    ),
)
OBJECTIVES.register(
    "v",
    Objective(
        "v",  # Salimans & Ho (2022): v = alpha * eps - sigma * x0
        target=lambda x0, eps, alpha, sigma: alpha * eps - sigma * x0,
        to_x0=lambda out, x, alpha, sigma: alpha * x - sigma * out,
        formula="x0 = alpha_t * x_t - sigma_t * output (output: v)",
    ),
)
