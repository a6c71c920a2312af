"""What the demo's buttons do, as plain functions of plain values (no Gradio here).

Each function takes the values of the demo's controls (strings, numbers or None, as a web
form sends them), checks them, runs the model and returns Pillow images with a line of
Markdown. A bad value raises a `genmnist.errors.GenmnistError` with a one-line message,
which the app shows in place of a result. The work one request may ask for is bounded
(`MAX_COUNT` images, `MAX_STEPS` diffusion steps, `MAX_FRAMES` interpolation frames, ...),
and models run one request at a time, so a request cannot keep the machine busy for long.

Models are named as on the command line: a registered name with the weights shipped for
a dataset, or a run or model folder (``checkpoint``), which then wins over the name.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from genmnist.data import DATASETS, check_dataset_name, load_dataset
from genmnist.errors import ConfigError, DataError, GenmnistError
from genmnist.models import load, model_card, pretrained_dir
from genmnist.models.base import SampleNoise
from genmnist.models.vae import VAE, interpolate_latents
from genmnist.nn.modes import evaluating
from genmnist.registry import MODELS
from genmnist.run_folder import CONFIG_FILE, WEIGHTS_FILE
from genmnist.viz import make_grid, to_uint8

if TYPE_CHECKING:
    from genmnist.data import InMemoryDataset
    from genmnist.models.base import GenerativeModel

#: Most images one Sample or Compare request draws (per model).
MAX_COUNT = 64
#: Most diffusion sampling steps a request may ask for (or a model use by default).
MAX_STEPS = 100
#: Most images and steps of a denoising trajectory (every step becomes a frame).
MAX_TRAJECTORY_COUNT = 16
MAX_TRAJECTORY_STEPS = 50
#: Fewest and most points on a latent interpolation path.
MIN_FRAMES, MAX_FRAMES = 2, 32
#: Seeds are integers from 0 to this (exact in a browser's numbers too).
MAX_SEED = 2**31 - 1
#: Grids are shown enlarged this many times (nearest neighbour: pixels stay sharp).
ZOOM = 3
#: The label choice that asks for the balanced cycle 0, 1, ..., 9, 0, ...
BALANCED = "balanced"
#: The sampler choice that keeps the model's own sampler.
DEFAULT_SAMPLER = "default"
#: How many loaded models the demo keeps, so that clicking again does not reload.
MODELS_KEPT = 4

# One model run at a time in this process: sampling uses every core it is given.
_ONE_AT_A_TIME = threading.Lock()


# ------------------------------------------------------------------------------ values
def integer(value: Any, what: str, low: int, high: int) -> int:
    """``value`` (a number or a string, as a form sends it) as an integer in
    ``[low, high]``; else a `ConfigError` naming ``what`` and the range."""
    wanted = f"{what} must be a whole number from {low} to {high}"
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(f"{wanted}; it is empty")
    if isinstance(value, bool):
        raise ConfigError(f"{wanted}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{wanted}, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise ConfigError(f"{wanted}, got {value!r}")
    if not low <= int(number) <= high:
        raise ConfigError(f"{wanted}, got {int(number)}")
    return int(number)


def optional_integer(value: Any, what: str, low: int, high: int) -> int | None:
    """Like `integer`, but an empty value (None or blank) is None: the model's default."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return integer(value, what, low, high)


