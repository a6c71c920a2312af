"""MNIST and Fashion-MNIST, read once into memory as uint8 tensors.

Files are looked for under ``<root>/MNIST/raw/`` (``FashionMNIST/raw/``), the layout of
``torchvision.datasets``, with a root chosen as: the ``data_dir`` argument
(``--data-dir``), else the ``GENMNIST_DATA`` environment variable, else
``~/.cache/genmnist/data`` (``$XDG_CACHE_HOME/genmnist/data``). Missing files are
downloaded through torchvision when the machine is online; the IDX files are then read
and checked here (`read_idx`), so a broken file gives a `DataError` naming it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from genmnist.errors import DataError

#: The datasets genmnist knows, the one list of them (`genmnist.models.DATASETS` and the
#: CLI derive theirs from it): name -> (torchvision class name, which is also the folder
#: under the root; class names).
DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mnist": ("MNIST", tuple(str(i) for i in range(10))),
    "fashion-mnist": (
        "FashionMNIST",
        (
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
    ),
}  # fmt: skip

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class InMemoryDataset:
    """A whole split in memory: ``images`` uint8 ``(N, 28, 28)``, ``labels`` int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    split: str

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images as floats ``(b, 1, 28, 28)`` in ``[0, 1]`` and their labels."""
        images = self.images[indices].unsqueeze(1).float().div_(255.0)
        return images, self.labels[indices]

    @property
    def class_names(self) -> tuple[str, ...]:
        return DATASETS[self.name][1]


def default_root() -> Path:
    """The data root when no ``data_dir`` is given (see the module docstring)."""
    if env := os.environ.get("GENMNIST_DATA"):
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "genmnist" / "data"


def check_dataset_name(name: str) -> str:
    """Return ``name`` if it is a known dataset, else raise `DataError`."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; choose from {', '.join(DATASETS)}")
    return name


def load_dataset(
    name: str = "mnist",
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> InMemoryDataset:
    """Read a whole split into memory.

    Args:
        name: ``mnist`` or ``fashion-mnist``.
        split: ``train`` (60,000 images) or ``test`` (10,000).
        data_dir: Root folder holding ``MNIST/raw/`` or ``FashionMNIST/raw/``.
        download: Try to download missing files.

    Raises:
        DataError: the files are missing (and could not be downloaded) or malformed; the
            message says where to put them.
    """
    check_dataset_name(name)
    if split not in ("train", "test"):
        raise DataError(f"unknown split '{split}'; use 'train' or 'test'")
    root = Path(data_dir).expanduser() if data_dir is not None else default_root()
    folder_name, _ = DATASETS[name]
    raw = root / folder_name / "raw"

    prefix = "train" if split == "train" else "t10k"
    images_path = raw / f"{prefix}-images-idx3-ubyte"
    labels_path = raw / f"{prefix}-labels-idx1-ubyte"
    from genmnist.io import file_problem

    for f in RAW_FILES:  # there, but not a file: downloading would not help
        if os.path.lexists(raw / f) and (problem := file_problem(raw / f)):
            raise DataError(f"{raw / f}: {problem}")
    if not all((raw / f).is_file() for f in RAW_FILES):
        if not download:
            raise DataError(_missing_message(name, raw, "download disabled"))
        import torchvision.datasets as tvd  # slow import (~2 s): only to download

        try:
            getattr(tvd, folder_name)(str(root), train=split == "train", download=True)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(_missing_message(name, raw, f"download failed: {reason}")) from None
        if not (images_path.is_file() and labels_path.is_file()):
            raise DataError(_missing_message(name, raw, "download left no files"))

    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or tuple(images.shape[1:]) != (28, 28):
        raise DataError(
            f"{images_path}: expected uint8 images of 28x28, got shape {tuple(images.shape)}"
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected 1-d labels, got shape {tuple(labels.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{raw}: {images.shape[0]} images but {labels.shape[0]} labels for split "
            f"'{split}' ({images_path.name}, {labels_path.name})"
        )
    labels = labels.long()
    if labels.numel() and labels.max() > 9:
        raise DataError(f"{labels_path}: labels must be 0..9, found {int(labels.max())}")
    return InMemoryDataset(images.contiguous(), labels, name, split)


def _missing_message(name: str, raw: Path, why: str) -> str:
    files = ", ".join(RAW_FILES)
    return (
        f"{name} not found under {raw} ({why}). Put the four IDX files ({files}) in that "
        "folder, or point --data-dir / GENMNIST_DATA at a folder that holds "
        f"{raw.parent.name}/raw/"
    )


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an uncompressed IDX file of unsigned bytes (the format MNIST ships in).

    The header is checked against the file before any data is used: magic number, element
    type (``0x08``, unsigned bytes), 1 to 4 dimensions, and a size that matches them
    exactly.

    Raises:
        DataError: naming the file, if it cannot be read or is not such an IDX file.
    """
    from genmnist.io import file_problem

    path = Path(path)
    if problem := file_problem(path):  # a folder or a FIFO (which would block) is no IDX file
        raise DataError(f"{path}: {problem}")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(4 + 4 * 255)  # the longest header there can be
            ndim, offset = (head[3], 4 + 4 * head[3]) if len(head) >= 4 else (0, 4)
            shape = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
            expected = offset + math.prod(shape)
            data = None
            if head[0:3] == b"\x00\x00\x08" and 1 <= ndim <= 4 and size == expected:
                f.seek(offset)
                data = bytearray(f.read())  # read only once the header fits the file
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(head) < 4 or head[0:2] != b"\x00\x00":
        raise DataError(f"{path}: malformed IDX file (bad magic number)")
    if head[2] != 0x08:
        raise DataError(
            f"{path}: malformed IDX file (element type 0x{head[2]:02x}; expected 0x08, "
            "unsigned bytes)"
        )
    if not 1 <= ndim <= 4 or size < offset:
        raise DataError(f"{path}: malformed IDX file ({ndim} dimensions, {size} bytes)")
    if data is None or len(data) != expected - offset:
        raise DataError(
            f"{path}: malformed IDX file (the header says shape {shape}, "
            f"{expected:,} bytes; the file has {size:,} bytes)"
        )
    if not data:  # no values (frombuffer refuses an empty buffer)
        return torch.empty(shape, dtype=torch.uint8)
    return torch.frombuffer(data, dtype=torch.uint8).view(shape)


def write_idx(path: str | os.PathLike[str], tensor: torch.Tensor) -> None:
    """Write a uint8 tensor as an (uncompressed) IDX file, the format MNIST ships in.

    Handy for tests and for packaging your own 28x28 data the same way.
    """
    if tensor.dtype != torch.uint8:
        raise ValueError("write_idx writes uint8 tensors")
    header = bytes([0, 0, 0x08, tensor.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in tensor.shape
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + tensor.contiguous().numpy().tobytes())
