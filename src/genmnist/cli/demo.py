"""``genmnist demo``: the local web app (Gradio, the optional extra ``genmnist[demo]``).

Gradio is imported when the command runs, never at import: ``genmnist --help`` and the
other commands do not need it.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from genmnist.errors import GenmnistError

#: What to run when Gradio is missing.
INSTALL = 'pip install "genmnist[demo]"'


def demo(
    host: Annotated[
        str, typer.Option(help="Address to serve on; 127.0.0.1 serves this machine only.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = 7860,
) -> None:
    """Start the local web demo: sample, interpolate, watch denoising, compare models."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage pings
    try:
        import gradio
    except ImportError:
        gradio = None
    if not hasattr(gradio, "Blocks"):  # not installed (or a stray gradio/ folder on the path)
        raise GenmnistError(f"the demo needs Gradio, which is not installed: {INSTALL}")
    from genmnist.demo.app import launch

    launch(host, port)
