"""Data-parallel training: 2 gloo processes started by torchrun, training on real MNIST.

The torchrun runs are started together (two waves) by one module fixture, since most of
their time is starting Python, torch and torchvision; the tests then read what they left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genmnist import distributed
from genmnist.errors import ConfigError
from genmnist.io import load_tensors
from genmnist.models import create_model
from genmnist.training import CHECKPOINT_FILE, CURVE_FILE, METRICS_FILE, Trainer, TrainOptions

HELPER = Path(__file__).with_name("ddp_train.py")
TINY = {"hidden_dims": [64], "latent_dim": 8, "batch_size": 64}
STEPS = 30
HALF = 15
TIMEOUT = 240  # seconds per torchrun job (the machine may be busy)


def _data_root() -> Path:
    value = os.environ.get("GENMNIST_DATA", "").strip()
    if not value:
        pytest.skip("GENMNIST_DATA is not set: the torchrun tests train on real MNIST")
    return Path(value).expanduser()


def _start(command: list[str], dump: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DDP_LOG_EVERY": "5"}
    if dump is not None:
        env["DDP_DUMP"] = str(dump)
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _torchrun(out: Path, dump: Path, *args: str) -> subprocess.Popen:
    """``torchrun --nproc_per_node 2 tests/ddp_train.py train vae-mlp ...``."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(HELPER), "train", "vae-mlp", "--out", str(out), "--data-dir", str(_data_root()),
        "--device", "cpu", "--quiet", *args,
    ]  # fmt: skip
    return _start(command, dump)


def _finish(process: subprocess.Popen) -> str:
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.terminate()  # torchrun passes it on to its workers
        output, _ = process.communicate(timeout=60)
        pytest.fail(f"torchrun job timed out:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    return output


def _train_here(out: Path, max_steps: int, resume: bool = False, lines=None):
    """One process, in this interpreter, like `genmnist train` (same seed, same model)."""
    torch.manual_seed(42)
    model = create_model("vae-mlp", **TINY)
    options = TrainOptions(
        out=out, max_steps=max_steps, data_dir=str(_data_root()), resume=resume,
        log_every=5, progress=False, device="cpu",
    )  # fmt: skip
    return Trainer(model, options, log=(lines.append if lines is not None else print)).fit()


def _dumps(folder: Path) -> list[dict[str, torch.Tensor]]:
    return [load_tensors(folder / f"rank{r}.safetensors")[0] for r in range(2)]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]


def _header(run: Path) -> dict:
    return json.loads(load_tensors(run / CHECKPOINT_FILE)[1]["genmnist"])


