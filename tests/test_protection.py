"""Never overwrite what the user did not ask to overwrite, leave nothing behind: outputs
onto special files, trainings into folders that are not theirs, two trainings into one
folder, leftovers of killed trainings (see docs/reliability.md)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genmnist import run_folder
from genmnist.errors import CheckpointError, GenmnistError
from genmnist.io import atomic_write, is_temp_file_of, write_json
from genmnist.models import create_model

TINY = {"hidden_dims": [8], "latent_dim": 2, "batch_size": 16, "precision": "fp32"}


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``: its type and mode, and a file's bytes, a link's target."""
    result = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        if stat.S_ISREG(info.st_mode):
            content = path.read_bytes()
        elif stat.S_ISLNK(info.st_mode):
            content = os.readlink(path)
        else:
            content = None
        result[str(path.relative_to(folder))] = (stat.S_IFMT(info.st_mode), info.st_mode, content)
    return result


# --------------------------------------------------------------------------- outputs
def _special(kind: str, path: Path) -> object:
    """Make ``path`` a ``kind`` of thing that an output must never replace."""
    if kind == "folder":
        path.mkdir()
        (path / "inside.txt").write_text("keep")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        return sock
    elif kind == "dangling link":
        path.symlink_to(path.parent / "missing.json")
    elif kind == "link loop":
        (path.parent / "other").symlink_to(path)
        path.symlink_to(path.parent / "other")
    elif kind == "link to a folder":
        (path.parent / "target").mkdir()
        path.symlink_to(path.parent / "target")
    return None


SPECIAL = ["folder", "fifo", "socket", "dangling link", "link loop", "link to a folder"]


@pytest.mark.parametrize("kind", SPECIAL)
def test_atomic_write_never_replaces_what_is_not_a_regular_file(tmp_path, kind):
    target = tmp_path / "out.json"
    keep = _special(kind, target)
    before = snapshot(tmp_path)
    with pytest.raises(GenmnistError, match="out.json"):
        write_json(target, {"a": 1})
    assert snapshot(tmp_path) == before  # same node, same mode, no temporary file
    if keep is not None:
        keep.close()


@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize("option", ["-o", "--gif"])
def test_sample_refuses_special_outputs_in_one_line(
    tmp_path, kind, option, run_cli, assert_one_line_error
):
    target = tmp_path / ("out.png" if option == "-o" else "out.gif")
    keep = _special(kind, target)
    before = snapshot(tmp_path)
    args = ["sample", "ddpm", "-n", "1", "--steps", "2"]
    args += ["-o", tmp_path / "ok.png", "--gif", target] if option == "--gif" else ["-o", target]
    code, _, err = run_cli(*args)
    assert code != 0
    assert_one_line_error(err, "out.")
    after = snapshot(tmp_path)
    after.pop("ok.png", None)  # a FIFO nobody reads is found only when written to
    assert after == before
    if keep is not None:
        keep.close()


@pytest.mark.parametrize("kind", [k for k in SPECIAL if k != "fifo"])  # a FIFO: when written
def test_eval_refuses_special_outputs_before_evaluating(
    tmp_path, kind, run_cli, assert_one_line_error
):
    target = tmp_path / "out.json"
    keep = _special(kind, target)
    before = snapshot(tmp_path)
    code, _, err = run_cli("eval", "vae-mlp", "-n", "10", "-o", target)
    assert code != 0
    assert_one_line_error(err, "--output", "out.json")
    assert snapshot(tmp_path) == before
    if keep is not None:
        keep.close()


