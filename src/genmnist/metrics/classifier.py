"""The evaluator networks: one compact CNN classifier per dataset.

genmnist measures generated images in the feature space of its own classifiers instead of
InceptionV3 (see the evaluation guide). Each evaluator is trained on the train split of its
dataset and ships inside the package as
``genmnist/pretrained/evaluators/<dataset>/{config.json,model.safetensors}``. Its
penultimate layer (128 ReLU units) is the feature space of FID, KID and precision/recall;
its softmax drives the Inception Score, acceptability, class coverage and conditional
accuracy.

Retrain one reproducibly (seeded; a few minutes on a laptop CPU):

    python -m genmnist.metrics.classifier --dataset mnist --data-dir DATA --out DIR
    genmnist train-evaluator --dataset fashion-mnist --data-dir DATA --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genmnist._version import __version__
from genmnist.errors import CheckpointError, ConfigError
from genmnist.nn.modes import evaluating
from genmnist.run_folder import CONFIG_FILE, WEIGHTS_FILE

EVALUATOR_FORMAT = "genmnist-evaluator"
EVALUATOR_PACKAGE = "genmnist.pretrained"

#: Mean and standard deviation of the train-split pixels, used to normalise inputs.
PIXEL_STATS = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}


@dataclass
class EvaluatorConfig:
    """Architecture and training recipe of an evaluator.

    Attributes:
        dataset: ``mnist`` or ``fashion-mnist``.
        channels: Output channels of the four 3x3 convolutions (two per 28x28 and 14x14
            stage, each stage followed by 2x2 max pooling).
        feature_dim: Width of the penultimate layer, the feature space of the metrics.
        num_classes: Number of classes.
        dropout: Dropout before the penultimate and the last layer (training only).
        mean, std: Input normalisation (pixels are in ``[0, 1]``).
        epochs, batch_size, lr, weight_decay, seed: Training recipe (AdamW, one-cycle).
        max_shift: Random translation of training images by up to this many pixels
            (digits vary in position; Fashion-MNIST garments do not).
        hflip: Randomly mirror training images (Fashion-MNIST only; digits are not
            mirror-symmetric).
        bf16: Train under bfloat16 autocast (faster on recent CPUs; evaluation is fp32).
        outlier_steps: Steps of the second phase, outlier exposure (Hendrycks et al., 2019):
            fine-tuning on the float16-rounded first-phase weights with, in every batch,
            ``outlier_batch`` junk images (heavy noise, uniform noise, pixel-shuffled
            images) pushed towards the uniform distribution, so that pure noise is not
            confidently called a class. 0 skips the phase.
        outlier_batch, outlier_weight, outlier_lr, outlier_min_noise: Junk images per
            batch, weight of their loss, learning rate of the phase, smallest noise level
            counted as junk.
    """

    dataset: str = "mnist"
    channels: tuple[int, int, int, int] = (16, 16, 32, 32)
    feature_dim: int = 128
    num_classes: int = 10
    dropout: float = 0.1
    mean: float = 0.1307
    std: float = 0.3081
    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    max_shift: int = 2
    hflip: bool = False
    bf16: bool = True
    outlier_steps: int = 300
    outlier_batch: int = 32
    outlier_weight: float = 0.5
    outlier_lr: float = 5e-4
    outlier_min_noise: float = 0.25

    @classmethod
    def for_dataset(cls, dataset: str, **overrides: Any) -> EvaluatorConfig:
        """The shipped recipe for ``dataset``, with some fields changed."""
        if dataset not in PIXEL_STATS:
            raise ConfigError(f"unknown dataset '{dataset}'; choose from {', '.join(PIXEL_STATS)}")
        mean, std = PIXEL_STATS[dataset]
        recipe: dict[str, Any] = {"dataset": dataset, "mean": mean, "std": std}
        if dataset == "fashion-mnist":
            # Garments are centred and size-normalised: mirror them, do not shift them.
            recipe.update(max_shift=0, hflip=True)
        return cls(**{**recipe, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluatorConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown evaluator config field(s): {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class EvaluatorNet(nn.Module):
    """Compact CNN: conv-conv-pool-conv-conv-pool-fc(features)-fc(logits).

    With the default channels ``(16, 16, 32, 32)`` it has about 218k parameters and costs
    about 5 MFLOP-multiply-adds per image. Inputs are images ``(n, 1, 28, 28)`` in
    ``[0, 1]``; normalisation happens inside.
    """

    def __init__(self, config: EvaluatorConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or EvaluatorConfig()
        c1, c2, c3, c4 = cfg.channels
        self.body = nn.Sequential(
            *_conv(1, c1), *_conv(c1, c2), nn.MaxPool2d(2),
            *_conv(c2, c3), *_conv(c3, c4), nn.MaxPool2d(2),
            nn.Flatten(),
        )  # fmt: skip
        self.embed = nn.Sequential(
            nn.Dropout(cfg.dropout),
            nn.Linear(c4 * 7 * 7, cfg.feature_dim, bias=False),
            nn.BatchNorm1d(cfg.feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(cfg.feature_dim, cfg.num_classes)
        )
        self.register_buffer("pixel_mean", torch.tensor(cfg.mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.std), persistent=False)

    @property
    def num_features(self) -> int:
        """Size of the feature space (torchmetrics reads this attribute)."""
        return self.config.feature_dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(n, feature_dim)`` of images in ``[0, 1]``."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        x = x.contiguous(memory_format=torch.channels_last)
        return self.embed(self.body(x)).float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(n, num_classes)``."""
        return self.head(self.features(images))

    def extract(
        self, images: torch.Tensor, batch_size: int = 1000
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, probabilities)`` of many images, in eval mode, batch by batch.

        Accepts floats in ``[0, 1]`` or uint8 in ``[0, 255]``, shaped ``(n, 28, 28)`` or
        ``(n, 1, 28, 28)``. Returns float32 CPU tensors.
        """
        images = as_image_batch(images)
        device = next(self.parameters()).device
        feats, probs = [], []
        with evaluating(self), torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                f = self.features(images[start : start + batch_size].to(device))
                feats.append(f.cpu())
                probs.append(torch.softmax(self.head(f).float(), dim=1).cpu())
        if not feats:
            return torch.zeros(0, self.num_features), torch.zeros(0, self.config.num_classes)
        return torch.cat(feats), torch.cat(probs)


def as_image_batch(images: torch.Tensor) -> torch.Tensor:
    """Images as floats ``(n, 1, 28, 28)`` in ``[0, 1]`` (uint8 input is divided by 255).

    Raises:
        ConfigError: for another shape, or images holding NaN or inf values (before any
            feature is computed from them).
    """
    if not isinstance(images, torch.Tensor):
        try:
            images = torch.as_tensor(images)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise ConfigError(f"expected images (n, 1, 28, 28), got {type(exc).__name__}") from None
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise ConfigError(f"expected images (n, 1, 28, 28), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if images.dtype == torch.bool or images.is_complex():
        raise ConfigError(f"expected float or uint8 images, got {images.dtype}")
    images = images.float()  # float64 beyond float32's range becomes inf here
    if not bool(torch.isfinite(images).all()):
        raise ConfigError("the images hold NaN or inf values; metrics need finite images")
    return images


# ---------------------------------------------------------------------- files


def evaluator_dir(dataset: str) -> Path:
    """Folder of the evaluator shipped for ``dataset``."""
    if dataset not in PIXEL_STATS:
        raise ConfigError(f"unknown dataset '{dataset}'; choose from {', '.join(PIXEL_STATS)}")
    return Path(str(resources.files(EVALUATOR_PACKAGE) / "evaluators" / dataset))


def save_evaluator(
    model: EvaluatorNet,
    directory: str | os.PathLike[str],
    info: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write ``config.json`` (config + training provenance ``info``) and
    ``model.safetensors`` (floating-point tensors stored as ``dtype``)."""
    from genmnist.io import save_tensors, write_json

    directory = Path(directory)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_tensors(directory / WEIGHTS_FILE, state, {"model": "evaluator"})
    record = {
        "format": EVALUATOR_FORMAT,
        "genmnist_version": __version__,
        "config": model.config.to_dict(),
        "info": info or {},
    }
    write_json(directory / CONFIG_FILE, record)
    return directory


