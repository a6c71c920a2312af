"""The `Trainer`: a short loop over the batches that calls its collaborators (recipe
checks, optimizers and EMA, the training task, the collectives, the run folder, the
console)."""

from __future__ import annotations

import functools
import gc
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genmnist import distributed, run_folder
from genmnist.compiling import compile_errors, compile_model
from genmnist.data import InMemoryDataset, load_dataset
from genmnist.errors import CheckpointError, ConfigError, TrainingError
from genmnist.models.base import GenerativeModel
from genmnist.nn.modes import evaluating
from genmnist.training.batches import ShardedBatches
from genmnist.training.console import TrainingConsole
from genmnist.training.loggers import Loggers, check_loggers
from genmnist.training.optim import build_optimizers, weight_average
from genmnist.training.options import TrainingInterrupted, TrainOptions, TrainResult
from genmnist.training.parallel import (
    agreed,
    data_parallel,
    machine_first,
    mean_over_processes,
    processes,
    quiet,
    step_consensus,
)
from genmnist.training.recipe import check_recipe, epochs, uses_bf16
from genmnist.training.signals import StopRequest
from genmnist.training.task import TrainingTask, check_same_task


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, else CUDA when available, else the CPU (under torchrun, a
    CUDA device without an index is ``cuda:LOCAL_RANK``)."""
    return distributed.pick_device(requested)


@dataclass
class _Plan:
    """The numbers the loop runs by, fixed before the first step."""

    step: int
    resumed_from: int | None
    batch_size: int
    batches_per_epoch: int
    total_steps: int


class _WarningWatch:
    """Which of a model's `training_warnings` to show: each kind once, only in the second
    half of a run and only when two records in a row raise it (so the noise of a young
    model does not trip it)."""

    def __init__(self) -> None:
        self.previous: set[str] = set()
        self.shown: set[str] = set()

    def update(self, warnings: dict[str, str], late: bool) -> list[str]:
        """The messages to show now, given one record's warnings (kind -> message)."""
        current = set(warnings) if late else set()
        due = sorted((current & self.previous) - self.shown)
        self.previous = current
        self.shown.update(due)
        return [warnings[kind] for kind in due]


class _Window:
    """The logged numbers summed since the last metrics record, and the images seen."""

    def __init__(self, start: float) -> None:
        self.start, self.images, self.count = start, 0, 0
        self.sums: dict[str, float] = {}

    def add(self, logged: dict[str, float] | None, images: int) -> None:
        self.images += images
        if logged is not None:  # None: a skipped step
            for k, v in logged.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
            self.count += 1


