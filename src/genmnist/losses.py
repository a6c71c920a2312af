"""Loss functions shared by the models.

Reduction convention: per-image losses are **summed over pixels (or latent dimensions)
and averaged over the batch**, so a VAE's reconstruction term and KL term are on the scale
of the ELBO in nats per image, whatever the batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genmnist.registry import Registry

#: Reconstruction losses by name: ``fn(logits, target) -> scalar``; ``logits`` are the
#: decoder's raw outputs, ``target`` the images in ``[0, 1]``.
RECONSTRUCTION_LOSSES: Registry = Registry("reconstruction loss")


def _per_image_mean(per_pixel: torch.Tensor) -> torch.Tensor:
    return per_pixel.flatten(1).sum(1).mean()


@RECONSTRUCTION_LOSSES.register("bce")
def bce_reconstruction(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bernoulli negative log-likelihood of ``target`` under ``sigmoid(logits)``.

    Reduction: sum over pixels, mean over the batch (nats per image).
    """
    return _per_image_mean(
        F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    )


@RECONSTRUCTION_LOSSES.register("mse")
def mse_reconstruction(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error between ``sigmoid(logits)`` and ``target``.

    Reduction: sum over pixels, mean over the batch.
    """
    return _per_image_mean((torch.sigmoid(logits.float()) - target.float()) ** 2)


@RECONSTRUCTION_LOSSES.register("l1")
def l1_reconstruction(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Absolute error between ``sigmoid(logits)`` and ``target``.

    Reduction: sum over pixels, mean over the batch.
    """
    return _per_image_mean((torch.sigmoid(logits.float()) - target.float()).abs())


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL divergence ``KL(N(mean, exp(logvar)) || N(0, I))``.

    Reduction: sum over latent dimensions, mean over the batch (nats per image).
    """
    mean, logvar = mean.float(), logvar.float()
    return (0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)).sum(1).mean()


def kl_weight(step: int, beta: float = 1.0, warmup_steps: int = 0) -> float:
    """KL annealing: the KL weight rises linearly from 0 to ``beta`` over
    ``warmup_steps`` optimizer steps (constant ``beta`` when ``warmup_steps`` is 0)."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)
