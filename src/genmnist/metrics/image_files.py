"""Images made anywhere, read from files so that genmnist's evaluator can score them.

:func:`read_images` reads what notebooks and other libraries usually write:

* a NumPy array ``.npy`` (what ``genmnist sample -f npy`` writes), or an ``.npz`` /
  ``.safetensors`` file holding an ``images`` array and optionally ``labels``;
* a folder of 28x28 PNG images, one image per file, read in file-name order.

Arrays may be shaped ``(n, 28, 28)``, ``(n, 1, 28, 28)``, ``(n, 28, 28, 1)``
(channels-last) or ``(n, 784)`` (flattened), and hold floats in ``[0, 1]`` or integers
in ``0..255``. Anything else is refused with a one-line `ConfigError` that says what
was found, in particular images scaled to ``[-1, 1]`` (a tanh output), which would
otherwise be scored as nonsense. Pickled files (``.pt``, ``.pkl``, object arrays) are
never opened: unpickling runs arbitrary code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from genmnist.errors import ConfigError
from genmnist.io import file_problem
from genmnist.values import whole_labels

#: Suffixes of the array files `read_images` reads.
ARRAY_SUFFIXES = (".npy", ".npz", ".safetensors")
#: How far float pixels may stray outside ``[0, 1]`` (rounding) before they are refused.
RANGE_TOLERANCE = 0.01
_SIDE = 28


def read_images(
    path: str | os.PathLike[str], labels_path: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images ``(n, 1, 28, 28)`` as floats in ``[0, 1]`` from ``path``, and their class
    labels ``(n,)`` (int64) when the file holds ``labels`` or ``labels_path`` (an ``.npy``
    array of integers) is given, else None.

    Raises:
        ConfigError: a missing or unreadable file, an unknown or unsafe format, or
            contents that are not MNIST-sized images (shape, dtype, NaN, value range), or
            labels that do not match them.
    """
    path = Path(path)
    if path.is_dir():
        images, labels = _read_png_folder(path), None
    else:
        images, labels = _read_array_file(path)
    images = as_unit_images(images, str(path))
    if labels_path is not None:
        if labels is not None:
            raise ConfigError(f"{path} holds labels already; drop --labels")
        labels = _read_array_file(Path(labels_path), key="labels")[0]
    if labels is not None:
        labels = _as_labels(labels, images.shape[0], str(labels_path or path))
    return images, labels


