"""Decoders (VAE decoders and GAN generators): a vector to images ``(b, 1, 28, 28)``.

Decoders return raw outputs (logits); the model applies the final activation
(sigmoid for a VAE's Bernoulli mean, tanh for a GAN), so one implementation serves both.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from genmnist.nn.layers import ACTIVATIONS, NORMS, check_widths, downsampled_sizes, mlp
from genmnist.registry import Registry

#: Decoder / generator classes by name (``mlp``, ``mlp-norm``, ``conv``, ``conv-res``).
DECODERS: Registry[type[nn.Module]] = Registry("decoder")


@DECODERS.register("mlp")
class MLPDecoder(nn.Module):
    """Fully connected layers from ``[z, cond]`` to ``28 * 28`` outputs.

    Args:
        in_features: Size of the latent / noise vector.
        hidden_dims: Widths of the hidden layers, e.g. ``(1024,)``.
        cond_features: Size of the condition vector (0: unconditional).
        activation: Name in `genmnist.nn.layers.ACTIVATIONS`.
        norm: Accepted so all decoders share one signature; this decoder does not
            normalise (`NormMLPDecoder` does).
        image_shape: ``(channels, height, width)`` of the output.
    """

    #: Whether ``norm`` is applied after each hidden layer.
    normalised = False

    def __init__(
        self,
        in_features: int,
        hidden_dims: tuple[int, ...] = (1024,),
        cond_features: int = 0,
        activation: str = "relu",
        norm: str = "none",
        image_shape: tuple[int, int, int] = (1, 28, 28),
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        c, h, w = image_shape
        self.net = mlp(
            in_features + cond_features,
            tuple(hidden_dims),
            c * h * w,
            activation,
            norm=norm if self.normalised else "none",
        )

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is not None:
            z = torch.cat([z, cond], dim=1)
        c, h, w = self.image_shape
        return rearrange(self.net(z), "b (c h w) -> b c h w", c=c, h=h, w=w)


@DECODERS.register("mlp-norm")
class NormMLPDecoder(MLPDecoder):
    """`MLPDecoder` with a normalisation layer (``norm``, a name in
    `genmnist.nn.layers.NORMS`) after each hidden layer, before its activation: the
    BatchNorm of the classic MLP GAN generators, which lets an MLP generator keep its
    variety (see the GAN page). Same arguments as `MLPDecoder`; ``norm`` defaults to
    ``batch``.
    """

    normalised = True

    def __init__(
        self,
        in_features: int,
        hidden_dims: tuple[int, ...] = (1024,),
        cond_features: int = 0,
        activation: str = "relu",
        norm: str = "batch",
        image_shape: tuple[int, int, int] = (1, 28, 28),
    ) -> None:
        super().__init__(in_features, hidden_dims, cond_features, activation, norm, image_shape)


@DECODERS.register("conv")
class ConvDecoder(nn.Module):
    """Linear layer to a small feature map, then stride-2 transposed convolutions back to
    full size (4 -> 7 -> 14 -> 28 with three layers) and a 3x3 output convolution.

    Args:
        in_features: Size of the latent / noise vector.
        hidden_dims: Channels of the mirrored encoder, e.g. ``(32, 64, 128)``; the decoder
            runs through them from the widest.
        cond_features: Size of the condition vector (0: unconditional).
        activation: Name in `genmnist.nn.layers.ACTIVATIONS`.
        norm: Name in `genmnist.nn.layers.NORMS`.
        image_shape: ``(channels, height, width)`` of the output (square images).
    """

    def __init__(
        self,
        in_features: int,
        hidden_dims: tuple[int, ...] = (32, 64, 128),
        cond_features: int = 0,
        activation: str = "relu",
        norm: str = "batch",
        image_shape: tuple[int, int, int] = (1, 28, 28),
    ) -> None:
        super().__init__()
        hidden_dims = check_widths("hidden_dims", hidden_dims)
        check_widths("in_features", (in_features,))
        out_channels, size, _ = image_shape
        sizes = downsampled_sizes(size, len(hidden_dims))[::-1]  # e.g. 4, 7, 14, 28
        widths = tuple(reversed(hidden_dims))
        self.start_shape = (widths[0], sizes[0], sizes[0])
        self.project = nn.Sequential(
            nn.Linear(in_features + cond_features, widths[0] * sizes[0] ** 2),
            ACTIVATIONS.create(activation),
        )
        layers: list[nn.Module] = list(self._refine(widths[0], activation, norm))
        for i, (s_in, s_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            c_in, c_out = widths[i], widths[min(i + 1, len(widths) - 1)]
            pad = s_out - (2 * s_in - 1)  # output_padding that lands exactly on s_out
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad),
                NORMS.create(norm, channels=c_out),
                ACTIVATIONS.create(activation),
                *self._refine(c_out, activation, norm),
            ]
        layers.append(nn.Conv2d(widths[-1], out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def _refine(self, channels: int, activation: str, norm: str) -> list[nn.Module]:
        """Layers run at each resolution after it is reached (none here)."""
        return []

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is not None:
            z = torch.cat([z, cond], dim=1)
        c, h, w = self.start_shape
        return self.net(rearrange(self.project(z), "b (c h w) -> b c h w", c=c, h=h, w=w))


class _ResidualBlock(nn.Module):
    """conv -> norm -> act -> conv -> norm, added to the input, then act."""

    def __init__(self, channels: int, activation: str, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            NORMS.create(norm, channels=channels),
            ACTIVATIONS.create(activation),
            nn.Conv2d(channels, channels, 3, padding=1),
            NORMS.create(norm, channels=channels),
        )
        self.act = ACTIVATIONS.create(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


@DECODERS.register("conv-res")
class ResidualConvDecoder(ConvDecoder):
    """`ConvDecoder` with a residual block (two 3x3 convolutions and a skip) after the
    projection and after every upsampling: more capacity at each resolution, where a
    blurry decoder loses the fine detail (a collar, a zip) that tells similar classes
    apart. Same arguments as `ConvDecoder`."""

    def _refine(self, channels: int, activation: str, norm: str) -> list[nn.Module]:
        return [_ResidualBlock(channels, activation, norm)]
