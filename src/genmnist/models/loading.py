"""Making and loading models by name: from the registry, from a model or run folder, or
from the weights shipped inside a package.

This module imports no model class (the registry knows them), so every model module may
call it without an import cycle.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genmnist.data import DATASETS as _DATASETS
from genmnist.errors import CheckpointError, ConfigError, GenmnistError, RegistryError
from genmnist.registry import MODELS
from genmnist.run_folder import CONFIG_FILE, CONFIG_FORMAT, WEIGHTS_FILE

if TYPE_CHECKING:
    from genmnist.models.base import GenerativeModel

#: The dataset names, in `genmnist.data.DATASETS` order (kept as a tuple: it is public).
DATASETS: tuple[str, ...] = tuple(_DATASETS)


def create_model(name: str, **overrides: Any) -> GenerativeModel:
    """A new, untrained model registered as ``name``, with config fields ``overrides``.

    Raises:
        RegistryError: for an unknown name (with suggestions) or a broken plugin.
        ConfigError: for unknown config fields.
    """
    entry = MODELS.entry(name)
    _check_size(name, _meta_model(name, overrides))
    try:
        model = MODELS.create(name, **overrides)
    except GenmnistError:
        raise
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        # a plugin class with an unexpected signature, or config values of the wrong type
        # or size (torch refuses a negative or impossibly large layer)
        raise ConfigError(
            f"cannot build model '{name}' from {entry.source}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        ) from None
    try:
        MODELS.check(type(model))
    except TypeError:
        raise RegistryError(
            f"model '{name}' from {entry.source} built a {type(model).__name__}, "
            "not a genmnist GenerativeModel"
        ) from None
    model.name = name
    return model


def _meta_model(name: str, overrides: dict[str, Any]) -> Any:
    """The model ``name`` would be, built on the ``meta`` device (shapes, no memory); None
    when it cannot be built there (the real build then says why)."""
    import torch

    try:
        with _without_weight_init(), torch.device("meta"):
            return MODELS.create(name, **overrides)
    except Exception:  # a bad config or a model that needs real tensors to build
        return None


@contextmanager
def _without_weight_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s in-place initialisers no-ops for the block: a meta tensor
    has no values to initialise, and on the meta device those initialisers run through
    Python decompositions that import ``torch._dynamo`` (about 2 s on a CPU), where the
    meta build itself takes milliseconds."""
    import torch

    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, _unchanged)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def _unchanged(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    return tensor


def _check_size(name: str, meta: Any) -> None:
    """`ConfigError` when the weights ``meta`` (a meta-device model) describes do not fit
    in the available memory (a config asking for a huge layer), before any allocation."""
    from genmnist.memory import check_fits

    if meta is None:
        return
    try:
        nbytes = sum(t.numel() * t.element_size() for t in meta.state_dict().values())
    except Exception:
        return
    check_fits(nbytes, f"model '{name}' with this config", "make its layers smaller")


def _check_weights_file(name: str, config: dict[str, Any], path: Path) -> None:
    """Compare the tensor names and shapes the config implies (a meta-device model) with
    those in the header of the weights file ``path``, before any real tensor is allocated:
    a small file whose config declares a huge layer is refused at once.

    Raises:
        CheckpointError: naming the file, if names or shapes differ.
    """
    import torch

    from genmnist.io import check_same_tensors, file_problem

    if file_problem(path):
        return  # reading the weights says what is wrong with the file
    meta = _meta_model(name, config)
    if meta is None:
        return
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        with torch.device("meta"):
            saved = {k: torch.empty(shape) for k, shape in shapes.items()}
        saved = type(meta).migrate_weights(saved)
        own = meta.state_dict()
    except Exception:  # a damaged file: reading the weights says how
        return
    check_same_tensors(
        {k: tuple(v.shape) for k, v in own.items()},
        {k: tuple(v.shape) for k, v in saved.items()},
        path,
        needs=f"the config in {path.parent / CONFIG_FILE}",
    )


def pretrained_dir(name: str, dataset: str = "mnist") -> Path | None:
    """Folder of the weights shipped for model ``name`` on ``dataset``, or None."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset '{dataset}'; choose from {', '.join(DATASETS)}")
    cls = MODELS.get(name)
    try:
        root = resources.files(cls.pretrained_package)
    except ModuleNotFoundError:
        return None
    folder = root / dataset / name
    if not (folder / CONFIG_FILE).is_file():
        return None
    return Path(str(folder))


CARD_FILE = "card.json"


def model_card(name: str, dataset: str = "mnist") -> dict[str, Any] | None:
    """The model card shipped with ``name``'s weights on ``dataset``, or None.

    A card (``card.json`` beside the weights) records how the weights were trained
    (``training``: command, recipe, seed, steps, seconds) and what `genmnist eval`
    measured for them (``evaluation``: the metrics with their real-data floor, at
    10,000 samples), plus optional ``sweeps`` over sampling settings. The docs' model
    cards are generated from these files.
    """
    folder = pretrained_dir(name, dataset)
    if folder is None or not (folder / CARD_FILE).is_file():
        return None
    from genmnist.io import read_json

    card = read_json(folder / CARD_FILE)
    if not isinstance(card, dict) or card.get("format") != "genmnist-card":
        raise CheckpointError(f"{folder / CARD_FILE}: not a genmnist model card")
    return card


def load(name_or_path: str | os.PathLike[str], dataset: str = "mnist") -> GenerativeModel:
    """Load a trained model, ready to sample.

    Args:
        name_or_path: A folder with ``config.json`` and ``model.safetensors`` (as written by
            `GenerativeModel.save_pretrained` or ``genmnist train``), or the name of a
            registered model to load its shipped weights.
        dataset: Which shipped weights to use when a name is given.

    Raises:
        CheckpointError: the folder or its files are missing or broken.
        RegistryError: the name is unknown, or no weights ship for it.
        ConfigError: ``name_or_path`` is neither a string nor a path.
    """
    if not isinstance(name_or_path, str | os.PathLike):
        raise ConfigError(
            f"load() takes a model name or a folder path, got {type(name_or_path).__name__}"
        )
    path = Path(name_or_path)
    if path.is_dir():
        return _load_folder(path)
    name = str(name_or_path)
    if name not in MODELS and (os.sep in name or "/" in name or path.suffix):
        raise CheckpointError(f"{path}: no such checkpoint folder")
    folder = pretrained_dir(name, dataset)
    if folder is None:
        flag = "" if dataset == "mnist" else f" --dataset {dataset}"
        run = f"runs/{dataset}/{name}"
        raise RegistryError(
            f"no pretrained weights ship for '{name}' on {dataset}; train it with "
            f"`genmnist train {name}{flag} --out {run}` and pass --checkpoint {run}"
        )
    return _load_folder(folder)


def saved_config(folder: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """The registered name and the config, migrated to the current `config_version` of
    its class, that the ``config.json`` in ``folder`` records (a run or model folder).

    Raises:
        CheckpointError: naming the file, if it is missing, not a genmnist config, of an
            unknown model, of a newer version, or cannot be migrated.
    """
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    from genmnist.io import file_problem

    if os.path.lexists(config_path) and (problem := file_problem(config_path)):
        raise CheckpointError(f"{config_path}: {problem}")  # a folder, a FIFO...
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_FILE} here; is this a genmnist checkpoint?")
    from genmnist.io import read_json

    record = read_json(config_path)
    if not isinstance(record, dict) or record.get("format") != CONFIG_FORMAT:
        raise CheckpointError(f"{config_path}: not a genmnist model config")
    name = record.get("model")
    if not isinstance(name, str):
        raise CheckpointError(f"{config_path}: 'model' must name a registered model")
    try:
        cls = MODELS.get(name)
    except RegistryError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None
    version = record.get("config_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{config_path}: missing or invalid 'config_version'")
    if version > cls.config_version:
        raise CheckpointError(
            f"{config_path}: config version {version} is newer than this genmnist supports "
            f"for '{name}' ({cls.config_version}); upgrade genmnist"
        )
    config = record.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: 'config' must be an object")
    try:
        return name, cls.migrate_config(config, version)
    except GenmnistError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None


def _load_folder(folder: Path) -> GenerativeModel:
    name, config = saved_config(folder)
    config_path = folder / CONFIG_FILE
    try:
        cls = MODELS.get(name)
        # a composite model's parts are models of their own, saved in sub-folders
        parts = {part: _load_folder(folder / part) for part in cls.parts}
        if not parts:  # names and shapes from the file's header, before allocating
            _check_weights_file(name, config, folder / WEIGHTS_FILE)
        model = create_model(name, **config, **parts)
        if not parts:
            model.load_weights(folder / WEIGHTS_FILE)
    except (ConfigError, RegistryError) as exc:  # RegistryError: e.g. an unknown encoder name
        raise CheckpointError(f"{config_path}: {exc}") from None
    except CheckpointError as exc:
        raise CheckpointError(exc if str(folder) in str(exc) else f"{config_path}: {exc}") from None
    model.eval()
    return model
