"""Evaluation of generative models on MNIST-sized images.

Every metric is computed with genmnist's own evaluator classifier for the dataset (see
:mod:`genmnist.metrics.classifier`), not InceptionV3::

    from genmnist.metrics import evaluate
    result = evaluate(genmnist.load("vae-conv"), "mnist", n=10000)
    result["fid"], result["fid_floor"], result["acceptability"]

Building blocks, for images or features from anywhere:

* :func:`evaluate_images`: images made anywhere, measured as :func:`evaluate` measures a
  model (read files of them with :func:`genmnist.metrics.image_files.read_images`);
* :func:`image_metrics` and :func:`real_floor`: all sample metrics of a batch of images,
  and of real training images (the floor);
* :func:`frechet_distance`, :func:`kernel_distance`, :func:`precision_recall`: on features;
* :func:`inception_score`, :func:`acceptability`, :func:`class_coverage`,
  :func:`conditional_accuracy`: on class probabilities;
* :func:`vae_metrics`, :func:`training_stability`: on a VAE and on a run's training log.
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use (PEP 562), so `python -m genmnist.metrics.classifier` does not import
# its own module twice and `import genmnist.metrics` stays cheap.
_EXPORTS = {
    "acceptability": "genmnist.metrics.classification",
    "class_coverage": "genmnist.metrics.classification",
    "class_histogram": "genmnist.metrics.classification",
    "conditional_accuracy": "genmnist.metrics.classification",
    "inception_score": "genmnist.metrics.classification",
    "EvaluatorConfig": "genmnist.metrics.classifier",
    "EvaluatorNet": "genmnist.metrics.classifier",
    "load_evaluator": "genmnist.metrics.classifier",
    "train_evaluator": "genmnist.metrics.classifier",
    "frechet_distance": "genmnist.metrics.distances",
    "kernel_distance": "genmnist.metrics.distances",
    "precision_recall": "genmnist.metrics.distances",
    "DEFAULT_N": "genmnist.metrics.evaluation",
    "METRICS": "genmnist.metrics.evaluation",
    "SmallSampleWarning": "genmnist.metrics.evaluation",
    "evaluate": "genmnist.metrics.evaluation",
    "evaluate_images": "genmnist.metrics.evaluation",
    "image_metrics": "genmnist.metrics.evaluation",
    "real_features": "genmnist.metrics.evaluation",
    "real_floor": "genmnist.metrics.evaluation",
    "read_metrics": "genmnist.metrics.stability",
    "training_stability": "genmnist.metrics.stability",
    "vae_metrics": "genmnist.metrics.vae",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'genmnist.metrics' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
