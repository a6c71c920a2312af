"""Distances between two sets of evaluator features: FID, KID, precision and recall.

All functions take feature matrices ``(n, d)`` (the evaluator's penultimate activations,
see :func:`genmnist.metrics.classifier.EvaluatorNet.features`), so features are computed
once and shared by every metric. FID and KID are computed by ``torchmetrics`` (a
maintained implementation, fed through an identity feature extractor); precision and
recall follow Kynkäänniemi et al. (2019).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from genmnist.errors import ConfigError


class _Precomputed(nn.Module):
    """Identity "feature extractor": lets torchmetrics' FID/KID take features directly."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2:  # torchmetrics probing the output size with a dummy image
            return torch.zeros(x.shape[0], self.num_features, dtype=torch.float64)
        return x


def _check_pair(real: torch.Tensor, fake: torch.Tensor, minimum: int = 2) -> None:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ConfigError(
            f"expected two feature matrices (n, d) of the same d, got {tuple(real.shape)} "
            f"and {tuple(fake.shape)}"
        )
    if min(real.shape[0], fake.shape[0]) < minimum:
        raise ConfigError(f"need at least {minimum} samples in each set")
    for name, features in (("real", real), ("generated", fake)):
        if not bool(torch.isfinite(features).all()):  # before any linear algebra
            raise ConfigError(
                f"the {name} features hold NaN or inf values; FID, KID, precision and "
                "recall need finite features (were the images finite?)"
            )


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID on our features).

    Computed in float64 by ``torchmetrics.image.fid.FrechetInceptionDistance``, whose
    trace of the matrix square root uses the eigenvalues of ``sigma_real @ sigma_fake``
    (no ``scipy.linalg.sqrtm``). Biased upwards at small ``n``: compare values at equal
    sample counts only.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check_pair(real, fake)
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1])).double()
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return max(0.0, float(metric.compute()))


def kernel_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel distance (KID on our features): ``(mean, std)`` over random subsets.

    The squared MMD with the cubic polynomial kernel ``(x.y / d + 1) ** 3``, estimated
    without bias on ``subsets`` random subsets of ``subset_size`` (capped at the smaller
    set), by ``torchmetrics.image.kid.KernelInceptionDistance``. Unbiased: two samples of
    one distribution give values scattered around 0 (slightly negative ones included).
    Seeded, so repeated calls agree.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_pair(real, fake)
    size = min(subset_size, real.shape[0], fake.shape[0])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(
            feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size
        )
    # float32: the kernel sums' rounding error (~1e-6) is far below KID's sampling noise,
    # and float64 matrix products cost twice as much on a CPU.
    metric.update(real.float(), real=True)
    metric.update(fake.float(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def kth_neighbour_radii(features: torch.Tensor, k: int = 3, chunk: int = 1000) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (self excluded):
    the radii of the k-NN manifold of :func:`precision_recall`."""
    features = features.float()
    radii = []
    for start in range(0, features.shape[0], chunk):
        d = torch.cdist(features[start : start + chunk], features)
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def precision_recall(
    real: torch.Tensor,
    fake: torch.Tensor,
    k: int = 3,
    chunk: int = 1000,
    real_radii: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019): ``(precision, recall)``.

    Each set's manifold is the union of balls around its points, of radius the distance
    to the point's ``k``-th nearest neighbour. Precision is the share of fake samples
    inside the real manifold (fidelity); recall the share of real samples inside the fake
    manifold (diversity). ``real_radii`` (from :func:`kth_neighbour_radii` with the same
    ``k``) saves recomputing them when one real set is compared with many.
    """
    _check_pair(real, fake, minimum=k + 1)
    real, fake = real.float(), fake.float()
    if real_radii is None:
        real_radii = kth_neighbour_radii(real, k, chunk)
    fake_radii = kth_neighbour_radii(fake, k, chunk)
    inside_real = torch.zeros(fake.shape[0], dtype=torch.bool)
    covered_real = torch.zeros(real.shape[0], dtype=torch.bool)
    for start in range(0, fake.shape[0], chunk):
        d = torch.cdist(fake[start : start + chunk], real)  # (chunk, n_real)
        inside_real[start : start + chunk] = (d <= real_radii[None, :]).any(dim=1)
        covered_real |= (d <= fake_radii[start : start + chunk, None]).any(dim=0)
    return float(inside_real.float().mean()), float(covered_real.float().mean())