class Trainer:
    """Trains a `GenerativeModel` on an in-memory dataset.

    Args:
        model: The model to train (its config holds the recipe).
        options: Run options.
        dataset: The training split; loaded from ``options`` when omitted.
        log: Where progress lines go (default: a rich console on stderr).
        task: What to optimise (default: `TrainingTask`, the model's own loss on the data).

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
        task: TrainingTask | None = None,
    ) -> None:
        self.model = model
        self.options = options
        self.task = task or TrainingTask()
        self.out = Path(options.out)
        self.device = pick_device(options.device)
        self.dataset = dataset
        env = distributed.environment()
        self.world_size, self.rank = env.world_size, env.rank
        self.console = TrainingConsole(self.rank, log, options.progress)
        check_recipe(model.config)
        check_loggers(options.loggers)
        self.loggers: Loggers | None = None
        self.use_bf16 = uses_bf16(model, self.device.type)
        self.stop = StopRequest()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.ema: torch.optim.swa_utils.AveragedModel | None = None
        self.warnings = _WarningWatch()

    def log(self, message: str) -> None:
        """Report a line of progress (only rank 0 speaks when training with torchrun)."""
        self.console.log(message)

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop after the current step with a checkpoint, as SIGINT/SIGTERM do."""
        self.stop.request(signum)

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
            CheckpointError: ``resume`` without a usable checkpoint (missing, damaged, of
                another run or of another training task), or a fresh run into a folder
                that already holds one.
            ConfigError: training fields of the config with unusable values (see
                `Trainer`), or a batch size that the number of processes does not divide.
        """
        created_group = distributed.setup(self.device)
        self._lock: run_folder.RunLock | None = None
        try:
            with compile_errors():
                return self._fit()
        finally:
            if self.loggers is not None:
                self.loggers.close()
                self.loggers = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            if created_group:
                # Free DDP's reducer (it holds the group and threads) before the group goes:
                # destroying the group under a live reducer can abort the process at exit.
                self._loss = None
                gc.collect()
                distributed.teardown()

    def _fit(self) -> TrainResult:
        env = distributed.environment()
        self.world_size, self.rank = env.world_size, env.rank
        self.console.rank = self.rank
        torch.manual_seed(self.options.seed)
        agreed(self._claim_folder, self.device)
        self._load_data()
        plan = agreed(self._setup, self.device)
        if self.world_size > 1:
            self._loss = data_parallel(self.model, self.task, self.device, len(self.optimizers))
        else:
            self._loss = functools.partial(self.task.loss, self.model)
        self._agreed_stop = False
        self.log(_announcement(self, plan))
        started = time.perf_counter()
        step, metrics, interrupted = self._train(plan, started)
        # DDP copies rank 0's buffers (BatchNorm statistics) to the others at each forward
        # pass; after the last one every process ends with rank 0's model.
        distributed.broadcast_(self.model.buffers())
        distributed.barrier()  # the files of rank 0 are complete when every process returns
        seconds = time.perf_counter() - started
        result = _result(plan, step, seconds, metrics, interrupted, self.world_size)
        if interrupted:
            error = TrainingInterrupted(
                f"interrupted at step {step:,}; checkpoint saved in {self.out}; "
                "continue with --resume"
            )
            raise error if self.rank == 0 else quiet(error)
        self.log(
            f"Done: {step:,} steps in {seconds:,.0f} s ({result.images_per_second:,.0f} img/s); "
            f"weights in {run_folder.weights_path(self.out)}"
        )
        return result

    # ------------------------------------------------------------------ before the loop
    def _claim_folder(self) -> None:
        """Rank 0 (the one process that writes) locks the run folder for the whole run,
        checks that a new run may write there, and removes the temporary files killed
        trainings left in it."""
        if self.options.resume and self.options.overwrite:
            raise ConfigError("resume and overwrite exclude each other")
        if self.rank == 0:
            self._lock = run_folder.claim_run(self.out, self.options.resume, self.options.overwrite)

    def _load_data(self) -> None:
        if self.dataset is None:
            opts = self.options

            def load():
                self.dataset = load_dataset(opts.dataset, "train", opts.data_dir)

            machine_first(load, self.device)

    def _plan(self) -> _Plan:
        batch_size = self.model.config.batch_size
        if batch_size % self.world_size != 0:
            raise ConfigError(
                f"batch size {batch_size} is not divisible by the {self.world_size} "
                f"processes: each process takes an equal share of every batch (batch_size "
                "is the global batch); change batch_size or the number of processes"
            )
        batches_per_epoch = len(self.dataset) // batch_size
        if batches_per_epoch == 0:
            raise ConfigError(
                f"batch size {batch_size} is larger than the dataset ({len(self.dataset)})"
            )
        passes = epochs(self.model, self.options.epochs)
        total_steps = self.options.max_steps
        if total_steps is None:
            total_steps = passes * batches_per_epoch
        if total_steps <= 0:
            raise ConfigError("nothing to train: epochs and max_steps must be positive")
        return _Plan(0, None, batch_size, batches_per_epoch, total_steps)

    def _setup(self) -> _Plan:
        """Everything before the first step: checks, task, optimizers, EMA, resume, run
        folder."""
        plan = self._plan()
        self.model.to(self.device).train()
        self.task.prepare(self.model, self.dataset, self.options.resume)
        self.optimizers, self.schedulers = build_optimizers(self.model, plan.total_steps, self.task)
        self.ema = weight_average(self.model) if self.rank == 0 else None  # rank 0 exports
        if self.options.compile:  # after the weight average copied the plain model
            compile_model(self.model)
        if self.options.resume:
            plan.step = plan.resumed_from = self._resume(plan)
        if self.rank == 0:
            if not self.options.resume:
                run_folder.start_metrics(self.out)
            run_folder.write_config(self.out, self.model.config_record())
            run_folder.trim_metrics(self.out, plan.step)
            self.loggers = Loggers(self.options.loggers, self.out, plan.step)
        return plan

    def _resume(self, plan: _Plan) -> int:
        """Restore the run from its checkpoint; returns the step it continues from."""
        opts = self.options
        model = self.model

        def migrate(config: dict, version: int) -> dict:
            # migrated, and with the defaults of fields added since the run was written
            migrated = model.migrate_config(config, version)
            return type(model.config).from_dict(migrated).to_dict()

        saved = run_folder.read_checkpoint(
            self.out, model.name, model.config.to_dict(), migrate=migrate
        )
        header = saved.header
        check_same_task(header.get("task"), self.task, saved.path)
        saved.restore(self.model, self.ema, self.optimizers, self.schedulers, self.task.networks())
        step = int(header["step"])
        if header.get("dataset", opts.dataset) != opts.dataset:
            raise CheckpointError(
                f"{saved.path}: the run was trained on {header['dataset']}; "
                f"resume it with --dataset {header['dataset']}"
            )
        if header.get("seed") != opts.seed:
            self.log(f"note: the run used seed {header.get('seed')}; keeping it")
            opts.seed = int(header["seed"])
        self.log(
            f"Resumed {saved.path} at step {step:,} (epoch "
            f"{step // plan.batches_per_epoch + 1}, batch {step % plan.batches_per_epoch})"
        )
        before = int(header.get("world_size", 1))
        if before != self.world_size:
            self.log(
                f"note: the run was trained with {processes(before)}, now "
                f"{processes(self.world_size)}; the global batch stays {plan.batch_size}, "
                "so the recipe is unchanged (random draws differ from a run that keeps "
                f"{processes(before)})"
            )
        return step

    # ------------------------------------------------------------------ the loop
    def _train(self, plan: _Plan, started: float) -> tuple[int, dict[str, float], bool]:
        """Step until done or stopped; returns the last step, the last logged metrics and
        whether the run was interrupted."""
        opts = self.options
        step, metrics, window = plan.step, {}, _Window(started)
        batches = ShardedBatches(
            self.dataset, plan.batch_size, self.world_size, self.rank, opts.seed, self.device
        )
        bf16 = torch.autocast(self.device.type, dtype=torch.bfloat16)
        autocast = bf16 if self.use_bf16 else nullcontext()
        with self.stop.handling(), self.console.progress(plan.total_steps, step):
            while step < plan.total_steps:
                images, labels = batches(step)
                torch.manual_seed(distributed.step_seed(opts.seed, step, self.rank))
                logged = self._train_step(images, labels, step, autocast)
                step += 1
                window.add(logged, plan.batch_size)
                end_of_epoch = step % plan.batches_per_epoch == 0
                last = step == plan.total_steps
                if step % opts.log_every == 0 or end_of_epoch or last:
                    metrics, window = self._record(window, step, plan, started)
                self.console.advance(step)
                # several processes stop after the step they agreed on (`step_consensus`)
                stop = self._agreed_stop if self.world_size > 1 else self.stop.requested
                if self.rank == 0:
                    if last and not stop:
                        self._finish()
                    if stop or end_of_epoch or last or step % opts.checkpoint_every == 0:
                        self._save_checkpoint(step)
                    if end_of_epoch or last:
                        run_folder.write_curves(self.out, f"{self.model.name} training loss")
                if stop:
                    return step, metrics, True
        return step, metrics, False

    def _finish(self) -> None:
        """The task's `TrainingTask.finish` (by default the model's `finish_training`
        hook), on the weights that are exported."""
        exported = self.ema.module if self.ema is not None else self.model
        with evaluating(exported):
            self.task.finish(exported, self.dataset)

    def _train_step(self, images, labels, step, autocast) -> dict[str, float] | None:
        """One optimizer step per phase; the logged losses, or None for a skipped step."""
        logged: dict[str, float] = {}
        for phase, optimizer in self.optimizers.items():
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                losses = self._loss(images, labels, step, phase)
            loss = losses["loss"]
            consensus = step_consensus(loss, self.stop.requested, self.world_size)
            self._agreed_stop = self._agreed_stop or consensus.stop
            if not consensus.finite:
                if self.options.skip_nonfinite:
                    self.log(f"step {step}: {phase} loss is {consensus.loss}; step skipped")
                    return None
                error = TrainingError(
                    f"{phase} loss became {consensus.loss} at step {step}; stopped without "
                    f"overwriting the last good checkpoint in {self.out}"
                )
                raise error if self.rank == 0 else quiet(error)
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

    def _record(
        self, window: _Window, step: int, plan: _Plan, started: float
    ) -> tuple[dict[str, float], _Window]:
        """Close a logging window: the mean of its numbers over steps and processes (and,
        on rank 0, the model's `training_metrics`, written to the metrics log)."""
        sums = mean_over_processes(window.sums, self.world_size, self.device)
        now = time.perf_counter()
        rate = window.images / max(now - window.start, 1e-9)
        metrics = {k: v / max(window.count, 1) for k, v in sums.items()}
        if self.rank == 0:
            with evaluating(self.model), torch.inference_mode():
                metrics.update(self.model.training_metrics(step))
            for message in self.warnings.update(
                self.model.training_warnings(metrics), late=2 * step >= plan.total_steps
            ):
                self.console.log(f"Warning at step {step}: {message}")
            lr = next(iter(self.optimizers.values())).param_groups[0]["lr"]
            record = {"step": step, "epoch": step / plan.batches_per_epoch, **metrics, "lr": lr}
            record.update(images_per_second=rate, time=now - started)
            self.loggers.write(record)
            self.console.show(metrics, rate)
        return metrics, _Window(now)

    def _save_checkpoint(self, step: int) -> None:
        """Write the checkpoint, then the weights to export (the EMA's when there is one)."""
        run_folder.write_checkpoint(self.out, *_checkpoint(self, step))
        exported = self.ema.module if self.ema is not None else self.model
        run_folder.write_weights(self.out, exported.state_dict(), self.model.name)


def _checkpoint(trainer: Trainer, step: int) -> tuple[dict[str, Any], run_folder.TrainingState]:
    """The header and the state of the checkpoint of ``step``."""
    networks = trainer.task.networks()
    header = {
        "model": trainer.model.name,
        "config": trainer.model.config.to_dict(),
        "config_version": trainer.model.config_version,
        "task": trainer.task.record(),
        "step": step,
        "seed": trainer.options.seed,
        "dataset": trainer.options.dataset,
        "world_size": trainer.world_size,
    }
    state = run_folder.TrainingState(
        model=trainer.model.state_dict(),
        ema=None if trainer.ema is None else trainer.ema.state_dict(),
        optimizers={k: v.state_dict() for k, v in trainer.optimizers.items()},
        schedulers={k: v.state_dict() for k, v in trainer.schedulers.items()},
        rng=torch.get_rng_state(),
        task=None if networks is None else networks.state_dict(),
    )
    return header, state


def _result(plan: _Plan, step: int, seconds: float, metrics, interrupted, world_size):
    return TrainResult(
        step=step,
        epoch=step // plan.batches_per_epoch,
        seconds=seconds,
        images_per_second=(step - plan.step) * plan.batch_size / max(seconds, 1e-9),
        last_metrics=metrics,
        interrupted=interrupted,
        resumed_from=plan.resumed_from,
        world_size=world_size,
    )


def _announcement(trainer: Trainer, plan: _Plan) -> str:
    """The line that starts a run: what trains where, on what, how long."""
    precision = "bf16 autocast" if trainer.use_bf16 else "fp32"
    scale, batch = "", f"batch {plan.batch_size}"
    if trainer.world_size > 1:
        scale = (
            f" x {trainer.world_size} processes ({distributed.backend()}, "
            f"{torch.get_num_threads()} threads each)"
        )
        batch += f" ({plan.batch_size // trainer.world_size} per process)"
    return (
        f"Training [bold]{trainer.model.name}[/] ({trainer.model.num_parameters():,} parameters) "
        f"on {trainer.device.type}{scale} ({precision}), {trainer.options.dataset}: "
        f"{len(trainer.dataset):,} images, {batch}, {plan.total_steps:,} steps, "
        f"seed {trainer.options.seed} -> {trainer.out}"
    )