def read_evaluator(directory: str | os.PathLike[str]) -> EvaluatorNet:
    """Load an evaluator from a folder written by `save_evaluator` (eval mode, fp32)."""
    from genmnist.io import load_tensors, read_json

    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise CheckpointError(
            f"{directory}: no evaluator here (no {CONFIG_FILE}); retrain one with "
            "`python -m genmnist.metrics.classifier --dataset DATASET --out DIR`"
        )
    record = read_json(directory / CONFIG_FILE)
    if not isinstance(record, dict) or record.get("format") != EVALUATOR_FORMAT:
        raise CheckpointError(f"{directory / CONFIG_FILE}: not a genmnist evaluator config")
    config = record.get("config", {})
    if not isinstance(config, dict):
        raise CheckpointError(f"{directory / CONFIG_FILE}: 'config' must be an object")
    tensors, _ = load_tensors(directory / WEIGHTS_FILE)
    try:
        model = EvaluatorNet(EvaluatorConfig.from_dict(config))
        own = model.state_dict()
        if set(tensors) != set(own) or any(tensors[k].shape != own[k].shape for k in own):
            raise CheckpointError(f"{directory / WEIGHTS_FILE}: weights do not match the config")
        cast = {k: v.to(own[k].dtype) for k, v in tensors.items()}
        if any(v.is_floating_point() and not bool(torch.isfinite(v).all()) for v in cast.values()):
            raise CheckpointError(
                f"{directory / WEIGHTS_FILE}: weights hold NaN or inf values as float32"
            )
        model.load_state_dict(cast)
    except CheckpointError:
        raise
    except (ConfigError, TypeError, ValueError, RuntimeError, OverflowError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{directory / CONFIG_FILE}: not a usable evaluator config ({reason})"
        ) from None
    info = record.get("info", {})
    model.info = info if isinstance(info, dict) else {}  # type: ignore[attr-defined]
    return model.eval()


