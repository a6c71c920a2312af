"""Exporting a model's sampling network to ONNX or TorchScript, to run it without genmnist.

A model says what it exports through `GenerativeModel.export_network`, which returns an
`ExportSpec`: a plain `torch.nn.Module`, example inputs, and what each input and output
means (a GAN's generator, a VAE's decoder, a diffusion model's denoising U-Net). The
formats are registered in `EXPORT_FORMATS` (``onnx``, ``torchscript``); each writes the
file atomically and checks it: the file is loaded back (with ONNX Runtime, or
``torch.jit.load``) and run on the example inputs, and its output must match PyTorch's.

ONNX export uses ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based
exporter, the default since PyTorch 2.9), which needs ``onnx`` and ``onnxscript``; the
check needs ``onnxruntime``. All three come with the extra ``genmnist[export]``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genmnist._version import __version__
from genmnist.errors import ConfigError, GenmnistError
from genmnist.io import atomic_write, check_output, to_json_value
from genmnist.nn.modes import evaluating
from genmnist.registry import Registry

#: Key of the JSON description stored in an exported file (ONNX metadata property, or
#: the TorchScript archive's extra file of this name).
METADATA_KEY = "genmnist"
#: Largest difference between the exported network's output and PyTorch's that the check
#: after export accepts (float32 kernels of two runtimes sum in other orders).
TOLERANCE = 1e-4
#: Batch size of the example inputs (a batch of 1 could hide a wrong batch axis).
EXAMPLE_BATCH = 2


class ExportUnavailable(GenmnistError):
    """What an export needs is not installed (``pip install 'genmnist[export]'``)."""


@dataclass
class ExportSpec:
    """What a model exports: a network and how to call it.

    Attributes:
        module: The network as a plain module, ``module(*inputs) -> output`` (in eval
            mode; no genmnist code runs around it once exported).
        inputs: Example inputs by name, in the order ``module`` takes them; their first
            axis is the batch, exported as dynamic.
        output: Name of the output tensor.
        doc: What each input and the output hold (shape, dtype, range), by name.
        metadata: Further JSON values a user needs to drive the network (a diffusion
            model's noise schedule, say), stored in the exported file.
    """

    module: nn.Module
    inputs: dict[str, torch.Tensor]
    output: str
    doc: dict[str, str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def description(self, model_name: str) -> dict[str, Any]:
        """The JSON stored in the exported file: model, inputs, output and metadata."""
        return to_json_value(
            {
                "genmnist_version": __version__,
                "model": model_name,
                "inputs": {name: self.doc.get(name, "") for name in self.inputs},
                "output": {self.output: self.doc.get(self.output, "")},
                **self.metadata,
            }
        )


@dataclass(frozen=True)
class ExportFormat:
    """One file format: ``write(spec, description, path)`` writes the file,
    ``run(path, inputs)`` loads it back and runs it (for the check)."""

    name: str
    suffix: str
    write: Callable[[ExportSpec, dict[str, Any], Path], None]
    run: Callable[[Path, dict[str, torch.Tensor]], torch.Tensor]
    #: Says what is missing (`ExportUnavailable`) before any work; None: nothing needed.
    require: Callable[[], None] | None = None


#: Export formats by name: ``onnx``, ``torchscript``.
EXPORT_FORMATS: Registry[ExportFormat] = Registry("export format")


@dataclass(frozen=True)
class ExportResult:
    """What `export_model` wrote: the file, its format, the spec and the largest
    difference between the file's output and PyTorch's on the example inputs."""

    path: Path
    format: str
    spec: ExportSpec
    max_difference: float


def check_export_target(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse, in one line, an output that exists (unless ``overwrite``) or that could not
    be replaced atomically (a folder, a dangling link...; see `genmnist.io.check_output`)."""
    path = Path(path)
    check_output(path)
    if os.path.lexists(path) and not overwrite:
        raise ConfigError(f"{path} already exists; pass --overwrite to replace it")
    return path


def export_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    fmt: str = "onnx",
    *,
    overwrite: bool = False,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Export the sampling network of ``model`` (see `GenerativeModel.export_network`) to
    ``path`` in format ``fmt``, atomically, then check the file against PyTorch.

    Raises:
        RegistryError: unknown format.
        ExportUnavailable: the format's packages are not installed.
        ConfigError: ``path`` exists and ``overwrite`` is False, or the model exports no
            network.
        GenmnistError: the exporter failed, or the exported network's output differs
            from PyTorch's by more than ``tolerance`` (the file is removed).
    """
    export_format = EXPORT_FORMATS.get(fmt)
    if export_format.require is not None:
        export_format.require()
    path = check_export_target(path, overwrite)
    with evaluating(model):
        return _export(model, path, fmt, export_format, tolerance)


def _export(model, path: Path, fmt: str, export_format: ExportFormat, tolerance: float):
    spec = model.export_network()
    spec.module.eval()
    # checked at another batch size than the example's, so a batch size baked into the
    # exported graph shows
    check_inputs = {name: torch.cat([t, t.flip(0)]) for name, t in spec.inputs.items()}
    with torch.no_grad():
        expected = spec.module(*check_inputs.values()).float().cpu()
    description = spec.description(model.name)
    try:
        atomic_write(path, lambda tmp: export_format.write(spec, description, tmp))
    except GenmnistError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise GenmnistError(
            f"{fmt} export of '{model.name}' failed: {type(exc).__name__}: {reason}"
        ) from exc
    got = export_format.run(path, check_inputs).float()
    difference = float((got - expected).abs().max()) if got.shape == expected.shape else None
    if difference is None or not difference <= tolerance:
        path.unlink(missing_ok=True)
        found = f"shape {tuple(got.shape)}" if difference is None else f"differs by {difference:g}"
        raise GenmnistError(
            f"the exported {fmt} network's output {found} from PyTorch's "
            f"(expected {tuple(expected.shape)} within {tolerance:g}); nothing written"
        )
    return ExportResult(path, fmt, spec, difference)


def read_description(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON description stored in an exported file (ONNX or TorchScript)."""
    path = Path(path)
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # a TorchScript archive is a zip file
    if zipped:
        extra = {f"{METADATA_KEY}.json": ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        return json.loads(extra[f"{METADATA_KEY}.json"])
    import onnx

    properties = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(properties[METADATA_KEY])


# ---------------------------------------------------------------------- ONNX
def _require_onnx() -> None:
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ExportUnavailable(
            f"ONNX export needs {', '.join(missing)}: pip install 'genmnist[export]'"
        )


def _write_onnx(spec: ExportSpec, description: dict[str, Any], path: Path) -> None:
    import contextlib
    import io

    batch = torch.export.Dim("batch", min=1)
    dynamic = {name: {0: batch} for name in spec.inputs}
    # The exporter reports its progress on stdout and warns about renaming the shared
    # batch axis; neither concerns the user, who gets one line from the command.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            spec.module,
            tuple(spec.inputs.values()),
            dynamo=True,
            input_names=list(spec.inputs),
            output_names=[spec.output],
            dynamic_shapes=dynamic,
            verbose=False,
        )
        program.model.metadata_props[METADATA_KEY] = json.dumps(description)
        program.save(str(path))


def _run_onnx(path: Path, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: tensor.cpu().numpy() for name, tensor in inputs.items()}
    return torch.from_numpy(session.run(None, feeds)[0])


EXPORT_FORMATS.register(
    "onnx",
    ExportFormat("onnx", ".onnx", _write_onnx, _run_onnx, _require_onnx),
    description="ONNX (opset of torch.onnx's dynamo exporter), dynamic batch axis",
)


# ---------------------------------------------------------------------- TorchScript
def _write_torchscript(spec: ExportSpec, description: dict[str, Any], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings
        traced = torch.jit.trace(spec.module, tuple(spec.inputs.values()), check_trace=False)
        extra = {f"{METADATA_KEY}.json": json.dumps(description)}
        torch.jit.save(traced, str(path), _extra_files=extra)


def _run_torchscript(path: Path, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return network(*(t.cpu() for t in inputs.values())).cpu()


EXPORT_FORMATS.register(
    "torchscript",
    ExportFormat("torchscript", ".pt", _write_torchscript, _run_torchscript),
    description="TorchScript (torch.jit.trace), loads with torch.jit.load in C++ or Python",
)
