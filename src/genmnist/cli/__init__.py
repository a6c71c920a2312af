"""The ``genmnist`` command line: list, info, train, sample, eval, compare, train-evaluator.

One module per group of commands (`models`, `train`, `sample`, `evaluate`), what they share
in `common`, and the Typer app with the error-to-exit-code mapping in `app`. Imports go one
way: ``app`` imports the command modules, they import ``common``, and nothing imports
``app`` or this package. Torch is imported inside the commands, so ``genmnist --help``
answers at once.
"""

from genmnist.cli.app import app, main

__all__ = ["app", "main"]