def optional_number(value: Any, what: str) -> float | None:
    """``value`` as a finite float, or None when empty (the model's default); the model
    itself says which values it accepts."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    return number


def label_value(value: Any) -> int | None:
    """A label choice as ``model.sample`` takes it: None for `BALANCED` (or empty), else
    the class index (checked against the model's classes when it samples)."""
    if value is None or (isinstance(value, str) and value.strip() in ("", BALANCED)):
        return None
    return integer(value, "label", 0, 9)


def label_choices(dataset: str) -> list[tuple[str, str]]:
    """``(shown, value)`` pairs for a label picker: balanced, then each class by name."""
    names = DATASETS[check_dataset_name(dataset)][1]
    shown = [(str(i) if name == str(i) else f"{i}: {name}", str(i)) for i, name in enumerate(names)]
    return [("balanced (0, 1, ..., 9)", BALANCED), *shown]


def sampler_choices() -> list[str]:
    """The sampler picker's values: `DEFAULT_SAMPLER`, then every registered diffusion and
    flow sampler (a model refuses another family's sampler with a visible message)."""
    from genmnist.diffusion import SAMPLERS
    from genmnist.flow import FLOW_SAMPLERS

    return [DEFAULT_SAMPLER, *sorted(set(SAMPLERS.list()) | set(FLOW_SAMPLERS.list()))]


# ------------------------------------------------------------------------------ models
def has_latent_space(cls: Any) -> bool:
    """Whether models of class ``cls`` have a latent space to interpolate in (VAEs)."""
    return isinstance(cls, type) and issubclass(cls, VAE)


def shows_trajectory(cls: Any) -> bool:
    """Whether models of class ``cls`` report each sampling step (diffusion models)."""
    return "callback" in getattr(cls, "sampling_options", ())


def shipped_models(dataset: str, kind: Callable[[Any], bool] | None = None) -> list[str]:
    """Registered models, plugins included, whose weights ship for ``dataset``, sorted;
    only those whose class passes ``kind`` (e.g. `has_latent_space`) when given."""
    check_dataset_name(dataset)
    return [
        entry.name
        for entry in MODELS
        if (kind is None or kind(entry.obj)) and pretrained_dir(entry.name, dataset) is not None
    ]


@dataclass(frozen=True)
class Loaded:
    """A model the demo was pointed at."""

    model: GenerativeModel
    #: Where it came from: ``shipped weights (DATASET)`` or the folder.
    source: str
    #: Seconds this request spent loading it (0 when it was kept from an earlier one).
    seconds: float


class ModelStore:
    """Loads models by name or folder and keeps the last `MODELS_KEPT` of them.

    A folder is loaded again when its ``config.json`` or ``model.safetensors`` changed
    (a run that went on training)."""

    def __init__(self, size: int = MODELS_KEPT) -> None:
        self._size = size
        self._models: OrderedDict[tuple, GenerativeModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str | None, dataset: str, checkpoint: str | None = None) -> Loaded:
        """The model ``name`` with its weights shipped for ``dataset``, or the one saved in
        the folder ``checkpoint`` when one is given.

        Raises:
            GenmnistError: no such folder, an unknown name, no weights for the dataset, or
                broken files (one-line messages).
        """
        check_dataset_name(dataset)
        folder = checkpoint_folder(checkpoint)
        if folder is None:
            if not name:
                raise ConfigError("pick a model (or give a checkpoint folder)")
            key: tuple = ("shipped", name, dataset)
            source = f"shipped weights ({dataset})"
        else:
            key = ("folder", str(folder.resolve()), _stamp(folder))
            source = str(folder)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return Loaded(self._models[key], source, 0.0)
        start = time.perf_counter()
        model = load(folder if folder is not None else name, dataset=dataset)
        seconds = time.perf_counter() - start
        with self._lock:
            self._models[key] = model
            while len(self._models) > self._size:
                self._models.popitem(last=False)
        return Loaded(model, source, seconds)


def checkpoint_folder(checkpoint: str | None) -> Path | None:
    """The folder a checkpoint field names, or None when it is empty.

    Raises:
        GenmnistError: the path is not a folder.
    """
    if checkpoint is None or not str(checkpoint).strip():
        return None
    folder = Path(str(checkpoint).strip()).expanduser()
    if not folder.is_dir():
        raise GenmnistError(f"checkpoint: {folder} is not a folder (give a run or model folder)")
    return folder


def _stamp(folder: Path) -> tuple:
    stamps = []
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            stamps.append((name, (folder / name).stat().st_mtime_ns))
        except OSError:
            stamps.append((name, None))
    return tuple(stamps)


#: The models every demo session shares.
STORE = ModelStore()


@dataclass(frozen=True)
class Controls:
    """Which sampling controls apply to a model, and a few lines about it."""

    conditional: bool
    #: Takes a sampler and a number of steps (diffusion models).
    diffusion: bool
    guidance: bool
    temperature: bool
    #: The model's own value of each sampling option it takes (shown as a hint).
    defaults: dict[str, Any]
    #: Markdown: what the model is and its default sampling settings.
    about: str


#: Sampling option -> the config field holding a model's default for it.
DEFAULT_FIELDS = {
    "sampler": "sampler",
    "steps": "sampling_steps",
    "guidance": "guidance_scale",
    "temperature": "temperature",
}


def controls(
    name: str | None, dataset: str, checkpoint: str | None = None, store: ModelStore | None = None
) -> Controls:
    """The controls that apply to the model a picker (or a checkpoint folder) names."""
    loaded = (store or STORE).get(name, dataset, checkpoint)
    model = loaded.model
    options = set(model.sampling_options)
    guidance = "guidance" in options and getattr(model, "guidance_problem", None) is None
    entry = MODELS.entry(model.name)
    defaults = {
        option: getattr(model.config, field)
        for option, field in DEFAULT_FIELDS.items()
        if option in options and hasattr(model.config, field) and (option != "guidance" or guidance)
    }
    lines = [
        f"**{model.name}**: {entry.summary} ({loaded.source}; {model.num_parameters():,} "
        "parameters)",
        "Conditional on class labels." if model.conditional else "Unconditional.",
    ]
    if defaults:
        shown = ", ".join(f"{option} {value}" for option, value in defaults.items())
        lines.append(f"Default sampling: {shown}.")
    return Controls(
        conditional=model.conditional,
        diffusion="steps" in options,
        guidance=guidance,
        temperature="temperature" in options,
        defaults=defaults,
        about="  \n".join(lines),
    )


# ------------------------------------------------------------------------------ images
def grid_image(images: torch.Tensor, nrow: int, zoom: int = ZOOM) -> Image.Image:
    """Images ``(n, 1, 28, 28)`` in ``[0, 1]`` as one grayscale grid (``nrow`` per row,
    2-pixel black padding, as `genmnist.viz.save_grid`), enlarged ``zoom`` times."""
    grid = to_uint8(make_grid(images.detach().float().cpu(), nrow=nrow))[0]
    picture = Image.fromarray(grid.numpy())
    if zoom != 1:
        picture = picture.resize((picture.width * zoom, picture.height * zoom), Image.NEAREST)
    return picture


def _grid_rows(model: GenerativeModel, labels: int | None) -> int:
    return 10 if model.conditional and labels is None else 8  # as `genmnist sample`


def _sampler_name(sampler: str | None) -> str | None:
    """The sampler picker's value as a sampling option: None keeps the model's own."""
    return None if sampler in (None, "", DEFAULT_SAMPLER) else str(sampler)


def _sampling_options(
    model: GenerativeModel, given: dict[str, Any], labels: Any
) -> tuple[dict, Any, list[str]]:
    """The given (non-empty) options the model takes, the labels it takes (None for an
    unconditional model), and the names of what it does not take (hidden controls keep
    their values when another model is picked: they are ignored)."""
    taken = {k: v for k, v in given.items() if v is not None and k in model.sampling_options}
    ignored = [k for k, v in given.items() if v is not None and k not in model.sampling_options]
    if "guidance" in taken and getattr(model, "guidance_problem", None) is not None:
        del taken["guidance"]
        ignored.append("guidance")
    if labels is not None and not model.conditional:
        ignored.append("label")
        labels = None
    return taken, labels, ignored


def _check_steps(model: GenerativeModel, steps: int | None, limit: int) -> None:
    """Refuse a model whose default number of steps is above ``limit`` when none is given."""
    default = getattr(model.config, "sampling_steps", None)
    if steps is None and isinstance(default, int) and default > limit:
        raise ConfigError(
            f"'{model.name}' samples with {default} steps by default; the demo runs at most "
            f"{limit}: give a number of steps"
        )


def _notes(loaded: Loaded, ignored: list[str]) -> str:
    notes = []
    if loaded.seconds:
        notes.append(f"model loaded in {loaded.seconds:.2f} s")
    if ignored:
        notes.append(f"ignored, as '{loaded.model.name}' takes none: {', '.join(ignored)}")
    return f" ({'; '.join(notes)})" if notes else ""


def _timed(function: Callable[[], Any]) -> tuple[Any, float]:
    with _ONE_AT_A_TIME:
        start = time.perf_counter()
        result = function()
        return result, time.perf_counter() - start


# ------------------------------------------------------------------------------ sample
@dataclass(frozen=True)
class Samples:
    """What the Sample tab shows."""

    image: Image.Image
    seconds: float
    #: Markdown: what was drawn and how long it took.
    message: str


def sample(
    name: str | None,
    dataset: str = "mnist",
    checkpoint: str | None = None,
    seed: Any = 0,
    count: Any = 16,
    label: Any = BALANCED,
    sampler: str | None = DEFAULT_SAMPLER,
    steps: Any = None,
    guidance: Any = None,
    temperature: Any = None,
    *,
    store: ModelStore | None = None,
) -> Samples:
    """Draw ``count`` images of a model with ``seed`` as a grid (sample ``i`` is the same
    for any count, as with ``genmnist sample --seed``).

    Empty ``steps``, ``guidance``, ``temperature`` and the `DEFAULT_SAMPLER` keep the
    model's own settings; options the model does not take are ignored and named in the
    message, a label for an unconditional model too.

    Raises:
        GenmnistError: a bad value or a setting the model refuses (one line).
    """
    seed = integer(seed, "seed", 0, MAX_SEED)
    count = integer(count, "number of images", 1, MAX_COUNT)
    labels = label_value(label)
    given = {
        "sampler": _sampler_name(sampler),
        "steps": optional_integer(steps, "steps", 1, MAX_STEPS),
        "guidance": optional_number(guidance, "guidance"),
        "temperature": optional_number(temperature, "temperature"),
    }
    loaded = (store or STORE).get(name, dataset, checkpoint)
    model = loaded.model
    options, labels, ignored = _sampling_options(model, given, labels)
    if "steps" in model.sampling_options:
        _check_steps(model, options.get("steps"), MAX_STEPS)
    images, seconds = _timed(
        lambda: model.sample(count, labels=labels, seed=seed, batch_size=count, **options)
    )
    message = (
        f"{count} images of **{model.name}** ({loaded.source}), seed {seed}: sampled in "
        f"**{seconds:.2f} s**{_notes(loaded, ignored)}"
    )
    return Samples(grid_image(images, _grid_rows(model, labels)), seconds, message)


# ------------------------------------------------------------------------------ latent space
@dataclass(frozen=True)
class Interpolation:
    """What the Latent space tab shows."""

    #: Every point of the path, left to right.
    path: Image.Image
    #: The point at the slider's position, enlarged.
    point: Image.Image
    message: str


#: How the ends of an interpolation are chosen: name -> function(model, dataset, first,
#: last, label) returning the two codes, the label used along the path and a description.
ENDS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor, int | None, str]]] = {}


