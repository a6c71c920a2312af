"""Safe file formats: safetensors for tensors, JSON for everything else.

Nothing here unpickles. Writes are atomic (a temporary file in the same folder, flushed
to disk, then renamed over the target), so a crash never leaves a half-written file under
the real name; a leftover ``*.tmp`` file is simply ignored by readers (and a training
removes those of its run folder when it starts). Only regular files are ever replaced:
see `atomic_write`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from genmnist.errors import CheckpointError, GenmnistError

_LFS_POINTER = b"version https://git-lfs"
#: Largest JSON file `read_json` reads (configs, cards, results are a few kB).
MAX_JSON_BYTES = 8 * 2**20


def file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be read as a regular file, in a few words, or None if it can:
    ``file not found``, ``is a folder, not a file``, ``is a FIFO, not a regular file``...
    (so nothing blocks on a FIFO or reads a device)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a device"}
    kind = next((name for test, name in kinds.items() if test(mode)), "a device")
    return f"is {kind}, not a regular file"


#: How `atomic_write` names its temporary files: ``.NAME.XXXXXXXX.tmp`` next to ``NAME``
#: (``XXXXXXXX``: `tempfile.mkstemp`'s random part).
_TEMP_NAME = r"\.{name}\.[a-z0-9_]{{8}}\.tmp"


def is_temp_file_of(candidate: str, name: str) -> bool:
    """Whether the file name ``candidate`` is a temporary file `atomic_write` made (and a
    killed process may have left) while writing a file called ``name``."""
    return re.fullmatch(_TEMP_NAME.format(name=re.escape(name)), candidate) is not None


def check_output(path: str | os.PathLike[str]) -> Path:
    """Where `atomic_write` would write ``path``, or a one-line `GenmnistError` if it
    would not write there; commands call it before the work, to fail early.

    * a new path, or a regular file: ``path`` itself (replaced atomically);
    * a symbolic link to a regular file: the file it points to, replaced atomically
      (the link stays a link);
    * a character device (``/dev/null``) or a FIFO, directly or through a link: ``path``,
      written through with a plain write, never replaced;
    * a folder, a socket, a block device or a symbolic link that does not resolve
      (dangling, or a loop): refused.
    """
    path = Path(path)
    try:
        info = os.stat(path)  # follows symbolic links
    except FileNotFoundError:
        if path.is_symlink():
            raise GenmnistError(
                f"{path} is a symbolic link to a missing file; not writing through it"
            ) from None
        return path
    except OSError as exc:
        if path.is_symlink():  # a loop of links, or one through a file: nothing to write to
            reason = (exc.strerror or "does not resolve").lower()
            raise GenmnistError(
                f"{path} is a symbolic link that does not resolve ({reason}); "
                "not writing through it"
            ) from None
        return path  # not a folder on the way, no permission...: the write will say
    mode = info.st_mode
    if stat.S_ISREG(mode):
        return Path(os.path.realpath(path)) if path.is_symlink() else path
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return path
    kind = (
        "a folder" if stat.S_ISDIR(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "a block device" if stat.S_ISBLK(mode)
        else "not a regular file"
    )  # fmt: skip
    hint = "; give a file name" if stat.S_ISDIR(mode) else "; not writing over it"
    raise GenmnistError(f"{path} is {kind}{hint}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and atomically move the result to ``path``.

    The parent folder is created if needed. If ``write`` fails, ``path`` is untouched.
    Only a regular file or a new path is ever replaced, and a replaced file keeps its
    permission bits (new files get the umask's); a symbolic link to a regular file
    has its target replaced; a character device or FIFO is written through, never
    replaced; anything else is refused with a `GenmnistError` (see `check_output`).
    """
    path = Path(path)
    target = check_output(path)
    try:
        info = os.stat(target)
    except OSError:
        info = None
    if info is not None and not stat.S_ISREG(info.st_mode):
        return _write_through(path, info, write)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        if info is None:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; use normal permissions
        else:  # the file it replaces keeps its permissions (and owner, where allowed)
            os.chmod(tmp, stat.S_IMODE(info.st_mode))
            if (info.st_uid, info.st_gid) != (os.getuid(), os.getgid()):
                with contextlib.suppress(OSError):
                    os.chown(tmp, info.st_uid, info.st_gid)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_through(path: Path, info: os.stat_result, write: Callable[[Path], None]) -> Path:
    """Write into a character device or FIFO with a plain write (it is never replaced):
    ``write`` fills a private temporary file, whose bytes are then copied over."""
    with tempfile.TemporaryDirectory(prefix="genmnist-") as folder:
        tmp = Path(folder) / path.name
        write(tmp)
        flags = os.O_WRONLY | (os.O_NONBLOCK if stat.S_ISFIFO(info.st_mode) else 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a FIFO with no reader: do not wait forever
                raise GenmnistError(f"{path} is a FIFO that no process reads") from None
            raise
        os.set_blocking(fd, True)
        with os.fdopen(fd, "wb") as out, open(tmp, "rb") as data:
            shutil.copyfileobj(data, out)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def to_json_value(value: Any, nonfinite_as_null: bool = False) -> Any:
    """``value`` as plain JSON values: tuples become lists, recursively (also inside
    dicts). With ``nonfinite_as_null``, NaN and infinite floats become None (for measured
    results, where "not measurable" is a fact to record); without it they are kept as they
    are (a config's values are its own to check)."""
    if isinstance(value, dict):
        return {k: to_json_value(v, nonfinite_as_null) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v, nonfinite_as_null) for v in value]
    if nonfinite_as_null and isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _read_bounded(path: Path) -> bytes:
    """The bytes of a regular file of at most `MAX_JSON_BYTES` (`CheckpointError` for
    anything else: a folder, a FIFO, a file too large)."""
    if problem := file_problem(path):
        raise CheckpointError(f"{path}: {problem}")
    with open(path, "rb") as f:
        raw = f.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise CheckpointError(
            f"{path}: too large for a genmnist JSON or config file "
            f"(over {MAX_JSON_BYTES // 2**20} MB)"
        )
    return raw


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, raising `CheckpointError` with the file name on failure."""
    path = Path(path)
    try:
        return json.loads(_read_bounded(path).decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise CheckpointError(f"{path}: not valid JSON ({reason})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not valid JSON (nested too deeply)") from None
    except OSError as exc:  # a folder, no permission, ...
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None


def check_same_tensors(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    path: str | os.PathLike[str],
    needs: str = "the config",
) -> None:
    """`CheckpointError` naming the weights file ``path`` unless ``found`` (name -> shape,
    from the file) has exactly the names and shapes ``expected`` (what ``needs``, e.g.
    "the config", implies)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match {needs} "
            f"(missing: {', '.join(missing[:5]) or 'none'}; "
            f"unexpected: {', '.join(unexpected[:5]) or 'none'})"
        )
    for key, shape in found.items():
        if tuple(shape) != tuple(expected[key]):
            raise CheckpointError(
                f"{path}: tensor '{key}' has shape {tuple(shape)}, {needs} needs "
                f"{tuple(expected[key])}"
            )


