"""Denoising diffusion: ``ddpm`` (unconditional, or conditioned on clusters it finds in its
training images) and ``ddpm-cfg`` (class-conditional).

Every part is named in `DDPMConfig` and looked up in a registry (`SCHEDULES`,
`OBJECTIVES`, `DIFFUSION_WEIGHTINGS`, `SAMPLERS`); the conditioning is a
`genmnist.conditioning` component and guidance a `genmnist.diffusion.guidance` wrapper.
Autoguidance is `genmnist.models.autoguided`, guidance distillation a training task
(`genmnist.distillation`). Images are scaled to ``[-1, 1]`` inside.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from genmnist.conditioning import conditioning_for, drop_labels
from genmnist.diffusion import (
    OBJECTIVES,
    SAMPLERS,
    SCHEDULES,
    Denoiser,
    sample_images,
    spaced_timesteps,
)
from genmnist.diffusion.samplers import check_spacing
from genmnist.errors import CheckpointError, ConfigError
from genmnist.losses import DIFFUSION_WEIGHTINGS, diffusion_mse
from genmnist.models.base import GenerativeModel, ModelConfig, SampleNoise
from genmnist.models.guided import LabelGuidance
from genmnist.nn.layers import check_count
from genmnist.nn.unet import UNet
from genmnist.registry import MODELS

if TYPE_CHECKING:
    from genmnist.export import ExportSpec

#: Config fields two DDPMs must share for one's denoiser to stand in for the other's
#: (a guide and its model, a teacher and its student): the same noise levels and output.
SAME_DENOISING = ("schedule", "timesteps", "objective")


@dataclass
class DDPMConfig(ModelConfig):
    """Architecture, objective and sampling defaults of a `DDPM`.

    Attributes:
        schedule: Noise schedule name (``cosine``, ``linear``, ``sigmoid``).
        timesteps: Number of discrete diffusion steps ``T``.
        objective: What the U-Net predicts (``v``, ``eps``, ``x0``).
        loss_weighting: ``min-snr`` or ``uniform``.
        min_snr_gamma: The γ of min-SNR-γ weighting.
        channels: U-Net channels per level (28, 14, 7 pixels).
        blocks_per_level: Residual blocks per U-Net level.
        attention_levels: U-Net levels with self-attention.
        dropout: Dropout in residual blocks.
        label_dropout: Share of training labels replaced by the null label, which teaches
            the unconditional prediction that classifier-free guidance needs. A model
            trained without it (0, as a guidance-distilled student is) takes no guidance.
        clusters: Condition an unconditional model on this many clusters of its training
            images, found by k-means before training (self-guidance, Hu et al., 2023);
            sampling draws each image's cluster by its share, so users still sample
            without labels. 0: off.
        cluster_space: Where k-means finds those clusters: a name in
            `genmnist.clustering.CLUSTER_SPACES` (``pixels``, or ``vae-gmm``: the latent
            space of the shipped ``vae-gmm``, whose clusters are purer by class).
        sampler: Default sampler name.
        sampling_steps: Default number of sampling steps.
        spacing: How the sampling steps are spread over ``t`` (``uniform``, ``trailing``
            or ``log-snr``, see `spaced_timesteps`).
        guidance_scale: Default classifier-free guidance scale (models with labels or
            clusters); 1 turns guidance off.
        guidance_interval: Default log-SNR interval ``[low, high]`` outside which guidance
            is off (see `limited_interval`); None: guide at every step.
        epochs: Default number of training epochs.
    """

    schedule: str = "cosine"
    timesteps: int = 1000
    objective: str = "v"
    loss_weighting: str = "min-snr"
    min_snr_gamma: float = 5.0
    channels: tuple[int, ...] = (32, 64, 64)
    blocks_per_level: int = 1
    attention_levels: tuple[int, ...] = (2,)
    dropout: float = 0.0
    label_dropout: float = 0.1
    clusters: int = 0
    cluster_space: str = "pixels"
    sampler: str = "dpmpp-2m"
    sampling_steps: int = 20
    spacing: str = "uniform"
    guidance_scale: float = 2.0
    guidance_interval: tuple[float, float] | None = None
    epochs: int = 10
    lr: float = 2e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 200
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999


class DDPM(LabelGuidance, GenerativeModel):
    """Denoising diffusion probabilistic model (Ho et al., 2020) with a U-Net denoiser, any
    registered schedule, objective and sampler, conditioned on class labels or its own
    clusters (or nothing), with classifier-free guidance (Ho & Salimans, 2022), limited to
    a noise interval if asked, when it was trained with label dropout."""

    config_class = DDPMConfig
    config_version = 2
    default_name = "ddpm"
    bf16_helps = True
    sampling_precision = "bf16"
    sampling_options = ("sampler", "steps", "spacing", "guidance", "guidance_interval", "callback")
    config: DDPMConfig

    def __init__(self, config: DDPMConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        self.schedule = SCHEDULES.create(cfg.schedule, timesteps=cfg.timesteps)
        check_count("sampling_steps", cfg.sampling_steps)
        if cfg.sampling_steps > cfg.timesteps:
            raise ConfigError(
                f"sampling_steps ({cfg.sampling_steps}) cannot exceed timesteps ({cfg.timesteps})"
            )
        if not (math.isfinite(cfg.min_snr_gamma) and cfg.min_snr_gamma > 0):
            raise ConfigError(f"min_snr_gamma must be a positive number, got {cfg.min_snr_gamma}")
        self.objective = OBJECTIVES.get(cfg.objective)
        self.weighting = DIFFUSION_WEIGHTINGS.get(cfg.loss_weighting)
        SAMPLERS.get(cfg.sampler)  # fail early on an unknown default sampler
        check_spacing(cfg.spacing)
        self.check_guidance_defaults()
        self.conditioning = conditioning_for(cfg.num_classes, cfg.clusters, cfg.cluster_space)
        self.unet = UNet(
            channels=tuple(cfg.channels),
            blocks_per_level=cfg.blocks_per_level,
            attention_levels=tuple(cfg.attention_levels),
            num_classes=self.conditioning.num_labels,
            dropout=cfg.dropout,
        )

    @classmethod
    def migrate_config(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Version 1 kept guidance distillation (``distill_teacher``, ``distill_guidance``)
        and an autoguidance guide (``guide_channels``) in the model's config. A distilled
        model is now an ordinary model trained without label dropout (its guidance is
        built in), and a guide is a model of its own (`genmnist.models.autoguided`)."""
        if version >= 2:
            return data
        data = dict(data)
        if data.pop("guide_channels", None):
            raise CheckpointError(
                "this DDPM was saved with an autoguidance guide inside it by an older "
                "genmnist; save the model and its guide as two folders and combine them "
                "with genmnist.models.Autoguided"
            )
        if data.pop("distill_teacher", ""):
            data["label_dropout"] = 0.0
        data.pop("distill_guidance", None)
        return data

    @classmethod
    def migrate_weights(cls, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Version 1 kept a self-guided model's clusters as top-level buffers."""
        renamed = {
            "cluster_centers": "conditioning.centers",
            "cluster_shares": "conditioning.shares",
        }
        return {renamed.get(key, key): value for key, value in tensors.items()}

    # ----------------------------------------------------------------- denoising
    def _alpha_sigma(self, t: torch.Tensor, like: torch.Tensor):
        alpha = self.schedule.alpha(t.cpu()).to(like.device, torch.float32)
        sigma = self.schedule.sigma(t.cpu()).to(like.device, torch.float32)
        return alpha[:, None, None, None], sigma[:, None, None, None]

    def predict_x0(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The U-Net's estimate of clean data (in ``[-1, 1]``, clipped) from ``x_t``."""
        return self.raw_x0(x, t, labels).clamp(-1, 1)

    def raw_x0(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The U-Net's estimate of clean data from ``x_t``, unclipped (for guidance methods
        that extrapolate between two models before clipping)."""
        alpha, sigma = self._alpha_sigma(t, x)
        return self.objective.to_x0(self.unet(x, t, labels).float(), x, alpha, sigma)

    def denoiser(
        self,
        labels: torch.Tensor | None = None,
        guidance: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
    ) -> Denoiser:
        """The clean-image estimator ``x0 = denoise(x_t, t)`` that samplers call, for the
        network's ``labels`` (classes or clusters), with classifier-free guidance at scale
        ``guidance`` limited to ``guidance_interval`` (defaults: the config's) when the
        model takes guidance.

        Raises:
            ConfigError: guidance is asked of a model that takes none, or its values are
                not usable.
        """
        return self.guided(self.predict_x0, labels, guidance, guidance_interval, self.schedule)

    def export_network(self) -> ExportSpec:
        """The U-Net: ``(x_t, t[, labels])`` to its raw output (what ``objective``
        predicts); the schedule's ``alpha_t``, ``sigma_t`` and the labels' meaning are in
        the metadata, enough to write a sampler around it."""
        from genmnist.export import EXAMPLE_BATCH, ExportSpec

        cfg, T = self.config, self.schedule.timesteps
        steps = torch.arange(T)
        x = torch.randn(EXAMPLE_BATCH, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        inputs = {"x_t": x, "t": torch.tensor([T - 1, T // 3])}
        doc = {
            "x_t": "float32 (batch, 1, 28, 28): noisy images alpha_t * x0 + sigma_t * eps, "
            "x0 in [-1, 1] (2 * image - 1), eps ~ N(0, I); at t = T - 1 nearly pure noise",
            "t": f"int64 (batch,): diffusion steps in 0..{T - 1}",
            "prediction": f"float32 (batch, 1, 28, 28): the '{cfg.objective}' prediction; "
            f"{self.objective.formula}, then clip x0 to [-1, 1] and map to [0, 1] "
            "with (x0 + 1) / 2",
        }
        conditioning = self.conditioning.describe()
        self.describe_label_input(inputs, doc, "prediction")
        metadata = {
            "objective": cfg.objective,
            "schedule": cfg.schedule,
            "timesteps": T,
            "alpha": self.schedule.alpha(steps).tolist(),
            "sigma": self.schedule.sigma(steps).tolist(),
            "conditioning": conditioning,
            "guidance_scale": None if self.guidance_problem else cfg.guidance_scale,
        }
        inputs = {name: tensor.to(self.device) for name, tensor in inputs.items()}
        return ExportSpec(DenoisingNetwork(self.unet), inputs, "prediction", doc, metadata)

    # ----------------------------------------------------------------- training
    def add_noise(self, x0: torch.Tensor):
        """Noise clean images ``x0`` (in ``[-1, 1]``) to random steps: returns ``(x_t, t,
        eps)``."""
        t = torch.randint(0, self.schedule.timesteps, (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        alpha, sigma = self._alpha_sigma(t, x0)
        return alpha * x0 + sigma * eps, t, eps

    def denoising_loss(self, x_t, t, labels, x0, eps=None) -> torch.Tensor:
        """The weighted regression of the U-Net's output at ``(x_t, t, labels)`` onto the
        objective's target for clean images ``x0`` and noise ``eps`` (default: the noise
        that ``x0`` implies in ``x_t``, for targets that are not the data's)."""
        alpha, sigma = self._alpha_sigma(t, x_t)
        if eps is None:
            eps = (x_t - alpha * x0) / sigma
        target = self.objective.target(x0, eps, alpha, sigma)
        weights = self.weighting(
            self.schedule.log_snr(t.cpu()).to(x_t.device), self.objective.name,
            self.config.min_snr_gamma,
        )  # fmt: skip
        return diffusion_mse(self.unet(x_t, t, labels), target, weights)

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, step: int, phase: str = "model"
    ) -> dict[str, torch.Tensor]:
        x0 = images * 2 - 1
        x_t, t, eps = self.add_noise(x0)
        cond = self.conditioning.training_labels(images, labels)
        cond = drop_labels(cond, self.conditioning.null_label, self.config.label_dropout)
        return {"loss": self.denoising_loss(x_t, t, cond, x0, eps)}

    # ----------------------------------------------------------------- sampling
    def generate(
        self,
        noise: SampleNoise,
        labels: torch.Tensor | None,
        sampler: str | None = None,
        steps: int | None = None,
        spacing: str | None = None,
        guidance: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Sample one batch from per-sample ``noise`` (``labels``: conditional models);
        sampler, steps, spacing, guidance scale and interval default to the config's;
        ``callback(i, x_t, x0_hat)`` sees each step, images in ``[0, 1]``."""
        labels = self.conditioning.sampling_labels(noise, labels)
        denoise = self.denoiser(labels, guidance, guidance_interval)
        return self.sample_with(denoise, noise, sampler, steps, spacing, callback)

    def sample_with(
        self,
        denoise: Denoiser,
        noise: SampleNoise,
        sampler: str | None = None,
        steps: int | None = None,
        spacing: str | None = None,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Run a sampler over ``denoise`` on this model's schedule, with the sampler, steps
        and spacing given or the config's (for composites that guide this model)."""
        cfg = self.config
        sample_fn = SAMPLERS.get(cfg.sampler if sampler is None else sampler)
        steps = cfg.sampling_steps if steps is None else steps  # 0 is refused, not "default"
        spacing = cfg.spacing if spacing is None else spacing
        timesteps = spaced_timesteps(self.schedule.timesteps, steps, spacing, self.schedule)
        return sample_images(sample_fn, denoise, noise, self.schedule, timesteps, callback)


class DenoisingNetwork(torch.nn.Module):
    """A DDPM's U-Net on its own, returning float32 whatever precision it ran in."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.unet(x_t, t, labels).float()


MODELS.register(
    "ddpm",
    DDPM,
    description="Unconditional DDPM: U-Net, cosine schedule, v-objective, DPM-Solver++ "
    "sampling; may condition on k-means clusters of its training images",
)
MODELS.register(
    "ddpm-cfg",
    DDPM,
    description="Class-conditional DDPM with classifier-free guidance",
    num_classes=10,
    # Best FID with >= 99% conditional accuracy for the shipped weights (see its card).
    guidance_scale=1.5,
)
