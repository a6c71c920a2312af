"""The comparison report of ``genmnist compare``: Markdown, sample grids and charts.

Charts need matplotlib, the optional extra ``genmnist[plot]``; everything else (the
Markdown, the metrics JSON, the sample grids) needs only Pillow. Plotting uses
matplotlib's object-oriented API with the Agg canvas, so it never touches pyplot's global
state or the user's backend.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from genmnist.errors import GenmnistError
from genmnist.metrics.evaluation import METRICS

#: The Markdown report `write_report` writes in its folder.
REPORT_FILE = "report.md"
RADAR_AXES = ("quality", "diversity", "controllability", "efficiency")


class PlottingUnavailable(GenmnistError):
    """matplotlib is not installed (``pip install 'genmnist[plot]'``)."""


def require_matplotlib() -> None:
    """Raise :class:`PlottingUnavailable` with the install command if matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlottingUnavailable(
            "charts need matplotlib: pip install 'genmnist[plot]' (or pass --no-charts)"
        ) from None


# ---------------------------------------------------------------------- scores


def _get(result: dict[str, Any], key: str) -> float | None:
    value = result.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def radar_scores(results: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """Scores in ``[0, 1]`` (1 is best) on the four radar axes, one dict per result.

    * quality: mean of precision and acceptability;
    * diversity: mean of recall and the normalised class entropy;
    * controllability: conditional accuracy for a conditional model, else the accuracy of
      the linear probe on a VAE's latent means, else 0 (no way to ask for a class);
    * efficiency: mean of sampling speed relative to the fastest model compared and size
      relative to the smallest (so it is relative to this report).
    """
    speeds = [_get(r, "images_per_second") or 0.0 for r in results]
    sizes = [_get(r, "parameters") or 0.0 for r in results]
    fastest = max(speeds, default=0.0) or 1.0
    smallest = min((s for s in sizes if s > 0), default=1.0)
    scores = []
    for r, speed, size in zip(results, speeds, sizes, strict=True):
        control = _get(r, "conditional_accuracy")
        if control is None:
            control = _get(r, "latent_probe_accuracy") or 0.0
        scores.append(
            {
                "quality": _mean(_get(r, "precision"), _get(r, "acceptability")),
                "diversity": _mean(_get(r, "recall"), _get(r, "class_entropy")),
                "controllability": control,
                "efficiency": _mean(speed / fastest, smallest / size if size > 0 else 0.0),
            }
        )
    return scores


def _mean(*values: float | None) -> float:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else 0.0


def format_value(key: str, value: Any) -> str:
    """A metric value as shown in tables."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        fmt = METRICS[key].fmt if key in METRICS else ".4g"
        return format(value, fmt)
    return str(value)


def table_rows(results: Sequence[dict[str, Any]]) -> list[str]:
    """Metric keys of :data:`~genmnist.metrics.evaluation.METRICS` present in any result."""
    return [k for k in METRICS if any(r.get(k) is not None for r in results)]


# ---------------------------------------------------------------------- charts


def _figure(width: float, height: float):
    from genmnist.viz import matplotlib_figure

    return matplotlib_figure(width, height)


def _save(fig, path: Path) -> Path:
    from genmnist.viz import save_figure

    return save_figure(fig, path)


def radar_chart(labels: Sequence[str], scores: Sequence[dict[str, float]], path: Path) -> Path:
    """One polygon per model over :data:`RADAR_AXES`."""
    fig = _figure(6.0, 6.4)
    ax = fig.add_subplot(projection="polar")
    angles = [2 * math.pi * i / len(RADAR_AXES) for i in range(len(RADAR_AXES))]
    for label, score in zip(labels, scores, strict=True):
        values = [score[a] for a in RADAR_AXES]
        ax.plot([*angles, angles[0]], [*values, values[0]], linewidth=2, label=label)
        ax.fill([*angles, angles[0]], [*values, values[0]], alpha=0.12)
    ax.set_xticks(angles)
    ax.set_xticklabels(RADAR_AXES, fontsize=10)
    ax.tick_params(axis="x", pad=12)
    ax.set_ylim(0, 1)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0])
    ax.set_yticklabels(["0.25", "0.5", "0.75", "1"], fontsize=7)
    ax.set_title("scores in [0, 1], 1 = best", fontsize=9, pad=18)
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.08),
        ncol=min(3, len(labels)),
        fontsize=8,
        frameon=False,
    )
    return _save(fig, path)


def heatmap_chart(
    labels: Sequence[str], results: Sequence[dict[str, Any]], path: Path
) -> Path | None:
    """Metrics (rows) by models (columns), coloured per row from worst (red) to best
    (green) among the models, annotated with the values."""
    keys = [k for k in table_rows(results) if METRICS[k].better is not None]
    if not keys:
        return None
    colours = []
    for key in keys:
        values = [_get(r, key) for r in results]
        known = [v for v in values if v is not None]
        low, high = (min(known), max(known)) if known else (0.0, 0.0)
        row = []
        tie = high - low <= 0.01 * max(abs(high), abs(low))  # within 1%: no winner
        for v in values:
            if v is None:
                row.append(math.nan)
            elif tie:
                row.append(0.5)
            else:
                t = (v - low) / (high - low)
                row.append(t if METRICS[key].better == "higher" else 1 - t)
        colours.append(row)
    fig = _figure(3.6 + 1.7 * len(labels), 1.2 + 0.34 * len(keys))
    ax = fig.add_subplot()
    ax.imshow(colours, cmap="RdYlGn", vmin=-0.15, vmax=1.15, aspect="auto")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(keys)))
    arrows = {"lower": "  (lower better)", "higher": "  (higher better)"}
    ax.set_yticklabels([METRICS[k].label + arrows[METRICS[k].better] for k in keys], fontsize=7)
    for i, key in enumerate(keys):
        for j, r in enumerate(results):
            ax.text(j, i, format_value(key, r.get(key)), ha="center", va="center", fontsize=7)
    ax.set_xlabel("colour per row: red = worst, green = best among these models", fontsize=8)
    return _save(fig, path)


def curves_chart(curves: dict[str, list[tuple[float, float]]], path: Path) -> Path | None:
    """Training loss against step, one line per model that has a training log."""
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    from genmnist.viz import plot_lines

    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    plot_lines(ax, curves, "training loss")
    ax.legend(fontsize=8)
    ax.set_title("training curves (from each run's metrics.jsonl)", fontsize=9)
    return _save(fig, path)


def samples_chart(labels: Sequence[str], grids: Sequence[torch.Tensor], path: Path) -> Path:
    """Sample grids in one picture, titled by model, at most 4 in a row (rows of nearly
    equal length), so each grid stays legible on a page."""
    aspect = max(g.shape[1] / g.shape[2] for g in grids)  # height / width of a grid
    rows = math.ceil(len(labels) / 4)
    cols = math.ceil(len(labels) / rows)
    fig = _figure(2.8 * cols, rows * (0.5 + 2.8 * aspect))
    for i, (label, grid) in enumerate(zip(labels, grids, strict=True)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    return _save(fig, path)


# ---------------------------------------------------------------------- report


def unique_labels(names: Sequence[str]) -> list[str]:
    """Names made unique by appending ``-2``, ``-3``... to repeats."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def write_report(
    out: str | os.PathLike[str],
    labels: Sequence[str],
    results: Sequence[dict[str, Any]],
    samples: Sequence[torch.Tensor],
    curves: dict[str, list[tuple[float, float]]] | None = None,
    sources: Sequence[str] | None = None,
    charts: bool = True,
) -> Path:
    """Write ``report.md``, ``metrics.json``, ``samples/<model>.png`` and (with ``charts``)
    ``radar.png``, ``heatmap.png``, ``samples.png`` and ``curves.png`` into ``out``.

    Args:
        out: Report folder (created).
        labels: One unique name per model.
        results: :func:`~genmnist.metrics.evaluation.evaluate` output per model.
        samples: A few samples per model, ``(m, 1, 28, 28)`` in ``[0, 1]``.
        curves: ``{label: [(step, loss), ...]}`` for models with a training log.
        sources: Where each model came from (checkpoint folder or shipped weights).
        charts: Draw the charts (needs matplotlib).

    Returns:
        The path of ``report.md``.
    """
    from genmnist.io import atomic_write, write_json
    from genmnist.viz import make_grid, save_grid

    if charts:
        require_matplotlib()
    out = Path(out)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    curves = curves or {}
    write_json(
        out / "metrics.json",
        {label: result for label, result in zip(labels, results, strict=True)},
    )
    grids, sample_files = [], []
    for label, images in zip(labels, samples, strict=True):
        nrow = 10 if images.shape[0] % 10 == 0 else 8
        file = out / "samples" / f"{_slug(label)}.png"
        save_grid(images, file, nrow=nrow)
        grids.append(make_grid(images.float(), nrow=nrow))
        sample_files.append(file.relative_to(out).as_posix())
    chart_files: dict[str, Path | None] = {}
    if charts:
        chart_files["radar"] = radar_chart(labels, radar_scores(results), out / "radar.png")
        chart_files["heatmap"] = heatmap_chart(labels, results, out / "heatmap.png")
        chart_files["samples"] = samples_chart(labels, grids, out / "samples.png")
        chart_files["curves"] = curves_chart(curves, out / "curves.png")
    text = _markdown(labels, results, sample_files, chart_files, curves, sources)
    return atomic_write(out / REPORT_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _slug(label: str) -> str:
    """A file name for a label: runs of other characters become one ``-``."""
    import re

    return re.sub(r"[^A-Za-z0-9_.]+", "-", label).strip("-.") or "model"


#: The most models one metrics table compares; more are split over several tables, so
#: each fits the width of a docs page (about 1280 pixels with its navigation).
TABLE_MODELS = 5


def chunks(count: int, most: int = TABLE_MODELS) -> list[range]:
    """``range(count)`` cut into the fewest runs of at most ``most``, of nearly equal
    length (9 models: 5 and 4, not 5 and 1)."""
    parts = max(1, math.ceil(count / most))
    size = math.ceil(count / parts)
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def _markdown(
    labels: Sequence[str],
    results: Sequence[dict[str, Any]],
    sample_files: Sequence[str],
    charts: dict[str, Path | None],
    curves: dict[str, list[tuple[float, float]]],
    sources: Sequence[str] | None,
) -> str:
    """The report: what was compared, then the pictures (samples and charts), then the
    tables (metrics, class histograms, sources), then the settings."""
    first = results[0]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# genmnist model comparison",
        "",
        f"{len(results)} models on **{first.get('dataset')}**, {first.get('n'):,} samples each "
        f"(seed {first.get('seed')}), against the {first.get('dataset')} test set, "
        f"in the feature space of genmnist's evaluator classifier"
        + (
            f" (test accuracy {first['evaluator_accuracy']:.2%})."
            if isinstance(first.get("evaluator_accuracy"), float)
            else "."
        ),
        f"Written {now}. The numbers are in `metrics.json`; how to read them: the "
        "evaluation guide of the genmnist documentation (`docs/evaluation.md`).",
        "",
    ]
    notes = sorted({w for r in results for w in r.get("warnings", [])})
    for note in notes:
        lines += [f"> **Warning:** {note}", ""]
    lines += _figures(labels, sample_files, charts, curves)
    lines += _metric_tables(labels, results)
    lines += ["## Models", ""]
    lines += ["| model | source |", "| --- | --- |"]
    for i, label in enumerate(labels):
        source = f"`{sources[i]}`" if sources else "-"
        lines.append(f"| {label} | {source} |")
    lines += ["", "## Settings", "", "```json"]
    settings = {
        "dataset": first.get("dataset"),
        "n": first.get("n"),
        "seed": first.get("seed"),
        "evaluator_accuracy": first.get("evaluator_accuracy"),
    }
    lines += [json.dumps(settings, indent=2), "```", ""]
    return "\n".join(lines)


