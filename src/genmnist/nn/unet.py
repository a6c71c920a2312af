"""U-Net for 28x28 diffusion, assembled from a few small blocks.

Native 28x28: levels at 28, 14 and 7 pixels (two stride-2 down-samplings), no padding to
32. Time (and optionally class) embeddings modulate every residual block; self-attention
runs only at the low resolutions named in ``attention_levels``, where it is cheap.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from genmnist.errors import ConfigError
from genmnist.nn.layers import check_count, check_rate, check_widths, group_norm


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0):
    """Transformer-style sinusoidal features ``(b, dim)`` of (possibly fractional) steps."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / max(half, 1))
    angles = t.float()[:, None] * freqs[None]
    features = [angles.cos(), angles.sin()]
    if dim % 2:  # an odd width: one constant feature keeps the size exact
        features.append(torch.zeros_like(t, dtype=torch.float32)[:, None])
    return torch.cat(features, dim=1)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer so a new residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, embedding as scale and shift, GroupNorm -> SiLU ->
    dropout -> conv, plus a (1x1 if needed) skip connection."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over pixels, as a residual block."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.heads = heads if channels % heads == 0 else 1
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        q, k, v = rearrange(
            self.qkv(self.norm(x)), "b (three n d) h w -> three b n (h w) d", three=3, n=self.heads
        )
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(rearrange(attended, "b n (h w) d -> b (n d) h w", h=h, w=w))


class UNet(nn.Module):
    """Denoising U-Net.

    Args:
        channels: Channels per level, e.g. ``(32, 64, 128)`` for 28, 14 and 7 pixels.
        blocks_per_level: Residual blocks per level on the way down (and up).
        attention_levels: Indices of levels with self-attention after each block
            (the middle of the network always has one).
        num_classes: Number of class labels (0: unconditional). Label ``num_classes``
            is the learned "null" class used for classifier-free guidance.
        dropout: Dropout inside residual blocks.
        in_channels: Image channels in.
        out_channels: Prediction channels out.
        interval_embedding: Also embed a second time, the length of the step the network
            predicts over (MeanFlow's ``t - r``); its embedding starts at zero, so a
            network trained without one loads into it unchanged.
        image_size: Height and width of the images; each level but the last halves
            them exactly, so 28 pixels allow at most three levels (28, 14, 7).

    Raises:
        ConfigError: a width, count or level that cannot build a network.
    """

    def __init__(
        self,
        channels: tuple[int, ...] = (32, 64, 128),
        blocks_per_level: int = 1,
        attention_levels: tuple[int, ...] = (2,),
        num_classes: int = 0,
        dropout: float = 0.0,
        in_channels: int = 1,
        out_channels: int = 1,
        interval_embedding: bool = False,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        channels = check_widths("channels", channels)
        check_count("blocks_per_level", blocks_per_level)
        check_count("num_classes", num_classes, minimum=0)
        check_rate("dropout", dropout)
        if image_size % 2 ** (len(channels) - 1):
            raise ConfigError(
                f"{len(channels)} levels of channels halve {image_size} pixels "
                f"{len(channels) - 1} times, which does not divide evenly; use fewer levels"
            )
        attention_levels = tuple(attention_levels)
        if not all(isinstance(a, int) and 0 <= a < len(channels) for a in attention_levels):
            raise ConfigError(
                f"attention_levels must be level indices in 0..{len(channels) - 1}, "
                f"got {list(attention_levels)}"
            )
        base = channels[0]
        emb_dim = 4 * base
        self.base = base
        self.time_mlp = nn.Sequential(
            nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.interval_mlp = (
            nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), _zero(nn.Linear(emb_dim, emb_dim)))
            if interval_embedding
            else None
        )
        self.stem = nn.Conv2d(in_channels, base, 3, padding=1)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        width = base
        for level, c in enumerate(channels):
            blocks = nn.ModuleList()
            for _ in range(blocks_per_level):
                blocks.append(ResBlock(width, c, emb_dim, dropout))
                if level in attention_levels:
                    blocks.append(SelfAttention(c))
                width = c
            self.down.append(blocks)
            last = level == len(channels) - 1
            self.downsample.append(
                nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1)
            )

        self.mid = nn.ModuleList(
            [ResBlock(width, width, emb_dim, dropout), SelfAttention(width),
             ResBlock(width, width, emb_dim, dropout)]
        )  # fmt: skip

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(channels))):
            c = channels[level]
            blocks = nn.ModuleList()
            for i in range(blocks_per_level):
                blocks.append(ResBlock(width + c if i == 0 else c, c, emb_dim, dropout))
                if level in attention_levels:
                    blocks.append(SelfAttention(c))
                width = c
            self.up.append(blocks)
            self.upsample.append(
                nn.Identity()
                if level == 0
                else nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(c, channels[level - 1], 3, padding=1),
                )
            )
            if level > 0:
                width = channels[level - 1]
        self.out = nn.Sequential(
            group_norm(width), nn.SiLU(), _zero(nn.Conv2d(width, out_channels, 3, padding=1))
        )

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        interval: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict from noisy images ``x`` at steps ``t``; ``labels`` may use the null class;
        ``interval`` is the second time of a U-Net built with ``interval_embedding``."""
        emb = self.time_mlp(sinusoidal_embedding(t, self.base))
        if self.class_emb is not None:
            if labels is None:
                raise ConfigError("this U-Net is class-conditional: labels are required")
            emb = emb + self.class_emb(labels)
        if self.interval_mlp is not None:
            if interval is None:
                raise ConfigError("this U-Net embeds a step interval: interval is required")
            emb = emb + self.interval_mlp(sinusoidal_embedding(interval, self.base))
        h = self.stem(x)
        skips = []
        for blocks, downsample in zip(self.down, self.downsample, strict=True):
            h = _run(blocks, h, emb)
            skips.append(h)
            h = downsample(h)
        h = _run(self.mid, h, emb)
        for blocks, upsample in zip(self.up, self.upsample, strict=True):
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(_run(blocks, h, emb))
        return self.out(h)


def _run(blocks: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        h = block(h, emb) if isinstance(block, ResBlock) else block(h)
    return h
