"""Assembled models, and the functions that make and load them by name.

Importing this package registers the built-in models in `genmnist.registry.MODELS`.
"""

from __future__ import annotations

from genmnist.models.autoguided import Autoguided, AutoguidedConfig
from genmnist.models.base import GenerativeModel, ModelConfig, SampleNoise
from genmnist.models.ddpm import DDPM, DDPMConfig
from genmnist.models.flow import FlowConfig, FlowMatching
from genmnist.models.gan import GAN, GANConfig
from genmnist.models.loading import (
    CARD_FILE,
    DATASETS,
    create_model,
    load,
    model_card,
    pretrained_dir,
    saved_config,
)
from genmnist.models.meanflow import MeanFlow, MeanFlowConfig
from genmnist.models.vae import VAE, VAEConfig

__all__ = [
    "CARD_FILE",
    "DATASETS",
    "Autoguided",
    "AutoguidedConfig",
    "DDPM",
    "DDPMConfig",
    "FlowConfig",
    "FlowMatching",
    "GAN",
    "GANConfig",
    "VAE",
    "GenerativeModel",
    "MeanFlow",
    "MeanFlowConfig",
    "ModelConfig",
    "SampleNoise",
    "VAEConfig",
    "create_model",
    "load",
    "model_card",
    "pretrained_dir",
    "saved_config",
]
