"""Differentiable augmentations for a GAN discriminator (DiffAugment; Zhao et al., 2020,
"Differentiable Augmentation for Data-Efficient GAN Training").

Each registered augmentation maps a batch of images ``(b, c, h, w)`` in ``[-1, 1]`` (the
GAN's range, background ``-1``) to an augmented batch of the same shape, drawing its own
random parameters per image, and is differentiable in the images. A GAN applies the
augmentations its config names, in order, to real and generated images alike, in both
the discriminator's and the generator's step, so the generator learns the un-augmented
distribution while the discriminator sees more varied data and overfits less.

`augment_pipeline` turns a config's list of names into one callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from genmnist.registry import Registry

#: Augmentations by name: ``AUGMENTATIONS.get("translation")(images)``.
AUGMENTATIONS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("augmentation")

#: Background value of images in ``[-1, 1]``.
BACKGROUND = -1.0


@AUGMENTATIONS.register("translation")
def translation(images: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by a whole number of pixels, up to ``ratio`` of its size in each
    direction (3 pixels on 28), filling the uncovered border with background."""
    b, _, h, w = images.shape
    dy_max, dx_max = int(h * ratio), int(w * ratio)
    device = images.device
    dy = torch.randint(-dy_max, dy_max + 1, (b, 1, 1), device=device)
    dx = torch.randint(-dx_max, dx_max + 1, (b, 1, 1), device=device)
    rows = (torch.arange(h, device=device)[None, :, None] + dy + dy_max).expand(b, h, w)
    cols = (torch.arange(w, device=device)[None, None, :] + dx + dx_max).expand(b, h, w)
    padded = F.pad(images, (dx_max, dx_max, dy_max, dy_max), value=BACKGROUND)
    flat = padded.flatten(2)  # (b, c, (h + 2 dy) * (w + 2 dx))
    index = (rows * (w + 2 * dx_max) + cols).flatten(1)[:, None, :].expand(-1, flat.shape[1], -1)
    return flat.gather(2, index).view_as(images)


@AUGMENTATIONS.register("cutout")
def cutout(images: torch.Tensor, ratio: float = 0.25) -> torch.Tensor:
    """Set a square of ``ratio`` of the image's size (7 pixels on 28), at a random place in
    each image, to background."""
    b, _, h, w = images.shape
    size_y, size_x = int(h * ratio), int(w * ratio)
    device = images.device
    top = torch.randint(0, h - size_y + 1, (b, 1, 1), device=device)
    left = torch.randint(0, w - size_x + 1, (b, 1, 1), device=device)
    rows = torch.arange(h, device=device)[None, :, None]
    cols = torch.arange(w, device=device)[None, None, :]
    inside = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)
    return torch.where(inside[:, None], torch.full_like(images, BACKGROUND), images)


@AUGMENTATIONS.register("brightness")
def brightness(images: torch.Tensor, strength: float = 0.25) -> torch.Tensor:
    """Scale each image's ink (its distance from background) by a factor drawn uniformly
    from ``[1 - strength, 1]``."""
    factor = 1 - strength * torch.rand(images.shape[0], 1, 1, 1, device=images.device)
    return BACKGROUND + (images - BACKGROUND) * factor.to(images.dtype)


def augment_pipeline(names: Sequence[str]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The augmentations ``names`` applied in order, or None when there are none.

    Raises:
        RegistryError: a name is not in `AUGMENTATIONS`.
    """
    steps = [AUGMENTATIONS.get(name) for name in names]
    if not steps:
        return None

    def apply(images: torch.Tensor) -> torch.Tensor:
        for step in steps:
            images = step(images)
        return images

    return apply
