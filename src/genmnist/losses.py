"""Loss functions shared by the models.

Reduction convention: per-image losses are **summed over pixels (or latent dimensions)
and averaged over the batch**, so a VAE's reconstruction term and KL term are on the scale
of the ELBO in nats per image, whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


#: Diffusion loss weightings by name: ``fn(log_snr, objective, gamma) -> weights``.
DIFFUSION_WEIGHTINGS: Registry = Registry("diffusion loss weighting")


@DIFFUSION_WEIGHTINGS.register("uniform")
def uniform_weighting(log_snr: torch.Tensor, objective: str, gamma: float = 5.0) -> torch.Tensor:
    """Every step counts the same in the objective's own space."""
    return torch.ones_like(log_snr)


@DIFFUSION_WEIGHTINGS.register("min-snr")
def min_snr_weighting(log_snr: torch.Tensor, objective: str, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-γ (Hang et al., 2023): weight the x₀ error by ``min(SNR, γ)``, expressed
    for the objective being trained (divide by ``SNR`` for ε, by ``SNR + 1`` for v)."""
    snr = log_snr.exp()
    clipped = snr.clamp(max=gamma)
    per_objective = {"x0": clipped, "eps": clipped / snr, "v": clipped / (snr + 1)}
    return per_objective[objective]


def diffusion_mse(
    prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted squared error of a diffusion model.

    Reduction: mean over pixels, weighted mean over the batch (weights ``(b,)``).
    """
    per_image = (prediction.float() - target.float()).pow(2).flatten(1).mean(1)
    return (per_image * weights.float()).mean()


# ----------------------------------------------------------------------------- GANs
# Reduction: a discriminator gives one logit per image; every GAN loss below is a mean
# over the batch of per-image terms (the discriminator's real and fake terms are each
# averaged over their own batch, then added).


@dataclass(frozen=True)
class GANLoss:
    """A GAN objective as a pair of functions of the discriminator's logits.

    Attributes:
        discriminator: ``fn(real_logits, fake_logits, real_target=1.0) -> scalar``.
        generator: ``fn(fake_logits) -> scalar``.
        smoothing: Whether ``real_target < 1`` (one-sided label smoothing) is supported.
    """

    discriminator: Callable[..., torch.Tensor]
    generator: Callable[[torch.Tensor], torch.Tensor]
    smoothing: bool = False


def bce_discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, real_target: float = 1.0
) -> torch.Tensor:
    """Binary cross-entropy of the discriminator (Goodfellow et al., 2014):
    ``BCE(D(x), real_target) + BCE(D(G(z)), 0)`` on logits.

    ``real_target < 1`` is one-sided label smoothing (Salimans et al., 2016): real images
    aim at e.g. 0.9, fakes still at 0. Reduction: each term a mean over its batch.
    """
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    real = F.binary_cross_entropy_with_logits(
        real_logits, torch.full_like(real_logits, real_target)
    )
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def nonsaturating_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``-log sigmoid(D(G(z)))``, mean over the batch
    (strong gradients even when the discriminator rejects the fakes confidently)."""
    return F.softplus(-fake_logits.float()).mean()


def hinge_discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, real_target: float = 1.0
) -> torch.Tensor:
    """Hinge loss of the discriminator (Lim & Ye, 2017; Miyato et al., 2018):
    ``relu(1 - D(x)) + relu(1 + D(G(z)))``, each a mean over its batch.

    Raises:
        ValueError: for ``real_target != 1`` (label smoothing has no meaning here).
    """
    if real_target != 1.0:
        raise ValueError("one-sided label smoothing applies to the 'bce' GAN loss only")
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge-GAN generator loss ``-D(G(z))``, mean over the batch."""
    return -fake_logits.float().mean()


#: GAN objectives by name: ``bce`` (non-saturating) and ``hinge``, as `GANLoss`.
GAN_LOSSES: Registry = Registry("GAN loss")
GAN_LOSSES.register(
    "bce",
    GANLoss(bce_discriminator_loss, nonsaturating_generator_loss, smoothing=True),
    description="Non-saturating GAN: BCE discriminator, -log D(G(z)) generator",
)
GAN_LOSSES.register(
    "hinge",
    GANLoss(hinge_discriminator_loss, hinge_generator_loss),
    description="Hinge discriminator, -D(G(z)) generator",
)


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1 regulariser (Mescheder et al., 2018): ``||grad_x D(x)||^2`` at real images.

    ``real_images`` must require grad and ``real_logits`` be computed from them; the
    gradient keeps its graph so the penalty trains the discriminator. Callers usually
    add ``gamma / 2`` times this. Reduction: sum over pixels, mean over the batch.
    """
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_images, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """WGAN-GP gradient penalty (Gulrajani et al., 2017): ``(||grad D(x_hat)|| - 1)^2``
    at ``x_hat = alpha * real + (1 - alpha) * fake``.

    Args:
        critic: Maps images to logits ``(b,)`` (bind the labels of a conditional model).
        real_images: A batch of real images.
        fake_images: A batch of generated images of the same shape.
        alpha: Mixing weights broadcastable to the images, e.g. ``(b, 1, 1, 1)``
            (default: uniform from the global RNG).

    Reduction: mean over the batch.
    """
    real, fake = real_images.detach().float(), fake_images.detach().float()
    if alpha is None:
        alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).float().sum(), mixed, create_graph=True)
    norm = (grad.float().pow(2).flatten(1).sum(1) + 1e-12).sqrt()
    return (norm - 1.0).pow(2).mean()