def _test_digits(model: VAE, dataset: str, first: Any, last: Any, label: int | None):
    data = load_test_split(dataset)
    first = integer(first, "first test digit", 0, len(data) - 1)
    last = integer(last, "last test digit", 0, len(data) - 1)
    images, labels = data.batch(torch.tensor([first, last]))
    if model.conditional and label is None:
        label = int(labels[0])
    cond = None if label is None else torch.tensor([label, label], device=model.device)
    with evaluating(model), torch.inference_mode():
        codes = model.encode(images.to(model.device), cond)[0].float()
    shown = f"test digits {first} and {last} (labels {int(labels[0])} and {int(labels[1])})"
    return codes[0], codes[1], label, shown


def _seeds(model: VAE, dataset: str, first: Any, last: Any, label: int | None):
    first = integer(first, "first seed", 0, MAX_SEED)
    last = integer(last, "last seed", 0, MAX_SEED)
    if model.conditional and label is None:
        label = 0
    cond = None if label is None else torch.tensor([label, label], device=model.device)
    # the per-sample seeds `model.sample(1, seed=s)` draws from: the path's ends are the
    # first images the Sample tab shows for these seeds
    seeds = SampleNoise.sample_seeds(1, seed=first) + SampleNoise.sample_seeds(1, seed=last)
    with evaluating(model), torch.inference_mode():
        codes = model.prior.sample(SampleNoise(seeds, model.device), model.config.temperature, cond)
    return codes[0].float(), codes[1].float(), label, f"seeds {first} and {last}"


