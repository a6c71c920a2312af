"""``genmnist sample``: draw images from a model into a PNG grid, a .npy array or a .pt
tensor, optionally with an animated GIF of the denoising."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genmnist.cli.common import (
    CheckpointOption,
    GuidanceIntervalOption,
    GuidanceOption,
    ModelDatasetOption,
    OverwriteOption,
    SamplerOption,
    SpacingOption,
    StepsOption,
    TemperatureOption,
    TimeShiftOption,
    UsageProblem,
    check_dataset,
    check_output_file,
    console,
    os_reason,
    progress_bar,
    resolve_model,
    sampling_options,
    sampling_usage,
)
from genmnist.errors import GenmnistError


def sample(
    name: Annotated[str, typer.Argument(help="Registered model name, or a checkpoint folder.")],
    n: Annotated[int, typer.Option("-n", "--num", min=1, help="Number of images.")] = 64,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Output file (default NAME-DATASET-samples.png)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed; sample i is the same for any -n.")] = None,
    label: Annotated[
        int | None, typer.Option(min=0, help="Class label (conditional models).")
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="png, npy or pt (default: from -o).")
    ] = None,
    checkpoint: CheckpointOption = None,
    dataset: ModelDatasetOption = None,
    nrow: Annotated[int | None, typer.Option(min=1, help="Images per grid row.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images generated at once.")] = 1000,
    sampler: SamplerOption = None,
    steps: StepsOption = None,
    spacing: SpacingOption = None,
    time_shift: TimeShiftOption = None,
    guidance: GuidanceOption = None,
    guidance_interval: GuidanceIntervalOption = None,
    temperature: TemperatureOption = None,
    gif: Annotated[
        Path | None, typer.Option(help="Also write an animated GIF of the denoising.")
    ] = None,
    compile_: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Run the networks through torch.compile (compiles first: slower for "
            "small runs on a CPU, see the docs).",
        ),
    ] = False,
    overwrite: OverwriteOption = False,
) -> None:
    """Draw samples and save them as a PNG grid, a .npy array or a .pt tensor."""
    from genmnist.viz import OUTPUT_FORMATS

    check_dataset(dataset)
    if fmt is not None and fmt not in OUTPUT_FORMATS:
        raise _unknown_format(fmt, OUTPUT_FORMATS)
    resolved = resolve_model(name, checkpoint, dataset)
    model, dataset = resolved.model, resolved.dataset
    if compile_:
        from genmnist.compiling import compile_model

        compile_model(model)
    output = output or Path(f"{model.name}-{dataset}-samples.{fmt or 'png'}")
    fmt = fmt or output.suffix.lstrip(".").lower() or "png"
    if fmt not in OUTPUT_FORMATS:
        raise _unknown_format(fmt, OUTPUT_FORMATS)
    for option, target in (("--output", output), ("--gif", gif)):
        if target is not None:
            check_output_file(target, option, overwrite)
    import random

    from genmnist.viz import save_samples

    options = sampling_options(
        model,
        sampler=sampler,
        steps=steps,
        spacing=spacing,
        time_shift=time_shift,
        guidance=guidance,
        guidance_interval=guidance_interval,
        temperature=temperature,
        gif=gif,
    )
    if seed is None:
        seed = random.randrange(2**31)
    default_rows = 10 if model.conditional and label is None else 8
    frames: list = []
    if gif is not None:
        from genmnist.viz import make_grid

        first_batch = {"done": False}

        def keep_frame(i, x_t, x0):  # animate the first batch only
            first_batch["done"] = first_batch["done"] or (i == 0 and bool(frames))
            if not first_batch["done"]:
                frames.append(make_grid(x_t.float().cpu(), nrow or default_rows))

        options["callback"] = keep_frame
    from genmnist.compiling import compile_errors

    with (
        sampling_usage(options),
        compile_errors(),
        progress_bar(n, f"sampling {model.name}") as update,
    ):
        images = model.sample(
            n, labels=label, seed=seed, batch_size=batch_size, progress=update, **options
        )
    try:
        path = save_samples(images, output, fmt=fmt, nrow=nrow or default_rows)
        if gif is not None:
            from genmnist.viz import save_gif

            save_gif(frames, gif)
    except OSError as exc:
        raise GenmnistError(f"cannot write the samples: {os_reason(exc)}") from None
    if gif is not None:
        console().print(f"Saved the denoising trajectory to {gif}")
    console().print(f"Saved {n} samples of {model.name} (seed {seed}) to {path}")


def _unknown_format(fmt: str, known) -> UsageProblem:
    return UsageProblem(
        f"unknown output format '{fmt}'; choose from {', '.join(known)} "
        "(--format, or the suffix of -o)"
    )
