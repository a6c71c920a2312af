"""Small shared layers and the registries of activations and normalisations."""

from __future__ import annotations

import torch
from torch import nn

from genmnist.registry import Registry

#: Activation modules by name; ``ACTIVATIONS.create("leaky_relu")`` builds one.
ACTIVATIONS: Registry[type[nn.Module]] = Registry("activation")
ACTIVATIONS.register("relu", nn.ReLU)
ACTIVATIONS.register("leaky_relu", nn.LeakyReLU, negative_slope=0.2)
ACTIVATIONS.register("silu", nn.SiLU)
ACTIVATIONS.register("gelu", nn.GELU)
ACTIVATIONS.register("tanh", nn.Tanh)
ACTIVATIONS.register("sigmoid", nn.Sigmoid)
ACTIVATIONS.register("none", nn.Identity)


#: 2-D normalisation layers by name: ``NORMS.create("group", channels=64)``.
NORMS: Registry = Registry("normalisation")


@NORMS.register("batch")
def batch_norm(channels: int) -> nn.Module:
    """BatchNorm over ``channels``."""
    return nn.BatchNorm2d(channels)


@NORMS.register("group")
def group_norm(channels: int) -> nn.Module:
    """GroupNorm with the most groups (up to 8) that divide ``channels``."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


@NORMS.register("none")
def no_norm(channels: int) -> nn.Module:
    """No normalisation."""
    return nn.Identity()


def mlp(
    in_features: int, hidden_dims: tuple[int, ...], out_features: int, activation: str = "relu"
) -> nn.Sequential:
    """Fully connected layers ``in -> hidden... -> out`` with ``activation`` between them
    (none after the last)."""
    layers: list[nn.Module] = []
    width = in_features
    for hidden in hidden_dims:
        layers += [nn.Linear(width, hidden), ACTIVATIONS.create(activation)]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def downsampled_sizes(size: int, levels: int) -> list[int]:
    """Spatial sizes after each stride-2, 3x3, padding-1 convolution: 28 -> 14 -> 7 -> 4."""
    sizes = [size]
    for _ in range(levels):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


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
            spread = x.float().std(dim=0, unbiased=False).mean().to(x.dtype)
        else:
            spread = x.new_zeros(())
        extra = spread.expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([x, extra], dim=1)
