"""``genmnist train``: train a registered model into a run folder, here or under torchrun."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from genmnist.cli.common import (
    DatasetOption,
    UsageProblem,
    check_dataset,
    check_writable,
    console,
    model_entry,
    os_reason,
)
from genmnist.errors import GenmnistError


def train(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    epochs: Annotated[int | None, typer.Option(min=1, help="Passes over the data.")] = None,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many optimizer steps.")
    ] = None,
    dataset: DatasetOption = "mnist",
    data_dir: Annotated[
        Path | None, typer.Option(help="Data root (default: $GENMNIST_DATA or ~/.cache).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder.")] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Config fields to override: a .json, .toml or .yaml file."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Start a new run in --out even if it is not empty, replacing the run or "
            "model there (without it, a new run refuses a folder that is not empty)."
        ),
    ] = False,
    compile_: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Run the networks through torch.compile (compiles first: slower for "
            "short runs on a CPU, see the docs).",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the run.")] = 42,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Steps between checkpoints.")] = 200,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: auto).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    tensorboard: Annotated[
        bool,
        typer.Option(
            help="Also log the metrics to TensorBoard, in OUT/tensorboard "
            "(needs genmnist[tensorboard])."
        ),
    ] = False,
    nproc: Annotated[
        int | None,
        typer.Option(min=1, help="Train data-parallel in N processes here (starts torchrun)."),
    ] = None,
) -> None:
    """Train a model: writes config.json, model.safetensors, checkpoints, metrics, loss plot."""
    check_dataset(dataset)
    model_entry(name)
    if resume and overwrite:
        raise UsageProblem("--resume continues the run in --out, --overwrite replaces it: pick one")
    out = out or Path("runs") / name
    check_writable(out, "--out")
    loggers = ("tensorboard",) if tensorboard else ()
    from genmnist import distributed, run_folder
    from genmnist.training.loggers import check_loggers

    check_loggers(loggers)  # a missing package fails before any work
    if compile_:
        from genmnist.compiling import check_compiler

        check_compiler()

    run_folder.check_fresh(out, resume, overwrite)  # early; the trainer checks it under lock
    if nproc is not None and nproc > 1:
        raise typer.Exit(_launch_torchrun(ctx, nproc))
    if distributed.environment().distributed:
        distributed.die_with_launcher()  # a torchrun worker stops when torchrun goes
    from genmnist.models import create_model
    from genmnist.training import Trainer, TrainingInterrupted, TrainingTask, TrainOptions

    if resume:
        model_name, overrides, task = _resumed_run(out)
        if model_name != name:
            raise UsageProblem(f"{out} holds a '{model_name}' run, not '{name}'")
        if config is not None:
            raise UsageProblem("--config cannot change a run being resumed")
    else:
        overrides = _read_overrides(config) if config is not None else {}
        task = TrainingTask.from_record(overrides.pop("task", None), where=str(config))
    import torch

    torch.manual_seed(seed)  # the initial weights are part of the run: same seed, same run
    model = create_model(name, **overrides)
    options = TrainOptions(
        out=out,
        epochs=epochs,
        max_steps=max_steps,
        dataset=dataset,
        data_dir=str(data_dir) if data_dir is not None else None,
        seed=seed,
        resume=resume,
        overwrite=overwrite,
        checkpoint_every=checkpoint_every,
        device=device,
        progress=not quiet and sys.stderr.isatty(),
        loggers=loggers,
        compile=compile_,
    )
    try:
        Trainer(model, options, task=task).fit()
    except TrainingInterrupted as exc:
        if not getattr(exc, "rank_quiet", False):  # under torchrun, rank 0 says it
            console().print(f"[yellow]{exc}[/]")
        raise typer.Exit(130) from None
    except OSError as exc:  # reads are checked (DataError, CheckpointError): a failed write
        raise GenmnistError(f"cannot write the run in {out}: {os_reason(exc)}") from None


def _launch_torchrun(ctx, nproc: int) -> int:
    """Run this same `train` command in ``nproc`` processes through torchrun."""
    from genmnist import distributed

    if distributed.environment().distributed:
        raise UsageProblem("--nproc starts torchrun itself; leave it out under torchrun")
    args = [ctx.info_name]
    for param in ctx.command.params:  # the parsed command line, minus --nproc
        value = ctx.params.get(param.name)
        if param.name == "nproc" or value is None:
            continue
        if param.param_type_name == "argument":
            args.append(str(value))
        elif getattr(param, "is_flag", False):
            if value:
                args.append(param.opts[0])
            elif param.secondary_opts:
                args.append(param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    return distributed.launch(nproc, args)


def _read_overrides(path: Path) -> dict:
    from genmnist.io import read_config_file

    data = read_config_file(path)
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]  # a whole config.json from another run
    if not isinstance(data, dict):
        raise GenmnistError(f"{path}: expected a table (object) of config fields")
    return data


def _resumed_run(out: Path):
    """The model name, config (migrated to the current version) and training task of the
    run in ``out``."""
    from genmnist import run_folder
    from genmnist.models import saved_config
    from genmnist.training import TrainingTask

    if not run_folder.holds_model(out):
        raise GenmnistError(f"--resume: {out} holds no run (no config.json); nothing to resume")
    if _is_version_1_distillation(out):
        raise GenmnistError(
            f"--resume: {out} is a guidance-distillation run of an older genmnist, whose "
            "recipe named its teacher in the model config; start it again with the recipe's "
            '"task" entry (see the diffusion docs)'
        )
    name, config = saved_config(out)
    return name, config, TrainingTask.from_record(run_folder.read_task_record(out))


def _is_version_1_distillation(out: Path) -> bool:
    from genmnist import run_folder

    record = run_folder.read_config(out)
    config = record.get("config") if isinstance(record, dict) else None
    return record.get("config_version") == 1 and bool((config or {}).get("distill_teacher"))
