"""Example genmnist plugin: registers the ``pixel-gaussian`` model through the
``genmnist.models`` entry-point group (see this package's ``pyproject.toml``)."""

__version__ = "0.1.0"
