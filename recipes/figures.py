"""Every picture of the docs that is drawn from the shipped weights, in one script.

    OMP_NUM_THREADS=1 python recipes/figures.py          # a few minutes on one CPU core

Run it again whenever weights are added to or replaced in the package: it finds the
shipped models itself (every registered model with a ``config.json`` under
`genmnist.models.pretrained_dir`, for every dataset in `genmnist.models.DATASETS`), so a
new model gets its pictures without an edit here. It writes, all with seed 0:

* ``docs/images/samples/<dataset>/<model>.png``: a sample grid per shipped model, 64
  samples in rows of 8, or for a conditional model 100 samples in rows of labels 0-9
  (each column one class), enlarged 2x (nearest neighbour);
* ``docs/images/gallery-<dataset>.png``: one strip of samples per shipped model, titled
  with its name, for the home page;
* ``docs/images/denoising/<dataset>/<model>.gif``: the sampling trajectory (noisy image
  beside the model's clean estimate at each step) of the first shipped model of each
  family whose sampler reports its steps (``ddpm``, and ``flow`` or ``flow-cfg`` when
  flow weights ship);
* ``docs/images/quickstart-samples.png``: what the quickstart's first command,
  ``genmnist sample cvae -n 64 -o samples.png``, writes (with ``--seed 0``), enlarged 2x;
* ``docs/images/flow-path.png``: the straight noising path of flow matching, applied to
  samples of a shipped model (needs no flow weights);
* ``docs/models/vae-priors.png``: the shipped ``vae-gmm`` decoded from the standard
  normal prior it was trained against (left) and from its fitted mixture prior (right);
* ``docs/images/tradeoff-<dataset>.png``: fidelity (acceptability) against diversity
  (recall) along every guidance-scale or temperature sweep of 2,000 samples on the shipped
  cards (``recipes/cards.py sweep``), one line per sweep (needs matplotlib, the ``plot``
  extra; it draws no samples);
* ``docs/images/steps-<dataset>.png``: FID, acceptability and recall against the U-Net
  calls per image along every ``--steps`` sweep of 2,000 samples on the shipped cards
  whose rows counted the calls (the diffusion and flow models; no sampling either).

The Markdown pages link these files by hand, except ``docs/pretrained.md``, whose sample
grids are linked by ``python recipes/cards.py docs`` from the shipped cards; run that after
this script when a model was added.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from cards import DATASET_TITLES, read_card  # recipes/cards.py, beside this script

import genmnist
from genmnist.models import DATASETS, pretrained_dir, saved_config
from genmnist.nn.priors import StandardNormal
from genmnist.registry import MODELS
from genmnist.viz import make_grid, save_gif, to_uint8

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
IMAGES = DOCS / "images"
SEED = 0
SCALE = 2  # enlargement of every grid, nearest neighbour
STRIP = 10  # images per gallery strip
#: Gallery order: model classes from simple to elaborate; other classes come last.
FAMILY_ORDER = ["VAE", "GAN", "DDPM", "Autoguided", "FlowMatching"]


def shipped_models() -> dict[str, list[str]]:
    """``{dataset: [model names]}`` of every registered model with shipped weights, in
    gallery order (by family, then name)."""
    shipped: dict[str, list[str]] = {}
    for dataset in DATASETS:
        names = [n for n in MODELS.list() if pretrained_dir(n, dataset) is not None]
        if names:
            shipped[dataset] = sorted(names, key=lambda name: _gallery_key(name, dataset))
    return shipped


def family(name: str) -> str:
    """The model class registered as ``name`` (``VAE``, ``GAN``, ``DDPM``...)."""
    return MODELS.get(name).__name__


def _gallery_key(name: str, dataset: str) -> tuple[int, bool, str]:
    """Family (in `FAMILY_ORDER`), unconditional before conditional, then name."""
    order = FAMILY_ORDER.index(family(name)) if family(name) in FAMILY_ORDER else 99
    _, config = saved_config(pretrained_dir(name, dataset))
    return order, bool(config.get("num_classes")), name


def draw(model: genmnist.GenerativeModel) -> torch.Tensor:
    """The figures' samples of ``model``: 100 in the label cycle 0-9 for a conditional
    model, else 64; seed 0."""
    return model.sample(100 if model.conditional else 64, seed=SEED)


def _picture(grid: torch.Tensor, scale: int = SCALE):
    """A ``(1, H, W)`` grid in ``[0, 1]`` as a grayscale Pillow image, enlarged."""
    from PIL import Image

    picture = Image.fromarray(to_uint8(grid.float())[0].numpy(), mode="L")
    size = (picture.width * scale, picture.height * scale)
    return picture.resize(size, Image.Resampling.NEAREST)


def _save_png(picture, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out, format="PNG", optimize=True)
    return out


def sample_grid(images: torch.Tensor, out: Path) -> Path:
    """A grid of ``images``, 10 per row when they are 100 (one label per column), else 8."""
    nrow = 10 if images.shape[0] == 100 else 8
    return _save_png(_picture(make_grid(images, nrow)), out)


def gallery(strips: dict[str, torch.Tensor], out: Path) -> Path:
    """One row per model: its name, then its first `STRIP` samples (labels 0-9 for a
    conditional model)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=18)
    rows = [_picture(make_grid(images[:STRIP], STRIP)) for images in strips.values()]
    label_width = 20 + max(int(font.getlength(name)) for name in strips)
    gap = 6
    width = label_width + max(r.width for r in rows)
    height = sum(r.height for r in rows) + gap * (len(rows) - 1)
    canvas = Image.new("L", (width, height), 255)
    paint = ImageDraw.Draw(canvas)
    top = 0
    for name, row in zip(strips, rows, strict=True):
        paint.text((10, top + row.height // 2), name, fill=0, font=font, anchor="lm")
        canvas.paste(row, (label_width, top))
        top += row.height + gap
    return _save_png(canvas, out)


def denoising(
    model: genmnist.GenerativeModel, out: Path, n: int = 16, max_frames: int = 10
) -> Path:
    """An animated GIF of ``n`` samples being drawn: the current noisy image (left) beside
    the model's estimate of the clean image (right), at up to ``max_frames`` of its steps
    (evenly spread, the last one always), in 16 grey levels to keep the file small."""
    frames: list[torch.Tensor] = []

    def keep(i: int, x_t: torch.Tensor, x0_hat: torch.Tensor) -> None:
        left, right = make_grid(x_t.float(), 4), make_grid(x0_hat.float().clamp(0, 1), 4)
        gap = torch.ones(1, left.shape[1], 8)
        frames.append(torch.cat([left, gap, right], dim=2))

    final = model.sample(n, seed=SEED, batch_size=n, callback=keep)
    last = make_grid(final, 4)
    frames.append(torch.cat([last, torch.ones(1, last.shape[1], 8), last], dim=2))
    if len(frames) > max_frames:
        step = (len(frames) - 1) / (max_frames - 1)
        frames = [frames[round(k * step)] for k in range(max_frames)]
    big = [
        f.mul(15).round().div(15).repeat_interleave(SCALE, 1).repeat_interleave(SCALE, 2)
        for f in frames
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_gif(big, out, duration_ms=400)


def reports_steps(model: genmnist.GenerativeModel) -> bool:
    """Whether ``model``'s sampler reports its steps (takes a ``callback``)."""
    return "callback" in model.sampling_options


def quickstart(out: Path) -> Path:
    """The grid that the quickstart's first command writes (with ``--seed 0``), run
    through the real command line, enlarged."""
    from PIL import Image
    from typer.testing import CliRunner

    from genmnist.cli.app import app

    with tempfile.TemporaryDirectory() as tmp:
        written = Path(tmp) / "samples.png"
        args = ["sample", "cvae", "-n", "64", "--seed", str(SEED), "-o", str(written)]
        result = CliRunner().invoke(app, args)
        if result.exit_code != 0:
            raise SystemExit(f"genmnist {' '.join(args)} failed: {result.output}")
        with Image.open(written) as picture:
            size = (picture.width * SCALE, picture.height * SCALE)
            return _save_png(picture.resize(size, Image.Resampling.NEAREST), out)


def flow_path(images: torch.Tensor, out: Path, rows: int = 4) -> Path:
    """Flow matching's straight path ``x_t = (1 - t) x + t eps`` at ``t = 0, 0.1, ..., 1``
    (left to right), for ``rows`` images ``x``."""
    from genmnist.flow import LinearPath

    x = images[:rows] * 2 - 1  # the models' [-1, 1] pixel scale
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(SEED))
    columns = [
        LinearPath.interpolate(x, eps, torch.full((rows,), t / 10)).add(1).div(2).clamp(0, 1)
        for t in range(11)
    ]
    # rows of images: sample r at every t
    tiles = torch.stack(columns, dim=1).reshape(rows * 11, *x.shape[1:])
    return _save_png(_picture(make_grid(tiles, 11)), out)


def vae_priors(out: Path) -> Path:
    """64 samples of the shipped ``vae-gmm`` decoded from ``N(0, I)`` (left) and from its
    fitted mixture prior (right), same decoder, seed 0."""
    model = genmnist.load("vae-gmm")
    mixture = model.sample(64, seed=SEED, temperature=1.0)
    model.prior = StandardNormal(model.config.latent_dim)
    standard = model.sample(64, seed=SEED, temperature=1.0)
    left, right = make_grid(standard, 8), make_grid(mixture, 8)
    gap = torch.ones(left.shape[0], left.shape[1], 12)
    return _save_png(_picture(torch.cat([left, gap, right], dim=2)), out)


#: Sampling options whose sweeps trade fidelity for diversity, and the sweeps' sample count.
TRADEOFF_OPTIONS = ("guidance", "temperature")
TRADEOFF_N = 2000


def card_sweeps(dataset: str) -> Iterator[tuple[str, dict]]:
    """``(model, sweep)`` for every sweep of `TRADEOFF_N` samples on the shipped cards of
    ``dataset``."""
    for name in shipped_models().get(dataset, []):
        for sweep in read_card(dataset, name).get("sweeps", []):
            if sweep["n"] == TRADEOFF_N:
                yield name, sweep


def tradeoff_sweeps(dataset: str) -> dict[str, list[tuple[float, float, float]]]:
    """``{label: [(value, recall, acceptability), ...]}`` for every numeric guidance or
    temperature sweep of `card_sweeps`."""
    sweeps = {}
    for name, sweep in card_sweeps(dataset):
        option, rows = sweep["option"], sweep["rows"]
        numeric = all(isinstance(row[option], int | float) for row in rows)
        if option not in TRADEOFF_OPTIONS or not numeric:
            continue
        label = f"{name}, {option}"
        if "checkpoint" in sweep:
            label = f"{name}'s guided teacher, {option}"
        points = [(r[option], r["recall"], r["acceptability"]) for r in rows]
        sweeps[label] = sorted(points)
    return sweeps


def tradeoff(dataset: str, out: Path) -> Path | None:
    """Acceptability against recall along each sweep of `tradeoff_sweeps`, each point
    labelled with its setting (None: no such sweep, or no matplotlib)."""
    from genmnist.viz import has_matplotlib, matplotlib_figure, save_figure

    sweeps = tradeoff_sweeps(dataset)
    if not sweeps or not has_matplotlib():
        return None
    from matplotlib.ticker import PercentFormatter  # decimals follow the axis range

    fig = matplotlib_figure(7.5, 5.0)
    ax = fig.add_subplot()
    for label, points in sweeps.items():
        values, recall, acceptability = zip(*points, strict=True)
        ax.plot(recall, acceptability, marker="o", markersize=4, linewidth=1.5, label=label)
        for value, x, y in points:
            ax.annotate(f"{value:g}", (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)  # fmt: skip
    ax.set_xlabel(f"recall (diversity), {TRADEOFF_N:,} samples")
    ax.set_ylabel("acceptability (fidelity)")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title(f"Fidelity against diversity: {DATASET_TITLES.get(dataset, dataset)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return save_figure(fig, out)


def steps_sweeps(dataset: str) -> dict[str, list[dict[str, float]]]:
    """``{model: rows}`` of every ``steps`` sweep of `card_sweeps` (of the model itself,
    not a teacher) whose rows carry ``network_calls``, sorted by calls."""
    sweeps = {}
    for name, sweep in card_sweeps(dataset):
        if sweep["option"] != "steps" or "checkpoint" in sweep:
            continue
        rows = [row for row in sweep["rows"] if "network_calls" in row]
        if rows:
            sweeps[name] = sorted(rows, key=lambda row: row["network_calls"])
    return sweeps


def steps_figure(dataset: str, out: Path) -> Path | None:
    """FID, acceptability and recall against U-Net calls per image, one line per model
    of `steps_sweeps` (None: no such sweep, or no matplotlib)."""
    from genmnist.viz import has_matplotlib, matplotlib_figure, save_figure

    sweeps = steps_sweeps(dataset)
    if not sweeps or not has_matplotlib():
        return None
    from matplotlib.ticker import PercentFormatter  # decimals follow the axis range

    fig = matplotlib_figure(12.0, 4.0)
    panels = (("fid", "FID (log scale)"), ("acceptability", "acceptability"),
              ("recall", "recall"))  # fmt: skip
    for index, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), index + 1)
        for name, rows in sweeps.items():
            points = [(row["network_calls"], row[key]) for row in rows if key in row]
            if points:
                calls, values = zip(*points, strict=True)
                ax.plot(calls, values, marker="o", markersize=4, linewidth=1.5, label=name)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:g}")
        if key == "fid":
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(lambda y, _: f"{y:g}")
        elif key == "acceptability":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlabel("U-Net calls per image")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if index == 0:
            ax.legend(fontsize=8)
    fig.suptitle(
        f"Quality against sampling steps: {DATASET_TITLES.get(dataset, dataset)} "
        f"({TRADEOFF_N:,} samples per point)"
    )
    return save_figure(fig, out)


def main(report: Callable[[Path], None] = lambda path: print(path.relative_to(REPO))) -> None:
    """Write every figure, reporting each file written."""
    torch.set_grad_enabled(False)
    shipped = shipped_models()
    for dataset, names in shipped.items():
        strips: dict[str, torch.Tensor] = {}
        animated: set[str] = set()  # one animation per family
        for name in names:
            model = genmnist.load(name, dataset)
            images = draw(model)
            strips[name] = images
            report(sample_grid(images, IMAGES / "samples" / dataset / f"{name}.png"))
            if reports_steps(model) and family(name) not in animated:
                animated.add(family(name))
                report(denoising(model, IMAGES / "denoising" / dataset / f"{name}.gif"))
            del model
        report(gallery(strips, IMAGES / f"gallery-{dataset}.png"))
        if dataset == DATASETS[0]:
            report(flow_path(strips[names[-1]], IMAGES / "flow-path.png"))
    if "cvae" in shipped.get("mnist", []):
        report(quickstart(IMAGES / "quickstart-samples.png"))
    if "vae-gmm" in shipped.get("mnist", []):
        report(vae_priors(DOCS / "models" / "vae-priors.png"))
    for dataset in shipped:
        if (written := tradeoff(dataset, IMAGES / f"tradeoff-{dataset}.png")) is not None:
            report(written)
        if (written := steps_figure(dataset, IMAGES / f"steps-{dataset}.png")) is not None:
            report(written)


if __name__ == "__main__":
    main()
