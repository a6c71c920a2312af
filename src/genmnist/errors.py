"""Exception types raised by genmnist.

Every error a user can cause (a bad name, a broken file, missing data) is a
`GenmnistError`, so callers need to catch one type, and the CLI turns it into a
one-line message instead of a traceback.
"""

from __future__ import annotations


class GenmnistError(Exception):
    """Base class of all errors genmnist raises on purpose."""


class RegistryError(GenmnistError, KeyError):
    """A name is unknown, registered twice, or its plugin is broken."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class ConfigError(GenmnistError, ValueError):
    """A model or training configuration is invalid."""


class CheckpointError(GenmnistError):
    """A weights file, config file or training checkpoint cannot be used."""


class DataError(GenmnistError):
    """A dataset is missing or malformed."""


class TrainingError(GenmnistError):
    """Training cannot go on (for example the loss became NaN)."""


class SamplingError(GenmnistError):
    """Sampling produced unusable images (NaN or inf values), which are never written or
    scored."""
