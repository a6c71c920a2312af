"""k-means clustering of images, for models that condition on clusters they find themselves
(self-guided diffusion and flow, self-conditioned GANs: the models' ``clusters`` field), and
the spaces those clusters are found in.

A *cluster space* (`CLUSTER_SPACES`, named by a model's ``cluster_space`` field) is a frozen
map from images to feature vectors; k-means runs on the features, and a training image's
cluster is the nearest centre of its features. Built-ins:

* ``pixels``: the 784 pixel values.
* ``vae-gmm``: the posterior means of the encoder of the shipped ``vae-gmm`` for the
  training dataset (16 numbers). k-means on pixels puts 4s with 9s and 3s with 5s; on MNIST
  the 50 clusters it finds there are 80.6% pure by digit (each training image counted
  under its cluster's most common digit), the 50 found in this latent space 90.0%, with
  no label used either way.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from genmnist.errors import ConfigError, GenmnistError
from genmnist.registry import Registry

#: Spaces k-means clusters images in, by name: ``cls() -> ClusterSpace``.
CLUSTER_SPACES: Registry[type[ClusterSpace]] = Registry("cluster space")


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


class ClusterSpace(nn.Module):
    """Base class: a frozen map from images ``(b, 1, 28, 28)`` in ``[0, 1]`` to features
    ``(b, dim)``, always in eval mode and never trained (its parameters, if any, do not
    require gradients). A model holds its space as a submodule, so what `fit` loads saves
    with the model's weights."""

    #: Size of a feature vector.
    dim: ClassVar[int]
    #: Lloyd iterations k-means may run in this space (each is cheap in few dimensions).
    kmeans_iterations: ClassVar[int] = 30
    #: Images per forward pass when `features` maps a whole training split.
    chunk: ClassVar[int] = 2000

    def fit(self, dataset: str) -> None:
        """Load what the map needs for the training ``dataset`` (before clustering a new
        run). Default: nothing."""

    def train(self, mode: bool = True) -> ClusterSpace:
        """Stay in eval mode whatever the model around it does (a frozen BatchNorm keeps
        its statistics)."""
        return super().train(False)

    def map(self, images: torch.Tensor) -> torch.Tensor:
        """Features of one batch (override this)."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``(b, dim)`` float32 of images ``(b, 1, 28, 28)`` in ``[0, 1]``,
        computed in float32 without gradients (also inside an autocast region)."""
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            return self.map(images.float()).float()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """`forward` over many images, `chunk` at a time."""
        starts = range(0, len(images), self.chunk)
        return torch.cat([self(images[i : i + self.chunk]) for i in starts])


@CLUSTER_SPACES.register("pixels")
class PixelSpace(ClusterSpace):
    """The pixel values themselves (784 features)."""

    dim = 28 * 28

    def map(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


@CLUSTER_SPACES.register("vae-gmm")
class VAELatentSpace(ClusterSpace):
    """Posterior means of the shipped ``vae-gmm``'s encoder (16 features): clusters by
    shape rather than by where the ink lies.

    The encoder's architecture is fixed here (it is part of the saved weights of every
    model that clusters in this space); `fit` copies the shipped weights for the dataset
    into it.
    """

    model_name: ClassVar[str] = "vae-gmm"
    dim = 16
    kmeans_iterations = 100
    #: The shipped encoder's architecture (`genmnist.nn.encoders.ConvEncoder` options).
    architecture: ClassVar[dict] = {
        "hidden_dims": (32, 64, 128),
        "activation": "relu",
        "norm": "batch",
    }

    def __init__(self) -> None:
        super().__init__()
        from genmnist.nn.encoders import ENCODERS

        # its own RNG state: adding the space must not change how the model's networks
        # are initialised (the weights come from `fit` anyway)
        with torch.random.fork_rng(devices=[]):
            self.encoder = ENCODERS.create("conv", out_features=2 * self.dim, **self.architecture)
        self.encoder.requires_grad_(False)
        self.train(False)

    def fit(self, dataset: str) -> None:
        """Copy the encoder weights of the ``vae-gmm`` shipped for ``dataset``.

        Raises:
            ConfigError: no ``vae-gmm`` ships for ``dataset``, or its encoder is not the
                architecture this space fixes.
        """
        from genmnist.models.loading import load

        try:
            vae = load(self.model_name, dataset=dataset)
        except GenmnistError as exc:
            raise ConfigError(f"cluster space '{self.model_name}': {exc}") from None
        try:
            self.encoder.load_state_dict(vae.encoder.state_dict())
        except RuntimeError:
            raise ConfigError(
                f"cluster space '{self.model_name}': the shipped {self.model_name} for "
                f"{dataset} has another encoder architecture than this space's"
            ) from None

    def map(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)[:, : self.dim]
