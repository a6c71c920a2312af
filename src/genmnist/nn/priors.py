"""Priors over a latent space: where a VAE's samples start.

A VAE trained with the ELBO pulls its posterior toward ``N(0, I)`` but never reaches it:
the aggregate posterior (the codes of the training images) leaves holes where the
standard normal prior puts mass, and codes drawn from those holes decode to images that
are not digits (Dai & Wipf, 2019, "Diagnosing and Enhancing VAE Models"). A prior fitted
*after* training to the codes themselves (ex-post density estimation, Ghosh et al., 2020,
"From Variational to Deterministic Autoencoders") draws where the decoder was trained.

Each prior is a small module with buffers (so it saves with the model's weights):

* ``standard``: ``N(0, I)``, nothing to fit.
* ``gmm``: a mixture of diagonal Gaussians fitted by EM to the posterior means of the
  training images, started from k-means++ (`genmnist.clustering.kmeans`).

Priors register by name in `PRIORS`; a VAE names its prior in `VAEConfig.prior`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from genmnist.errors import ConfigError
from genmnist.registry import Registry

if TYPE_CHECKING:
    from genmnist.models.base import SampleNoise

#: Latent priors by name: ``cls(latent_dim, components) -> LatentPrior``.
PRIORS: Registry = Registry("latent prior")


class LatentPrior(nn.Module):
    """Base class: a distribution over ``latent_dim``-dimensional codes."""

    #: Whether `fit` learns anything (a prior that does must be fitted before sampling).
    fitted_from_data: bool = False

    def __init__(self, latent_dim: int, components: int = 0) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def fit(self, codes: torch.Tensor) -> None:
        """Fit the prior to codes ``(n, latent_dim)`` (the posterior means of the training
        images). Default: nothing to fit."""

    def sample(self, noise: SampleNoise, temperature: float = 1.0) -> torch.Tensor:
        """Codes ``(len(noise), latent_dim)``, drawn from each sample's own noise stream;
        ``temperature`` scales the spread around the prior's centre(s)."""
        raise NotImplementedError


@PRIORS.register("standard")
class StandardNormal(LatentPrior):
    """``N(0, I)``: the prior the VAE was trained against."""

    def sample(self, noise: SampleNoise, temperature: float = 1.0) -> torch.Tensor:
        return noise.randn(self.latent_dim) * temperature


@PRIORS.register("gmm")
class GaussianMixture(LatentPrior):
    """A mixture of ``components`` diagonal Gaussians, fitted by EM to the codes.

    Args:
        latent_dim: Size of a code.
        components: Number of mixture components (at least 1).
    """

    fitted_from_data = True

    def __init__(self, latent_dim: int, components: int = 100) -> None:
        super().__init__(latent_dim)
        if components < 1:
            raise ConfigError(f"a Gaussian-mixture prior needs components >= 1, got {components}")
        self.components = components
        # Until fitted: every component is N(0, I), so the prior is the standard one.
        self.register_buffer("means", torch.zeros(components, latent_dim))
        self.register_buffer("log_vars", torch.zeros(components, latent_dim))
        self.register_buffer("weights", torch.full((components,), 1 / components))

    def fit(self, codes: torch.Tensor, iterations: int = 100, seed: int = 0) -> None:
        """EM from a k-means++ start; deterministic for ``codes`` and ``seed``. A variance
        floor keeps a component from collapsing onto a few codes."""
        from genmnist.clustering import kmeans

        codes = codes.detach().double().cpu()
        n = codes.shape[0]
        if n < self.components:
            raise ConfigError(
                f"a {self.components}-component prior needs at least as many codes, got {n}"
            )
        centers, assignment = kmeans(codes.float(), self.components, seed=seed)
        means = centers.double()
        floor = 1e-3 * codes.var(0).clamp(min=1e-12)
        variances = codes.var(0, keepdim=True).repeat(self.components, 1)
        log_weights = torch.full((self.components,), -math.log(self.components), dtype=codes.dtype)
        previous = -math.inf
        for _ in range(iterations):
            log_resp, mean_log_likelihood = _responsibilities(codes, means, variances, log_weights)
            resp = log_resp.exp()
            counts = resp.sum(0) + 1e-10
            means = resp.T @ codes / counts[:, None]
            variances = (resp.T @ codes.square()) / counts[:, None] - means.square()
            variances = torch.maximum(variances, floor)
            log_weights = (counts / n).log()
            if mean_log_likelihood - previous < 1e-6 * abs(mean_log_likelihood):
                break
            previous = mean_log_likelihood
        self.means.copy_(means.float())
        self.log_vars.copy_(variances.log().float())
        self.weights.copy_(log_weights.exp().float())

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        """Log density of each code ``(n, latent_dim)`` under the mixture."""
        _, _, per_code = _responsibilities(
            codes.double(), self.means.double(), self.log_vars.double().exp(),
            self.weights.double().log(), per_code=True,
        )  # fmt: skip
        return per_code.float()

    def sample(self, noise: SampleNoise, temperature: float = 1.0) -> torch.Tensor:
        cumulative = self.weights.float().cumsum(0).to(noise.device)
        uniform = noise.rand(1).squeeze(1) * cumulative[-1]
        component = torch.searchsorted(cumulative, uniform, right=True).clamp_(
            max=self.components - 1
        )
        std = (0.5 * self.log_vars[component]).exp()
        return self.means[component] + std * noise.randn(self.latent_dim) * temperature


def _responsibilities(codes, means, variances, log_weights, per_code: bool = False):
    """E-step: log responsibilities ``(n, K)`` and the mean log-likelihood (and, with
    ``per_code``, each code's log-likelihood)."""
    precision = 1 / variances
    log_norm = -0.5 * (variances.log().sum(1) + codes.shape[1] * math.log(2 * math.pi))
    squared = (
        codes.square() @ precision.T
        - 2 * codes @ (means * precision).T
        + (means.square() * precision).sum(1)
    )
    joint = log_weights + log_norm - 0.5 * squared
    total = torch.logsumexp(joint, dim=1, keepdim=True)
    if per_code:
        return joint - total, float(total.mean()), total.squeeze(1)
    return joint - total, float(total.mean())


def make_prior(name: str, latent_dim: int, components: int) -> LatentPrior:
    """The prior registered as ``name`` for ``latent_dim``-dimensional codes."""
    return PRIORS.create(name, latent_dim=latent_dim, components=components)
