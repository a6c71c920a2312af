"""Data-parallel training: the DistributedDataParallel wrapper and the collectives the loop
uses to keep every process in step (see `genmnist.distributed` for the process group).

Every function here is called by every process at the same point of the loop (a
collective); with a single process they answer at once without communicating.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from genmnist import distributed
from genmnist.errors import TrainingError

if TYPE_CHECKING:
    from genmnist.models.base import GenerativeModel
    from genmnist.training.task import TrainingTask

#: Seconds a process whose error another process reports waits before raising it.
QUIET_DELAY = 2.0


def quiet(error: Exception) -> Exception:
    """Mark ``error`` as reported by another process (`genmnist train` prints nothing
    for it) and wait a moment first: when one process ends with an error, torchrun stops
    the others, so the process that reports the error must end first."""
    error.rank_quiet = True  # type: ignore[attr-defined]
    time.sleep(QUIET_DELAY)
    return error


def processes(n: int) -> str:
    """``"1 process"``, ``"4 processes"``."""
    return "1 process" if n == 1 else f"{n} processes"


class TaskLoss(torch.nn.Module):
    """Routes ``forward`` to ``task.loss(model, ...)``: DistributedDataParallel hooks the
    gradient all-reduce (and the buffer broadcast) into ``forward``, and genmnist models
    are trained through their training task's loss."""

    def __init__(self, model: GenerativeModel, task: TrainingTask) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.task_networks = task.networks()  # registered here, so DDP syncs them too

    def forward(self, images, labels, step: int, phase: str):
        return self.task.loss(self.model, images, labels, step, phase)


def data_parallel(
    model: GenerativeModel, task: TrainingTask, device: torch.device, phases: int
) -> torch.nn.Module:
    """``task.loss`` of ``model`` wrapped in DistributedDataParallel (which broadcasts
    rank 0's weights and buffers to every process here).

    Several phases (a GAN's discriminator and generator steps) leave some parameters
    without gradients in each backward pass, hence ``find_unused_parameters`` (an extra
    walk over the autograd graph per pass, too small to measure here). A single-phase
    model whose loss leaves parameters unused sets
    `GenerativeModel.ddp_find_unused_parameters` for the same effect.
    """
    from torch.nn.parallel import DistributedDataParallel

    find_unused = phases > 1 or bool(model.ddp_find_unused_parameters)
    return DistributedDataParallel(
        TaskLoss(model, task),
        device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=find_unused,
    )


def agreed(action: Callable[[], Any], device: torch.device) -> Any:
    """Run ``action`` in every process; if it fails anywhere, fail everywhere (the
    failing processes raise their own error, the others a short one), so no process
    is left waiting for the others in a collective."""
    env = distributed.environment()
    error: BaseException | None = None
    result = None
    try:
        result = action()
    except Exception as exc:
        error = exc
    if env.world_size == 1:
        if error is not None:
            raise error
        return result
    failed = distributed.count_true(error is not None, device)
    if failed == 0:
        return result
    if error is None:
        error = TrainingError(f"stopped: {failed} other process(es) failed (see their error)")
        raise quiet(error)
    if failed == env.world_size and env.rank != 0:
        raise quiet(error)  # the same error everywhere: rank 0 reports it
    raise error


def machine_first(action: Callable[[], Any], device: torch.device) -> None:
    """Run ``action`` in the first process of each machine, then in the others (reading
    the dataset: the first may download the files, the others then find them), failing
    everywhere if it fails anywhere (see `agreed`)."""
    first = distributed.environment().local_rank == 0
    agreed(action if first else lambda: None, device)
    agreed(action if not first else lambda: None, device)


@dataclass(frozen=True)
class StepConsensus:
    """What every process agrees on after computing a loss.

    Attributes:
        finite: The loss is finite in every process.
        loss: Its mean over the processes.
        stop: Some process was asked to stop (SIGINT/SIGTERM).
    """

    finite: bool
    loss: float
    stop: bool


def step_consensus(loss: torch.Tensor, stop_requested: bool, world_size: int) -> StepConsensus:
    """Whether the loss is finite in every process, its mean, and whether any process was
    asked to stop: one all-reduce, so that every process skips, fails or stops after the
    same step."""
    if world_size == 1:
        return StepConsensus(bool(torch.isfinite(loss)), float(loss.detach()), stop_requested)
    shared = torch.stack(
        [
            loss.detach().float().reshape(()),
            torch.tensor(float(stop_requested), device=loss.device),
        ]
    ).double()
    total, stops = distributed.all_reduce_sum(shared).tolist()
    return StepConsensus(math.isfinite(total), total / world_size, stops > 0)


def mean_over_processes(
    sums: dict[str, float], world_size: int, device: torch.device
) -> dict[str, float]:
    """The logged sums averaged over the processes (each saw an equal share of every
    batch), so the log shows the global mean."""
    if world_size == 1:
        return sums
    keys = sorted(sums)  # the same in every process (skipped steps are agreed on)
    if not keys:
        return {}
    values = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    values = distributed.all_reduce_sum(values) / world_size
    return dict(zip(keys, values.tolist(), strict=True))
