"""Metrics from the evaluator's class probabilities: Inception Score, acceptability,
class coverage and mode collapse, conditional accuracy.

All functions take a probability matrix ``(n, num_classes)`` (rows sum to 1), as returned
by :meth:`genmnist.metrics.classifier.EvaluatorNet.extract`.
"""

from __future__ import annotations

import math

import torch

from genmnist.errors import ConfigError

#: Confidence above which a sample counts as an acceptable instance of its class.
ACCEPT_THRESHOLD = 0.9
#: A class is covered when it receives at least this fraction of its fair share.
COVERAGE_FRACTION = 0.25


def _check(probs: torch.Tensor) -> torch.Tensor:
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ConfigError(f"expected probabilities (n, classes), got {tuple(probs.shape)}")
    return probs.double()


def inception_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Classifier Inception Score ``exp(E_x KL(p(y|x) || p(y)))``: ``(mean, std)`` over
    ``splits`` equal parts (Salimans et al., 2016), computed with our classifier.

    Ranges from 1 (every sample looks the same, or the classifier is unsure) to the number
    of classes (confident predictions, classes balanced). Real MNIST scores close to 10.
    """
    probs = _check(probs)
    splits = max(1, min(splits, probs.shape[0]))
    scores = []
    for part in probs.chunk(splits):
        marginal = part.mean(dim=0, keepdim=True)
        kl = (part * (part.clamp_min(1e-12).log() - marginal.clamp_min(1e-12).log())).sum(1)
        scores.append(math.exp(float(kl.mean())))
    values = torch.tensor(scores, dtype=torch.float64)
    return float(values.mean()), float(values.std(unbiased=False)) if len(scores) > 1 else 0.0


def acceptability(probs: torch.Tensor, threshold: float = ACCEPT_THRESHOLD) -> float:
    """Share of samples the classifier assigns to some class with confidence ``>= threshold``."""
    return float((_check(probs).max(dim=1).values >= threshold).double().mean())


def class_histogram(probs: torch.Tensor) -> list[float]:
    """Share of samples predicted as each class (argmax), summing to 1."""
    probs = _check(probs)
    counts = torch.bincount(probs.argmax(dim=1), minlength=probs.shape[1]).double()
    return (counts / counts.sum()).tolist()


def class_coverage(
    probs: torch.Tensor, fraction: float = COVERAGE_FRACTION
) -> dict[str, float | bool | list[float]]:
    """Class balance of a sample set, to catch mode collapse.

    Returns:
        ``class_histogram`` (share per class), ``coverage`` (share of classes that get at
        least ``fraction`` of their fair share ``1 / classes``), ``class_entropy`` (entropy
        of the histogram divided by ``log(classes)``: 1 when balanced, 0 when one class
        only), ``rarest_class_share`` (share of the rarest class; ``1 / classes`` when
        balanced) and ``mode_collapse`` (True when some class is not covered).
    """
    histogram = class_histogram(probs)
    k = len(histogram)
    shares = torch.tensor(histogram, dtype=torch.float64)
    nonzero = shares[shares > 0]
    entropy = max(0.0, float(-(nonzero * nonzero.log()).sum()) / math.log(k)) if k > 1 else 1.0
    coverage = float((shares >= fraction / k).double().mean())
    return {
        "class_histogram": histogram,
        "coverage": coverage,
        "class_entropy": entropy,
        "rarest_class_share": float(shares.min()),
        "mode_collapse": coverage < 1.0,
    }


def conditional_accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of samples of a conditional model classified as the label they were drawn for."""
    probs = _check(probs)
    labels = torch.as_tensor(labels).flatten()
    if labels.shape[0] != probs.shape[0]:
        raise ConfigError(f"got {labels.shape[0]} labels for {probs.shape[0]} samples")
    return float((probs.argmax(dim=1) == labels).double().mean())
