"""k-means clustering of images, for models that condition on clusters they find themselves
(self-guided diffusion: `DDPMConfig.clusters`)."""

from __future__ import annotations

import torch

from genmnist.errors import ConfigError


def nearest_center(points: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index of the nearest center (Euclidean) of each row of ``points`` ``(n, d)``."""
    return torch.cdist(points.float(), centers.float()).argmin(dim=1)


def kmeans(
    points: torch.Tensor, k: int, iterations: int = 30, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of ``points`` ``(n, d)`` into ``k`` groups: k-means++ seeding
    (Arthur & Vassilvitskii, 2007), then Lloyd iterations until no point changes cluster
    or ``iterations`` run out.

    The result depends only on the data and ``seed`` (its own generator: the global RNG is
    left untouched). A cluster that empties keeps its previous center.

    Returns:
        ``centers`` ``(k, d)`` float32 and each point's cluster ``(n,)`` int64.

    Raises:
        ConfigError: ``k`` is not between 1 and the number of points (a `ValueError`).
    """
    points = points.float()
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"k-means needs 1 <= k <= {n} (the number of points), got k={k}")
    generator = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=generator))
    centers = points[first : first + 1]
    # k-means++: each new center is drawn with probability proportional to the squared
    # distance to the nearest center so far, which spreads them over the data.
    squared = torch.cdist(points, centers).square_().squeeze(1)
    for _ in range(k - 1):
        weights = squared if float(squared.sum()) > 0 else torch.ones_like(squared)
        chosen = int(torch.multinomial(weights, 1, generator=generator))
        centers = torch.cat([centers, points[chosen : chosen + 1]])
        new = torch.cdist(points, points[chosen : chosen + 1]).square_().squeeze(1)
        squared = torch.minimum(squared, new)
    assignment = nearest_center(points, centers)
    for _ in range(iterations):
        counts = torch.bincount(assignment, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, assignment, points)
        centers = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centers)
        updated = nearest_center(points, centers)
        if torch.equal(updated, assignment):
            break
        assignment = updated
    return centers, assignment
