"""The shared trainer: one loop for every model family.

It reads the recipe (batch size, optimizer, learning-rate schedule, EMA, precision) from
the model's config, steps one optimizer per entry of
`optimizer_groups` (so GANs work the same way
as VAEs), and keeps a run folder:

    runs/x/
      config.json            model config (also what `genmnist sample --checkpoint` reads)
      model.safetensors      latest weights for sampling (EMA weights when EMA is on)
      checkpoint.safetensors everything needed to resume, written atomically
      metrics.jsonl          one JSON record per logging interval
      loss.png               loss curves

Runs are deterministic for a seed on the CPU: a run stopped and resumed ends with the
same weights as one that never stopped.

Launched by torchrun, the same loop trains data-parallel (DistributedDataParallel; see
`genmnist.distributed`): ``batch_size`` stays the global batch, each process takes an
equal, contiguous share of it, and only rank 0 logs and writes the run folder.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from genmnist import distributed
from genmnist.data import InMemoryDataset, load_dataset
from genmnist.errors import CheckpointError, ConfigError, TrainingError
from genmnist.io import (
    atomic_write,
    flatten_state,
    load_tensors,
    save_tensors,
    unflatten_state,
)
from genmnist.models.base import CONFIG_FILE, WEIGHTS_FILE, GenerativeModel
from genmnist.nn.modes import evaluating
from genmnist.registry import Registry

CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss.png"
CHECKPOINT_VERSION = 1

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


@dataclass
class TrainOptions:
    """How to run training (the model config says *what* to train).

    Attributes:
        out: Run folder.
        epochs: Passes over the data (default: the config's ``epochs``, else 10).
        max_steps: Stop after this many optimizer steps (overrides ``epochs``).
        dataset: ``mnist`` or ``fashion-mnist``.
        data_dir: Data root (default: ``GENMNIST_DATA`` or the user cache).
        seed: Seed of everything random in the run.
        resume: Continue the run in ``out``; an error if there is none.
        checkpoint_every: Steps between checkpoints (also written at the end of each epoch
            and when the run is interrupted).
        log_every: Steps between metrics records.
        device: ``cpu``, ``cuda``... (default: CUDA when available).
        skip_nonfinite: Skip steps whose loss is NaN/inf instead of stopping.
        progress: Show a progress bar.
    """

    out: Path = Path("runs/default")
    epochs: int | None = None
    max_steps: int | None = None
    dataset: str = "mnist"
    data_dir: str | None = None
    seed: int = 42
    resume: bool = False
    checkpoint_every: int = 200
    log_every: int = 50
    device: str | None = None
    skip_nonfinite: bool = False
    progress: bool = True


@dataclass
class TrainResult:
    """What a finished (or interrupted) run reports."""

    step: int
    epoch: int
    seconds: float
    images_per_second: float
    last_metrics: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    resumed_from: int | None = None
    world_size: int = 1


class TrainingInterrupted(TrainingError):
    """Raised after SIGINT/SIGTERM once the checkpoint is safely written."""


def _ema_with_warmup(decay: float) -> Callable:
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


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, else CUDA when available, else the CPU (under torchrun, a
    CUDA device without an index is ``cuda:LOCAL_RANK``)."""
    return distributed.pick_device(requested)


class _TrainingLoss(torch.nn.Module):
    """Routes ``forward`` to ``model.training_loss``: DistributedDataParallel hooks the
    gradient all-reduce (and the buffer broadcast) into ``forward``, and genmnist models
    are trained through ``training_loss``."""

    def __init__(self, model: GenerativeModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, labels, step: int, phase: str):
        return self.model.training_loss(images, labels, step, phase)


def _data_parallel(model: GenerativeModel, device: torch.device, phases: int):
    """``model.training_loss`` wrapped in DistributedDataParallel (which broadcasts rank
    0's weights and buffers to every process here).

    Several phases (a GAN's discriminator and generator steps) leave some parameters
    without gradients in each backward pass, hence ``find_unused_parameters`` (an extra
    walk over the autograd graph per pass, too small to measure here). A single-phase
    model whose loss leaves parameters unused sets the class attribute
    ``ddp_find_unused_parameters = True`` for the same effect.
    """
    from torch.nn.parallel import DistributedDataParallel

    find_unused = phases > 1 or bool(getattr(model, "ddp_find_unused_parameters", False))
    return DistributedDataParallel(
        _TrainingLoss(model),
        device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=find_unused,
    )


def _is_number(value: Any, whole: bool = False) -> bool:
    """An int (not a bool) or, unless ``whole``, a finite float."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return not whole and isinstance(value, float) and math.isfinite(value)


def _check_recipe(cfg: Any) -> None:
    """`ConfigError` for training fields shared by all model configs whose values the
    optimizer, schedule or EMA cannot use (a hand-edited or damaged ``config.json``)."""
    problems = []
    if not (_is_number(cfg.batch_size, whole=True) and cfg.batch_size >= 1):
        problems.append(f"batch_size must be a positive integer, got {cfg.batch_size!r}")
    for name in ("lr", "weight_decay"):
        value = getattr(cfg, name)
        if not (_is_number(value) and value >= 0):
            problems.append(f"{name} must be a finite number >= 0, got {value!r}")
    betas = cfg.betas
    if not (
        isinstance(betas, list | tuple)
        and len(betas) == 2
        and all(_is_number(b) and 0 <= b < 1 for b in betas)
    ):
        problems.append(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not (_is_number(cfg.warmup_steps, whole=True) and cfg.warmup_steps >= 0):
        problems.append(f"warmup_steps must be an integer >= 0, got {cfg.warmup_steps!r}")
    if cfg.grad_clip is not None and not (_is_number(cfg.grad_clip) and cfg.grad_clip > 0):
        problems.append(f"grad_clip must be a positive number or null, got {cfg.grad_clip!r}")
    decay = cfg.ema_decay
    if decay is not None and not (_is_number(decay) and 0 <= decay <= 1):
        problems.append(f"ema_decay must be a number in [0, 1] or null, got {decay!r}")
    for name in ("optimizer", "lr_schedule"):
        if not isinstance(getattr(cfg, name), str):
            problems.append(f"{name} must be a name, got {getattr(cfg, name)!r}")
    if problems:
        raise ConfigError("invalid training config: " + "; ".join(problems))


#: Seconds a process whose error another process reports waits before raising it.
QUIET_DELAY = 2.0


def _quiet(error: Exception) -> Exception:
    """Mark ``error`` as reported by another process (`genmnist train` prints nothing
    for it) and wait a moment first: when one process ends with an error, torchrun stops
    the others, so the process that reports the error must end first."""
    error.rank_quiet = True  # type: ignore[attr-defined]
    time.sleep(QUIET_DELAY)
    return error


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


class Trainer:
    """Trains a `GenerativeModel` on an in-memory dataset.

    Args:
        model: The model to train (its config holds the recipe).
        options: Run options.
        dataset: The training split; loaded from ``options`` when omitted.
        log: Where progress lines go (default: a rich console on stderr).

    Raises:
        ConfigError: the recipe fields shared by all configs (``batch_size``, ``lr``,
            ``weight_decay``, ``betas``, ``warmup_steps``, ``grad_clip``, ``ema_decay``,
            ``optimizer``, ``lr_schedule``, ``precision``) have unusable types or values.
    """

    def __init__(
        self,
        model: GenerativeModel,
        options: TrainOptions,
        dataset: InMemoryDataset | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.model = model
        self.options = options
        self.out = Path(options.out)
        self.device = pick_device(options.device)
        self.dataset = dataset
        self._console = None
        self._sink = log or self._rich_log
        env = distributed.environment()
        self.world_size, self.rank = env.world_size, env.rank
        cfg = model.config
        self.use_bf16 = cfg.precision == "bf16" or (
            cfg.precision == "auto" and model.bf16_helps and self.device.type == "cpu"
        )
        if cfg.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision must be auto, bf16 or fp32, got '{cfg.precision}'")
        _check_recipe(cfg)
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ setup
    def log(self, message: str) -> None:
        """Report a line of progress (only rank 0 speaks when training with torchrun)."""
        if self.rank == 0:
            self._sink(message)

    def _rich_log(self, message: str) -> None:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        self._console.print(message)

    def _epochs(self) -> int:
        if self.options.epochs is not None:
            return self.options.epochs
        epochs = getattr(self.model.config, "epochs", 10)
        if not _is_number(epochs, whole=True):
            raise ConfigError(f"epochs must be an integer, got {epochs!r}")
        return epochs

    def _build_optimizers(self, total_steps: int):
        cfg = self.model.config
        optimizers, schedulers = {}, {}
        for phase, params in self.model.optimizer_groups().items():
            settings: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
            if cfg.optimizer in ("adam", "adamw"):
                settings["betas"] = tuple(cfg.betas)
            settings.update(self.model.optimizer_options(phase))
            optimizer = OPTIMIZERS.create(cfg.optimizer, params=list(params), **settings)
            schedule = functools.partial(
                LR_SCHEDULES.get(cfg.lr_schedule),
                total_steps=total_steps,
                warmup_steps=cfg.warmup_steps,
            )
            schedulers[phase] = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
            optimizers[phase] = optimizer
        return optimizers, schedulers

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, state: dict[str, Any]) -> None:
        skeleton, tensors = flatten_state(
            {
                "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
                "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
                "rng": {"torch": torch.get_rng_state()},
            }
        )
        tensors.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        for key, value in tensors.items():  # a finite loss can still give a step to inf
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise TrainingError(
                    f"'{key}' became NaN or inf at step {state['step']}; stopped without "
                    f"overwriting the last good checkpoint in {self.out}"
                )
        header = {
            "version": CHECKPOINT_VERSION,
            "model": self.model.name,
            "config": self.model.config.to_dict(),
            "state": skeleton,
            **state,
        }
        save_tensors(self.out / CHECKPOINT_FILE, tensors, {"genmnist": json.dumps(header)})
        exported = self.ema.module if self.ema is not None else self.model
        save_tensors(self.out / WEIGHTS_FILE, exported.state_dict(), {"model": self.model.name})

    def _load_checkpoint(self) -> dict[str, Any]:
        """Restore the run from ``checkpoint.safetensors``; returns its header.

        Everything read is checked before use, so a damaged file gives a `CheckpointError`
        naming it (never another exception, never a run that fails later).
        """
        path = self.out / CHECKPOINT_FILE
        if not path.is_file():
            raise CheckpointError(f"--resume: no checkpoint at {path}; nothing to resume")
        tensors, metadata = load_tensors(path)
        try:
            header = json.loads(metadata["genmnist"])
        except (KeyError, ValueError, RecursionError):
            header = None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: not a genmnist training checkpoint")
        if header.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"{path}: unsupported checkpoint version {header.get('version')}")
        if (
            header.get("model") != self.model.name
            or header.get("config") != self.model.config.to_dict()
        ):
            raise CheckpointError(
                f"{path}: the checkpoint holds a '{header.get('model')}' run with another "
                "config; resume with the run's own config (genmnist train reads it from the run)"
            )
        if problem := _header_problem(header):
            raise CheckpointError(f"{path}: {problem}")
        try:
            self.model.load_state_dict(
                {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
            )
            if self.ema is not None:
                self.ema.load_state_dict(
                    {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
                )
            state = unflatten_state(header["state"], tensors)
            for phase, optimizer in self.optimizers.items():
                saved = state["optimizers"][phase]
                _check_optimizer_state(optimizer, saved, f"optimizers.{phase}")
                optimizer.load_state_dict(saved)
            for phase, scheduler in self.schedulers.items():
                saved = state["schedulers"][phase]
                _check_like(scheduler.state_dict(), saved, f"schedulers.{phase}")
                scheduler.load_state_dict(saved)
            torch.set_rng_state(state["rng"]["torch"])
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        except (
            KeyError, IndexError, TypeError, AttributeError, RuntimeError, ValueError, OverflowError
        ) as exc:  # fmt: skip
            raise CheckpointError(f"{path}: checkpoint does not fit this model ({exc})") from None
        return header

    # ------------------------------------------------------------------ signals
    @contextmanager
    def _graceful_stop(self):
        """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints, then stops."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_signal is not None:  # second Ctrl-C: stop hard
                raise KeyboardInterrupt
            self._stop_signal = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # ------------------------------------------------------------------ main loop
    def fit(self) -> TrainResult:
        """Train until the epochs (or ``max_steps``) are done; returns a summary.

        Under torchrun (``WORLD_SIZE`` > 1) this joins the process group if the script has
        not (and leaves it at the end), and trains data-parallel: see
        [Training at scale](training-at-scale.md).

        Raises:
            TrainingInterrupted: after SIGINT/SIGTERM, once a checkpoint is written.
            TrainingError: when the loss is NaN/inf (unless ``skip_nonfinite``), or the
                weights or optimizer state about to be checkpointed are; the last
                checkpoint is left as it was.
            CheckpointError: ``resume`` without a usable checkpoint (missing, damaged, or
                of another run), or a fresh run into a folder that already holds one.
            ConfigError: training fields of the config with unusable values (see
                `Trainer`), or a batch size that the number of processes does not divide.
        """
        created_group = distributed.setup(self.device)
        try:
            return self._fit()
        finally:
            if created_group:
                # Free DDP's reducer (it holds the group and threads) before the group goes:
                # destroying the group under a live reducer can abort the process at exit.
                self._loss = None
                gc.collect()
                distributed.teardown()

    def _agreed(self, action: Callable[[], Any]) -> Any:
        """Run ``action`` in every process; if it fails anywhere, fail everywhere (the
        failing processes raise their own error, the others a short one), so no process
        is left waiting for the others in a collective."""
        error: BaseException | None = None
        result = None
        try:
            result = action()
        except Exception as exc:
            error = exc
        if self.world_size == 1:
            if error is not None:
                raise error
            return result
        failed = distributed.count_true(error is not None, self.device)
        if failed == 0:
            return result
        if error is None:
            error = TrainingError(f"stopped: {failed} other process(es) failed (see their error)")
            raise _quiet(error)
        if failed == self.world_size and self.rank != 0:
            raise _quiet(error)  # the same error everywhere: rank 0 reports it
        raise error

    def _setup(self) -> dict[str, Any]:
        """Everything before the first step: checks, data, optimizers, EMA, resume, run
        folder. Returns the numbers the loop needs."""
        opts = self.options
        cfg = self.model.config
        batch_size = cfg.batch_size
        if batch_size % self.world_size != 0:
            raise ConfigError(
                f"batch size {batch_size} is not divisible by the {self.world_size} "
                f"processes: each process takes an equal share of every batch (batch_size "
                "is the global batch); change batch_size or the number of processes"
            )
        if len(self.dataset) // batch_size == 0:
            raise ConfigError(
                f"batch size {batch_size} is larger than the dataset ({len(self.dataset)})"
            )
        batches_per_epoch = len(self.dataset) // batch_size
        epochs = self._epochs()
        total_steps = opts.max_steps if opts.max_steps is not None else epochs * batches_per_epoch
        if total_steps <= 0:
            raise ConfigError("nothing to train: epochs and max_steps must be positive")

        self.model.to(self.device).train()
        self.model.prepare_training(self.dataset, opts.resume)
        self.optimizers, self.schedulers = self._build_optimizers(total_steps)
        self.ema = None
        if cfg.ema_decay is not None and self.rank == 0:  # only rank 0 exports weights
            self.ema = AveragedModel(
                self.model, multi_avg_fn=_ema_with_warmup(cfg.ema_decay), use_buffers=True
            )

        step, resumed_from = 0, None
        if opts.resume:
            header = self._load_checkpoint()
            step = resumed_from = int(header["step"])
            if header.get("dataset", opts.dataset) != opts.dataset:
                raise CheckpointError(
                    f"{self.out / CHECKPOINT_FILE}: the run was trained on {header['dataset']}; "
                    f"resume it with --dataset {header['dataset']}"
                )
            if header.get("seed") != opts.seed:
                self.log(f"note: the run used seed {header.get('seed')}; keeping it")
                opts.seed = int(header["seed"])
            self.log(
                f"Resumed {self.out / CHECKPOINT_FILE} at step {step:,} "
                f"(epoch {step // batches_per_epoch + 1}, batch {step % batches_per_epoch})"
            )
            before = int(header.get("world_size", 1))
            if before != self.world_size:
                self.log(
                    f"note: the run was trained with {_processes(before)}, now "
                    f"{_processes(self.world_size)}; the global batch stays {batch_size}, "
                    "so the recipe is unchanged (random draws differ from a run that keeps "
                    f"{_processes(before)})"
                )
        if self.rank == 0:
            if not opts.resume:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / METRICS_FILE).unlink(missing_ok=True)
            from genmnist.io import write_json

            write_json(self.out / CONFIG_FILE, self.model.config_record())
            self._trim_metrics(step)
        return {
            "step": step,
            "resumed_from": resumed_from,
            "batch_size": batch_size,
            "batches_per_epoch": batches_per_epoch,
            "total_steps": total_steps,
        }

    def _check_folder(self) -> None:
        if not self.options.resume and (self.out / CHECKPOINT_FILE).exists():
            raise CheckpointError(
                f"{self.out} already holds a run; pass --resume to continue it or choose "
                "another --out"
            )

    def _load_data(self) -> None:
        """Each process reads the dataset; the first process of each machine goes first
        (it may download the files), the others after it."""
        opts = self.options
        if self.dataset is not None:
            return
        env = distributed.environment()

        def load():
            self.dataset = load_dataset(opts.dataset, "train", opts.data_dir)

        self._agreed(load if env.local_rank == 0 else lambda: None)
        self._agreed(load if env.local_rank != 0 else lambda: None)

    def _fit(self) -> TrainResult:
        opts = self.options
        env = distributed.environment()
        self.world_size, self.rank = env.world_size, env.rank
        torch.manual_seed(opts.seed)
        self._agreed(self._check_folder)
        self._load_data()
        plan = self._agreed(self._setup)
        step, resumed_from = plan["step"], plan["resumed_from"]
        batch_size, batches_per_epoch = plan["batch_size"], plan["batches_per_epoch"]
        total_steps = plan["total_steps"]
        local_batch = batch_size // self.world_size
        main = self.rank == 0

        self._loss = self.model.training_loss
        if self.world_size > 1:
            self._loss = _data_parallel(self.model, self.device, len(self.optimizers))
        self._agreed_stop = False

        precision = "bf16 autocast" if self.use_bf16 else "fp32"
        scale = ""
        if self.world_size > 1:
            scale = (
                f" x {self.world_size} processes ({distributed.backend()}, "
                f"{torch.get_num_threads()} threads each)"
            )
        batch = f"batch {batch_size}"
        if self.world_size > 1:
            batch += f" ({local_batch} per process)"
        self.log(
            f"Training [bold]{self.model.name}[/] ({self.model.num_parameters():,} parameters) "
            f"on {self.device.type}{scale} ({precision}), {opts.dataset}: "
            f"{len(self.dataset):,} images, {batch}, {total_steps:,} steps, "
            f"seed {opts.seed} -> {self.out}"
        )
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.use_bf16
            else nullcontext()
        )
        started = time.perf_counter()
        window_start, window_images = started, 0
        metrics: dict[str, float] = {}
        sums: dict[str, float] = {}
        count = 0
        images_done = 0
        interrupted = False
        order_epoch, order = None, None

        progress = self._progress(total_steps, step)
        with self._graceful_stop(), progress:
            task = progress.add_task("train", total=total_steps, completed=step, info="")
            while step < total_steps:
                epoch, batch_index = divmod(step, batches_per_epoch)
                if epoch != order_epoch:  # the same permutation in every process
                    order_epoch = epoch
                    order = torch.randperm(
                        len(self.dataset),
                        generator=torch.Generator().manual_seed(opts.seed * 100_003 + epoch),
                    )
                start = batch_index * batch_size + self.rank * local_batch
                indices = order[start : start + local_batch]
                images, labels = self.dataset.batch(indices)
                images, labels = images.to(self.device), labels.to(self.device)

                torch.manual_seed(distributed.step_seed(opts.seed, step, self.rank))
                logged = self._train_step(images, labels, step, autocast)
                step += 1
                images_done += batch_size
                window_images += batch_size
                if logged is not None:
                    for k, v in logged.items():
                        sums[k] = sums.get(k, 0.0) + v
                    count += 1

                end_of_epoch = step % batches_per_epoch == 0
                if step % opts.log_every == 0 or end_of_epoch or step == total_steps:
                    if self.world_size > 1:
                        sums = self._mean_over_processes(sums)
                    now = time.perf_counter()
                    rate = window_images / max(now - window_start, 1e-9)
                    metrics = {k: v / max(count, 1) for k, v in sums.items()}
                    if main:
                        metrics.update(self._model_metrics(step))
                        record = {
                            "step": step,
                            "epoch": step / batches_per_epoch,
                            **metrics,
                            "lr": self.optimizers[next(iter(self.optimizers))].param_groups[0][
                                "lr"
                            ],
                            "images_per_second": rate,
                            "time": now - started,
                        }
                        with open(self.out / METRICS_FILE, "a", encoding="utf-8") as f:
                            f.write(json.dumps(record) + "\n")
                        info = " ".join(f"{k} {v:.4g}" for k, v in list(metrics.items())[:3])
                        progress.update(task, info=f"{info} | {rate:,.0f} img/s")
                    sums, count, window_start, window_images = {}, 0, now, 0
                progress.update(task, completed=step)

                # several processes stop after the step they agreed on (`_check_loss`)
                stop = self._agreed_stop if self.world_size > 1 else self._stop_signal is not None
                if main and (
                    stop or end_of_epoch or step % opts.checkpoint_every == 0 or step == total_steps
                ):
                    self._save_checkpoint(
                        {
                            "step": step,
                            "seed": opts.seed,
                            "dataset": opts.dataset,
                            "world_size": self.world_size,
                        }
                    )
                if main and (end_of_epoch or step == total_steps):
                    self._write_curves()
                if stop:
                    interrupted = True
                    break

        # DDP copies rank 0's buffers (BatchNorm statistics) to the others at each forward
        # pass; after the last one every process ends with rank 0's model.
        distributed.broadcast_(self.model.buffers())
        distributed.barrier()  # the files of rank 0 are complete when every process returns
        seconds = time.perf_counter() - started
        result = TrainResult(
            step=step,
            epoch=step // batches_per_epoch,
            seconds=seconds,
            images_per_second=images_done / max(seconds, 1e-9),
            last_metrics=metrics,
            interrupted=interrupted,
            resumed_from=resumed_from,
            world_size=self.world_size,
        )
        if interrupted:
            error = TrainingInterrupted(
                f"interrupted at step {step:,}; checkpoint saved in {self.out}; "
                "continue with --resume"
            )
            raise error if main else _quiet(error)
        self.log(
            f"Done: {step:,} steps in {seconds:,.0f} s ({result.images_per_second:,.0f} img/s); "
            f"weights in {self.out / WEIGHTS_FILE}"
        )
        return result

    def _mean_over_processes(self, sums: dict[str, float]) -> dict[str, float]:
        """The logged sums averaged over the processes (each saw an equal share of every
        batch), so the log shows the global mean."""
        keys = sorted(sums)  # the same in every process (skipped steps are agreed on)
        if not keys:
            return {}
        values = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device)
        values = distributed.all_reduce_sum(values) / self.world_size
        return dict(zip(keys, values.tolist(), strict=True))

    def _check_loss(self, loss: torch.Tensor) -> tuple[bool, float]:
        """Whether the loss is finite in every process (and its mean over processes).
        With several processes this also shares the stop flag of SIGINT/SIGTERM, so that
        every process stops after the same step."""
        if self.world_size == 1:
            return bool(torch.isfinite(loss)), float(loss.detach())
        shared = torch.stack(
            [
                loss.detach().float().reshape(()),
                torch.tensor(float(self._stop_signal is not None), device=loss.device),
            ]
        ).double()
        total, stops = distributed.all_reduce_sum(shared).tolist()
        self._agreed_stop = self._agreed_stop or stops > 0
        return math.isfinite(total), total / self.world_size

    def _train_step(self, images, labels, step, autocast) -> dict[str, float] | None:
        logged: dict[str, float] = {}
        for phase, optimizer in self.optimizers.items():
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                losses = self._loss(images, labels, step, phase)
            loss = losses["loss"]
            finite, value = self._check_loss(loss)
            if not finite:
                if self.options.skip_nonfinite:
                    self.log(f"step {step}: {phase} loss is {value}; step skipped")
                    return None
                error = TrainingError(
                    f"{phase} loss became {value} at step {step}; stopped without "
                    f"overwriting the last good checkpoint in {self.out}"
                )
                raise error if self.rank == 0 else _quiet(error)
            loss.backward()  # with several processes, DDP averages the gradients here
            if self.model.config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(
                    [p for g in optimizer.param_groups for p in g["params"]],
                    self.model.config.grad_clip,
                )
            optimizer.step()
            self.schedulers[phase].step()
            prefix = "" if len(self.optimizers) == 1 else f"{phase}_"
            logged.update({prefix + k: float(v.detach()) for k, v in losses.items()})
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return logged

    def _model_metrics(self, step: int) -> dict[str, float]:
        with evaluating(self.model), torch.inference_mode():
            return self.model.training_metrics(step)

    def _progress(self, total: int, completed: int):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self._console,
            disable=not self.options.progress or self.rank != 0,
        )

    def _trim_metrics(self, step: int) -> None:
        """Drop records past ``step`` (written after the last checkpoint of a stopped run)."""
        path = self.out / METRICS_FILE
        if not path.exists():
            return
        kept = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and _record_step(line) <= step
        ]
        text = "".join(line + "\n" for line in kept)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def _write_curves(self) -> None:
        from genmnist.viz import save_curves

        series: dict[str, list[tuple[float, float]]] = {}
        for line in (self.out / METRICS_FILE).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            for key, value in record.items():
                if key.endswith("loss") and isinstance(value, int | float):
                    series.setdefault(key, []).append((record["step"], float(value)))
        save_curves(series, self.out / CURVE_FILE, title=f"{self.model.name} training loss")


