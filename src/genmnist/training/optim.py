"""Optimizers, learning-rate schedules and the weight average (EMA) of a training run."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from genmnist.models.base import GenerativeModel
from genmnist.registry import Registry
from genmnist.training.task import TrainingTask

#: Optimizer classes by name; the model config's ``optimizer`` field picks one.
OPTIMIZERS: Registry = Registry("optimizer")
OPTIMIZERS.register("adam", torch.optim.Adam)
OPTIMIZERS.register("adamw", torch.optim.AdamW)
OPTIMIZERS.register("sgd", torch.optim.SGD)

#: Learning-rate schedules by name: ``fn(step, total_steps, warmup_steps) -> multiplier``.
LR_SCHEDULES: Registry = Registry("learning-rate schedule")


def _warmup(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


@LR_SCHEDULES.register("constant")
def constant_schedule(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Constant learning rate after a linear warm-up."""
    return _warmup(step, warmup_steps)


@LR_SCHEDULES.register("cosine")
def cosine_schedule(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Linear warm-up, then cosine decay to zero at ``total_steps``."""
    progress = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    return _warmup(step, warmup_steps) * 0.5 * (1.0 + math.cos(math.pi * progress))


@LR_SCHEDULES.register("linear")
def linear_schedule(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Linear warm-up, then linear decay to zero at ``total_steps``."""
    progress = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    return _warmup(step, warmup_steps) * (1.0 - progress)


def build_optimizers(
    model: GenerativeModel, total_steps: int, task: TrainingTask | None = None
) -> tuple[dict[str, torch.optim.Optimizer], dict[str, torch.optim.lr_scheduler.LambdaLR]]:
    """One optimizer and learning-rate scheduler per entry of the training task's
    `~genmnist.training.TrainingTask.optimizer_groups` (by default the model's), in its
    order, as the config's recipe says (with the per-phase ``optimizer_options``)."""
    cfg = model.config
    task = task if task is not None else TrainingTask()
    optimizers, schedulers = {}, {}
    for phase, params in task.optimizer_groups(model).items():
        settings: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
        if cfg.optimizer in ("adam", "adamw"):
            settings["betas"] = tuple(cfg.betas)
        settings.update(task.optimizer_options(model, phase))
        optimizer = OPTIMIZERS.create(cfg.optimizer, params=list(params), **settings)
        schedule = functools.partial(
            LR_SCHEDULES.get(cfg.lr_schedule),
            total_steps=total_steps,
            warmup_steps=cfg.warmup_steps,
        )
        schedulers[phase] = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        optimizers[phase] = optimizer
    return optimizers, schedulers


def ema_with_warmup(decay: float) -> Callable:
    """EMA update for `AveragedModel`: the decay ramps up as
    ``min(decay, (1 + n) / (10 + n))`` so short CPU runs are not dominated by the random
    initial weights."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged):
        if not averaged[0].is_floating_point():  # integer buffers (BatchNorm's counter)
            torch._foreach_copy_(averaged, current)
            return
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return update


def weight_average(model: GenerativeModel) -> AveragedModel | None:
    """The EMA of the model's weights and buffers its config asks for (None without
    ``ema_decay``)."""
    decay = model.config.ema_decay
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=ema_with_warmup(decay), use_buffers=True)
