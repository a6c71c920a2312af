"""One entry point that measures a model: :func:`evaluate`.

It draws ``n`` samples, passes them and the real test set through the dataset's evaluator
classifier once, and computes every metric from those features and probabilities, each
next to its *real-data floor*: the same metric for ``n`` real training images against the
test set, the best a generator can hope for at that sample size.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genmnist.errors import ConfigError
from genmnist.io import to_json_value
from genmnist.metrics import classification, distances
from genmnist.metrics.classifier import EvaluatorNet, load_evaluator
from genmnist.metrics.image_files import as_unit_images
from genmnist.run_folder import holds_metrics
from genmnist.values import whole_labels, whole_number

#: Sample count of the reference protocol (the size of the test split).
DEFAULT_N = 10000
#: Below this many samples evaluation still runs but is refused for anything but quick checks.
MIN_N = 10


class SmallSampleWarning(UserWarning):
    """Fewer samples than the 10,000 of the reference protocol: FID is biased upwards."""


@dataclass(frozen=True)
class MetricInfo:
    """How to show and compare one metric."""

    label: str
    better: str | None  # "lower", "higher" or None (informative only)
    group: str  # quality, diversity, controllability, likelihood, stability, efficiency
    fmt: str = ".4g"
    floor: bool = False  # reported with a real-data floor


#: Every scalar :func:`evaluate` reports, in display order.
METRICS: dict[str, MetricInfo] = {
    "fid": MetricInfo("FID", "lower", "quality", ".3f", True),
    "kid": MetricInfo("KID", "lower", "quality", ".5f", True),
    "precision": MetricInfo("precision", "higher", "quality", ".3f", True),
    "acceptability": MetricInfo("acceptability (conf >= 0.9)", "higher", "quality", ".3f", True),
    "inception_score": MetricInfo("classifier IS", "higher", "quality", ".3f", True),
    "recall": MetricInfo("recall", "higher", "diversity", ".3f", True),
    "coverage": MetricInfo("class coverage", "higher", "diversity", ".2f", True),
    "class_entropy": MetricInfo("class entropy (normalised)", "higher", "diversity", ".4f", True),
    "rarest_class_share": MetricInfo("rarest class share", "higher", "diversity", ".4f", True),
    "conditional_accuracy": MetricInfo("conditional accuracy", "higher", "controllability", ".3f"),
    "latent_probe_accuracy": MetricInfo(
        "latent linear probe acc.", "higher", "controllability", ".3f"
    ),
    "recon_bce": MetricInfo("reconstruction BCE (nats)", "lower", "likelihood", ".2f"),
    "recon_mse": MetricInfo("reconstruction MSE / pixel", "lower", "likelihood", ".5f"),
    "elbo": MetricInfo("ELBO (nats / image)", "higher", "likelihood", ".2f"),
    "final_loss": MetricInfo("final loss", None, "stability", ".4g"),
    "loss_cv_tail": MetricInfo("loss std / mean (last 20%)", "lower", "stability", ".4f"),
    "steps_to_converge": MetricInfo("steps to converge", "lower", "stability", ",.0f"),
    "total_steps": MetricInfo("training steps", None, "stability", ",.0f"),
    "training_seconds": MetricInfo("training time (s)", "lower", "efficiency", ",.1f"),
    "parameters": MetricInfo("parameters", "lower", "efficiency", ",.0f"),
    "images_per_second": MetricInfo("sampling images / s", "higher", "efficiency", ",.0f"),
    "peak_memory_mb": MetricInfo("peak sampling memory (MB)", "lower", "efficiency", ",.1f"),
}

# ---------------------------------------------------------------------- real data

_DATA_CACHE: dict[tuple[str, str, str], Any] = {}
_FEATURE_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
_FLOOR_CACHE: dict[tuple, dict[str, Any]] = {}
_RADII_CACHE: dict[tuple, torch.Tensor] = {}


def _root(data_dir: str | os.PathLike[str] | None) -> str:
    from genmnist.data import default_root

    return str(Path(data_dir).expanduser().resolve() if data_dir else default_root())


def real_split(dataset: str, split: str, data_dir: str | os.PathLike[str] | None = None):
    """A split as :class:`~genmnist.data.InMemoryDataset`, read once per process."""
    from genmnist.data import load_dataset

    key = (dataset, split, _root(data_dir))
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(dataset, split, data_dir)
    return _DATA_CACHE[key]


def real_features(
    dataset: str = "mnist",
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    n: int | None = None,
    seed: int = 0,
    evaluator: EvaluatorNet | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features, probabilities, labels)`` of real images, cached per process.

    ``n=None`` takes the whole split; otherwise a random subset of ``n`` images drawn with
    ``seed`` (how the floor's training subset is chosen).
    """
    data = real_split(dataset, split, data_dir)
    evaluator = evaluator or load_evaluator(dataset)
    key = (dataset, split, _root(data_dir), n, seed, id(evaluator))
    if key not in _FEATURE_CACHE:
        if n is None or n >= len(data):
            idx = torch.arange(len(data))
        else:
            idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
        feats, probs = evaluator.extract(data.images[idx])
        _FEATURE_CACHE[key] = (feats, probs, data.labels[idx])
    return _FEATURE_CACHE[key]


