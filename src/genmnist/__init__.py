"""genmnist: generative models for MNIST-sized images.

Heavy modules (torch) load on first use, so ``import genmnist`` and the CLI stay fast:

    import genmnist
    model = genmnist.load("vae-conv")          # shipped weights
    images = model.sample(16, seed=0)          # (16, 1, 28, 28) in [0, 1]
"""

from __future__ import annotations

import importlib
from typing import Any

from genmnist._version import __version__

_EXPORTS = {
    "load": "genmnist.models",
    "create_model": "genmnist.models",
    "GenerativeModel": "genmnist.models.base",
    "ModelConfig": "genmnist.models.base",
    "DDPM": "genmnist.models.ddpm",
    "DDPMConfig": "genmnist.models.ddpm",
    "Autoguided": "genmnist.models.autoguided",
    "FlowMatching": "genmnist.models.flow",
    "FlowConfig": "genmnist.models.flow",
    "MeanFlow": "genmnist.models.meanflow",
    "MeanFlowConfig": "genmnist.models.meanflow",
    "GAN": "genmnist.models.gan",
    "GANConfig": "genmnist.models.gan",
    "VAE": "genmnist.models.vae",
    "VAEConfig": "genmnist.models.vae",
    "MODELS": "genmnist.registry",
    "Registry": "genmnist.registry",
    "Trainer": "genmnist.training",
    "TrainOptions": "genmnist.training",
    "load_dataset": "genmnist.data",
    "evaluate": "genmnist.metrics",
    "GenmnistError": "genmnist.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'genmnist' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
