"""Generative adversarial networks: MLP GAN, DCGAN and class-conditional GAN.

Registered as ``gan-mlp``, ``dcgan``, ``cgan`` and ``gan-sc``: one `GAN` class whose config
names its generator in `genmnist.nn.DECODERS` (the same decoders the VAEs use) and
its discriminator in `genmnist.nn.DISCRIMINATORS`. The generator's raw output goes
through ``tanh``, so images are in ``[-1, 1]`` inside the model (real images are rescaled
to match) and mapped back to ``[0, 1]`` by `GAN.generate`.

Training alternates one discriminator step and one generator step per batch through the
shared trainer (phases ``discriminator`` then ``generator``), with separate learning
rates (TTUR), a choice of objective in `genmnist.losses.GAN_LOSSES`, optional
one-sided label smoothing, R1 or gradient penalty, and spectral norm in the
discriminator. The metrics log gets the discriminator's accuracy on real and fake
images and the diversity of a fixed batch of samples, to catch collapse early.

Two further parts come from their own modules: the labels G and D see come from a
`genmnist.conditioning` component (the dataset's classes, none, or clusters the model
finds itself by k-means: a self-conditioned GAN, unconditional to the user), and the
discriminator can see its inputs through differentiable augmentations named in
`genmnist.nn.augment.AUGMENTATIONS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from genmnist.conditioning import ConditionedModel, conditioning_for
from genmnist.errors import ConfigError
from genmnist.losses import GAN_LOSSES, gradient_penalty, r1_penalty
from genmnist.models.base import GenerativeModel, ModelConfig, SampleNoise
from genmnist.nn import DECODERS, DISCRIMINATORS
from genmnist.nn.augment import augment_pipeline
from genmnist.nn.discriminators import initialise
from genmnist.nn.layers import check_count, check_widths
from genmnist.nn.modes import evaluating
from genmnist.nn.priors import check_temperature
from genmnist.registry import MODELS

if TYPE_CHECKING:
    from genmnist.data import InMemoryDataset
    from genmnist.export import ExportSpec

#: Discriminator regularisers a `GANConfig` can name.
PENALTIES = ("none", "r1", "gp")
#: Seed of the fixed noise behind `GAN.training_metrics`.
METRICS_SEED = 20_240_601


@dataclass
class GANConfig(ModelConfig):
    """Architecture, objective and optimisation of a `GAN`.

    Attributes:
        generator: Generator name in `genmnist.nn.DECODERS` (``mlp``, ``mlp-norm`` or
            ``conv``).
        discriminator: Name in `genmnist.nn.DISCRIMINATORS` (``mlp`` or ``conv``).
        latent_dim: Size of the noise vector ``z ~ N(0, I)``.
        g_hidden_dims: Generator widths (MLP) or channels (conv, as for a VAE decoder).
        d_hidden_dims: Discriminator widths (MLP) or channels per convolution (conv).
        g_activation: Generator activation (e.g. ``relu`` or ``leaky_relu``).
        d_activation: Discriminator activation.
        g_norm: Normalisation in the generator (``batch``, ``group``, ``none``): after
            each transposed convolution (``conv``) or hidden layer (``mlp-norm``); the
            plain ``mlp`` generator has none.
        d_norm: Normalisation in the conv discriminator, after all but the first
            convolution (DCGAN's ``batch``; use ``none`` with spectral norm or a penalty).
        embed_dim: Size of the generator's learned label embedding, appended to ``z``
            (models with classes or clusters).
        clusters: Condition G and D on this many k-means clusters of the training
            images instead of classes (0: off), sampled by their share of the training
            set: a self-conditioned GAN (Liu et al., 2020), unconditional to the user.
        cluster_space: Where k-means finds those clusters: a name in
            `genmnist.clustering.CLUSTER_SPACES` (``pixels``, or ``vae-gmm``: the latent
            space of the shipped ``vae-gmm``, whose clusters are purer by class).
        conditioning: How the discriminator uses labels: ``projection`` or ``embedding``.
        spectral_norm: Spectral normalisation of every discriminator weight.
        d_dropout: Dropout after each discriminator layer.
        minibatch_std: Minibatch standard deviation feature before the discriminator's
            head (Karras et al., 2018).
        d_augment: Differentiable augmentations (names in
            `genmnist.nn.augment.AUGMENTATIONS`, applied in order) of every image the
            discriminator sees in training, real or generated (DiffAugment).
        init: Weight initialisation of both networks: ``dcgan`` (N(0, 0.02), suits the
            conv models) or ``default`` (PyTorch's, better for the MLPs).
        loss: Objective in `genmnist.losses.GAN_LOSSES` (``bce``, ``hinge``).
        real_target: Target of real images in the ``bce`` loss; below 1 is one-sided
            label smoothing (e.g. 0.9).
        penalty: Discriminator regulariser: ``none``, ``r1`` (adds
            ``penalty_weight / 2 * R1``) or ``gp`` (adds ``penalty_weight * GP``).
        penalty_weight: ``gamma`` of R1 or ``lambda`` of the gradient penalty.
        penalty_every: Apply the penalty every this many steps, scaled up to match (lazy
            regularisation, Karras et al., 2020), which makes it cheaper.
        d_lr: Discriminator learning rate (None: ``lr``); ``lr`` is the generator's.
        metrics_samples: Size of the fixed sample batch scored at each logging interval
            (and of the fixed batch of real training images it is compared with).
        temperature: Default scale of the noise ``z`` at sampling. Below 1 (the
            truncation trick of BigGAN, Brock et al., 2019, in its simplest form) gives
            cleaner, more typical samples at a cost in variety; above 1 the reverse.
        epochs: Default number of training epochs.
    """

    generator: str = "conv"
    discriminator: str = "conv"
    latent_dim: int = 64
    g_hidden_dims: tuple[int, ...] = (32, 64, 128)
    d_hidden_dims: tuple[int, ...] = (64, 128)
    g_activation: str = "relu"
    d_activation: str = "leaky_relu"
    g_norm: str = "batch"
    d_norm: str = "batch"
    embed_dim: int = 16
    clusters: int = 0
    cluster_space: str = "pixels"
    conditioning: str = "projection"
    spectral_norm: bool = False
    d_dropout: float = 0.0
    minibatch_std: bool = False
    d_augment: tuple[str, ...] = ()
    init: str = "dcgan"
    loss: str = "bce"
    real_target: float = 1.0
    penalty: str = "none"
    penalty_weight: float = 10.0
    penalty_every: int = 1
    d_lr: float | None = None
    metrics_samples: int = 512
    temperature: float = 1.0
    epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    ema_decay: float | None = 0.999


class GAN(ConditionedModel, GenerativeModel):
    """Generative adversarial network (Goodfellow et al., 2014), convolutional as in DCGAN
    (Radford et al., 2016) or class-conditional (Mirza & Osindero, 2014) with a projection
    discriminator (Miyato & Koyama, 2018).

    Sampling draws ``z ~ N(0, I)`` and returns ``(tanh(G(z)) + 1) / 2``. In eval mode
    (which `sample` sets) BatchNorm uses its running statistics, so each sample
    depends only on its own noise, not on the rest of the batch.
    """

    config_class = GANConfig
    config_version = 2
    sampling_options = ("temperature",)
    default_name = "gan"
    bf16_helps = True  # measured on 2 CPU cores: 1.3x-2x images/s, see docs/models/gan.md
    config: GANConfig

    def __init__(self, config: GANConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        if cfg.latent_dim <= 0:
            raise ConfigError("latent_dim must be positive")
        check_temperature(cfg.temperature)
        self.objective = GAN_LOSSES.get(cfg.loss)  # fails early on an unknown name
        if not 0.0 < cfg.real_target <= 1.0:
            raise ConfigError(f"real_target must be in (0, 1], got {cfg.real_target}")
        if cfg.real_target != 1.0 and not self.objective.smoothing:
            raise ConfigError(f"label smoothing (real_target < 1) does not apply to '{cfg.loss}'")
        if cfg.penalty not in PENALTIES:
            raise ConfigError(
                f"unknown penalty '{cfg.penalty}'; choose from {', '.join(PENALTIES)}"
            )
        if cfg.penalty_every < 1:
            raise ConfigError("penalty_every must be >= 1")
        if cfg.metrics_samples < 0:
            raise ConfigError("metrics_samples must be >= 0")
        check_widths("g_hidden_dims", cfg.g_hidden_dims, allow_empty=True)
        check_widths("d_hidden_dims", cfg.d_hidden_dims, allow_empty=True)
        if cfg.d_lr is not None and not (math.isfinite(cfg.d_lr) and cfg.d_lr >= 0):
            raise ConfigError(f"d_lr must be a number >= 0 or null, got {cfg.d_lr}")
        self.conditioning = conditioning_for(cfg.num_classes, cfg.clusters, cfg.cluster_space)
        self.augment = augment_pipeline(tuple(cfg.d_augment))
        num_labels = self.conditioning.num_labels
        if num_labels:  # a zero-width label embedding would silently ignore the labels
            check_count("embed_dim", cfg.embed_dim)
        cond = cfg.embed_dim if num_labels else 0
        self.label_embedding = nn.Embedding(num_labels, cfg.embed_dim) if cond else None
        self.generator = DECODERS.create(
            cfg.generator,
            in_features=cfg.latent_dim,
            hidden_dims=tuple(cfg.g_hidden_dims),
            cond_features=cond,
            activation=cfg.g_activation,
            norm=cfg.g_norm,
        )
        self.discriminator = DISCRIMINATORS.create(
            cfg.discriminator,
            hidden_dims=tuple(cfg.d_hidden_dims),
            num_classes=num_labels,
            conditioning=cfg.conditioning,
            activation=cfg.d_activation,
            norm=cfg.d_norm,
            spectral_norm=cfg.spectral_norm,
            dropout=cfg.d_dropout,
            init=cfg.init,
            minibatch_std=cfg.minibatch_std,
        )
        initialise(self.generator, cfg.init)  # the discriminator initialises itself
        # Fixed real training images the monitor compares samples with, and their own
        # recall as the level (set by prepare_training; not saved).
        self._monitor_reference: MonitorReference | None = None
        # Fakes of the current step's discriminator phase, reused by its generator phase
        # (as in PyTorch's DCGAN example): saves one generator forward pass per step.
        self._fakes: tuple[int, torch.Tensor, torch.Tensor | None] | None = None

    @classmethod
    def migrate_config(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Version 1 had no ``cluster_space``: its clusters were found on pixels (the
        ``gan-sc`` preset now finds them in a latent space, so the field is spelled out)."""
        if version >= 2:
            return data
        return {**data, "cluster_space": data.get("cluster_space", "pixels")}

    # ----------------------------------------------------------------- generator
    def _cond(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        if self.label_embedding is None:
            return None
        if labels is None:
            raise ConfigError(f"model '{self.name}' is conditional: labels are required")
        return self.label_embedding(labels.long())

    def generate_images(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Generator output ``tanh(G(z))``: images ``(b, 1, 28, 28)`` in ``[-1, 1]``
        (``labels``: the network's, classes or clusters)."""
        return torch.tanh(self.generator(z, self._cond(labels)))

    def generate(
        self, noise: SampleNoise, labels: torch.Tensor | None, temperature: float | None = None
    ) -> torch.Tensor:
        """One batch of images in ``[0, 1]`` from the noise ``z = temperature * N(0, I)``
        that ``noise`` draws for each sample (``temperature``: the config's unless given),
        with ``labels`` for a conditional model."""
        temperature = self.config.temperature if temperature is None else temperature
        check_temperature(temperature)
        labels = self.conditioning.sampling_labels(noise, labels)
        z = noise.randn(self.config.latent_dim) * temperature
        return (self.generate_images(z, labels).float() + 1) / 2

    def export_network(self) -> ExportSpec:
        """The generator: ``z`` (and ``labels``) to images in ``[0, 1]``."""
        from genmnist.export import EXAMPLE_BATCH, ExportSpec

        cfg = self.config
        z = torch.randn(EXAMPLE_BATCH, cfg.latent_dim, generator=torch.Generator().manual_seed(0))
        inputs = {"z": z.to(self.device)}
        doc = {
            "z": f"float32 (batch, {cfg.latent_dim}): noise z = temperature * N(0, I)",
            "images": "float32 (batch, 1, 28, 28): images in [0, 1] (0 is black)",
        }
        if self.conditional:
            labels = torch.arange(EXAMPLE_BATCH) % cfg.num_classes
            inputs["labels"] = labels.to(self.device)
            doc["labels"] = f"int64 (batch,): class labels in 0..{cfg.num_classes - 1}"
        metadata = {"temperature": cfg.temperature}
        return ExportSpec(GeneratorNetwork(self), inputs, "images", doc, metadata)

    def discriminate(
        self, images: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Discriminator logits ``(b,)`` for images in ``[-1, 1]`` (positive: "real");
        ``labels``: the network's (classes or clusters), None for a plain GAN."""
        return self.discriminator(images, labels if self.conditioning.num_labels else None)

    def _critic(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """`discriminate` on the config's augmentations of ``images`` (training only)."""
        if self.augment is not None:
            images = self.augment(images)
        return self.discriminate(images, labels)

    # ----------------------------------------------------------------- training
    def optimizer_groups(self) -> dict[str, Any]:
        generator = list(self.generator.parameters())
        if self.label_embedding is not None:
            generator += list(self.label_embedding.parameters())
        return {"discriminator": self.discriminator.parameters(), "generator": generator}

    def optimizer_options(self, phase: str) -> dict[str, Any]:
        if phase == "discriminator" and self.config.d_lr is not None:
            return {"lr": self.config.d_lr}
        return {}

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, step: int, phase: str = "model"
    ) -> dict[str, torch.Tensor]:
        if phase == "discriminator":
            network_labels = self.conditioning.training_labels(images, labels)
            return self._discriminator_loss(images, network_labels, step)
        if phase == "generator":
            return self.generator_loss(*self.step_fakes(images, labels, step))
        raise ConfigError(f"a GAN trains in phases 'discriminator' and 'generator', not '{phase}'")

    def _discriminator_loss(
        self, images: torch.Tensor, labels: torch.Tensor | None, step: int
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        z = torch.randn(images.shape[0], cfg.latent_dim, device=images.device)
        fakes = self.generate_images(z, labels)  # keeps its graph for the generator phase
        self._fakes = (step, fakes, labels)
        fakes = fakes.detach()
        real = images * 2 - 1
        penalize = cfg.penalty != "none" and step % cfg.penalty_every == 0
        if penalize and cfg.penalty == "r1":
            real.requires_grad_(True)
        real_logits = self._critic(real, labels)
        fake_logits = self._critic(fakes, labels)
        loss = self.objective.discriminator(real_logits, fake_logits, cfg.real_target)
        out = {
            "real_accuracy": (real_logits.detach() > 0).float().mean(),
            "fake_accuracy": (fake_logits.detach() < 0).float().mean(),
        }
        if penalize:
            if cfg.penalty == "r1":
                penalty = r1_penalty(real_logits, real)
                weight = cfg.penalty_weight / 2
            else:
                penalty = gradient_penalty(lambda x: self._critic(x, labels), real.detach(), fakes)
                weight = cfg.penalty_weight
            loss = loss + weight * cfg.penalty_every * penalty
            out[cfg.penalty] = penalty.detach()
        return {"loss": loss, **out}

    def step_fakes(
        self, images: torch.Tensor, labels: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The generator's images ``(fakes in [-1, 1] with their graph, their network
        labels)`` for the generator phase of ``step``: those the discriminator phase of the
        same step drew (each is handed out once), else new ones for the network labels of
        the training batch ``images``, ``labels`` (derived only then: a cluster space's
        encoder need not run twice per step)."""
        if self._fakes is not None and self._fakes[0] == step:
            _, fakes, network_labels = self._fakes
        else:  # called without the discriminator phase first: draw new fakes
            network_labels = self.conditioning.training_labels(images, labels)
            z = torch.randn(images.shape[0], self.config.latent_dim, device=self.device)
            fakes = self.generate_images(z, network_labels)
        self._fakes = None
        return fakes, network_labels

    def generator_loss(
        self, fakes: torch.Tensor, labels: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """The generator's adversarial loss on ``fakes`` (in ``[-1, 1]``), with no
        gradient reaching the discriminator's weights."""
        self.discriminator.requires_grad_(False)
        try:
            fake_logits = self._critic(fakes, labels)
        finally:
            self.discriminator.requires_grad_(True)
        return {
            "loss": self.objective.generator(fake_logits),
            "fooled": (fake_logits.detach() > 0).float().mean(),
        }

    def prepare_training(self, data: InMemoryDataset, resume: bool) -> None:
        """Fit the conditioning (a new run) and pick the real images the collapse monitor
        compares samples with (every run, as they are not saved)."""
        super().prepare_training(data, resume)
        if self.config.metrics_samples >= MIN_MONITOR_SAMPLES:
            self._monitor_reference = MonitorReference.from_data(data, self.config.metrics_samples)

    @torch.no_grad()
    def training_metrics(self, step: int) -> dict[str, float]:
        """Diversity of a fixed batch of samples (same noise every time, from its own
        generators, so the global RNG and thus training are untouched).

        ``sample_diversity`` is the mean RMS pixel distance between two samples of the
        batch (images in ``[0, 1]``; about 0.36 for real MNIST digits); values falling
        towards 0 mean mode collapse. Conditional models also log ``class_diversity``,
        the same among samples of one label (about 0.32 on MNIST), which catches collapse
        within a class that the overall number hides. During training (after
        `prepare_training`) ``sample_recall`` is the improved recall, in pixel space, of
        a fixed batch of real training images by the samples (the share of real images
        inside the samples' k-nearest-neighbour balls) and ``real_recall`` the same for a
        second real batch, the level a healthy generator approaches: a generator that
        draws varied-looking but too few kinds of images keeps its diversity and loses
        recall.
        """
        n = self.config.metrics_samples
        if n < 2:
            return {}
        labels = None
        if self.conditional:
            labels = torch.arange(n, device=self.device) % self.config.num_classes
        noise = SampleNoise(SampleNoise.sample_seeds(n, seed=METRICS_SEED), self.device)
        with evaluating(self):  # BatchNorm on running statistics, as when sampling
            flat = self.generate(noise, labels).float().flatten(1)
        distance = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=flat.device)
        metrics = {"sample_diversity": float(distance[off_diagonal].mean())}
        if labels is not None:
            same = (labels[:, None] == labels[None, :]) & off_diagonal
            if same.any():
                metrics["class_diversity"] = float(distance[same].mean())
        if self._monitor_reference is not None:
            metrics.update(self._monitor_reference.score(flat))
        return metrics

    def training_warnings(self, metrics: dict[str, float]) -> dict[str, str]:
        """A warning when the samples cover less than half the real images that a second
        real batch covers (``sample_recall`` below half of ``real_recall``): the
        generator is dropping modes."""
        recall, level = metrics.get("sample_recall"), metrics.get("real_recall")
        if recall is None or level is None or not recall < COLLAPSE_RECALL_SHARE * level:
            return {}
        return {
            "mode collapse": f"possible mode collapse: the samples cover {recall:.2f} of a "
            f"batch of real images (sample_recall), a second real batch covers {level:.2f}"
        }


#: The monitor's recall needs a few neighbours per point to mean anything.
MIN_MONITOR_SAMPLES = 16
#: Neighbour count of the monitor's k-NN balls (as in `genmnist.metrics.precision_recall`).
MONITOR_NEIGHBOURS = 3
#: `GAN.training_warnings` warns below this share of the real-data recall. Measured with
#: 512 samples on seven trained GANs: the two that dropped modes (evaluator recall 0.07
#: and 0.19) scored 0.21 and 0.27 of the real level, the five healthy ones 0.73-0.95.
COLLAPSE_RECALL_SHARE = 0.5
#: Seed of the real images the monitor compares with.
MONITOR_SEED = 20_200_101


@dataclass
class MonitorReference:
    """Two fixed batches of real training images, flattened in ``[0, 1]``: the one the
    samples are compared with and a second one that shows the real-data level."""

    real: torch.Tensor
    real_radii: torch.Tensor
    real_recall: float

    @classmethod
    def from_data(cls, data: InMemoryDataset, n: int) -> MonitorReference:
        """``n`` images (at most half the split each) drawn with a fixed seed, on the
        CPU (the k-NN search is small)."""
        from genmnist.metrics.distances import kth_neighbour_radii, precision_recall

        n = min(n, len(data) // 2)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(MONITOR_SEED))
        real, _ = data.batch(order[:n])
        other, _ = data.batch(order[n : 2 * n])
        real, other = real.flatten(1).cpu(), other.flatten(1).cpu()
        radii = kth_neighbour_radii(real, MONITOR_NEIGHBOURS)
        _, real_recall = precision_recall(real, other, MONITOR_NEIGHBOURS, real_radii=radii)
        return cls(real, radii, real_recall)

    def score(self, samples: torch.Tensor) -> dict[str, float]:
        """``sample_recall`` of flattened samples in ``[0, 1]`` (NaN when a sample is
        not finite) and ``real_recall``."""
        from genmnist.metrics.distances import precision_recall

        samples = samples.float().cpu()
        if not bool(torch.isfinite(samples).all()):
            return {"sample_recall": math.nan, "real_recall": self.real_recall}
        _, recall = precision_recall(
            self.real, samples, MONITOR_NEIGHBOURS, real_radii=self.real_radii
        )
        return {"sample_recall": recall, "real_recall": self.real_recall}


class GeneratorNetwork(nn.Module):
    """A GAN's sampling network on its own: ``(tanh(G(z, embed(labels))) + 1) / 2``."""

    def __init__(self, gan: GAN) -> None:
        super().__init__()
        self.generator, self.label_embedding = gan.generator, gan.label_embedding

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cond = None if self.label_embedding is None else self.label_embedding(labels)
        return (torch.tanh(self.generator(z, cond).float()) + 1) / 2


MODELS.register(
    "gan-mlp",
    GAN,
    description="MLP GAN: generator 64-256-512-784 (BatchNorm, LeakyReLU, tanh), "
    "spectrally normalised MLP discriminator, hinge loss",
    generator="mlp-norm",
    discriminator="mlp",
    latent_dim=64,
    g_hidden_dims=(256, 512),
    d_hidden_dims=(512, 256),
    g_activation="leaky_relu",
    g_norm="batch",
    init="default",
    loss="hinge",
    spectral_norm=True,
    lr=1e-4,
    d_lr=4e-4,
    betas=(0.0, 0.9),
)
MODELS.register(
    "dcgan",
    GAN,
    description="DCGAN: dense + transposed convs + tanh generator, conv discriminator",
    generator="conv",
    discriminator="conv",
)
MODELS.register(
    "cgan",
    GAN,
    description="Class-conditional DCGAN (label embedding in G, projection discriminator)",
    generator="conv",
    discriminator="conv",
    num_classes=10,
    conditioning="projection",
    real_target=0.9,
)
MODELS.register(
    "gan-sc",
    GAN,
    description="Self-conditioned DCGAN: G and D conditioned on 50 k-means clusters of the "
    "training images in the shipped vae-gmm's latent space, drawn by their share "
    "(unconditional to the user); minibatch std in D",
    generator="conv",
    discriminator="conv",
    clusters=50,
    cluster_space="vae-gmm",
    conditioning="projection",
    minibatch_std=True,
    real_target=0.9,
)