ENDS["test digits"] = _test_digits
ENDS["seeds"] = _seeds

_TEST_SPLITS: dict[str, InMemoryDataset] = {}


def load_test_split(dataset: str) -> InMemoryDataset:
    """The test split of ``dataset`` from ``GENMNIST_DATA`` (or the default data root),
    read once; never downloaded.

    Raises:
        DataError: the files are not there or broken.
    """
    if dataset not in _TEST_SPLITS:
        _TEST_SPLITS[dataset] = load_dataset(dataset, "test", download=False)
    return _TEST_SPLITS[dataset]


def interpolation(
    name: str | None,
    dataset: str = "mnist",
    checkpoint: str | None = None,
    ends: str = "test digits",
    first: Any = 0,
    last: Any = 1,
    frames: Any = 9,
    position: Any = 0.5,
    label: Any = BALANCED,
    method: str = "slerp",
    *,
    store: ModelStore | None = None,
) -> Interpolation:
    """Decode a path through a VAE's latent space between two test digits (their
    posterior means) or two seeds (codes drawn from the prior), as ``frames`` images,
    and the point at ``position`` (0: the first end, 1: the last) enlarged.

    Without test data, "test digits" falls back to seeds (the message says why). A
    conditional VAE decodes the whole path with one label: the one given, else the first
    digit's (0 between seeds).

    Raises:
        GenmnistError: a bad value, or the model has no latent space.
    """
    if ends not in ENDS:
        raise ConfigError(f"unknown ends '{ends}'; choose from {', '.join(ENDS)}")
    frames = integer(frames, "frames", MIN_FRAMES, MAX_FRAMES)
    at = optional_number(position, "position")
    at = 0.5 if at is None else at
    if not 0 <= at <= 1:
        raise ConfigError(f"position must be from 0 to 1, got {at:g}")
    labels = label_value(label)
    loaded = (store or STORE).get(name, dataset, checkpoint)
    model = loaded.model
    if not has_latent_space(type(model)):
        raise ConfigError(f"'{model.name}' is not a VAE: it has no latent space to interpolate in")
    ignored = []
    if labels is not None and not model.conditional:
        ignored, labels = ["label"], None
    fallback = ""
    try:
        start, end, labels, shown = ENDS[ends](model, dataset, first, last, labels)
    except DataError as exc:
        start, end, labels, shown = _seeds(model, dataset, first, last, labels)
        fallback = f"No test digits to start from ({exc}); interpolated between seeds instead.  \n"

    def decode():
        fine = interpolate_latents(start, end, 101, method)
        codes = torch.cat(
            [interpolate_latents(start, end, frames, method), fine[round(at * 100)][None]]
        )
        cond = None if labels is None else torch.full((len(codes),), labels, device=model.device)
        with evaluating(model), torch.inference_mode():
            return model.decode(codes.to(model.device), cond).float().cpu()

    images, seconds = _timed(decode)
    message = (
        f"{fallback}**{model.name}** ({loaded.source}): {frames} frames between {shown}"
        + (f", label {labels}" if labels is not None else "")
        + f", {method}; shown at {at:.2f}: decoded in **{seconds:.3f} s**{_notes(loaded, ignored)}"
    )
    return Interpolation(grid_image(images[:-1], frames), grid_image(images[-1:], 1, 8), message)