@functools.lru_cache(maxsize=4)
def load_evaluator(dataset: str = "mnist") -> EvaluatorNet:
    """The evaluator shipped for ``dataset`` (cached; eval mode; do not train it).

    Raises:
        CheckpointError: if the shipped files are missing or broken.
    """
    model = read_evaluator(evaluator_dir(dataset))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---------------------------------------------------------------------- training


def augment(
    images: torch.Tensor, max_shift: int, hflip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random integer translations (zero fill) and optional horizontal flips, per image."""
    n = images.shape[0]
    if max_shift > 0:
        padded = F.pad(images, (max_shift,) * 4)
        size = 2 * max_shift + 1
        dy = torch.randint(0, size, (n,), generator=generator)
        dx = torch.randint(0, size, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(28)[None, :])[:, :, None]  # (n, 28, 1)
        cols = (dx[:, None] + torch.arange(28)[None, :])[:, None, :]  # (n, 1, 28)
        images = padded[:, 0][torch.arange(n)[:, None, None], rows, cols].unsqueeze(1)
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images


@torch.inference_mode()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on uint8 or float images (eval mode, fp32)."""
    correct = 0
    with evaluating(model):
        for start in range(0, images.shape[0], 1000):
            batch = as_image_batch(images[start : start + 1000])
            correct += int((model(batch).argmax(1) == labels[start : start + 1000]).sum())
    return correct / max(1, images.shape[0])


def make_outliers(
    images: torch.Tensor, generator: torch.Generator, min_noise: float = 0.25
) -> torch.Tensor:
    """Junk images no class should claim, one kind per image at random: ``images`` under
    Gaussian noise of a standard deviation in ``[min_noise, 1]``, uniform noise, or
    ``images`` with their pixels shuffled (same grey levels, no shape)."""
    n = images.shape[0]
    kind = torch.randint(0, 3, (n,), generator=generator)[:, None, None, None]
    sigma = min_noise + (1 - min_noise) * torch.rand(n, 1, 1, 1, generator=generator)
    noisy = (images + sigma * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    uniform = torch.rand(images.shape, generator=generator)
    order = torch.argsort(torch.rand(n, images[0].numel(), generator=generator), dim=1)
    shuffled = torch.gather(images.flatten(1), 1, order).view_as(images)
    return torch.where(kind == 0, noisy, torch.where(kind == 1, uniform, shuffled))


def _rounded(model: EvaluatorNet) -> EvaluatorNet:
    """A copy with weights rounded to float16 (the shipped precision), in eval mode."""
    copy = EvaluatorNet(model.config)
    copy.load_state_dict(
        {
            k: v.half().to(v.dtype) if v.is_floating_point() else v
            for k, v in model.state_dict().items()
        }
    )
    return copy.eval()


def train_evaluator(
    dataset: str = "mnist",
    data_dir: str | os.PathLike[str] | None = None,
    config: EvaluatorConfig | None = None,
    log: Callable[[str], None] | None = None,
    init: str | os.PathLike[str] | None = None,
) -> tuple[EvaluatorNet, dict[str, Any]]:
    """Train an evaluator on the train split; returns ``(model, info)``.

    Two phases: ``epochs`` of supervised training (AdamW, one-cycle schedule, light
    augmentation), then ``outlier_steps`` of outlier exposure starting from the
    float16-rounded weights (see :class:`EvaluatorConfig`). ``init`` (an evaluator folder)
    skips the first phase and starts from those weights. ``info`` holds the test accuracy
    (after each phase; float32 and float16 weights), the training time and the software
    versions. Runs are deterministic for a seed on a given machine and thread count.
    """
    from genmnist.data import load_dataset

    log = log or functools.partial(print, flush=True)
    cfg = config or EvaluatorConfig.for_dataset(dataset)
    if cfg.dataset != dataset:
        raise ConfigError(f"config is for '{cfg.dataset}', not '{dataset}'")
    train = load_dataset(dataset, "train", data_dir)
    test = load_dataset(dataset, "test", data_dir)
    info: dict[str, Any] = {}
    if init is None:
        model, info["phase1_seconds"] = _supervised_phase(cfg, train, test, log)
        model = _rounded(model)
    else:
        start = read_evaluator(init)
        if start.config.channels != cfg.channels or start.config.dataset != dataset:
            raise ConfigError(f"{init}: evaluator does not match the {dataset} recipe")
        model = EvaluatorNet(cfg)
        model.load_state_dict(start.state_dict())
        info["phase1_seconds"] = start.info.get("training_seconds")  # type: ignore[attr-defined]
        info["phase1_from"] = str(init)
    info["phase1_test_accuracy_float16"] = accuracy(model, test.images, test.labels)
    seconds = 0.0
    if cfg.outlier_steps > 0:
        model, seconds = _outlier_phase(model, cfg, train, log)
    info["phase2_seconds"] = round(seconds, 1)
    model = model.to(memory_format=torch.contiguous_format).eval()
    shipped = _rounded(model)
    info.update(
        {
            "test_accuracy": accuracy(model, test.images, test.labels),
            "test_accuracy_float16": accuracy(shipped, test.images, test.labels),
            "train_accuracy": accuracy(model, train.images[:10000], train.labels[:10000]),
            "training_seconds": round((info["phase1_seconds"] or 0.0) + seconds, 1),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "command": (
                f"python -m genmnist.metrics.classifier --dataset {dataset} "
                f"--epochs {cfg.epochs} --seed {cfg.seed}"
            ),
        }
    )
    log(
        f"done in {info['training_seconds']:.0f} s: test accuracy "
        f"{info['test_accuracy']:.4%} ({info['test_accuracy_float16']:.4%} with float16 weights)"
    )
    return shipped, info


def _supervised_phase(cfg: EvaluatorConfig, train, test, log) -> tuple[EvaluatorNet, float]:
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = EvaluatorNet(cfg).to(memory_format=torch.channels_last)
    steps_per_epoch = len(train) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.2
    )
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16)
    log(
        f"training the {cfg.dataset} evaluator: {sum(p.numel() for p in model.parameters()):,} "
        f"parameters, {cfg.epochs} epochs x {steps_per_epoch} steps, seed {cfg.seed}"
    )
    started = time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train), generator=g)
        running = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            images, labels = train.batch(idx)
            images = augment(images, cfg.max_shift, cfg.hflip, g)
            with autocast:
                loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += float(loss.detach())
            if (i + 1) % 100 == 0:
                log(
                    f"epoch {epoch + 1} step {i + 1}/{steps_per_epoch} loss {running / 100:.4f} "
                    f"({time.perf_counter() - started:.0f} s)"
                )
                running = 0.0
        acc = accuracy(model, test.images, test.labels)
        log(f"epoch {epoch + 1}: test accuracy {acc:.4%} ({time.perf_counter() - started:.0f} s)")
    return model, round(time.perf_counter() - started, 1)


