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
  training images, started from k-means++ (`genmnist.clustering.kmeans`); one mixture
  per class for a conditional model.

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

#: Latent priors by name: ``cls(latent_dim, components, classes) -> LatentPrior``.
PRIORS: Registry = Registry("latent prior")

#: Largest sampling temperature (spread of the latent draws) accepted: useful ones are
#: near 1, and far beyond this a decoder or generator only sees latents it never saw in
#: training (or overflows to NaN).
MAX_TEMPERATURE = 100.0


def check_temperature(temperature: float) -> None:
    """Refuse a sampling temperature that is not a positive finite number of at most
    `MAX_TEMPERATURE`."""
    if not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"temperature must be a positive number, got {temperature}")
    if temperature > MAX_TEMPERATURE:
        raise ConfigError(
            f"temperature must be at most {MAX_TEMPERATURE:g} (useful ones are near 1), "
            f"got {temperature:g}"
        )


class LatentPrior(nn.Module):
    """Base class: a distribution over ``latent_dim``-dimensional codes."""

    #: Whether `fit` learns anything (a prior that does must be fitted before sampling).
    fitted_from_data: bool = False

    def __init__(self, latent_dim: int, components: int = 0, classes: int = 0) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def fit(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Fit the prior to codes ``(n, latent_dim)`` (the posterior means of the training
        images) and, for a conditional model, their labels. Default: nothing to fit."""

    def sample(
        self, noise: SampleNoise, temperature: float = 1.0, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Codes ``(len(noise), latent_dim)``, drawn from each sample's own noise stream
        (for ``labels``, with a class-conditional prior); ``temperature`` scales the spread
        around the prior's centre(s)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """The prior as JSON values, enough to draw codes without genmnist (stored in an
        exported decoder, see `genmnist.export`)."""
        raise NotImplementedError


@PRIORS.register("standard")
class StandardNormal(LatentPrior):
    """``N(0, I)``: the prior the VAE was trained against."""

    def sample(
        self, noise: SampleNoise, temperature: float = 1.0, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return noise.randn(self.latent_dim) * temperature

    def describe(self) -> dict:
        return {"name": "standard", "draw": "z = temperature * N(0, I)"}


@PRIORS.register("gmm")
class GaussianMixture(LatentPrior):
    """A mixture of ``components`` diagonal Gaussians, fitted by EM to the codes; for a
    conditional model (``classes > 0``) one such mixture per class, fitted to the codes of
    that class's images, so each label draws where its own images' codes lie.

    Args:
        latent_dim: Size of a code.
        components: Mixture components (per class, for a conditional model; at least 1).
        classes: Number of class labels (0: one mixture for all codes).
    """

    fitted_from_data = True

    def __init__(self, latent_dim: int, components: int = 100, classes: int = 0) -> None:
        super().__init__(latent_dim)
        if components < 1:
            raise ConfigError(f"a Gaussian-mixture prior needs components >= 1, got {components}")
        self.components, self.classes = components, classes
        groups = max(classes, 1)
        # Until fitted: every component is N(0, I), so the prior is the standard one.
        self.register_buffer("means", torch.zeros(groups * components, latent_dim))
        self.register_buffer("log_vars", torch.zeros(groups * components, latent_dim))
        shape = (classes, components) if classes else (components,)
        self.register_buffer("weights", torch.full(shape, 1 / components))

    def fit(
        self,
        codes: torch.Tensor,
        labels: torch.Tensor | None = None,
        iterations: int = 100,
        seed: int = 0,
    ) -> None:
        """EM from a k-means++ start (per class when the prior has classes, which needs
        ``labels``); deterministic for its inputs and ``seed``. A variance floor keeps a
        component from collapsing onto a few codes."""
        codes = codes.detach().double().cpu()
        if self.classes and labels is None:
            raise ConfigError("a class-conditional prior is fitted with the codes' labels")
        for group in range(max(self.classes, 1)):
            mine = codes if not self.classes else codes[labels.cpu() == group]
            means, variances, weights = _fit_mixture(mine, self.components, iterations, seed)
            rows = slice(group * self.components, (group + 1) * self.components)
            self.means[rows] = means.float()
            self.log_vars[rows] = variances.log().float()
            self.weights.view(-1, self.components)[group] = weights.float()

    def log_prob(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Log density of each code ``(n, latent_dim)`` (under its label's mixture)."""
        out = torch.empty(codes.shape[0], dtype=torch.float64)
        for group in range(max(self.classes, 1)):
            where = slice(None) if not self.classes else labels.cpu() == group
            rows = slice(group * self.components, (group + 1) * self.components)
            *_, per_code = _responsibilities(
                codes[where].double().cpu(), self.means[rows].double().cpu(),
                self.log_vars[rows].double().exp().cpu(),
                self.weights.view(-1, self.components)[group].double().log().cpu(),
                per_code=True,
            )  # fmt: skip
            out[where] = per_code
        return out.float()

    def sample(
        self, noise: SampleNoise, temperature: float = 1.0, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        group = torch.zeros(len(noise), dtype=torch.long, device=noise.device)
        if self.classes:
            if labels is None:
                raise ConfigError("a class-conditional prior draws codes for given labels")
            group = labels.to(noise.device).long()
        weights = self.weights.float().to(noise.device).view(-1, self.components)
        cumulative = weights[group].cumsum(1)
        uniform = noise.rand(1) * cumulative[:, -1:]
        component = (cumulative <= uniform).sum(1).clamp_(max=self.components - 1)
        row = group * self.components + component
        std = (0.5 * self.log_vars[row]).exp()
        return self.means[row] + std * noise.randn(self.latent_dim) * temperature

    def describe(self) -> dict:
        groups = max(self.classes, 1)
        shape = (groups, self.components, self.latent_dim)
        return {
            "name": "gmm",
            "draw": "per sample: component k ~ weights[g] (g: its label, or 0), then "
            "z = means[g][k] + temperature * stds[g][k] * N(0, I)",
            "weights": self.weights.view(groups, self.components).tolist(),
            "means": self.means.view(shape).tolist(),
            "stds": (0.5 * self.log_vars).exp().view(shape).tolist(),
        }


def _fit_mixture(codes: torch.Tensor, components: int, iterations: int, seed: int):
    """EM for a diagonal Gaussian mixture on float64 ``codes``: ``(means, variances,
    weights)``. Fewer codes than ``components`` fit one component per code at most; the
    rest get weight 0 (never drawn), so a small training set still makes a usable prior."""
    from genmnist.clustering import kmeans

    n = codes.shape[0]
    if n == 0:
        raise ConfigError("a Gaussian-mixture prior needs at least one code to fit")
    if n < components:
        means, variances, weights = _fit_mixture(codes, n, iterations, seed)
        unused = components - n
        return (
            torch.cat([means, means.new_zeros(unused, means.shape[1])]),
            torch.cat([variances, variances.new_ones(unused, variances.shape[1])]),
            torch.cat([weights, weights.new_zeros(unused)]),
        )
    centers, _ = kmeans(codes.float(), components, seed=seed)
    means = centers.double()
    floor = 1e-3 * codes.var(0).clamp(min=1e-12)
    variances = codes.var(0, keepdim=True).repeat(components, 1)
    log_weights = torch.full((components,), -math.log(components), dtype=codes.dtype)
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
    return means, variances, log_weights.exp()


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