# ------------------------------------------------------------------------------ denoising
@dataclass(frozen=True)
class Trajectory:
    """What the Denoising tab shows."""

    #: One ``(image, caption)`` per sampling step: the noisy images on top, the model's
    #: estimate of the clean ones below.
    frames: list[tuple[Image.Image, str]]
    final: Image.Image
    message: str


def trajectory(
    name: str | None,
    dataset: str = "mnist",
    checkpoint: str | None = None,
    seed: Any = 0,
    count: Any = 4,
    label: Any = BALANCED,
    sampler: str | None = DEFAULT_SAMPLER,
    steps: Any = None,
    *,
    store: ModelStore | None = None,
) -> Trajectory:
    """Sample ``count`` images of a diffusion model and keep every step as a frame: the
    noisy images ``x_t`` (top row) and the model's clean estimate ``x0_hat`` (bottom).

    Raises:
        GenmnistError: a bad value, or the model reports no steps (not a diffusion model).
    """
    seed = integer(seed, "seed", 0, MAX_SEED)
    count = integer(count, "number of images", 1, MAX_TRAJECTORY_COUNT)
    labels = label_value(label)
    given = {
        "sampler": _sampler_name(sampler),
        "steps": optional_integer(steps, "steps", 1, MAX_TRAJECTORY_STEPS),
    }
    loaded = (store or STORE).get(name, dataset, checkpoint)
    model = loaded.model
    if not shows_trajectory(type(model)):
        raise ConfigError(
            f"'{model.name}' is not a diffusion model: it has no denoising steps to show"
        )
    options, labels, ignored = _sampling_options(model, given, labels)
    _check_steps(model, options.get("steps"), MAX_TRAJECTORY_STEPS)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep(i: int, x_t: torch.Tensor, x0: torch.Tensor) -> None:
        seen.append((x_t.float().cpu(), x0.float().cpu()))

    images, seconds = _timed(
        lambda: model.sample(
            count, labels=labels, seed=seed, batch_size=count, callback=keep, **options
        )
    )
    frames = [
        (grid_image(torch.cat([x_t, x0]), count), f"step {i} of {len(seen)}")
        for i, (x_t, x0) in enumerate(seen, 1)
    ]
    message = (
        f"{count} images of **{model.name}** ({loaded.source}), seed {seed}: {len(seen)} steps "
        f"in **{seconds:.2f} s**; each frame shows x_t (top) and the predicted clean "
        f"images (bottom){_notes(loaded, ignored)}"
    )
    return Trajectory(frames, grid_image(images, count), message)


