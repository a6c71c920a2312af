"""Checks of the training recipe a model config holds (before anything is built)."""

from __future__ import annotations

from typing import Any

from genmnist.errors import ConfigError
from genmnist.models.base import GenerativeModel
from genmnist.precision import bf16_is_fast
from genmnist.values import is_number

PRECISIONS = ("auto", "bf16", "fp32")


def check_recipe(cfg: Any) -> None:
    """`ConfigError` for training fields shared by all model configs whose values the
    optimizer, schedule, EMA or autocast cannot use (a hand-edited or damaged
    ``config.json``)."""
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision must be auto, bf16 or fp32, got '{cfg.precision}'")
    problems = []
    if not (is_number(cfg.batch_size, whole=True) and cfg.batch_size >= 1):
        problems.append(f"batch_size must be a positive integer, got {cfg.batch_size!r}")
    for name in ("lr", "weight_decay"):
        value = getattr(cfg, name)
        if not (is_number(value) and value >= 0):
            problems.append(f"{name} must be a finite number >= 0, got {value!r}")
    betas = cfg.betas
    if not (
        isinstance(betas, list | tuple)
        and len(betas) == 2
        and all(is_number(b) and 0 <= b < 1 for b in betas)
    ):
        problems.append(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not (is_number(cfg.warmup_steps, whole=True) and cfg.warmup_steps >= 0):
        problems.append(f"warmup_steps must be an integer >= 0, got {cfg.warmup_steps!r}")
    if cfg.grad_clip is not None and not (is_number(cfg.grad_clip) and cfg.grad_clip > 0):
        problems.append(f"grad_clip must be a positive number or null, got {cfg.grad_clip!r}")
    decay = cfg.ema_decay
    if decay is not None and not (is_number(decay) and 0 <= decay <= 1):
        problems.append(f"ema_decay must be a number in [0, 1] or null, got {decay!r}")
    epochs = getattr(cfg, "epochs", None)  # not every model config has one
    if epochs is not None and not (is_number(epochs, whole=True) and epochs >= 1):
        problems.append(f"epochs must be a positive integer, got {epochs!r}")
    for name in ("optimizer", "lr_schedule"):
        if not isinstance(getattr(cfg, name), str):
            problems.append(f"{name} must be a name, got {getattr(cfg, name)!r}")
    if problems:
        raise ConfigError("invalid training config: " + "; ".join(problems))


def uses_bf16(model: GenerativeModel, device_type: str) -> bool:
    """Whether training autocasts to bf16: asked for, or ``auto`` on a CPU with native bf16
    kernels (`genmnist.precision.bf16_is_fast`) where the model says bf16 helps
    (`GenerativeModel.bf16_helps`)."""
    precision = model.config.precision
    return precision == "bf16" or (
        precision == "auto"
        and model.bf16_helps
        and device_type == "cpu"
        and bf16_is_fast(device_type)
    )


def epochs(model: GenerativeModel, requested: int | None) -> int:
    """Passes over the data: ``requested``, else the model's `training_epochs`."""
    if requested is not None:
        return requested
    value = model.training_epochs()
    if not is_number(value, whole=True):
        raise ConfigError(f"epochs must be an integer, got {value!r}")
    return value