def _outlier_phase(
    model: EvaluatorNet, cfg: EvaluatorConfig, train, log
) -> tuple[EvaluatorNet, float]:
    torch.manual_seed(cfg.seed + 1)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    model = model.to(memory_format=torch.channels_last).train()
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.outlier_lr, weight_decay=cfg.weight_decay
    )
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16)
    log(f"outlier exposure: {cfg.outlier_steps} steps, {cfg.outlier_batch} junk images each")
    started = time.perf_counter()
    b = cfg.batch_size
    for step in range(cfg.outlier_steps):
        images, labels = train.batch(torch.randint(0, len(train), (b,), generator=g))
        images = augment(images, cfg.max_shift, cfg.hflip, g)
        base, _ = train.batch(torch.randint(0, len(train), (cfg.outlier_batch,), generator=g))
        junk = make_outliers(base, g, cfg.outlier_min_noise)
        with autocast:
            logits = model(torch.cat([images, junk])).float()
        loss = F.cross_entropy(logits[:b], labels)
        uniform_ce = -F.log_softmax(logits[b:], dim=1).mean(dim=1).mean()
        loss = loss + cfg.outlier_weight * uniform_ce
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 100 == 0:
            log(
                f"outlier step {step + 1}/{cfg.outlier_steps} loss {float(loss.detach()):.4f} "
                f"({time.perf_counter() - started:.0f} s)"
            )
    return model, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m genmnist.metrics.classifier``: retrain an evaluator."""
    parser = argparse.ArgumentParser(
        prog="python -m genmnist.metrics.classifier",
        description="Train a genmnist evaluator classifier (reproducible for a seed).",
    )
    parser.add_argument("--dataset", default="mnist", choices=sorted(PIXEL_STATS))
    parser.add_argument("--data-dir", default=None, help="data root (default: $GENMNIST_DATA)")
    parser.add_argument("--out", default=None, help="output folder (default: the shipped one)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init",
        default=None,
        help="start from this evaluator folder (skips the supervised phase)",
    )
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"seed": args.seed}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    cfg = EvaluatorConfig.for_dataset(args.dataset, **overrides)
    model, info = train_evaluator(args.dataset, args.data_dir, cfg, init=args.init)
    out = Path(args.out) if args.out else evaluator_dir(args.dataset)
    save_evaluator(model, out, info)
    print(f"saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
