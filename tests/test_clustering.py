"""k-means, used by self-guided diffusion."""

from __future__ import annotations

import pytest
import torch

from genmnist.clustering import kmeans, nearest_center


def test_kmeans_recovers_separated_groups_and_is_reproducible(tiny_dataset):
    images, labels = tiny_dataset.images[:200], tiny_dataset.labels[:200]
    points = images.reshape(200, -1).float() / 255
    state = torch.random.get_rng_state()
    centers, assignment = kmeans(points, 10, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert centers.shape == (10, 28 * 28) and assignment.shape == (200,)
    # every cluster is exactly one class: the bars are far apart, the noise is small
    pairs = set(zip(assignment.tolist(), labels.tolist(), strict=True))
    assert len(pairs) == 10 and len({c for c, _ in pairs}) == 10
    # each center is the mean of its points, and each point sits at its nearest center
    for k in range(10):
        torch.testing.assert_close(centers[k], points[assignment == k].mean(0))
    assert torch.equal(nearest_center(points, centers), assignment)
    again, _ = kmeans(points, 10, seed=3)
    assert torch.equal(again, centers)


def test_kmeans_handles_duplicates_and_rejects_bad_k():
    points = torch.ones(5, 3)  # all equal: seeding must not divide by a zero total
    centers, assignment = kmeans(points, 2)
    assert torch.equal(centers, torch.ones(2, 3)) and assignment.shape == (5,)
    with pytest.raises(ValueError, match="k=6"):
        kmeans(points, 6)
    with pytest.raises(ValueError, match="k=0"):
        kmeans(points, 0)