def _header_problem(header: dict[str, Any]) -> str | None:
    """What is wrong with the values of a checkpoint header that the loop uses, if anything."""

    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    step, seed, world_size = header.get("step"), header.get("seed"), header.get("world_size", 1)
    if not whole(step) or step < 0:
        return f"invalid step {step!r} in the checkpoint header"
    if not whole(seed) or not -(2**63) <= seed * 100_003 < 2**63:  # seeds the loop can use
        return f"invalid seed {seed!r} in the checkpoint header"
    if header.get("dataset", "mnist") not in ("mnist", "fashion-mnist"):
        return f"invalid dataset {header.get('dataset')!r} in the checkpoint header"
    if not whole(world_size) or world_size < 1:
        return f"invalid world_size {world_size!r} in the checkpoint header"
    if not isinstance(header.get("state"), dict):
        return "the checkpoint header holds no training state"
    return None


def _check_like(reference: Any, value: Any, where: str) -> None:
    """Raise `CheckpointError` unless the saved ``value`` looks like ``reference`` (the
    state of a fresh optimizer or scheduler): values of the same types under the keys both
    have, lists of the same length, tensors of the same shape, finite numbers. Keys only
    one side has are left to the loader (PyTorch fills in keys older versions lack)."""
    if isinstance(reference, dict):
        if not isinstance(value, dict):
            raise CheckpointError(f"'{where}' should be a mapping, got {type(value).__name__}")
        for key in reference.keys() & value.keys():
            _check_like(reference[key], value[key], f"{where}.{key}")
    elif isinstance(reference, list | tuple):
        if not isinstance(value, list | tuple) or len(value) != len(reference):
            raise CheckpointError(f"'{where}' should be a list of {len(reference)} values")
        for i, (a, b) in enumerate(zip(reference, value, strict=True)):
            _check_like(a, b, f"{where}.{i}")
    elif isinstance(reference, torch.Tensor):
        if not isinstance(value, torch.Tensor) or value.shape != reference.shape:
            raise CheckpointError(f"'{where}' should be a tensor of shape {tuple(reference.shape)}")
    else:  # a float may be saved as an int; None stands for an unset flag
        allowed = {float: (int, float), type(None): (type(None), bool)}.get(
            type(reference), (type(reference),)
        )
        if type(value) not in allowed or (isinstance(value, float) and not math.isfinite(value)):
            raise CheckpointError(f"'{where}' has an invalid value {value!r}")


def _check_optimizer_state(optimizer: torch.optim.Optimizer, saved: Any, where: str) -> None:
    """`_check_like` for an optimizer's state: its hyper-parameters against a fresh one's,
    and each parameter's tensors (scalars, or the parameter's shape)."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise CheckpointError(f"'{where}' is not an optimizer state")
    _check_like(optimizer.state_dict()["param_groups"], saved.get("param_groups"), where)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, values in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params):
            raise CheckpointError(f"'{where}' holds state for an unknown parameter {index!r}")
        if not isinstance(values, dict):
            raise CheckpointError(f"'{where}.state.{index}' is not a mapping")
        for key, value in values.items():
            shape = params[index].shape
            if not isinstance(value, torch.Tensor) or (value.ndim and value.shape != shape):
                raise CheckpointError(
                    f"'{where}.state.{index}.{key}' should be a tensor of shape {tuple(shape)}"
                )


def _record_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except (json.JSONDecodeError, AttributeError):
        return math.inf