# ------------------------------------------------------------------------------ compare
@dataclass(frozen=True)
class Comparison:
    """What the Compare tab shows."""

    images: tuple[Image.Image, Image.Image]
    #: Markdown table of the two model cards' metrics, with the real-data floor.
    table: str
    message: str


def compare(
    first: str | None,
    second: str | None,
    dataset: str = "mnist",
    seed: Any = 0,
    count: Any = 16,
    label: Any = BALANCED,
    *,
    store: ModelStore | None = None,
) -> Comparison:
    """The same seeds through two shipped models, each with its default sampling
    settings, and the metrics their model cards record (10,000 samples each).

    The label applies to the conditional ones (the message says which ignored it).

    Raises:
        GenmnistError: a bad value or an unknown model.
    """
    seed = integer(seed, "seed", 0, MAX_SEED)
    count = integer(count, "number of images", 1, MAX_COUNT)
    wanted = label_value(label)
    grids, parts, metrics = [], [], []
    for name in (first, second):
        loaded = (store or STORE).get(name, dataset)
        model = loaded.model
        labels = wanted if model.conditional else None
        if "steps" in model.sampling_options:
            _check_steps(model, None, MAX_STEPS)
        images, seconds = _timed(
            lambda m=model, y=labels: m.sample(count, labels=y, seed=seed, batch_size=count)
        )
        grids.append(grid_image(images, _grid_rows(model, labels)))
        ignored = ["label"] if wanted is not None and labels is None else []
        parts.append(f"**{model.name}** {seconds:.2f} s{_notes(loaded, ignored)}")
        card = model_card(model.name, dataset) or {}
        metrics.append((model.name, card.get("evaluation", {}).get("metrics", {})))
    message = f"{count} images each, seed {seed}: " + "; ".join(parts)
    return Comparison((grids[0], grids[1]), card_table(metrics), message)


def card_table(metrics: list[tuple[str, dict[str, Any]]]) -> str:
    """A Markdown table of model-card metrics: one column per ``(name, metrics)``, one row
    per metric any of them has, and the real-data floor where the metric has one."""
    from genmnist.metrics.evaluation import METRICS
    from genmnist.metrics.report import format_value, table_rows

    results = [m for _, m in metrics]
    rows = table_rows(results)
    if not rows:
        return "No model card records metrics for these models."
    header = ["metric", *(name for name, _ in metrics), "real data"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for key in rows:
        floor = next(
            (m[f"{key}_floor"] for m in results if m.get(f"{key}_floor") is not None), None
        )
        cells = [format_value(key, m.get(key)) for m in results]
        better = METRICS[key].better
        shown = f"{METRICS[key].label} ({better} is better)" if better else METRICS[key].label
        lines.append(f"| {shown} | " + " | ".join(cells) + f" | {format_value(key, floor)} |")
    return "\n".join(lines)
