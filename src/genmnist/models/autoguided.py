"""Autoguidance: a diffusion model guided at sampling by a weaker version of itself.

Karras et al. (2024, "Guiding a Diffusion Model with a Bad Version of Itself") extrapolate
from a worse model of the same kind, ``x0 = guide + scale * (model - guide)``: where the
two disagree the weaker one is usually wrong, so moving away from it sharpens samples
without the loss of variety that a high classifier-free guidance scale brings. A good guide
is the same U-Net, smaller and trained for a fraction of the steps.

`Autoguided` composes two trained unconditional DDPMs at sampling time; it is saved as a
folder with its own ``config.json`` (the guidance scale) and the two models in the
sub-folders ``model/`` and ``guide/``, each an ordinary model folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genmnist.diffusion import Denoiser, autoguidance
from genmnist.diffusion.guidance import check_scale
from genmnist.errors import ConfigError
from genmnist.io import write_json
from genmnist.models.base import CONFIG_FILE, GenerativeModel, ModelConfig, SampleNoise
from genmnist.models.ddpm import DDPM, SAME_DENOISING
from genmnist.registry import MODELS

MODEL_FOLDER, GUIDE_FOLDER = "model", "guide"


@dataclass
class AutoguidedConfig(ModelConfig):
    """Attributes:
    guidance_scale: Default autoguidance scale; 1 samples from the model alone.
    """

    guidance_scale: float = 2.0


class Autoguided(GenerativeModel):
    """An unconditional DDPM (``model``) guided by a weaker one (``guide``) at sampling.

    Args:
        config: The guidance scale.
        model: The trained model to sample from (default: an untrained `DDPM`).
        guide: A weaker DDPM with the same schedule, timesteps and objective (default: an
            untrained half-width `DDPM`).
        **overrides: Config fields, e.g. ``guidance_scale=2.5``.

    Raises:
        ConfigError: either model is conditional or they denoise differently.
    """

    config_class = AutoguidedConfig
    default_name = "ddpm-autoguided"
    sampling_precision = "bf16"
    sampling_options = ("sampler", "steps", "spacing", "guidance", "callback")
    parts = (MODEL_FOLDER, GUIDE_FOLDER)
    config: AutoguidedConfig

    def __init__(
        self,
        config: AutoguidedConfig | None = None,
        model: DDPM | None = None,
        guide: DDPM | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(config, **overrides)
        check_scale(self.config.guidance_scale)
        self.model = model if model is not None else DDPM()
        self.guide = guide if guide is not None else DDPM(channels=(16, 32, 32))
        for who, part in (("the model", self.model), ("the guide", self.guide)):
            if not isinstance(part, DDPM) or part.conditioning.num_labels:
                raise ConfigError(f"autoguidance needs unconditional DDPMs: {who} is not one")
        if problem := self.model.config.first_difference(self.guide.config, SAME_DENOISING):
            raise ConfigError(f"the guide: {problem}")

    def denoiser(
        self, labels: torch.Tensor | None = None, guidance: float | None = None
    ) -> Denoiser:
        """The model's clean-image estimator, guided by the guide at scale ``guidance``
        (default: the config's). Both estimates are combined before clipping."""
        scale = self.config.guidance_scale if guidance is None else guidance
        guided = autoguidance(self.model.raw_x0, self.guide.raw_x0, scale)
        return lambda x, t: guided(x, t).clamp(-1, 1)

    def generate(
        self,
        noise: SampleNoise,
        labels: torch.Tensor | None,
        sampler: str | None = None,
        steps: int | None = None,
        spacing: str | None = None,
        guidance: float | None = None,
        callback=None,
    ) -> torch.Tensor:
        """Sample one batch; the sampler, steps and spacing default to the model's."""
        denoise = self.denoiser(None, guidance)
        return self.model.sample_with(denoise, noise, sampler, steps, spacing, callback)

    def training_loss(self, images, labels, step, phase="model"):
        raise ConfigError(
            "an autoguided model only samples: train its model and its guide as two "
            "ordinary DDPMs, then combine them with genmnist.models.Autoguided"
        )

    def save_pretrained(
        self, directory: str | os.PathLike[str], dtype: torch.dtype | None = None
    ) -> Path:
        """Write ``config.json`` and the two models as the sub-folders ``model/`` and
        ``guide/`` (``dtype``: as in `GenerativeModel.save_pretrained`)."""
        directory = Path(directory)
        self.model.save_pretrained(directory / MODEL_FOLDER, dtype)
        self.guide.save_pretrained(directory / GUIDE_FOLDER, dtype)
        write_json(directory / CONFIG_FILE, self.config_record())
        return directory


MODELS.register(
    "ddpm-autoguided",
    Autoguided,
    description="Unconditional DDPM guided at sampling by a weaker DDPM (autoguidance); "
    "saved as two model folders",
)
