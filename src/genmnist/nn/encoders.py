"""Encoders: images ``(b, 1, 28, 28)`` (plus an optional condition vector) to features.

A VAE encoder outputs ``2 * latent_dim`` features (mean and log-variance). They register
in `ENCODERS`; GAN discriminators, which also take labels for projection conditioning,
have their own registry in `genmnist.nn.discriminators`.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from genmnist.nn.layers import ACTIVATIONS, NORMS, check_widths, downsampled_sizes, mlp
from genmnist.registry import Registry

#: Encoder classes by name (``mlp``, ``conv``).
ENCODERS: Registry[type[nn.Module]] = Registry("encoder")


@ENCODERS.register("mlp")
class MLPEncoder(nn.Module):
    """Flatten the image, append the condition, then fully connected layers.

    Args:
        out_features: Size of the output.
        hidden_dims: Widths of the hidden layers, e.g. ``(1024,)``.
        cond_features: Size of the condition vector (0: unconditional).
        activation: Name in `genmnist.nn.layers.ACTIVATIONS`.
        norm: Accepted so all encoders share one signature; MLPs use no normalisation.
        image_shape: ``(channels, height, width)`` of the input.
    """

    def __init__(
        self,
        out_features: int,
        hidden_dims: tuple[int, ...] = (1024,),
        cond_features: int = 0,
        activation: str = "relu",
        norm: str = "none",
        image_shape: tuple[int, int, int] = (1, 28, 28),
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        self.net = mlp(c * h * w + cond_features, tuple(hidden_dims), out_features, activation)

    def forward(self, images: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = rearrange(images, "b c h w -> b (c h w)")
        if cond is not None:
            x = torch.cat([x, cond], dim=1)
        return self.net(x)


@ENCODERS.register("conv")
class ConvEncoder(nn.Module):
    """Stride-2 3x3 convolutions (28 -> 14 -> 7 -> 4 with three layers), then a linear
    layer on the flattened features and the condition.

    Args:
        out_features: Size of the output.
        hidden_dims: Channels of each convolution, e.g. ``(32, 64, 128)``.
        cond_features: Size of the condition vector (0: unconditional).
        activation: Name in `genmnist.nn.layers.ACTIVATIONS`.
        norm: Name in `genmnist.nn.layers.NORMS` (not applied after the first layer,
            as in DCGAN).
        image_shape: ``(channels, height, width)`` of the input (square images).
    """

    def __init__(
        self,
        out_features: int,
        hidden_dims: tuple[int, ...] = (32, 64, 128),
        cond_features: int = 0,
        activation: str = "relu",
        norm: str = "batch",
        image_shape: tuple[int, int, int] = (1, 28, 28),
    ) -> None:
        super().__init__()
        hidden_dims = check_widths("hidden_dims", hidden_dims)
        check_widths("out_features", (out_features,))
        channels, size, _ = image_shape
        layers: list[nn.Module] = []
        for i, width in enumerate(hidden_dims):
            layers.append(nn.Conv2d(channels, width, 3, stride=2, padding=1))
            if i > 0:
                layers.append(NORMS.create(norm, channels=width))
            layers.append(ACTIVATIONS.create(activation))
            channels = width
        self.conv = nn.Sequential(*layers)
        final = downsampled_sizes(size, len(hidden_dims))[-1]
        self.head = nn.Linear(channels * final * final + cond_features, out_features)

    def forward(self, images: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = rearrange(self.conv(images), "b c h w -> b (c h w)")
        if cond is not None:
            x = torch.cat([x, cond], dim=1)
        return self.head(x)
