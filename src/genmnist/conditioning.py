"""What a generator is conditioned on, as small components with a training side and a
sampling side.

A conditioning turns a batch into the integer labels the network embeds:

* `Unconditioned`: no labels.
* `ClassConditioning`: the dataset's class labels in training; the user's at sampling.
* `ClusterConditioning`: clusters the model finds itself (k-means on the training images,
  fitted once before training, saved with the weights as buffers); each training image's
  nearest cluster in training, and at sampling a cluster drawn by its share of the
  training set from each sample's own noise, so users sample without labels (Hu et al.,
  2023, "Self-Guided Diffusion Models"; Liu et al., 2020, "Diverse Image Generation via
  Self-Conditioned GANs").

Every conditioning with labels reserves one extra index, `Conditioning.null_label`, for
"no label", which classifier-free guidance needs. `conditioning_for` picks the component
a config describes; a model holds it as a submodule, so its buffers save with the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from genmnist.errors import ConfigError

if TYPE_CHECKING:
    from genmnist.data import InMemoryDataset
    from genmnist.models.base import SampleNoise


class Conditioning(nn.Module):
    """Base class: no labels. Subclasses set `num_labels` and override the hooks."""

    #: Number of distinct labels (0: unconditional); the network embeds
    #: ``num_labels + 1`` values, the last being `null_label`.
    num_labels: int = 0

    @property
    def null_label(self) -> int:
        """The index that stands for "no label" (for classifier-free guidance)."""
        return self.num_labels

    def prepare(self, data: InMemoryDataset) -> None:
        """Learn what the conditioning needs from the training split (before training;
        not called when resuming, since the weights then carry it). Default: nothing."""

    def training_labels(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """The labels the network sees for a training batch (images in ``[0, 1]``)."""
        return None

    def sampling_labels(
        self, noise: SampleNoise, labels: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The labels the network sees when sampling, from the user's ``labels``
        (conditional models) or drawn from each sample's ``noise``."""
        return None

    def describe(self) -> dict:
        """What the network's labels mean, as JSON values (for an exported network, see
        `genmnist.export`); nothing for no labels."""
        return {}


class Unconditioned(Conditioning):
    """No labels: the network models the whole data distribution."""


class ClassConditioning(Conditioning):
    """The dataset's class labels; the user picks them at sampling."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_labels = num_classes

    def training_labels(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return labels

    def sampling_labels(self, noise: SampleNoise, labels: torch.Tensor | None) -> torch.Tensor:
        return labels

    def describe(self) -> dict:
        return {
            "labels": f"class labels 0..{self.num_labels - 1}, chosen by the user",
            "null_label": self.null_label,
        }


class ClusterConditioning(Conditioning):
    """Clusters of the training images found by k-means, without their labels.

    Args:
        clusters: Number of clusters (at least 2).
        space: Where k-means looks at the images: a name in
            `genmnist.clustering.CLUSTER_SPACES` (``pixels``, ``vae-gmm``).
    """

    def __init__(self, clusters: int, space: str = "pixels") -> None:
        super().__init__()
        from genmnist.clustering import CLUSTER_SPACES

        if clusters < 2:
            raise ConfigError(f"clusters must be 0 (off) or at least 2, got {clusters}")
        self.num_labels = clusters
        self.space = CLUSTER_SPACES.create(space)
        # Until `prepare` fits them every cluster is equally likely, so an untrained model
        # still samples.
        self.register_buffer("centers", torch.zeros(clusters, self.space.dim))
        self.register_buffer("shares", torch.full((clusters,), 1 / clusters))

    def prepare(self, data: InMemoryDataset) -> None:
        """Cluster the training images (their features in the space, computed from the
        images as training batches see them, so `cluster_of` agrees with the fit) and
        record each cluster's share."""
        from genmnist.clustering import kmeans

        if len(data) < self.num_labels:
            raise ConfigError(
                f"clusters ({self.num_labels}) cannot exceed the number of training images "
                f"({len(data)})"
            )
        self.space.fit(data.name)
        images, _ = data.batch(torch.arange(len(data)))
        features = self.space.features(images.to(self.centers.device))
        centers, assignment = kmeans(
            features, self.num_labels, iterations=self.space.kmeans_iterations
        )
        counts = torch.bincount(assignment, minlength=self.num_labels).float()
        self.centers.copy_(centers)
        self.shares.copy_(counts / counts.sum())

    def cluster_of(self, images: torch.Tensor) -> torch.Tensor:
        """The nearest cluster of each image ``(b, 1, 28, 28)`` in ``[0, 1]``."""
        from genmnist.clustering import nearest_center

        return nearest_center(self.space(images), self.centers)

    def training_labels(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.cluster_of(images)

    def describe(self) -> dict:
        return {
            "labels": f"clusters 0..{self.num_labels - 1} of the training images, each "
            "sample's drawn with probability shares[label]",
            "null_label": self.null_label,
            "shares": self.shares.float().tolist(),
        }

    def sampling_labels(self, noise: SampleNoise, labels: torch.Tensor | None) -> torch.Tensor:
        """One cluster per sample, drawn by its share of the training set from the
        sample's own noise stream (so sample ``i`` does not depend on the batch)."""
        cumulative = self.shares.float().cumsum(0).to(noise.device)
        uniform = noise.rand(1).squeeze(1) * cumulative[-1]
        return torch.searchsorted(cumulative, uniform, right=True).clamp_(max=self.num_labels - 1)


class ConditionedModel:
    """Mixin for a `GenerativeModel` whose network takes the labels of a ``conditioning``
    component: fits the conditioning (clusters) before a new run."""

    def prepare_training(self, data: InMemoryDataset, resume: bool) -> None:
        """Fit the conditioning on the training split for a new run (a resumed run's
        weights carry it already)."""
        if not resume:
            self.conditioning.prepare(data)


def conditioning_for(
    num_classes: int, clusters: int, cluster_space: str = "pixels"
) -> Conditioning:
    """The conditioning a config describes: class labels (``num_classes > 0``), clusters
    the model finds itself (``clusters > 0``, in ``cluster_space``), or none.

    Raises:
        ConfigError: both are set (a model conditions on one kind of label), or
            ``clusters`` is negative or 1.
    """
    if clusters and num_classes:
        raise ConfigError(
            "clusters are for unconditional models, which find their own labels; a model "
            "with num_classes conditions on the dataset's classes"
        )
    if clusters:
        return ClusterConditioning(clusters, cluster_space)
    if cluster_space != "pixels":
        raise ConfigError(
            f"cluster_space '{cluster_space}' is for models with clusters; set clusters too"
        )
    if num_classes:
        return ClassConditioning(num_classes)
    return Unconditioned()


def drop_labels(labels: torch.Tensor | None, null_label: int, rate: float) -> torch.Tensor | None:
    """Replace a random share ``rate`` of ``labels`` by ``null_label`` (label dropout,
    which teaches the unconditional prediction that classifier-free guidance needs).
    Draws no random numbers when ``rate`` is 0 or there are no labels."""
    if labels is None or rate <= 0:
        return labels
    drop = torch.rand(labels.shape[0], device=labels.device) < rate
    return torch.where(drop, torch.full_like(labels, null_label), labels)