def as_unit_images(images, source: str = "the images") -> torch.Tensor:
    """``images`` (a tensor or array of a shape listed in the module docstring) as floats
    ``(n, 1, 28, 28)`` in ``[0, 1]``: integers are divided by 255, floats must already lie
    in ``[0, 1]`` (give or take `RANGE_TOLERANCE`, then clamped). ``source`` names them in
    errors."""
    if not isinstance(images, torch.Tensor):
        try:
            images = torch.as_tensor(images)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise ConfigError(f"{source}: not an array of pixels ({exc})") from None
    shape = tuple(images.shape)
    if images.ndim == 2 and shape[1] == _SIDE * _SIDE:
        images = images.reshape(-1, 1, _SIDE, _SIDE)
    elif images.ndim == 3:
        images = images.unsqueeze(1)
    elif images.ndim == 4 and shape[1:] == (_SIDE, _SIDE, 1):
        images = images.permute(0, 3, 1, 2)
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, _SIDE, _SIDE):
        raise ConfigError(
            f"{source}: expected 28x28 grey images shaped (n, 28, 28), (n, 1, 28, 28), "
            f"(n, 28, 28, 1) or (n, 784), got shape {shape}"
        )
    if images.shape[0] == 0:
        raise ConfigError(f"{source}: holds no images")
    if images.dtype == torch.bool or images.is_complex():
        raise ConfigError(f"{source}: expected float or integer pixels, got {images.dtype}")
    if not images.is_floating_point():
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise ConfigError(
                f"{source}: integer pixels must lie in 0..255, these range from {low} to {high}"
            )
        return images.float().div_(255.0)
    images = images.float()
    if not bool(torch.isfinite(images).all()):
        raise ConfigError(f"{source}: the images hold NaN or inf values")
    low, high = float(images.min()), float(images.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        if low < -RANGE_TOLERANCE and high <= 1 + RANGE_TOLERANCE:
            hint = "scaled to [-1, 1]? map them with (x + 1) / 2"
        elif low >= -RANGE_TOLERANCE and high <= 255 + RANGE_TOLERANCE:
            hint = "in 0..255? divide them by 255 or store them as uint8"
        else:
            hint = "rescale them to [0, 1]"
        raise ConfigError(
            f"{source}: float pixels must lie in [0, 1], these range from {low:.3g} to "
            f"{high:.3g} ({hint})"
        )
    return images.clamp(0.0, 1.0)  # not in place: the caller's tensor stays as it was


def _as_labels(labels: torch.Tensor, n: int, source: str) -> torch.Tensor:
    if labels.ndim == 2 and labels.shape[0] == n and labels.shape[1] > 1:
        raise ConfigError(
            f"{source}: expected one class number per image, shape ({n},), got shape "
            f"{tuple(labels.shape)} (one-hot? store labels.argmax(1))"
        )
    labels = whole_labels(labels, f"{source}: labels must be whole numbers, one per image")
    if labels.shape[0] != n:
        raise ConfigError(f"{source}: expected {n} labels (one per image), got {labels.shape[0]}")
    if int(labels.min()) < 0:
        raise ConfigError(f"{source}: labels must be 0 or more, got {int(labels.min())}")
    return labels


def _read_array_file(path: Path, key: str = "images") -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``key`` array of an array file (and ``labels`` beside it in an archive)."""
    problem = file_problem(path)
    if problem is not None:
        raise ConfigError(f"{path}: {problem}")
    suffix = path.suffix.lower()
    if suffix == ".png":
        raise ConfigError(
            f"{path}: one PNG file is a grid of images, which cannot be split reliably; "
            "give a folder of 28x28 PNG images or an .npy array (genmnist sample -f npy)"
        )
    if suffix in (".pt", ".pth", ".pkl", ".pickle", ".ckpt"):
        raise ConfigError(
            f"{path}: {suffix} files are pickles, which genmnist never opens (they can run "
            "code); save an .npy array instead"
        )
    if suffix not in ARRAY_SUFFIXES:
        raise ConfigError(
            f"{path}: unknown image file type '{suffix or path.name}'; give an "
            f"{', '.join(ARRAY_SUFFIXES)} file or a folder of PNG images"
        )
    if suffix == ".safetensors":
        from genmnist.io import load_tensors

        tensors, _ = load_tensors(path, check_finite=False)  # NaN is reported below
        return _pick(tensors, key, path)
    import numpy as np

    from genmnist.memory import check_fits

    # float pixels take 4 bytes each, whatever the file stores
    check_fits(4 * path.stat().st_size, f"reading {path}", "score fewer images at a time")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:  # truncated, or pickled data (an object array, not .npy)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "pickle" in reason:
            reason = "pickled data or not a NumPy file; genmnist never unpickles"
        raise ConfigError(f"{path}: not a plain numeric array ({reason})") from None
    except (OSError, EOFError) as exc:
        raise ConfigError(f"{path}: not a readable {suffix} file ({exc})") from None
    if suffix == ".npz":
        with loaded:
            try:
                arrays = {name: _tensor(loaded[name], path) for name in loaded.files}
            except ValueError as exc:
                raise ConfigError(f"{path}: not a plain numeric array ({exc})") from None
        return _pick(arrays, key, path)
    return _tensor(loaded, path), None


def _pick(
    arrays: dict[str, torch.Tensor], key: str, path: Path
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if key not in arrays:
        if len(arrays) != 1:
            found = ", ".join(sorted(arrays)) or "nothing"
            raise ConfigError(f"{path}: expected an array named '{key}', found {found}")
        return next(iter(arrays.values())), None
    labels = arrays.get("labels") if key == "images" else None
    return arrays[key], labels


def _tensor(array, path: Path) -> torch.Tensor:
    import numpy as np

    if array.dtype.kind not in "biuf":
        raise ConfigError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    if array.dtype.kind == "u" and array.dtype != np.uint8:
        array = array.astype(np.int64)  # torch lacks most unsigned types
    return torch.from_numpy(np.ascontiguousarray(array))


def _read_png_folder(folder: Path) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise ConfigError(f"{folder}: no .png images in this folder")
    images = torch.empty(len(files), 1, _SIDE, _SIDE, dtype=torch.uint8)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as picture:
                size = picture.size
                grey = picture.convert("L").tobytes() if size == (_SIDE, _SIDE) else None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ConfigError(f"{file}: not a readable PNG image ({exc})") from None
        if grey is None:
            raise ConfigError(f"{file}: expected a 28x28 image, got {size[0]}x{size[1]}")
        images[i, 0] = torch.frombuffer(bytearray(grey), dtype=torch.uint8).view(_SIDE, _SIDE)
    return images
