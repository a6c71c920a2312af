"""Small shared layers and the registries of activations and normalisations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from genmnist.errors import ConfigError
from genmnist.registry import Registry
from genmnist.values import is_number

#: Activation modules by name; ``ACTIVATIONS.create("leaky_relu")`` builds one.
ACTIVATIONS: Registry[type[nn.Module]] = Registry("activation")
ACTIVATIONS.register("relu", nn.ReLU)
ACTIVATIONS.register("leaky_relu", nn.LeakyReLU, negative_slope=0.2)
ACTIVATIONS.register("silu", nn.SiLU)
ACTIVATIONS.register("gelu", nn.GELU)
ACTIVATIONS.register("tanh", nn.Tanh)
ACTIVATIONS.register("sigmoid", nn.Sigmoid)
ACTIVATIONS.register("none", nn.Identity)


#: Normalisation layers by name, for feature maps ``(b, c, h, w)`` and flat features
#: ``(b, c)`` alike: ``NORMS.create("group", channels=64)``.
NORMS: Registry = Registry("normalisation")


class BatchNorm(nn.BatchNorm2d):
    """`torch.nn.BatchNorm2d` that also takes flat features ``(b, c)``, as
    `torch.nn.BatchNorm1d` does, so one name serves convolutional and fully connected
    layers (its weights are a BatchNorm2d's, so saved models load either way)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 4):
            raise ValueError(f"expected (b, c) or (b, c, h, w) input, got {input.dim()}-D")


@NORMS.register("batch")
def batch_norm(channels: int) -> nn.Module:
    """BatchNorm over ``channels``."""
    return BatchNorm(channels)


@NORMS.register("group")
def group_norm(channels: int) -> nn.Module:
    """GroupNorm with the most groups (up to 8) that divide ``channels``."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


@NORMS.register("none")
def no_norm(channels: int) -> nn.Module:
    """No normalisation."""
    return nn.Identity()


def check_widths(what: str, widths: Sequence[int], allow_empty: bool = False) -> tuple[int, ...]:
    """``widths`` as a tuple, or `ConfigError` unless they are positive integers (and, unless
    ``allow_empty``, at least one): layer widths and channel counts of a network."""
    if not isinstance(widths, Sequence) or isinstance(widths, str):
        raise ConfigError(f"{what} must be a list of positive integers, got {widths!r}")
    widths = tuple(widths)
    if not widths and not allow_empty:
        raise ConfigError(f"{what} needs at least one width, got []")
    if not all(is_number(w, whole=True) and w >= 1 for w in widths):
        raise ConfigError(f"{what} must be positive integers, got {list(widths)}"[:300])
    return widths


def check_count(what: str, value: Any, minimum: int = 1) -> int:
    """``value``, or `ConfigError` unless it is an integer ``>= minimum``."""
    if not (is_number(value, whole=True) and value >= minimum):
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def check_rate(what: str, value: Any) -> float:
    """``value``, or `ConfigError` unless it is a number in ``[0, 1)`` (a dropout rate)."""
    if not (is_number(value) and 0 <= value < 1):
        raise ConfigError(f"{what} must be a number in [0, 1), got {value!r}")
    return float(value)


def mlp(
    in_features: int,
    hidden_dims: tuple[int, ...],
    out_features: int,
    activation: str = "relu",
    norm: str = "none",
) -> nn.Sequential:
    """Fully connected layers ``in -> hidden... -> out`` with ``activation`` between them
    (none after the last), each hidden layer normalised by ``norm`` (a name in `NORMS`)
    before its activation.

    Raises:
        ConfigError: a width is not a positive integer.
    """
    check_widths("the input and output sizes", (in_features, out_features))
    hidden_dims = check_widths("hidden_dims", hidden_dims, allow_empty=True)
    layers: list[nn.Module] = []
    width = in_features
    for hidden in hidden_dims:
        layers.append(nn.Linear(width, hidden))
        if norm != "none":  # no Identity placeholder: it would renumber saved layers
            layers.append(NORMS.create(norm, channels=hidden))
        layers.append(ACTIVATIONS.create(activation))
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def downsampled_sizes(size: int, levels: int) -> list[int]:
    """Spatial sizes after each stride-2, 3x3, padding-1 convolution: 28 -> 14 -> 7 -> 4."""
    sizes = [size]
    for _ in range(levels):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


#: Added to the variance before its square root in `MinibatchStd` (as in StyleGAN).
SPREAD_EPS = 1e-8


class MinibatchStd(nn.Module):
    """Minibatch standard deviation (Karras et al., 2018, "Progressive Growing of GANs"):
    appends one channel (or, for flat features ``(b, f)``, one feature) holding the
    standard deviation of each feature over the batch, averaged over all features.

    A discriminator with it sees how varied a batch is, so a generator that collapses to
    few modes is easy to tell apart from the data. A lone image gets a standard deviation
    of 0 (its logit then no longer depends on the rest of a batch).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the batch's spread appended along dimension 1."""
        if x.shape[0] > 1:
            # sqrt(var + eps) rather than std: std's gradient is 0/0 where a feature is the
            # same for the whole batch (background), which turns R1's second-order
            # gradient into NaN.
            variance = x.float().var(dim=0, unbiased=False)
            spread = (variance + SPREAD_EPS).sqrt().mean().to(x.dtype)
        else:
            spread = x.new_zeros(())
        extra = spread.expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([x, extra], dim=1)
