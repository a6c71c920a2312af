"""Flow matching: ``flow`` (unconditional, or conditioned on clusters it finds in its
training images), ``flow-cfg`` (class-conditional) and ``reflow`` (the defaults of a
student straightened on a flow teacher's samples by `genmnist.distillation.Reflow`:
one or two Euler steps).

The network is the diffusion models' U-Net, trained to predict the velocity of the
straight path from data to noise (`genmnist.flow.LinearPath`); sampling integrates that
velocity from noise to data with an ODE sampler from `genmnist.flow.FLOW_SAMPLERS`. The
conditioning (classes, clusters) and the guidance (classifier-free, limited to a noise
interval) are the parts the diffusion models use. Images are scaled to ``[-1, 1]`` inside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from genmnist.conditioning import conditioning_for, drop_labels
from genmnist.flow import FLOW_SAMPLERS, TIME_DISTRIBUTIONS, LinearPath, flow_times, sample_flow
from genmnist.flow.samplers import Velocity
from genmnist.models.base import GenerativeModel, ModelConfig, SampleNoise
from genmnist.models.guided import LabelGuidance
from genmnist.nn.unet import UNet
from genmnist.registry import MODELS

if TYPE_CHECKING:
    from genmnist.export import ExportSpec


@dataclass
class FlowConfig(ModelConfig):
    """Architecture, training times and sampling defaults of a `FlowMatching` model.

    Attributes:
        channels: U-Net channels per level (28, 14, 7 pixels).
        blocks_per_level: Residual blocks per U-Net level.
        attention_levels: U-Net levels with self-attention.
        dropout: Dropout in residual blocks.
        time_distribution: Where training times fall, a name in
            `genmnist.flow.TIME_DISTRIBUTIONS` (``logit-normal``, ``uniform``).
        label_dropout: Share of training labels replaced by the null label, which teaches
            the unconditional velocity that classifier-free guidance needs.
        clusters: Condition an unconditional model on this many k-means clusters of its
            training images; sampling draws each image's cluster by its share. 0: off.
        cluster_space: Where k-means finds those clusters: a name in
            `genmnist.clustering.CLUSTER_SPACES` (``pixels``, or ``vae-gmm``: the latent
            space of the shipped ``vae-gmm``, whose clusters are purer by class).
        sampler: Default ODE sampler, a name in `genmnist.flow.FLOW_SAMPLERS`.
        sampling_steps: Default number of sampler steps (``euler`` evaluates the network
            once per step, ``midpoint`` and ``heun`` twice).
        time_shift: Default spacing of the sampling times (see `genmnist.flow.flow_times`):
            1 even, above 1 more steps near pure noise.
        guidance_scale: Default classifier-free guidance scale (models with labels or
            clusters trained with label dropout); 1 turns guidance off.
        guidance_interval: Default log-SNR interval ``[low, high]`` outside which guidance
            is off (see `genmnist.diffusion.guidance.limited_interval`); None: everywhere.
        epochs: Default number of training epochs.
    """

    channels: tuple[int, ...] = (32, 64, 64)
    blocks_per_level: int = 1
    attention_levels: tuple[int, ...] = (2,)
    dropout: float = 0.0
    time_distribution: str = "logit-normal"
    label_dropout: float = 0.1
    clusters: int = 0
    cluster_space: str = "pixels"
    sampler: str = "midpoint"
    sampling_steps: int = 4
    time_shift: float = 1.0
    guidance_scale: float = 1.0
    guidance_interval: tuple[float, float] | None = None
    epochs: int = 10
    lr: float = 2e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 200
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999


class FlowMatching(LabelGuidance, GenerativeModel):
    """Flow matching (Lipman et al., 2023) on the straight path of rectified flow (Liu et
    al., 2022): a U-Net learns the velocity ``eps - x`` of ``x_t = (1 - t) x + t eps`` by
    regression, and sampling follows it from noise to data with an ODE sampler. Conditioned
    on class labels or its own clusters (or nothing), with classifier-free guidance, limited
    to a noise interval if asked, when trained with label dropout."""

    config_class = FlowConfig
    default_name = "flow"
    bf16_helps = True  # the same U-Net as the diffusion models
    sampling_precision = "bf16"
    #: Whether the U-Net also embeds a step length (`genmnist.models.MeanFlow` does).
    interval_embedding = False
    sampling_options = (
        "sampler",
        "steps",
        "time_shift",
        "guidance",
        "guidance_interval",
        "callback",
    )
    config: FlowConfig

    def __init__(self, config: FlowConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        self.path = LinearPath()
        self.time_distribution = TIME_DISTRIBUTIONS.get(cfg.time_distribution)
        self.check_sampler(cfg.sampler)  # fail early on an unknown default sampler
        flow_times(cfg.sampling_steps, cfg.time_shift)  # ... and on unusable step settings
        self.check_guidance_defaults()
        self.conditioning = conditioning_for(cfg.num_classes, cfg.clusters, cfg.cluster_space)
        self.unet = UNet(
            channels=tuple(cfg.channels),
            blocks_per_level=cfg.blocks_per_level,
            attention_levels=tuple(cfg.attention_levels),
            num_classes=self.conditioning.num_labels,
            dropout=cfg.dropout,
            interval_embedding=self.interval_embedding,
        )

    @staticmethod
    def check_sampler(name: str) -> None:
        """Raise `RegistryError` unless ``name`` is a sampler this model has."""
        FLOW_SAMPLERS.get(name)

    # ----------------------------------------------------------------- velocity
    def predict_velocity(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The U-Net's velocity at ``x_t`` for times ``t`` ``(b,)`` in ``[0, 1]``."""
        return self.unet(x, t * self.path.time_scale, labels).float()

    def velocity(
        self,
        labels: torch.Tensor | None = None,
        guidance: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
    ) -> Velocity:
        """The velocity field ``v = velocity(x_t, t)`` that samplers integrate, for the
        network's ``labels`` (classes or clusters), with classifier-free guidance at scale
        ``guidance`` limited to ``guidance_interval`` (defaults: the config's) when the
        model takes guidance.

        Raises:
            ConfigError: guidance is asked of a model that takes none, or its values are
                not usable.
        """
        return self.guided(self.predict_velocity, labels, guidance, guidance_interval, self.path)

    def export_network(self) -> ExportSpec:
        """The velocity network: ``(x_t, t[, labels])`` to the velocity at times ``t`` in
        ``[0, 1]``; the path and the labels' meaning are in the metadata, enough to write
        an ODE sampler around it."""
        from genmnist.export import EXAMPLE_BATCH, ExportSpec

        cfg = self.config
        x = torch.randn(EXAMPLE_BATCH, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        inputs = {"x_t": x, "t": torch.tensor([1.0, 0.3])}
        doc = {
            "x_t": "float32 (batch, 1, 28, 28): (1 - t) * x0 + t * eps, x0 in [-1, 1] "
            "(2 * image - 1), eps ~ N(0, I); pure noise at t = 1",
            "t": "float32 (batch,): times in [0, 1], 1 is noise and 0 data",
            "velocity": "float32 (batch, 1, 28, 28): dx_t/dt; integrate from t = 1 to 0 "
            "(Euler: x += (t_next - t) * velocity), then map x0 to [0, 1] with (x0 + 1) / 2",
        }
        self.describe_label_input(inputs, doc, "velocity")
        metadata = {
            "path": "x_t = (1 - t) * x0 + t * eps",
            "conditioning": self.conditioning.describe(),
            "guidance_scale": None if self.guidance_problem else cfg.guidance_scale,
            "guidance_interval": cfg.guidance_interval,
            "sampler": cfg.sampler,
            "sampling_steps": cfg.sampling_steps,
            "time_shift": cfg.time_shift,
        }
        inputs = {name: tensor.to(self.device) for name, tensor in inputs.items()}
        network = VelocityNetwork(self.unet, self.path.time_scale)
        return ExportSpec(network, inputs, "velocity", doc, metadata)

    # ----------------------------------------------------------------- training
    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, step: int, phase: str = "model"
    ) -> dict[str, torch.Tensor]:
        x = images * 2 - 1
        eps = torch.randn_like(x)
        t = self.time_distribution(x.shape[0], x.device)
        cond = self.conditioning.training_labels(images, labels)
        cond = drop_labels(cond, self.conditioning.null_label, self.config.label_dropout)
        prediction = self.predict_velocity(self.path.interpolate(x, eps, t), t, cond)
        return {"loss": torch.mean((prediction - self.path.velocity(x, eps)) ** 2)}

    # ----------------------------------------------------------------- sampling
    def generate(
        self,
        noise: SampleNoise,
        labels: torch.Tensor | None,
        sampler: str | None = None,
        steps: int | None = None,
        time_shift: float | None = None,
        guidance: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Sample one batch from per-sample ``noise`` (``labels``: conditional models);
        sampler, steps, time shift, guidance scale and interval default to the config's;
        ``callback(i, x_t, x0_hat)`` sees each step, images in ``[0, 1]``."""
        cfg = self.config
        labels = self.conditioning.sampling_labels(noise, labels)
        velocity = self.velocity(labels, guidance, guidance_interval)
        sample_fn = FLOW_SAMPLERS.get(cfg.sampler if sampler is None else sampler)
        shift = cfg.time_shift if time_shift is None else time_shift
        times = flow_times(cfg.sampling_steps if steps is None else steps, shift)
        return sample_flow(sample_fn, velocity, noise, times, callback)


class VelocityNetwork(torch.nn.Module):
    """A flow model's U-Net on its own, on times in ``[0, 1]``, returning float32."""

    def __init__(self, unet: UNet, time_scale: float) -> None:
        super().__init__()
        self.unet = unet
        self.time_scale = time_scale

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.unet(x_t, t * self.time_scale, labels).float()


MODELS.register(
    "flow",
    FlowMatching,
    description="Flow matching (rectified flow): U-Net velocity, few-step ODE sampling; "
    "may condition on k-means clusters of its training images",
)
MODELS.register(
    "flow-cfg",
    FlowMatching,
    description="Class-conditional flow matching with classifier-free guidance",
    num_classes=10,
)
MODELS.register(
    "reflow",
    FlowMatching,
    description="Reflowed flow matching: a flow model trained on a flow teacher's "
    "noise-image pairs (the reflow training task), sampled in one or two Euler steps",
    label_dropout=0.0,
    time_distribution="uniform",
    sampler="euler",
    sampling_steps=2,
)
