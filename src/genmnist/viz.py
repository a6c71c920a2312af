"""Writing images: sample grids (PNG), arrays (npy, pt) and training curves.

Grids follow ``torchvision.utils.save_image``'s layout (``nrow`` images per row, 2-pixel
padding of black) but need only Pillow, so sampling never pays torchvision's ~3 s import.
Training curves are drawn with matplotlib when it is installed (``genmnist[plot]``), with
labelled axes, one panel per curve (`training_curves_figure`); without it, with Pillow
(`save_curves`). Plotting uses matplotlib's object-oriented API on the Agg canvas, so it
never touches pyplot's global state or the user's backend.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from genmnist.errors import ConfigError
from genmnist.io import atomic_write

OUTPUT_FORMATS = ("png", "npy", "pt")


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 0.0):
    """Tile ``(n, c, h, w)`` images into one ``(c, H, W)`` image, as torchvision does."""
    if images.ndim != 4:
        raise ValueError(f"expected (n, c, h, w) images, got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    if n == 1:  # torchvision returns a lone image unpadded
        return images[0].clone()
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    cell_h, cell_w = h + padding, w + padding
    grid = images.new_full((c, rows * cell_h + padding, cols * cell_w + padding), pad_value)
    for i in range(n):
        y, x = divmod(i, cols)
        top, left = y * cell_h + padding, x * cell_w + padding
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Floats in ``[0, 1]`` to bytes, rounding as ``torchvision.utils.save_image`` does."""
    return images.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def save_grid(images: torch.Tensor, path: str | os.PathLike[str], nrow: int = 8) -> Path:
    """Save images in ``[0, 1]`` as one grayscale PNG grid (atomically)."""
    from PIL import Image

    grid = to_uint8(make_grid(images.detach().float().cpu(), nrow=nrow))[0]
    picture = Image.fromarray(grid.numpy(), mode="L")
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def save_samples(
    images: torch.Tensor, path: str | os.PathLike[str], fmt: str | None = None, nrow: int = 8
) -> Path:
    """Save samples as a PNG grid, a NumPy ``.npy`` array or a ``.pt`` tensor.

    ``fmt`` defaults to the file suffix. Arrays keep the ``(n, 1, 28, 28)`` float32 values.
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".") or "png").lower()
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown output format '{fmt}'; choose from {', '.join(OUTPUT_FORMATS)}")
    if fmt == "png":
        return save_grid(images, path, nrow=nrow)
    if fmt == "npy":
        import numpy as np

        array = images.float().cpu().numpy()

        def write_npy(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a name
                np.save(f, array)

        return atomic_write(path, write_npy)
    return atomic_write(path, lambda tmp: torch.save(images.float().cpu(), tmp))


def has_matplotlib() -> bool:
    """Whether matplotlib is installed (the extra ``genmnist[plot]``)."""
    return importlib.util.find_spec("matplotlib") is not None


def matplotlib_figure(width: float, height: float, dpi: int = 110):
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches on the Agg canvas (no
    pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike[str]) -> Path:
    """Save a matplotlib figure as a PNG, laid out tightly, atomically."""
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_lines(ax, curves: dict[str, Sequence[tuple[float, float]]], ylabel: str) -> None:
    """Draw ``{label: [(step, value), ...]}`` as lines on the matplotlib axes ``ax``, with
    the x axis labelled ``step`` and the y axis ``ylabel``; non-finite values are left
    out, and a y axis whose positive values span more than a factor of 20 is logarithmic."""
    values = []
    for label, points in curves.items():
        finite = [(s, v) for s, v in points if math.isfinite(v)]
        values += [v for _, v in finite]
        marker = "o" if len(finite) <= 20 else None  # a short run's few records show
        xs, ys = [s for s, _ in finite], [v for _, v in finite]
        ax.plot(xs, ys, label=label, linewidth=1.5, marker=marker, markersize=3)
    if values and min(values) > 0 and max(values) / min(values) > 20:  # spans decades
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)


def training_curves_figure(series: dict[str, Sequence[tuple[float, float]]], title: str):
    """A matplotlib figure of ``{name: [(step, value), ...]}``: one panel per series, on
    its own scale, the x axis ``step`` and the y axis the series' name."""
    names = list(series) or ["loss"]
    fig = matplotlib_figure(6.4, 0.6 + 2.2 * len(names))
    for i, name in enumerate(names):
        ax = fig.add_subplot(len(names), 1, i + 1)
        plot_lines(ax, {name: series.get(name, [])}, name)
        if i == 0:
            ax.set_title(title, fontsize=10)
    return fig


def save_training_curves(
    series: dict[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike[str],
    title: str = "training loss",
) -> Path:
    """Plot training curves into a PNG: with matplotlib (`training_curves_figure`) when
    it is installed, else with Pillow (`save_curves`)."""
    if has_matplotlib():
        return save_figure(training_curves_figure(series, title), path)
    return save_curves(series, path, title=title)


def save_curves(
    series: dict[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike[str],
    title: str = "training loss",
    size: tuple[int, int] = (640, 400),
) -> Path:
    """Plot ``{name: [(step, value), ...]}`` as lines in a small PNG (Pillow only).

    Each series is scaled to its own min..max so curves of different magnitude share one
    panel (the y axis says so); the legend gives each series' first and last value.
    """
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 50, 20, 30, 40 + 14 * len(series)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), title, fill="black")
    x0, y0, x1, y1 = left, top, width - right, height - bottom
    draw.rectangle((x0, y0, x1, y1), outline="black")
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    all_steps = [s for points in series.values() for s, _ in points]
    if all_steps:
        s_min, s_max = min(all_steps), max(all_steps)
        draw.text((x0, y1 + 4), f"step {s_min:g}", fill="black")
        draw.text(((x0 + x1) // 2 - 12, y1 + 4), "step", fill="black")
        draw.text((x1 - 80, y1 + 4), f"step {s_max:g}", fill="black")
        draw.text((4, y0), "value", fill="black")
        draw.text((4, y0 + 12), "(own", fill="black")
        draw.text((4, y0 + 24), "range)", fill="black")
        for k, (name, points) in enumerate(series.items()):
            values = [v for _, v in points if math.isfinite(v)]
            if not values:
                continue
            v_min, v_max = min(values), max(values)
            color = colors[k % len(colors)]
            xy = [
                (
                    x0 + (x1 - x0) * (s - s_min) / max(s_max - s_min, 1e-12),
                    y1 - (y1 - y0) * (v - v_min) / max(v_max - v_min, 1e-12),
                )
                for s, v in points
                if math.isfinite(v)
            ]
            if len(xy) > 1:
                draw.line(xy, fill=color, width=2)
            label = f"{name}: {values[0]:.4g} -> {values[-1]:.4g} (range {v_min:.4g}..{v_max:.4g})"
            draw.text((x0, y1 + 20 + 14 * k), label, fill=color)
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def save_gif(
    frames: Sequence[torch.Tensor], path: str | os.PathLike[str], duration_ms: int = 80
) -> Path:
    """Save ``(1, H, W)`` frames in ``[0, 1]`` as an animated GIF; the last frame lingers."""
    from PIL import Image

    if not frames:
        raise ConfigError("no frames to animate")
    pictures = [Image.fromarray(to_uint8(f.float().cpu())[0].numpy(), mode="L") for f in frames]
    durations = [duration_ms] * (len(pictures) - 1) + [1500]

    def write(tmp: Path) -> None:
        pictures[0].save(
            tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0
        )

    return atomic_write(path, write)