def clear_cache() -> None:
    """Forget the real data, features and floors kept between calls."""
    _DATA_CACHE.clear()
    _FEATURE_CACHE.clear()
    _FLOOR_CACHE.clear()
    _RADII_CACHE.clear()


# ---------------------------------------------------------------------- metrics


def _real_radii(real: torch.Tensor, k: int) -> torch.Tensor:
    """k-NN radii of a cached real feature set, computed once per process."""
    for key, (feats, _, _) in _FEATURE_CACHE.items():
        if feats is real:
            if (key, k) not in _RADII_CACHE:
                _RADII_CACHE[(key, k)] = distances.kth_neighbour_radii(real, k)
            return _RADII_CACHE[(key, k)]
    return distances.kth_neighbour_radii(real, k)


def feature_metrics(
    real: torch.Tensor,
    fake: torch.Tensor,
    fake_probs: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    k: int = 3,
    kid_subsets: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """All sample-quality metrics from precomputed features and probabilities."""
    result: dict[str, Any] = {"fid": distances.frechet_distance(real, fake)}
    result["kid"], result["kid_std"] = distances.kernel_distance(
        real, fake, subsets=kid_subsets, seed=seed
    )
    result["precision"], result["recall"] = distances.precision_recall(
        real, fake, k=k, real_radii=_real_radii(real, k)
    )
    # splits of 1,000 samples (10 for the reference n): IS depends on the split size
    result["inception_score"], result["inception_score_std"] = classification.inception_score(
        fake_probs, splits=max(1, fake_probs.shape[0] // 1000)
    )
    result["acceptability"] = classification.acceptability(fake_probs)
    result.update(classification.class_coverage(fake_probs))
    if labels is not None:
        result["conditional_accuracy"] = classification.conditional_accuracy(fake_probs, labels)
    return result


def image_metrics(
    images: torch.Tensor,
    dataset: str = "mnist",
    *,
    labels: torch.Tensor | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    k: int = 3,
    kid_subsets: int = 100,
    seed: int = 0,
    evaluator: EvaluatorNet | None = None,
) -> dict[str, Any]:
    """Compare any images ``(n, 1, 28, 28)`` (floats in ``[0, 1]`` or uint8) with the test
    split of ``dataset``: FID, KID, precision/recall, IS, acceptability, class coverage, and
    conditional accuracy when the ``labels`` the images were drawn for are given.

    Raises:
        ConfigError: images of another size, holding NaN or inf, or floats outside
            ``[0, 1]`` (such as a tanh output in ``[-1, 1]``), which would score as nonsense.
    """
    images = as_unit_images(images)
    _check_n(images.shape[0], k, kid_subsets, seed)
    evaluator = evaluator or load_evaluator(dataset)
    real, _, _ = real_features(dataset, "test", data_dir, evaluator=evaluator)
    fake, probs = evaluator.extract(images)
    return feature_metrics(real, fake, probs, labels, k=k, kid_subsets=kid_subsets, seed=seed)


def real_floor(
    dataset: str = "mnist",
    n: int = DEFAULT_N,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    k: int = 3,
    kid_subsets: int = 100,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The metrics of ``n`` random real *training* images against the test set: what a
    perfect generator would score with ``n`` samples (cached per process; ``log`` hears
    when it is computed)."""
    n = _check_n(n, k, kid_subsets, seed)
    evaluator = load_evaluator(dataset)
    key = (dataset, _root(data_dir), n, k, kid_subsets, seed)
    if key not in _FLOOR_CACHE:
        if log is not None:
            log(f"real-data floor: {n:,} training images vs the test set")
        real, _, _ = real_features(dataset, "test", data_dir, evaluator=evaluator)
        fake, probs, _ = real_features(dataset, "train", data_dir, n=n, seed=seed)
        _FLOOR_CACHE[key] = feature_metrics(
            real, fake, probs, k=k, kid_subsets=kid_subsets, seed=seed
        )
    return dict(_FLOOR_CACHE[key])


def _shipped_accuracy(evaluator: EvaluatorNet) -> float | None:
    """Test accuracy of the evaluator's weights as shipped (float16), from its config."""
    info = getattr(evaluator, "info", {})
    return info.get("test_accuracy_float16", info.get("test_accuracy"))


def _check_n(n: int, k: int = 3, kid_subsets: int = 1, seed: int = 0) -> int:
    """``n`` as an int, after checking the protocol's numbers: whole, ``k`` and
    ``kid_subsets`` at least 1, and ``n`` enough samples for ``k`` neighbours."""
    n = whole_number("the number of samples", n)
    k = whole_number("k (neighbours of precision/recall)", k, minimum=1)
    whole_number("kid_subsets", kid_subsets, minimum=1)
    whole_number("seed", seed)
    if n < max(MIN_N, k + 1):
        raise ConfigError(f"evaluation needs at least {max(MIN_N, k + 1)} samples, got {n}")
    return n


def small_n_message(n: int) -> str:
    return (
        f"evaluating {n:,} samples, fewer than the {DEFAULT_N:,} of the reference protocol: "
        "FID is biased upwards at small n (compare only numbers taken at the same n; the "
        "floor below is taken at the same n)"
    )


def _add_floor(result: dict[str, Any], **options: Any) -> None:
    """Put the real-data floor of ``result``'s dataset, n and seed beside its metrics
    (``fid_floor``...); ``options``: those of :func:`real_floor`."""
    base = real_floor(result["dataset"], result["n"], seed=result["seed"], **options)
    for key, value in base.items():
        if key in METRICS and METRICS[key].floor:
            result[f"{key}_floor"] = value


def evaluate_images(
    images: torch.Tensor,
    dataset: str = "mnist",
    *,
    labels: torch.Tensor | None = None,
    name: str = "images",
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    floor: bool = True,
    k: int = 3,
    kid_subsets: int = 100,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure images made anywhere (another library, a notebook) as :func:`evaluate`
    measures a model's samples: the same metrics, each next to its real-data floor at the
    same ``n``, in the same flat dict (``model`` is ``name``; no efficiency metrics).

    Args:
        images: ``(n, 1, 28, 28)`` floats in ``[0, 1]`` or uint8 (see
            `genmnist.metrics.image_files.read_images` for files).
        dataset: Which evaluator and test set to compare with.
        labels: The classes the images were drawn for, if they were: adds conditional
            accuracy.
        name: What the images are called in the result.
        data_dir: Data root (default ``$GENMNIST_DATA``).
        seed: Seed of the floor's training subset and of KID's subsets.
        floor: Also compute the real-data floor (keys ending in ``_floor``).
        k: Neighbourhood size of precision/recall.
        kid_subsets: Number of KID subsets.
        log: Called with progress messages.

    Raises:
        ConfigError: fewer than 10 images, or labels that do not match them.
    """
    say = log or (lambda message: None)
    images = as_unit_images(images)
    n = _check_n(images.shape[0], k, kid_subsets, seed)
    evaluator = load_evaluator(dataset)
    if labels is not None:
        labels = whole_labels(labels, "labels must be whole numbers, one per image")
        classes = evaluator.config.num_classes
        if labels.shape[0] != n:
            raise ConfigError(f"{labels.shape[0]} labels for {n} images; give one per image")
        if int(labels.min()) < 0 or int(labels.max()) >= classes:
            raise ConfigError(f"labels must be in 0..{classes - 1} for {dataset}")
    if n < DEFAULT_N:
        warnings.warn(small_n_message(n), SmallSampleWarning, stacklevel=2)
    result = _measure_images(
        images, labels, name=name, dataset=dataset, evaluator=evaluator, data_dir=data_dir,
        seed=seed, floor=floor, k=k, kid_subsets=kid_subsets, say=say,
    )  # fmt: skip
    return to_json_value(result, nonfinite_as_null=True)


def _measure_images(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    name: str,
    dataset: str,
    evaluator: EvaluatorNet,
    data_dir: str | os.PathLike[str] | None,
    seed: int,
    floor: bool,
    k: int,
    kid_subsets: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """What :func:`evaluate` and :func:`evaluate_images` share: the result's head (name,
    dataset, n, seed...), the sample metrics, their floor and ``warnings``."""
    n = images.shape[0]
    result: dict[str, Any] = {
        "model": name,
        "dataset": dataset,
        "n": n,
        "seed": seed,
        "conditional": labels is not None,
        "evaluator_accuracy": _shipped_accuracy(evaluator),
    }
    say(f"{name}: computing features and sample metrics")
    result.update(
        image_metrics(
            images,
            dataset,
            labels=labels,
            data_dir=data_dir,
            k=k,
            kid_subsets=kid_subsets,
            seed=seed,
            evaluator=evaluator,
        )
    )
    if floor:
        _add_floor(result, data_dir=data_dir, k=k, kid_subsets=kid_subsets, log=say)
    result["warnings"] = [small_n_message(n)] if n < DEFAULT_N else []
    return result


# ---------------------------------------------------------------------- models


def evaluate(
    model: Any,
    dataset: str = "mnist",
    n: int = DEFAULT_N,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    batch_size: int = 1000,
    floor: bool = True,
    run_dir: str | os.PathLike[str] | None = None,
    sample_options: dict[str, Any] | None = None,
    k: int = 3,
    kid_subsets: int = 100,
    log: Callable[[str], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Measure a generative model; returns a flat dict of JSON values.

    Args:
        model: A :class:`~genmnist.models.base.GenerativeModel` (any object with
            ``sample``, ``conditional``, ``num_parameters`` works).
        dataset: Which evaluator and test set to compare with.
        n: Number of samples (10,000 by default, the size of the test set). Fewer are
            allowed but warn (:class:`SmallSampleWarning`): FID is biased at small ``n``.
        data_dir: Data root (default ``$GENMNIST_DATA``).
        seed: Seed of sampling, of the floor's training subset and of KID's subsets.
        batch_size: Images sampled at once.
        floor: Also compute the real-data floor (keys ending in ``_floor``).
        run_dir: Run folder whose ``metrics.jsonl`` gives training time and stability.
        sample_options: Extra keyword arguments for ``model.sample`` (diffusion steps...).
        k: Neighbourhood size of precision/recall.
        kid_subsets: Number of KID subsets.
        log: Called with progress messages.
        progress: Called with the number of images sampled so far (see
            `GenerativeModel.sample`).

    Returns:
        ``model``, ``dataset``, ``n``, ``seed``, ``conditional``, ``evaluator_accuracy``;
        the sample metrics of :func:`image_metrics` and their ``*_floor`` counterparts;
        for VAEs the metrics of :func:`genmnist.metrics.vae.vae_metrics`; with a training
        log those of :func:`genmnist.metrics.stability.training_stability`;
        ``parameters``, ``weights_mb``, ``images_per_second``, ``sampling_seconds``,
        ``peak_memory_mb``; and ``warnings`` (messages, e.g. about a small ``n``).
    """
    from genmnist.metrics import efficiency
    from genmnist.metrics.vae import has_encoder, vae_metrics
    from genmnist.models.base import check_sample_count

    say = log or (lambda message: None)
    n = _check_n(n, k, kid_subsets, seed)
    check_sample_count(n)  # before the labels and samples of a huge n are allocated
    if n < DEFAULT_N:
        warnings.warn(small_n_message(n), SmallSampleWarning, stacklevel=2)
    evaluator = load_evaluator(dataset)
    name = getattr(model, "name", type(model).__name__)
    labels = None
    if getattr(model, "conditional", False):
        labels = torch.arange(n) % model.config.num_classes
    say(f"{name}: sampling {n:,} images")
    device = getattr(model, "device", torch.device("cpu"))
    images, seconds, peak = efficiency.measure(
        lambda: model.sample(
            n,
            labels=labels,
            seed=seed,
            batch_size=batch_size,
            **(sample_options or {}),
            **({"progress": progress} if progress is not None else {}),
        ),
        device,
    )
    result = _measure_images(
        images, labels, name=name, dataset=dataset, evaluator=evaluator, data_dir=data_dir,
        seed=seed, floor=floor, k=k, kid_subsets=kid_subsets, say=say,
    )  # fmt: skip
    if has_encoder(model):
        say(f"{name}: reconstruction, ELBO and latent probe")
        result.update(
            vae_metrics(
                model,
                real_split(dataset, "train", data_dir),
                real_split(dataset, "test", data_dir),
                n=min(n, DEFAULT_N),
                seed=seed,
            )
        )
    if run_dir is not None and holds_metrics(run_dir):
        from genmnist.metrics.stability import training_stability

        result.update(training_stability(run_dir))
    result.update(efficiency.model_size(model))
    result["images_per_second"] = n / max(seconds, 1e-9)
    result["sampling_seconds"] = seconds
    result["peak_memory_mb"] = None if peak is None else peak / 2**20
    result["warnings"] = result.pop("warnings")  # last, as before the VAE metrics
    return to_json_value(result, nonfinite_as_null=True)
