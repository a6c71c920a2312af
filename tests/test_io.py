"""Atomic writes, safetensors/JSON I/O with clear errors, and state flattening."""

from __future__ import annotations

import json
import math

import pytest
import torch

from genmnist.errors import CheckpointError
from genmnist.io import (
    atomic_write,
    flatten_state,
    load_tensors,
    read_json,
    save_tensors,
    unflatten_state,
    write_json,
)


# --------------------------------------------------------------------------- atomic_write
def test_atomic_write_replaces_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "file.txt"
    atomic_write(target, lambda tmp: tmp.write_text("one"))
    assert target.read_text() == "one"
    atomic_write(target, lambda tmp: tmp.write_text("two"))
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path, error):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old contents")

    def writer(tmp):
        tmp.write_bytes(b"half-writ")
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, writer)
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


def test_atomic_write_failure_without_old_file(tmp_path):
    def writer(tmp):
        raise OSError("nope")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "new.bin", writer)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- JSON
def test_json_round_trip_and_errors(tmp_path):
    data = {"a": [1, 2.5, None, True], "b": {"c": "d"}}
    path = write_json(tmp_path / "x.json", data)
    assert read_json(path) == data
    with pytest.raises(CheckpointError, match="missing.json: file not found"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="bad.json: not valid JSON"):
        read_json(bad)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match="binary.json"):
        read_json(binary)


# --------------------------------------------------------------------------- safetensors
def test_save_load_tensors_round_trip_with_metadata(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {
        "weight": base,
        "view": base.t(),  # non-contiguous view sharing storage
        "ints": torch.tensor([1, -2, 3], dtype=torch.int64),
        "half": torch.randn(5, dtype=torch.bfloat16),
        "scalar": torch.tensor(3.5),
    }
    path = save_tensors(tmp_path / "t.safetensors", tensors, {"model": "vae-mlp", "k": "v"})
    loaded, metadata = load_tensors(path)
    assert set(loaded) == set(tensors)
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype
        assert torch.equal(loaded[key], value)
    assert metadata == {"format": "pt", "model": "vae-mlp", "k": "v"}


def _valid_file(tmp_path):
    return save_tensors(tmp_path / "w.safetensors", {"w": torch.randn(64, 64)})


def _lfs_pointer(path, valid):
    path.write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 12345\n"
    )


@pytest.mark.parametrize(
    ("kind", "spoil", "reason"),
    [
        ("truncated", lambda p, v: p.write_bytes(v[: len(v) // 2]), "not a valid safetensors"),
        ("empty", lambda p, v: p.write_bytes(b""), "not a valid safetensors"),
        ("junk", lambda p, v: p.write_bytes(b"\x07junk" * 100), "not a valid safetensors"),
        ("header-only", lambda p, v: p.write_bytes(v[:8]), "not a valid safetensors"),
        ("lfs", _lfs_pointer, "git lfs pull"),
    ],
)
def test_load_tensors_broken_files_name_the_file(tmp_path, kind, spoil, reason):
    valid = _valid_file(tmp_path).read_bytes()
    path = tmp_path / f"{kind}.safetensors"
    spoil(path, valid)
    with pytest.raises(CheckpointError) as info:
        load_tensors(path)
    assert str(path) in str(info.value)
    assert reason.lower() in str(info.value).lower()


def test_load_tensors_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.safetensors: file not found"):
        load_tensors(tmp_path / "nothing.safetensors")
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        load_tensors(tmp_path / "folder.safetensors")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_load_tensors_rejects_non_finite(tmp_path, bad):
    values = torch.ones(4)
    values[2] = bad
    path = save_tensors(tmp_path / "nan.safetensors", {"fine": torch.zeros(2), "bad": values})
    with pytest.raises(CheckpointError) as info:
        load_tensors(path)
    assert str(path) in str(info.value) and "'bad'" in str(info.value)
    tensors, _ = load_tensors(path, check_finite=False)  # opt-out still loads it
    assert torch.equal(tensors["bad"].isnan(), values.isnan())
    assert torch.equal(tensors["bad"].nan_to_num(), values.nan_to_num())


# --------------------------------------------------------------------------- flatten_state
def _assert_same_state(a, b, where="state"):
    """Deep equality where tuples and lists compare equal and tensors must be identical."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{where}.{i}")
    else:
        assert a == b and type(a) is type(b), where


def test_flatten_unflatten_adam_state_through_files(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.99))
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        optimizer.step()
    state = optimizer.state_dict()
    assert all(isinstance(k, int) for k in state["state"])  # what makes this case hard

    skeleton, tensors = flatten_state(state)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    # Store as a checkpoint does: JSON skeleton in the metadata, tensors in the file.
    path = save_tensors(tmp_path / "opt.safetensors", tensors, {"s": json.dumps(skeleton)})
    loaded, metadata = load_tensors(path)
    restored = unflatten_state(json.loads(metadata["s"]), loaded)

    _assert_same_state(state, restored)
    assert sorted(restored["state"]) == [0, 1, 2, 3]

    # The restored state drives a fresh optimizer exactly like the original.
    twin = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    twin.load_state_dict(model.state_dict())
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1.0)
    twin_opt.load_state_dict(restored)
    x = torch.randn(5, 3)
    for m, opt in ((model, optimizer), (twin, twin_opt)):
        opt.zero_grad()
        m(x).pow(2).sum().backward()
        opt.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_flatten_state_handles_nesting_and_edge_values():
    state = {
        "empty": {},
        "ints": {3: torch.ones(1), 10: "ten"},
        "mixed": [1, 2.5, None, True, "s", (torch.zeros(2), 4)],
    }
    skeleton, tensors = flatten_state(state, prefix="p")
    assert set(tensors) == {"p.ints.3", "p.mixed.5.0"}
    json.dumps(skeleton)  # JSON-serialisable
    restored = unflatten_state(json.loads(json.dumps(skeleton)), tensors)
    _assert_same_state(state, restored)
    assert list(restored["ints"]) == [3, 10]


def test_flatten_state_rejects_unstorable_objects():
    with pytest.raises(TypeError, match="cannot store object at 'state.x'"):
        flatten_state({"x": object()})


def test_unflatten_state_missing_tensor():
    with pytest.raises(CheckpointError, match="missing tensor 'state.w'"):
        unflatten_state({"w": {"__tensor__": "state.w"}}, {})