def _figures(
    labels: Sequence[str],
    sample_files: Sequence[str],
    charts: dict[str, Path | None],
    curves: dict[str, list[tuple[float, float]]],
) -> list[str]:
    """The report's pictures: the samples, then the charts."""
    lines = ["## Samples", ""]
    grids = ", ".join(f"[{lab}]({f})" for lab, f in zip(labels, sample_files, strict=True))
    if charts.get("samples"):
        lines += ["![samples of each model](samples.png)", "", f"Each model's grid: {grids}.", ""]
    else:  # the grids one after another: a browser wraps them to the page's width
        lines += [
            " ".join(f"![{lab}]({f})" for lab, f in zip(labels, sample_files, strict=True)),
            "",
            f"Left to right: {', '.join(labels)}.",
            "",
        ]
    if not charts:
        return lines
    lines += ["## Charts", ""]
    if charts.get("radar"):
        lines += [
            "### Radar",
            "",
            "![radar chart](radar.png)",
            "",
            "Quality = mean(precision, acceptability); diversity = mean(recall, class "
            "entropy); controllability = conditional accuracy, else a VAE's latent "
            "linear-probe accuracy, else 0; efficiency = mean(sampling speed relative "
            "to the fastest model here, size relative to the smallest).",
            "",
        ]
    if charts.get("heatmap"):
        lines += ["### Metrics heatmap", "", "![metrics heatmap](heatmap.png)", ""]
    lines += ["### Training curves", ""]
    if charts.get("curves"):
        lines += ["![training curves](curves.png)", ""]
    missing = [label for label in labels if not curves.get(label)]
    if missing:
        lines += [
            f"No training log (`metrics.jsonl`) for: {', '.join(missing)} "
            "(shipped weights, or a folder without a run log).",
            "",
        ]
    return lines


