"""``genmnist export``: write a model's sampling network as an ONNX or TorchScript file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genmnist.cli.common import (
    CheckpointOption,
    ModelDatasetOption,
    OverwriteOption,
    UsageProblem,
    check_dataset,
    check_output_file,
    console,
    os_reason,
    resolve_model,
)
from genmnist.errors import ConfigError, GenmnistError, RegistryError


def export_command(
    name: Annotated[str, typer.Argument(help="Registered model name, or a checkpoint folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", "-f", help="onnx or torchscript (default: from -o: .onnx or .pt)."
        ),
    ] = None,
    checkpoint: CheckpointOption = None,
    dataset: ModelDatasetOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Export the network that samples (GAN generator, VAE decoder, diffusion U-Net) to
    ONNX or TorchScript, check it against PyTorch, and print its inputs and output."""
    check_dataset(dataset)
    fmt = fmt or _format_from_suffix(output)
    from genmnist.export import EXPORT_FORMATS, export_model

    try:
        export_format = EXPORT_FORMATS.get(fmt)
    except RegistryError as exc:
        raise UsageProblem(f"--format: {str(exc).strip(chr(34))}") from None
    if export_format.require is not None:
        export_format.require()  # before loading anything: one line naming the extra
    check_output_file(output, "--output", overwrite)  # export_model checks it again
    model = resolve_model(name, checkpoint, dataset).model
    try:
        result = export_model(model, output, fmt, overwrite=overwrite)
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from None
    except OSError as exc:
        raise GenmnistError(f"cannot write {output}: {os_reason(exc)}") from None
    out = console()
    out.print(
        f"Exported the sampling network of {model.name} to {result.path} ({fmt}; its output "
        f"matches PyTorch's within {result.max_difference:.1e})"
    )
    spec = result.spec
    for label, names in (("input", list(spec.inputs)), ("output", [spec.output])):
        for tensor in names:
            out.print(f"  {label} {tensor}: {spec.doc.get(tensor, '')}", soft_wrap=True)
    if spec.metadata:
        out.print(f"  also in the file's 'genmnist' metadata: {', '.join(spec.metadata)}")


def _format_from_suffix(output: Path) -> str:
    from genmnist.export import EXPORT_FORMATS

    suffix = output.suffix.lower()
    for name in EXPORT_FORMATS.list():
        if EXPORT_FORMATS.get(name).suffix == suffix:
            return name
    raise UsageProblem(
        f"cannot tell the export format from '{output.name}'; pass --format "
        f"({', '.join(EXPORT_FORMATS.list())})"
    )
