"""Diffusion building blocks: noise schedules, objectives and samplers (all plain data or
plain functions, registered by name)."""

from genmnist.diffusion.objectives import OBJECTIVES, Objective
from genmnist.diffusion.samplers import (
    SAMPLERS,
    SPACINGS,
    autoguidance,
    classifier_free_guidance,
    spaced_timesteps,
)
from genmnist.diffusion.schedules import SCHEDULES, NoiseSchedule

__all__ = [
    "OBJECTIVES",
    "SAMPLERS",
    "SCHEDULES",
    "SPACINGS",
    "NoiseSchedule",
    "Objective",
    "autoguidance",
    "classifier_free_guidance",
    "spaced_timesteps",
]