def _metric_tables(labels: Sequence[str], results: Sequence[dict[str, Any]]) -> list[str]:
    """The metrics, at most `TABLE_MODELS` models per table, and the class histograms."""
    first = results[0]
    lines = ["## Metrics", ""]
    lines += [
        "The *real floor* column scores real training images (as many as the samples) "
        "against the test set: the best a generator can reach at this sample size. "
        "Best value per row in bold"
        + (", among all the models compared." if len(labels) > TABLE_MODELS else "."),
        "",
    ]
    keys = table_rows(results)
    best = {key: _best([r.get(key) for r in results], METRICS[key].better) for key in keys}
    for part in chunks(len(labels)):
        header = "| metric | better | " + " | ".join(labels[i] for i in part) + " | real floor |"
        lines += [header, "|" + " --- |" * (len(part) + 3)]
        for key in keys:
            info = METRICS[key]
            if all(results[i].get(key) is None for i in part):
                continue
            cells = [
                f"**{format_value(key, results[i].get(key))}**"
                if i in best[key]
                else format_value(key, results[i].get(key))
                for i in part
            ]
            floor = format_value(key, first.get(f"{key}_floor")) if info.floor else ""
            arrow = {"lower": "lower", "higher": "higher", None: ""}[info.better]
            lines.append(f"| {info.label} | {arrow} | " + " | ".join(cells) + f" | {floor} |")
        lines.append("")
    collapsed = [label for label, r in zip(labels, results, strict=True) if r.get("mode_collapse")]
    if collapsed:
        lines += [
            f"**Mode collapse flagged** (some class gets under a quarter of its fair share): "
            f"{', '.join(collapsed)}.",
            "",
        ]
    lines += ["Class histograms (share of samples per predicted class):", ""]
    k = len(first.get("class_histogram", [])) or 10
    lines += ["| model | " + " | ".join(str(i) for i in range(k)) + " |"]
    lines += ["|" + " --- |" * (k + 1)]
    for label, r in zip(labels, results, strict=True):
        hist = r.get("class_histogram") or []
        lines.append(f"| {label} | " + " | ".join(f"{h:.3f}" for h in hist) + " |")
    lines.append("")
    return lines


def _best(values: Sequence[Any], better: str | None) -> set[int]:
    numbers = [
        (i, float(v))
        for i, v in enumerate(values)
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    if better is None or len(numbers) < 2:
        return set()
    target = (min if better == "lower" else max)(v for _, v in numbers)
    return {i for i, v in numbers if v == target}