def test_a_link_to_a_file_has_its_target_replaced_and_stays_a_link(tmp_path):
    (tmp_path / "real.json").write_text("old")
    os.chmod(tmp_path / "real.json", 0o600)
    (tmp_path / "link.json").symlink_to("real.json")
    write_json(tmp_path / "link.json", [1])
    assert (tmp_path / "link.json").is_symlink()
    assert json.loads((tmp_path / "real.json").read_text()) == [1]
    assert stat.S_IMODE((tmp_path / "real.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]


def test_dev_null_is_written_through_never_replaced(tmp_path):
    before = os.stat("/dev/null")
    write_json("/dev/null", {"a": 1})
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert after.st_ino == before.st_ino


def test_sample_to_dev_null_works(tmp_path, run_cli):
    code, out, err = run_cli("sample", "vae-mlp", "-n", "2", "-f", "npy", "-o", "/dev/null")
    assert code == 0, err
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_fifo_with_a_reader_gets_the_bytes_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    deadline = time.monotonic() + 10
    while True:  # wait for the reader to open its end
        try:
            write_json(fifo, {"a": 1})
            break
        except GenmnistError:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    reader.join(10)
    assert json.loads(received[0]) == {"a": 1}
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mode=st.integers(0, 0o777).map(lambda m: m | 0o200), umask=st.sampled_from([0o022, 0o077]))
def test_a_replaced_file_keeps_its_mode_and_a_new_one_gets_the_umask(tmp_path, mode, umask):
    old_umask = os.umask(umask)
    try:
        existing, new = tmp_path / "existing.png", tmp_path / "new.png"
        existing.write_bytes(b"old")
        os.chmod(existing, mode)
        new.unlink(missing_ok=True)
        atomic_write(existing, lambda tmp: tmp.write_bytes(b"new"))
        atomic_write(new, lambda tmp: tmp.write_bytes(b"new"))
        assert stat.S_IMODE(existing.stat().st_mode) == mode
        assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask
        assert existing.read_bytes() == b"new"
        assert not list(tmp_path.glob(".*.tmp"))
    finally:
        os.umask(old_umask)


def test_temp_file_names_are_recognised_exactly():
    assert is_temp_file_of(".checkpoint.safetensors.ab_9cdef.tmp", "checkpoint.safetensors")
    for name in (
        ".checkpoint.safetensors.tmp",
        "checkpoint.safetensors.abcdefgh.tmp",
        ".checkpoint.safetensors.abcdefgh.tmp.bak",
        ".checkpoint.safetensors.abc.tmp",
        ".other.abcdefgh.tmp",
    ):
        assert not is_temp_file_of(name, "checkpoint.safetensors"), name


# --------------------------------------------------------------------------- run folders
def _train_args(root: Path, out: Path, *extra) -> list:
    config = root / "tiny.json"
    if not config.exists():
        config.write_text(json.dumps(TINY))
    args = ["train", "vae-mlp", "--data-dir", root / "data", "--out", out, "--max-steps", "2",
            "--quiet", "--device", "cpu", *extra]  # fmt: skip
    return args if "--resume" in extra else [*args, "--config", config]


def _fill(kind: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "exported model":
        create_model("vae-mlp", hidden_dims=[4], latent_dim=2).save_pretrained(folder)
    elif kind == "another model's config only":
        (folder / "config.json").write_text('{"format": "genmnist-model", "model": "gan-mlp"}')
    elif kind == "unrelated file":
        (folder / "notes.txt").write_text("my notes")
    elif kind == "hidden file":
        (folder / ".keep").write_text("")
    elif kind == "subfolder":
        (folder / "data").mkdir()
    elif kind == "metrics only":
        (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    for path in folder.rglob("*"):  # private files must stay private
        if path.is_file():
            os.chmod(path, 0o600)


FOLDERS = ["exported model", "another model's config only", "unrelated file", "hidden file",
           "subfolder", "metrics only"]  # fmt: skip


@pytest.mark.parametrize("kind", FOLDERS)
def test_a_new_run_refuses_a_folder_that_is_not_empty(
    tmp_path, make_mnist_folder, kind, run_cli, assert_one_line_error
):
    make_mnist_folder(tmp_path / "data", n_train=64)
    out = tmp_path / "out"
    _fill(kind, out)
    before = snapshot(out)
    code, _, err = run_cli(*_train_args(tmp_path, out))
    assert code == 1
    assert_one_line_error(err, str(out), "--overwrite")
    assert snapshot(out) == before


def test_overwrite_replaces_the_model_and_keeps_other_files(tmp_path, make_mnist_folder, run_cli):
    make_mnist_folder(tmp_path / "data", n_train=64)
    out = tmp_path / "out"
    _fill("exported model", out)
    (out / "notes.txt").write_text("mine")
    old_weights = (out / "model.safetensors").read_bytes()
    code, _, err = run_cli(*_train_args(tmp_path, out, "--overwrite"))
    assert code == 0, err
    assert (out / "model.safetensors").read_bytes() != old_weights
    assert run_folder.holds_run(out) and (out / "notes.txt").read_text() == "mine"
    assert not (out / run_folder.LOCK_FILE).exists()


def test_resume_and_overwrite_exclude_each_other(tmp_path, run_cli, assert_one_line_error):
    code, _, err = run_cli("train", "vae-mlp", "--out", tmp_path, "--resume", "--overwrite")
    assert code == 2
    assert_one_line_error(err, "--resume", "--overwrite")


def test_a_second_training_into_a_locked_folder_fails_at_once(
    tmp_path, make_mnist_folder, run_cli, assert_one_line_error
):
    make_mnist_folder(tmp_path / "data", n_train=64)
    out = tmp_path / "out"
    code, _, err = run_cli(*_train_args(tmp_path, out))
    assert code == 0, err
    before = snapshot(out)
    with run_folder.lock_run(out):  # a training writing it (flock is per open file)
        for extra in (["--resume"], ["--overwrite"]):
            started = time.monotonic()
            code, _, err = run_cli(*_train_args(tmp_path, out, *extra))
            assert code == 1
            assert_one_line_error(err, str(out), "in use by another training")
            assert time.monotonic() - started < 30
        after = snapshot(out)
        after.pop(run_folder.LOCK_FILE)
        assert after == before
    assert not (out / run_folder.LOCK_FILE).exists()


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path, run_python):
    out = tmp_path / "run"
    code = (
        "import os, signal, sys; from genmnist.run_folder import lock_run; "
        "lock_run(sys.argv[1]); os.kill(os.getpid(), signal.SIGKILL)"
    )
    result = run_python(str(out), code=code)
    assert result.returncode == -signal.SIGKILL
    assert (out / run_folder.LOCK_FILE).exists()  # left behind, but no longer held
    with run_folder.lock_run(out):
        run_folder.check_fresh(out, resume=False)  # the lock file alone is no content
    assert not (out / run_folder.LOCK_FILE).exists()


def test_the_lock_is_exclusive_and_named(tmp_path):
    with (
        run_folder.lock_run(tmp_path / "run"),
        pytest.raises(CheckpointError, match=f"process {os.getpid()}"),
    ):
        run_folder.lock_run(tmp_path / "run")
    assert not (tmp_path / "run").exists()  # the lock made it, the run wrote nothing


def test_a_training_removes_the_stale_temporary_files_of_its_folder(
    tmp_path, make_mnist_folder, run_cli
):
    make_mnist_folder(tmp_path / "data", n_train=64)
    out = tmp_path / "out"
    code, _, err = run_cli(*_train_args(tmp_path, out))
    assert code == 0, err
    stale = [f".{name}.k1ll_3d0.tmp" for name in run_folder.RUN_FILES]
    others = [".checkpoint.safetensors.tmp", ".notes.txt.abcdefgh.tmp", "x.abcdefgh.tmp"]
    for name in stale + others:
        (out / name).write_bytes(b"\0" * 1000)
    code, _, err = run_cli(*_train_args(tmp_path, out, "--max-steps", "4", "--resume"))
    assert code == 0, err
    for name in stale:
        assert not (out / name).exists(), name
    for name in others:
        assert (out / name).exists(), name


def test_stale_temporary_files_alone_do_not_make_a_folder_taken(
    tmp_path, make_mnist_folder, run_cli
):
    make_mnist_folder(tmp_path / "data", n_train=64)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".checkpoint.safetensors.abcdefgh.tmp").write_bytes(b"half")
    (out / run_folder.LOCK_FILE).write_text("123\n")
    code, _, err = run_cli(*_train_args(tmp_path, out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


# --------------------------------------------------------------------------- torchrun
def _processes_naming(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


def _state(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process checks")
def test_sigkill_of_the_nproc_parent_stops_every_worker(tmp_path):
    data = os.environ.get("GENMNIST_DATA", "").strip()
    if not data:
        pytest.skip("GENMNIST_DATA is not set")
    (tmp_path / "tiny.json").write_text(json.dumps({**TINY, "batch_size": 8}))
    out = tmp_path / "orphan-check-run"
    parent = subprocess.Popen(
        [sys.executable, "-m", "genmnist", "train", "vae-mlp", "--nproc", "2", "--out", str(out),
         "--data-dir", data, "--max-steps", "100000", "--checkpoint-every", "5", "--quiet",
         "--device", "cpu", "--config", str(tmp_path / "tiny.json")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (out / run_folder.CHECKPOINT_FILE).exists():
            assert parent.poll() is None, "training ended early"
            assert time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.1)
        assert len(_processes_naming(str(out))) >= 3  # torchrun and its 2 workers
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 60
        while _processes_naming(str(out)):
            assert time.monotonic() < deadline, f"left running: {_processes_naming(str(out))}"
            time.sleep(0.2)
        state = _state(out)
        time.sleep(2)
        assert _state(out) == state  # nothing writes the folder any more
        run_folder.lock_run(out).release()  # no process holds the folder any more
    finally:
        for pid in _processes_naming(str(out)):
            os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
