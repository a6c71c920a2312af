"""Diffusion building blocks: noise schedules, objectives, samplers and guidance (all
plain data or plain functions over a denoiser, registered by name where there is a
choice)."""

from genmnist.diffusion.guidance import (
    Denoiser,
    autoguidance,
    classifier_free_guidance,
    limited_interval,
)
from genmnist.diffusion.objectives import OBJECTIVES, Objective
from genmnist.diffusion.samplers import SAMPLERS, SPACINGS, sample_images, spaced_timesteps
from genmnist.diffusion.schedules import SCHEDULES, NoiseSchedule

__all__ = [
    "OBJECTIVES",
    "SAMPLERS",
    "SCHEDULES",
    "SPACINGS",
    "Denoiser",
    "NoiseSchedule",
    "Objective",
    "autoguidance",
    "classifier_free_guidance",
    "limited_interval",
    "sample_images",
    "spaced_timesteps",
]