#: Config file formats `read_config_file` reads, by file suffix.
CONFIG_SUFFIXES = {".json": "JSON", ".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}


def read_config_file(path: str | os.PathLike[str]) -> Any:
    """Read a config file written by a person: JSON, TOML or YAML, by its suffix (any
    other suffix is read as JSON), with the checks and size bound of `read_json`.

    YAML is read with PyYAML's safe loader (plain values only, no Python objects).

    Raises:
        CheckpointError: naming the file, when it is missing, too large or not valid.
    """
    path = Path(path)
    kind = CONFIG_SUFFIXES.get(path.suffix.lower(), "JSON")
    if kind == "JSON":
        return read_json(path)
    try:
        text = _read_bounded(path).decode("utf-8")
        if kind == "TOML":
            return _toml().loads(text)
        import yaml

        return yaml.safe_load(text)
    except CheckpointError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # TOMLDecodeError too
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not valid {kind} ({reason})") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # yaml.YAMLError: any malformation of the text
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not valid {kind} ({reason})") from None


def _toml():
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save named tensors to a safetensors file, atomically.

    Tensors are copied to contiguous CPU memory first, so views and shared storage are fine.
    """
    from safetensors.torch import save_file

    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {"format": "pt", **(metadata or {})}
    return atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=meta))


def load_tensors(
    path: str | os.PathLike[str], check_finite: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file as ``(tensors, metadata)``.

    Raises:
        CheckpointError: naming the file, if it is missing, not a safetensors file (a
            Git-LFS pointer, truncated, junk), or (with ``check_finite``) holds NaN or inf.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if problem := file_problem(path):
        raise CheckpointError(f"{path}: {problem}")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LFS_POINTER))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if head == _LFS_POINTER:
        raise CheckpointError(
            f"{path}: this is a Git LFS pointer, not the weights; run `git lfs pull`"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a valid safetensors file ({reason})") from None
    if check_finite:
        for key, value in tensors.items():
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise CheckpointError(f"{path}: tensor '{key}' contains NaN or inf values")
    return tensors, metadata


def flatten_state(state: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested structure of dicts/lists/scalars/tensors into a JSON skeleton and a
    flat dict of tensors, so optimizer and scheduler states fit safetensors + JSON.

    Each tensor is replaced in the skeleton by ``{"__tensor__": key}``;
    `unflatten_state` reverses it. Dict keys that are ints (optimizer state) are kept
    as ``{"__int_keys__": ...}``.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(obj: Any, key: str) -> Any:
        if isinstance(obj, torch.Tensor):
            tensors[key] = obj
            return {"__tensor__": key}
        if isinstance(obj, Mapping):
            int_keys = all(isinstance(k, int) for k in obj) and len(obj) > 0
            items = {str(k): walk(v, f"{key}.{k}") for k, v in obj.items()}
            return {"__int_keys__": items} if int_keys else items
        if isinstance(obj, list | tuple):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(obj)]
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        raise TypeError(f"cannot store {type(obj).__name__} at '{key}' in a checkpoint")

    return walk(state, prefix or "state"), tensors


def unflatten_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_state`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__tensor__"}:
            key = skeleton["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"checkpoint is missing tensor '{key}'")
            return tensors[key]
        if set(skeleton) == {"__int_keys__"}:
            return {
                int(k): unflatten_state(v, tensors) for k, v in skeleton["__int_keys__"].items()
            }
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton
