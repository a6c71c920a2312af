"""The ``genmnist`` Typer app: registers the command modules and maps errors to exit codes.

Errors a user can cause print one line (``error: ...``) and exit non-zero: a
`GenmnistError` exits with its ``exit_code`` (2 for `UsageProblem`: bad usage, including
sampling arguments a model refuses), 1 otherwise; click's usage errors exit 2, an
interrupted run 130, anything unexpected 1. Set ``GENMNIST_DEBUG=1`` for tracebacks.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Annotated

import typer

from genmnist.cli import demo, evaluate, export, models, sample, train
from genmnist.errors import GenmnistError
from genmnist.threads import apply_thread_policy

app = typer.Typer(
    name="genmnist",
    help="Generative models for MNIST-sized images: train, sample and inspect them.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from genmnist._version import __version__

        print(f"genmnist {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Generative models for MNIST-sized images: train, sample and inspect them."""


# The order here is the order of `genmnist --help`.
app.command("list")(models.list_models)
app.command("info")(models.info)
app.command("train")(train.train)
app.command("sample")(sample.sample)
app.command("eval")(evaluate.eval_command)
app.command("score")(evaluate.score_command)
app.command("compare")(evaluate.compare_command)
app.command("export")(export.export_command)
app.command("train-evaluator")(evaluate.train_evaluator_command)
app.command("demo")(demo.demo)


#: Values of ``GENMNIST_DEBUG`` that mean "off" (compared case-insensitively, stripped).
DEBUG_OFF = ("", "0", "false", "no", "off", "n", "f")


def debug_enabled() -> bool:
    """Whether ``GENMNIST_DEBUG`` asks for tracebacks: any value but an "off" one
    (`DEBUG_OFF`: empty, ``0``, ``false``, ``no``, ``off``, in any case)."""
    return os.environ.get("GENMNIST_DEBUG", "").strip().lower() not in DEBUG_OFF


def exit_code(exc: GenmnistError) -> int:
    """The exit status of a genmnist error: its ``exit_code`` attribute, else 1."""
    code = getattr(exc, "exit_code", 1)
    return code if isinstance(code, int) else 1


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``genmnist`` script."""
    args = sys.argv[1:] if argv is None else list(argv)
    if "torch" not in sys.modules:  # too late once torch has started its thread pool
        apply_thread_policy()
    debug = debug_enabled()
    previous_format = warnings.formatwarning
    if not debug:  # warnings (a broken plugin...) in one line too, without source lines
        warnings.formatwarning = _one_line_warning
    try:
        code = app(args=args or ["--help"], prog_name="genmnist", standalone_mode=False)
    except GenmnistError as exc:
        if debug:
            raise
        code = exit_code(exc)
        if not getattr(exc, "rank_quiet", False):  # under torchrun, another rank says it
            code = _fail(str(exc), code)
    except KeyboardInterrupt:
        code = _fail("interrupted", 130)
    except Exception as exc:
        # Typer's (or click's) usage errors: duck-typed, since Typer >= 0.17 vendors click.
        if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
            code = _fail(exc.format_message(), exc.exit_code)
        elif type(exc).__name__ == "Abort":
            code = _fail("aborted", 130)
        elif debug:
            raise
        else:  # keep tracebacks away from users unless asked for
            code = _fail(f"unexpected {type(exc).__name__}: {exc} (GENMNIST_DEBUG=1 shows more)", 1)
    finally:
        warnings.formatwarning = previous_format
    sys.exit(code if isinstance(code, int) else 0)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    text = str(message).strip()
    return f"warning: {text.splitlines()[0] if text else category.__name__}\n"


def _fail(message: str, code: int) -> int:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    typer.echo(f"error: {first_line}", err=True)
    return code
