"""``--compile``: running a model's networks through ``torch.compile``.

`compile_model` checks that compiling can work here (TorchInductor, torch.compile's
default backend, builds C++ kernels on the CPU and needs a C++ compiler), then compiles
the networks the model names (`GenerativeModel.compile_networks`) in place, so weights
save and load as before. Compilation itself happens at the first call of each network;
`compile_errors` turns a failure there into a one-line `GenmnistError`.

Measured on a 2-core CPU (``benchmarks/compile_speed.py``), compiling does not pay for
genmnist's small networks at the sizes a command runs, so it is off by default.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from genmnist.errors import GenmnistError

#: C++ compilers TorchInductor can use on the CPU (``CXX`` first when set).
CXX_COMPILERS = ("g++", "clang++", "c++")


class CompileUnavailable(GenmnistError):
    """``torch.compile`` cannot work here (no C++ compiler, or compilation failed)."""


def check_compiler() -> None:
    """`CompileUnavailable` unless a C++ compiler that TorchInductor can call is found."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else list(CXX_COMPILERS)
    if not any(shutil.which(c) for c in candidates):
        raise CompileUnavailable(
            f"--compile needs a C++ compiler for torch.compile on the CPU "
            f"({' or '.join(candidates)} on PATH, or CXX); install one or leave --compile out"
        )


def compile_model(model: Any, **options: Any) -> Any:
    """Compile ``model``'s networks in place with ``torch.compile(**options)`` (see
    `GenerativeModel.compile_networks`); returns the model.

    Raises:
        CompileUnavailable: no C++ compiler for TorchInductor.
    """
    check_compiler()
    # On a machine without CUDA, building the CPU kernels logs a warning that it found no
    # CUDA runtime: true, and of no concern to a CPU run.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    model.compile_networks(**options)
    return model


@contextmanager
def compile_errors() -> Iterator[None]:
    """Turn a failure of ``torch.compile`` inside the block (which compiles at the first
    call) into a one-line `CompileUnavailable`; other errors pass unchanged."""
    try:
        yield
    except Exception as exc:
        from torch._dynamo.exc import TorchDynamoException

        if not isinstance(exc, TorchDynamoException):
            raise
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CompileUnavailable(
            f"torch.compile failed ({type(exc).__name__}: {reason}); leave --compile out"
        ) from exc
