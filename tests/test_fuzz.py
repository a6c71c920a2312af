"""Fuzzing: damaged weights, checkpoints, configs and IDX files fail with genmnist's errors.

Each test mutates a good file a few hundred times (bit flips, truncation, inserted and
appended bytes, a corrupted length field, a rewritten header: wrong dtype or shape,
offsets out of range or overlapping, mangled JSON) and loads it through the public API.
Every outcome must be a successful load (a flipped bit inside tensor data gives other but
finite values) or a `GenmnistError` whose message names the file: never another
exception type, never a hang. The seeds are fixed, so a failure reproduces; the failing
cases are listed in the assertion message.
"""

from __future__ import annotations

import functools
import json
import math
import random
import shutil
import signal
import struct
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

import genmnist
from genmnist.data import RAW_FILES, load_dataset
from genmnist.errors import CheckpointError, ConfigError, GenmnistError, TrainingError
from genmnist.models import VAE, GenerativeModel
from genmnist.training import CHECKPOINT_FILE, Trainer, TrainOptions

#: Seconds one load may take before it counts as a hang (generous: 2 busy CPU cores).
DEADLINE = 20.0


class Hang(BaseException):
    """Raised by `deadline` (a BaseException, so no `except Exception` can swallow it)."""


@contextmanager
def deadline(seconds: float = DEADLINE):
    """Turn a load that runs longer than ``seconds`` into `Hang` (SIGALRM, main thread)."""

    def fire(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def attempt(action: Callable[[], Any], *named: Path) -> tuple[str, Any]:
    """Run ``action``; returns ``("ok", result)``, ``("error", exc)`` for a GenmnistError that
    names one of ``named``, or ``("bad", description)`` for anything else."""
    try:
        with deadline(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's "zero-element tensors" warning
            return "ok", action()
    except GenmnistError as exc:
        message = str(exc)
        if len(message.strip().splitlines()) != 1:
            return "bad", f"{type(exc).__name__} over several lines: {message!r}"
        if not any(str(path) in message for path in named):
            return "bad", f"{type(exc).__name__} naming none of {[str(p) for p in named]}: {exc}"
        return "error", exc
    except Hang as exc:
        return "bad", f"hang: {exc}"
    except Exception as exc:
        return "bad", f"{type(exc).__name__}: {exc}"


def assert_no_bad(bad: list[str], total: int) -> None:
    shown = "\n".join(bad[:20])
    assert not bad, f"{len(bad)} of {total} mutated files misbehaved:\n{shown}"


# --------------------------------------------------------------------------- mutations
DTYPES = ["F32", "F16", "BF16", "F64", "I8", "U8", "I16", "I32", "I64", "BOOL", "F8_E4M3",
          "F8_E5M2", "U16", "U32", "U64", "C64", "XX", "", "f32"]  # fmt: skip


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    """The JSON header and the data section of a safetensors file."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_safetensors(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(text)) + text + body


def mutate_bytes(rng: random.Random, data: bytes, header_size: int) -> tuple[str, bytes]:
    """One byte-level mutation of a file whose first ``header_size`` bytes are its header."""
    buf = bytearray(data)
    kind = rng.choice(
        ["flip", "flip-header", "flip-data", "truncate", "insert", "append", "overwrite"]
        + (["length"] if header_size == 8 + struct.unpack("<Q", data[:8])[0] else [])
    )
    if kind == "flip":
        i = rng.randrange(len(buf))
    elif kind == "flip-header":
        i = rng.randrange(header_size)
    elif kind == "flip-data":
        i = rng.randrange(header_size, len(buf))
    if kind.startswith("flip"):
        bit = rng.randrange(8)
        buf[i] ^= 1 << bit
        return f"{kind} bit {bit} of byte {i}", bytes(buf)
    if kind == "truncate":
        i = rng.randrange(len(buf))
        return f"truncate to {i} bytes", bytes(buf[:i])
    if kind == "insert":
        i, extra = rng.randrange(len(buf)), rng.randbytes(rng.randint(1, 16))
        buf[i:i] = extra
        return f"insert {len(extra)} bytes at {i}", bytes(buf)
    if kind == "append":
        return "append junk", bytes(buf + rng.randbytes(rng.randint(1, 64)))
    if kind == "overwrite":
        i, k = rng.randrange(len(buf)), rng.randint(1, 32)
        buf[i : i + k] = rng.randbytes(k)
        return f"overwrite {k} bytes at {i}", bytes(buf)
    n = header_size - 8  # kind == "length": the u64 header length of safetensors
    value = rng.choice([0, 1, 7, n - 1, n + 1, n + 8, 2 * n, len(buf), 2**32, 2**63, 2**64 - 1])
    buf[:8] = struct.pack("<Q", value)
    return f"header length {value}", bytes(buf)


def mutate_header(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """Rewrite one entry of a safetensors header (a well-formed file that lies)."""
    header, body = split_safetensors(data)
    names = sorted(k for k in header if k != "__metadata__")
    name = rng.choice(names)
    info = header[name]
    kind = rng.choice(
        ["dtype", "shape", "offsets", "overlap", "swap", "drop", "extra", "metadata", "type"]
    )
    if kind == "dtype":
        info["dtype"] = rng.choice(DTYPES)
    elif kind == "shape":
        info["shape"] = rng.choice(
            [[], [0], [-1], [2**62, 2**62], [1] * 40, info["shape"][::-1], "3", [1.5],
             [2 * s for s in info["shape"]], [rng.randint(1, 5)]]
        )  # fmt: skip
    elif kind == "offsets":
        a, b = info["data_offsets"]
        end = len(body)
        info["data_offsets"] = rng.choice(
            [[a, end + 8], [end + 4, end + 8], [b, a], [-4, b], [a, 2**64], [0, 2**63]]
        )
    elif kind == "overlap":
        other = header[rng.choice([n for n in names if n != name])]
        info.update(dtype=other["dtype"], shape=other["shape"], data_offsets=other["data_offsets"])
    elif kind == "swap":
        other = header[rng.choice([n for n in names if n != name])]
        info["data_offsets"], other["data_offsets"] = other["data_offsets"], info["data_offsets"]
    elif kind == "drop":
        del info[rng.choice(["dtype", "shape", "data_offsets"])]
    elif kind == "extra":
        header["ghost"] = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    elif kind == "metadata":
        header["__metadata__"] = rng.choice([[1], {"format": 3}, "x", None, {"genmnist": 5}])
    else:
        header[name] = rng.choice([[1], "x", 3, None])
    return f"header: {kind} of '{name}'", join_safetensors(header, body)


#: Replacement values for JSON mutations. No size that a machine could allocate: sizes
#: are small or far beyond any address space (2**45), so no case eats the memory.
JSON_VALUES = [None, True, False, -1, 0, 2, 2**45, 10**30, -(10**30), 2**64, 1.5, math.nan,
               math.inf, "x", "", [], {}, [1, 2], {"a": 1}, {"__tensor__": "nope"},
               {"__int_keys__": [1]}, {"__int_keys__": {"a": 1}}]  # fmt: skip


def mutate_json(rng: random.Random, value: Any) -> Any:
    """``value`` with one random spot changed: a key dropped or renamed, an item dropped,
    or a value replaced by one of `JSON_VALUES`."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key, out = rng.choice(sorted(value)), dict(value)
        roll = rng.random()
        if roll < 0.15:
            del out[key]
        elif roll < 0.25:
            out[key + "x"] = out.pop(key)
        else:
            out[key] = mutate_json(rng, value[key])
        return out
    if isinstance(value, list) and value and rng.random() < 0.8:
        i, out = rng.randrange(len(value)), list(value)
        if rng.random() < 0.2:
            del out[i]
        else:
            out[i] = mutate_json(rng, value[i])
        return out
    return rng.choice(JSON_VALUES)


def _header_size(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


def finite_weights(model: torch.nn.Module) -> bool:
    return all(
        torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()
    )


# --------------------------------------------------------------------------- weights
@pytest.fixture
def model_folder(tmp_path, tiny_model):
    """A saved tiny vae-mlp: config.json + model.safetensors."""
    return tiny_model("vae-mlp", hidden_dims=(8,), latent_dim=2).save_pretrained(tmp_path / "good")


def test_mutated_weights_load_or_raise_checkpoint_error(tmp_path, model_folder):
    rng = random.Random(8)
    good = (model_folder / "model.safetensors").read_bytes()
    loaders = [
        ("genmnist.load", genmnist.load),
        ("VAE.from_pretrained", VAE.from_pretrained),
        ("GenerativeModel.from_pretrained", GenerativeModel.from_pretrained),
    ]
    folder = tmp_path / "case"
    shutil.copytree(model_folder, folder)
    weights = folder / "model.safetensors"
    bad, counts, n = [], {"ok": 0, "error": 0}, 200
    for i in range(n):
        if rng.random() < 0.6:
            what, data = mutate_bytes(rng, good, _header_size(good))
        else:
            what, data = mutate_header(rng, good)
        weights.write_bytes(data)
        loader_name, loader = loaders[i % len(loaders)]
        kind, result = attempt(functools.partial(loader, folder), weights)
        if kind == "bad":
            bad.append(f"case {i} ({what}, {loader_name}): {result}")
        elif kind == "ok" and not finite_weights(result):
            bad.append(f"case {i} ({what}): loaded non-finite weights")
        elif kind == "error" and not isinstance(result, CheckpointError):
            bad.append(f"case {i} ({what}): {type(result).__name__}, not CheckpointError")
        counts[kind] = counts.get(kind, 0) + 1
    assert_no_bad(bad, n)
    assert counts["error"] > n // 3 and counts["ok"] > 0, counts  # the mutations bite


# --------------------------------------------------------------------------- checkpoints
SAVED_STEP = 3


@pytest.fixture
def run_folder(tmp_path, tiny_model, tiny_dataset):
    """A tiny vae-mlp run stopped after `SAVED_STEP` steps (its checkpoint holds Adam state)."""
    model = tiny_model("vae-mlp", hidden_dims=(8,), latent_dim=2, batch_size=16, precision="fp32")
    options = TrainOptions(out=tmp_path / "run", max_steps=SAVED_STEP, progress=False)
    Trainer(model, options, dataset=tiny_dataset, log=lambda line: None).fit()
    return tmp_path / "run"


def mutate_checkpoint_metadata(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """Change one spot of the JSON training state that a checkpoint keeps in its metadata."""
    header, body = split_safetensors(data)
    metadata = dict(header["__metadata__"])
    if rng.random() < 0.1:
        metadata["genmnist"] = rng.choice(["", "{", "[1]", "null", '"x"', "[" * 10000])
    else:
        metadata["genmnist"] = json.dumps(mutate_json(rng, json.loads(metadata["genmnist"])))
    header["__metadata__"] = metadata
    return "metadata: " + metadata["genmnist"][:60], join_safetensors(header, body)


def test_mutated_checkpoints_resume_or_raise_checkpoint_error(
    tmp_path, run_folder, tiny_model, tiny_dataset
):
    rng = random.Random(80)
    files = {p.name: p.read_bytes() for p in run_folder.iterdir()}
    good = files[CHECKPOINT_FILE]
    folder = tmp_path / "case"
    checkpoint = folder / CHECKPOINT_FILE
    bad, counts, n = [], {"ok": 0, "error": 0}, 150

    def resume():
        model = tiny_model(
            "vae-mlp", hidden_dims=(8,), latent_dim=2, batch_size=16, precision="fp32"
        )
        options = TrainOptions(out=folder, max_steps=SAVED_STEP + 1, resume=True, progress=False)
        Trainer(model, options, dataset=tiny_dataset, log=lambda line: None).fit()
        return model

    for i in range(n):
        roll = rng.random()
        if roll < 0.4:
            what, data = mutate_checkpoint_metadata(rng, good)
        elif roll < 0.75:
            what, data = mutate_bytes(rng, good, _header_size(good))
        else:
            what, data = mutate_header(rng, good)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for name, content in files.items():
            (folder / name).write_bytes(data if name == CHECKPOINT_FILE else content)
        # a resume that loads may still stop at a non-finite loss (huge but finite
        # values from a flipped exponent bit): TrainingError naming the run folder
        kind, result = attempt(resume, checkpoint, folder)
        if kind == "bad":
            bad.append(f"case {i} ({what}): {result}")
        elif kind == "ok" and not finite_weights(result):
            bad.append(f"case {i} ({what}): resumed to non-finite weights")
        elif kind == "error":
            if not isinstance(result, CheckpointError | TrainingError):
                bad.append(f"case {i} ({what}): {type(result).__name__}: {result}")
            elif isinstance(result, CheckpointError) and str(checkpoint) not in str(result):
                bad.append(f"case {i} ({what}): message does not name the file: {result}")
            if checkpoint.read_bytes() != data:
                bad.append(f"case {i} ({what}): a failed resume rewrote the checkpoint")
        counts[kind] = counts.get(kind, 0) + 1
    assert_no_bad(bad, n)
    assert counts["error"] > n // 3 and counts["ok"] > 0, counts


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"step": -5}, "invalid step -5"),
        ({"step": "3"}, "invalid step '3'"),
        ({"seed": 10**30}, "invalid seed"),
        ({"dataset": ["mnist"]}, "invalid dataset"),
        ({"world_size": 0}, "invalid world_size"),
        ({"state": None}, "no training state"),
        ({"state": {"optimizers": {}}}, "does not fit"),
    ],
)
def test_checkpoint_header_values_are_checked(run_folder, tiny_model, tiny_dataset, change, match):
    path = run_folder / CHECKPOINT_FILE
    header, body = split_safetensors(path.read_bytes())
    state = json.loads(header["__metadata__"]["genmnist"])
    header["__metadata__"]["genmnist"] = json.dumps({**state, **change})
    path.write_bytes(join_safetensors(header, body))
    model = tiny_model("vae-mlp", hidden_dims=(8,), latent_dim=2, batch_size=16, precision="fp32")
    options = TrainOptions(out=run_folder, max_steps=SAVED_STEP + 1, resume=True, progress=False)
    with pytest.raises(CheckpointError, match=match) as info:
        Trainer(model, options, dataset=tiny_dataset, log=lambda line: None).fit()
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("where", "value", "match"),
    [
        (("param_groups", 0, "lr"), "x", "invalid value 'x'"),
        (("param_groups", 0, "betas"), [0.9], "list of 2 values"),
        (("param_groups", 0, "eps"), math.nan, "invalid value nan"),
        (("param_groups",), {}, "list of 1 values"),
        (("state",), [], "not an optimizer state"),
    ],
)
def test_optimizer_state_in_a_checkpoint_is_checked(
    run_folder, tiny_model, tiny_dataset, where, value, match
):
    """Values that PyTorch would accept at load time and fail on at the next step."""
    path = run_folder / CHECKPOINT_FILE
    header, body = split_safetensors(path.read_bytes())
    state = json.loads(header["__metadata__"]["genmnist"])
    target = state["state"]["optimizers"]["model"]
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    header["__metadata__"]["genmnist"] = json.dumps(state)
    path.write_bytes(join_safetensors(header, body))
    model = tiny_model("vae-mlp", hidden_dims=(8,), latent_dim=2, batch_size=16, precision="fp32")
    options = TrainOptions(out=run_folder, max_steps=SAVED_STEP + 1, resume=True, progress=False)
    with pytest.raises(CheckpointError, match=match) as info:
        Trainer(model, options, dataset=tiny_dataset, log=lambda line: None).fit()
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- IDX files
def mutate_idx(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    buf = bytearray(data)
    ndim = buf[3]
    kind = rng.choice(["bytes", "bytes", "dims", "magic", "empty"])
    if kind == "bytes":
        return mutate_bytes(rng, data, 4 + 4 * ndim)
    if kind == "dims":
        d, value = rng.randrange(ndim), rng.choice([0, 1, 27, 2**31, 2**32 - 1])
        buf[4 + 4 * d : 8 + 4 * d] = value.to_bytes(4, "big")
        return f"dimension {d} = {value}", bytes(buf)
    if kind == "magic":
        buf[2] = rng.choice([0, 7, 8, 9, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 255])
        buf[3] = rng.choice([0, 1, 2, 3, 4, 5, 255])
        return f"type 0x{buf[2]:02x}, {buf[3]} dimensions", bytes(buf)
    return "empty file", b""


def test_mutated_idx_files_load_or_raise_data_error(tmp_path, make_mnist_folder):
    rng = random.Random(3)
    make_mnist_folder(tmp_path / "good", n_train=16, n_test=8)
    good = {name: (tmp_path / "good" / "MNIST" / "raw" / name).read_bytes() for name in RAW_FILES}
    root = tmp_path / "case"
    shutil.copytree(tmp_path / "good", root)
    raw = root / "MNIST" / "raw"
    bad, counts, n = [], {"ok": 0, "error": 0}, 200
    for i in range(n):
        name = rng.choice(RAW_FILES)
        what, data = mutate_idx(rng, good[name])
        for other in RAW_FILES:
            (raw / other).write_bytes(data if other == name else good[other])
        split = "train" if name.startswith("train") else "test"
        load = functools.partial(load_dataset, "mnist", split, root, download=False)
        kind, result = attempt(load, raw)
        if kind == "ok":
            images, labels = result.images, result.labels
            if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (28, 28):
                bad.append(f"case {i} ({name}: {what}): images {images.dtype} {images.shape}")
            if labels.shape != (len(images),) or not 0 <= int(labels.min()) <= labels.max() <= 9:
                bad.append(f"case {i} ({name}: {what}): bad labels loaded")
        elif kind == "error" and name not in str(result):
            bad.append(f"case {i} ({name}: {what}): message does not name the file: {result}")
        elif kind == "bad":
            bad.append(f"case {i} ({name}: {what}): {result}")
        counts[kind] = counts.get(kind, 0) + 1
    assert_no_bad(bad, n)
    assert counts["error"] > n // 2 and counts["ok"] > 0, counts


# --------------------------------------------------------------------------- config.json
def _with(record: dict, path: tuple, value: Any) -> dict:
    record = json.loads(json.dumps(record))
    target = record
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return record


#: (label, text of config.json or a function of the good record) -> must fail
BROKEN_CONFIGS = [
    ("invalid JSON", "{not json"),
    ("a list", "[1, 2]"),
    ("null", "null"),
    ("byte order mark", lambda r: "\ufeff" + json.dumps(r)),
    ("nested too deeply", '{"format": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    ("binary", b"\xff\xfe\x00garbage"),
    ("wrong format", lambda r: _with(r, ("format",), "x")),
    ("model is a number", lambda r: _with(r, ("model",), 3)),
    ("unknown model", lambda r: _with(r, ("model",), "nope")),
    ("another model's config", lambda r: _with(r, ("model",), "gan-mlp")),
    ("version is a string", lambda r: _with(r, ("config_version",), "1")),
    ("version is true", lambda r: _with(r, ("config_version",), True)),
    ("version is huge", lambda r: _with(r, ("config_version",), 10**30)),
    ("config is a list", lambda r: _with(r, ("config",), [1])),
    ("unknown field", lambda r: _with(r, ("config", "warp_factor"), 9)),
] + [
    (f"{field} = {value!r}"[:40], lambda r, f=field, v=value: _with(r, ("config", f), v))
    for field, values in {
        "latent_dim": ["4", 4.5, None, [4], {"a": 1}, -1, 0, 2**45, 10**30, 2**64],
        "hidden_dims": ["32", 32, [-1], ["a"], [2**45], [10**30], [[1]], None],
        "num_classes": ["10", -3, 2**45, 2.5],
        "encoder": [1, None, "nope", ["mlp"]],
        "activation": [3, "zzz"],
        "reconstruction": [3, "zz"],
    }.items()
    for value in values
]


@pytest.mark.parametrize(("label", "spoil"), BROKEN_CONFIGS, ids=[c[0] for c in BROKEN_CONFIGS])
def test_broken_config_json_raises_checkpoint_error(model_folder, label, spoil):
    path = model_folder / "config.json"
    record = json.loads(path.read_text())
    content = spoil(record) if callable(spoil) else spoil
    if isinstance(content, dict):
        content = json.dumps(content)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    kind, result = attempt(lambda: genmnist.load(model_folder), path)
    assert kind == "error", result
    assert isinstance(result, CheckpointError | ConfigError), result


@pytest.mark.parametrize(("field", "value"), [("batch_size", 0), ("lr", -1.0), ("norm", "zz")])
def test_config_fields_used_only_for_training_do_not_stop_loading(model_folder, field, value):
    path = model_folder / "config.json"
    path.write_text(json.dumps(_with(json.loads(path.read_text()), ("config", field), value)))
    assert genmnist.load(model_folder).sample(2, seed=0).isfinite().all()


@pytest.mark.parametrize(("field", "value"), [("lr", "x"), ("betas", 1), ("epochs", None)])
def test_config_fields_of_the_wrong_type_are_refused_on_load(model_folder, field, value):
    path = model_folder / "config.json"
    path.write_text(json.dumps(_with(json.loads(path.read_text()), ("config", field), value)))
    with pytest.raises(CheckpointError, match=rf"config\.json.*'{field}'"):
        genmnist.load(model_folder)


def test_randomly_mutated_config_json_loads_or_raises(tmp_path, model_folder):
    rng = random.Random(5)
    record = json.loads((model_folder / "config.json").read_text())
    folder = tmp_path / "case"
    shutil.copytree(model_folder, folder)
    path = folder / "config.json"
    bad, counts, n = [], {"ok": 0, "error": 0}, 120
    for i in range(n):
        mutated = mutate_json(rng, record)
        path.write_text(json.dumps(mutated))
        kind, result = attempt(lambda: genmnist.load(folder), path, folder / "model.safetensors")
        if kind == "bad":
            bad.append(f"case {i} ({json.dumps(mutated)[:200]}): {result}")
        elif kind == "error" and not isinstance(result, CheckpointError):
            bad.append(f"case {i}: {type(result).__name__}, not CheckpointError: {result}")
        counts[kind] = counts.get(kind, 0) + 1
    assert_no_bad(bad, n)
    assert counts["error"] > n // 4 and counts["ok"] > 0, counts


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", "x"),
        ("lr", math.nan),
        ("lr", -1.0),
        ("batch_size", 0),
        ("batch_size", 2.5),
        ("batch_size", True),
        ("betas", 1),
        ("betas", [2.0, 0.9]),
        ("weight_decay", None),
        ("warmup_steps", -3),
        ("grad_clip", "a"),
        ("ema_decay", 2.0),
        ("optimizer", None),
        ("lr_schedule", 3),
        ("epochs", "a"),
    ],
)
def test_training_recipe_of_wrong_type_raises_config_error(
    tmp_path, tiny_model, tiny_dataset, field, value
):
    """The recipe of a hand-edited config (--config, or the config.json of a run being
    resumed) is checked before it reaches the optimizer."""
    options = TrainOptions(out=tmp_path / "run", max_steps=None, progress=False)
    with pytest.raises(ConfigError, match=field):  # wrong JSON types fail building the model
        model = tiny_model("vae-mlp", **{"batch_size": 16, "precision": "fp32", field: value})
        Trainer(model, options, dataset=tiny_dataset, log=lambda line: None).fit()
    assert not (tmp_path / "run").exists()