def assert_same_weights(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every torchrun job of this file, started in two waves."""
    _data_root()
    tmp = tmp_path_factory.mktemp("ddp")
    config = tmp / "tiny.json"
    config.write_text(json.dumps(TINY))
    steps = ("--max-steps", str(STEPS))
    # wave 1: the same 2-process run twice; half a run through `genmnist train --nproc 2`;
    # half a run in 1 process (here, meanwhile)
    a = _torchrun(tmp / "a", tmp / "a-dump", "--config", str(config), *steps)
    b = _torchrun(tmp / "b", tmp / "b-dump", "--config", str(config), *steps)
    c = _start(
        [
            sys.executable,
            "-m",
            "genmnist",
            "train",
            "vae-mlp",
            "--nproc",
            "2",
            "--out",
            str(tmp / "c"),
            "--config",
            str(config),
            "--max-steps",
            str(HALF),
            "--data-dir",
            str(_data_root()),
            "--device",
            "cpu",
            "--quiet",
        ]  # fmt: skip
    )
    _train_here(tmp / "d", HALF)
    logs = {"a": _finish(a), "b": _finish(b), "c": _finish(c)}
    # wave 2: resume both halves with 2 processes; resume a copy of the 2-process run here
    c2 = _torchrun(tmp / "c", tmp / "c-dump", "--resume", *steps)
    d2 = _torchrun(tmp / "d", tmp / "d-dump", "--resume", *steps)
    shutil.copytree(tmp / "a", tmp / "e")
    lines: list[str] = []
    e_result = _train_here(tmp / "e", STEPS + 10, resume=True, lines=lines)
    logs.update({"c2": _finish(c2), "d2": _finish(d2), "e": "\n".join(lines)})
    return {"tmp": tmp, "logs": logs, "e_result": e_result}


# --------------------------------------------------------------------------- 2 processes
@pytest.mark.real_data
@pytest.mark.slow
def test_two_processes_end_with_identical_weights_and_learn(runs):
    tmp = runs["tmp"]
    rank0, rank1 = _dumps(tmp / "a-dump")
    assert_same_weights(rank0, rank1)
    # only rank 0 wrote the run folder, and it holds the trained weights
    run = tmp / "a"
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["config.json", "model.safetensors", CHECKPOINT_FILE, METRICS_FILE, CURVE_FILE]
    )
    assert_same_weights(load_tensors(run / "model.safetensors")[0], rank0)
    header = _header(run)
    assert header["step"] == STEPS and header["world_size"] == 2
    records = _metrics(run)
    assert [r["step"] for r in records] == list(range(5, STEPS + 1, 5))  # each once
    first, last = records[0]["loss"], records[-1]["loss"]
    assert last < 0.8 * first, (first, last)
    log = runs["logs"]["a"]
    assert "x 2 processes (gloo" in log and "batch 64 (32 per process)" in log
    assert log.count("Done: 30 steps") == 1  # only rank 0 speaks


@pytest.mark.real_data
@pytest.mark.slow
def test_same_seed_and_world_size_give_identical_runs(runs):
    tmp = runs["tmp"]
    for a, b in zip(_dumps(tmp / "a-dump"), _dumps(tmp / "b-dump"), strict=True):
        assert_same_weights(a, b)

    def losses(run):
        return [{k: v for k, v in r.items() if "loss" in k} for r in _metrics(run)]

    assert losses(tmp / "a") == losses(tmp / "b")


@pytest.mark.real_data
@pytest.mark.slow
def test_nproc_run_resumes_exactly_with_two_processes(runs):
    tmp = runs["tmp"]
    assert "x 2 processes (gloo" in runs["logs"]["c"]  # `genmnist train --nproc 2`
    assert f"Resumed {tmp / 'c' / CHECKPOINT_FILE} at step {HALF}" in runs["logs"]["c2"]
    # stopped halfway and resumed = never stopped
    for resumed, full in zip(_dumps(tmp / "c-dump"), _dumps(tmp / "a-dump"), strict=True):
        assert_same_weights(resumed, full)
    # `genmnist train` logs every 50 steps (and at the end), the helper every 5
    assert [r["step"] for r in _metrics(tmp / "c")] == [HALF, *range(20, STEPS + 1, 5)]


# --------------------------------------------------------------------------- world sizes
@pytest.mark.real_data
@pytest.mark.slow
def test_one_process_run_resumes_with_two(runs):
    tmp = runs["tmp"]
    log = runs["logs"]["d2"]
    assert f"at step {HALF}" in log and "trained with 1 process, now 2 processes" in log
    rank0, rank1 = _dumps(tmp / "d-dump")
    assert_same_weights(rank0, rank1)
    assert _header(tmp / "d")["step"] == STEPS
    records = _metrics(tmp / "d")
    assert [r["step"] for r in records] == list(range(5, STEPS + 1, 5))
    assert records[-1]["loss"] < records[0]["loss"]


@pytest.mark.real_data
@pytest.mark.slow
def test_two_process_run_resumes_in_one(runs):
    tmp = runs["tmp"]
    result = runs["e_result"]
    assert result.resumed_from == STEPS and result.step == STEPS + 10
    assert result.world_size == 1
    assert "trained with 2 processes, now 1 process" in runs["logs"]["e"]
    before, _ = load_tensors(tmp / "a" / "model.safetensors")
    after, _ = load_tensors(tmp / "e" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it went on learning
    records = _metrics(tmp / "e")
    assert [r["step"] for r in records] == list(range(5, STEPS + 11, 5))
    assert records[-1]["loss"] < records[0]["loss"]


# --------------------------------------------------------------------------- cheap checks
def test_batch_size_must_divide_among_processes(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed, "setup", lambda device: False)  # no process group
    model = tiny_model("vae-mlp", batch_size=15)
    options = TrainOptions(out=tmp_path / "run", max_steps=2, progress=False, device="cpu")
    with pytest.raises(ConfigError, match="batch size 15 is not divisible by the 2 processes"):
        Trainer(model, options, dataset=tiny_dataset, log=lambda line: None).fit()
    assert not (tmp_path / "run").exists()


def test_environment_and_device(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.environment() == distributed.Environment(1, 0, 0, 1)
    assert distributed.is_main() and not distributed.is_initialized()
    assert distributed.pick_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    env = distributed.environment()
    assert env == distributed.Environment(4, 3, 1, 2) and env.distributed
    assert not distributed.is_main()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a 2-GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.pick_device("cuda") == torch.device("cuda", 1)  # one GPU per process
    assert distributed.pick_device("cuda:0") == torch.device("cuda", 0)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="inconsistent torchrun environment"):
        distributed.environment()
    # without a process group the collectives are identities
    assert distributed.count_true(True) == 1
    assert torch.equal(distributed.all_reduce_sum(torch.ones(2)), torch.ones(2))


def test_step_seeds_differ_by_seed_step_and_rank():
    seeds = {distributed.step_seed(s, t, r) for s in (1, 2) for t in range(50) for r in range(4)}
    assert len(seeds) == 2 * 50 * 4
    assert all(0 <= s < 2**63 for s in seeds)
    assert distributed.step_seed(42, 7, 1) == distributed.step_seed(42, 7, 1)


def test_nproc_relaunches_the_same_command(monkeypatch, tmp_path, capsys):
    from genmnist.cli import main

    calls = []
    monkeypatch.setattr(distributed, "launch", lambda n, args: calls.append((n, args)) or 0)
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as info:
        main(["train", "vae-mlp", "--nproc", "3", "--max-steps", "7", "--out", str(tmp_path)])
    assert info.value.code == 0
    [(n, args)] = calls
    assert n == 3 and args[:2] == ["train", "vae-mlp"] and "--nproc" not in args
    pairs = dict(zip(args[2::1], args[3::1], strict=False))
    assert pairs["--max-steps"] == "7" and pairs["--out"] == str(tmp_path)
    assert "--no-resume" in args and "--seed" in args
    with pytest.raises(SystemExit) as info:
        main(["train", "vae-mlp", "--nproc", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--nproc" in err[0]
    monkeypatch.setenv("WORLD_SIZE", "2")  # already under torchrun
    with pytest.raises(SystemExit) as info:
        main(["train", "vae-mlp", "--nproc", "2"])
    assert info.value.code == 2 and "under torchrun" in capsys.readouterr().err
