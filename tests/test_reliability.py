"""Reliability of the command line: SIGKILL during training, unwritable outputs, hostile
plugins, non-finite weights (see docs/reliability.md)."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from genmnist.errors import TrainingError
from genmnist.io import load_tensors, read_json
from genmnist.models import VAE
from genmnist.models.base import CONFIG_FILE, WEIGHTS_FILE
from genmnist.training import CHECKPOINT_FILE, METRICS_FILE, Trainer, TrainOptions


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


# --------------------------------------------------------------------------- SIGKILL
#: Runs ``genmnist`` (argv after ``-c CODE``) and SIGKILLs itself at the ``KILL_AT``-th
#: write of checkpoint.safetensors: ``mid-write`` leaves the temporary file half-written;
#: ``between-files`` dies after checkpoint.safetensors is in place, before
#: model.safetensors is written.
KILL_HOOK = r"""
import os, runpy, signal, sys
import genmnist.io as io

mode, at = os.environ["KILL_AT"].split(":")
at, count, atomic_write = int(at), 0, io.atomic_write

def killing_atomic_write(path, write):
    global count
    if os.path.basename(path) != "checkpoint.safetensors":
        return atomic_write(path, write)
    count += 1
    if count == at and mode == "mid-write":
        def half_then_die(tmp):
            write(tmp)
            data = tmp.read_bytes()
            tmp.write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return atomic_write(path, half_then_die)
    written = atomic_write(path, write)
    if count == at and mode == "between-files":
        os.kill(os.getpid(), signal.SIGKILL)
    return written

io.atomic_write = killing_atomic_write
sys.argv[0] = "genmnist"
runpy.run_module("genmnist", run_name="__main__", alter_sys=True)
"""

STEPS = 60  # 8 batches per epoch: several epochs, a checkpoint at every step


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _killed_at_write(args: list, kill_at: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-c", KILL_HOOK, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
        env=_env(KILL_AT=kill_at),
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    return result


def _checkpoint_step(path: Path) -> int | None:
    """The step in a checkpoint's header, read without loading the tensors."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None
    return json.loads(header["__metadata__"]["genmnist"])["step"]


def _killed_at_random(args: list, rng: random.Random) -> subprocess.Popen:
    """``python -m genmnist ARGS``, SIGKILLed at a random moment a few steps after it
    resumed: in a step, between files, or while a checkpoint is being written."""
    checkpoint = Path(args[args.index("--out") + 1]) / CHECKPOINT_FILE
    start = _checkpoint_step(checkpoint)
    target = start + rng.randint(1, 4)
    process = subprocess.Popen(
        [sys.executable, "-m", "genmnist", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    deadline = time.monotonic() + 120
    while (_checkpoint_step(checkpoint) or 0) < target:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "training did not progress"
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 0.05))  # somewhere in the next step or two
    process.kill()
    process.wait(timeout=60)
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return process


def assert_run_is_whole(run: Path, at_least: int) -> int:
    """Every file under its real name is complete; returns the checkpoint's step."""
    tensors, metadata = load_tensors(run / CHECKPOINT_FILE)  # raises if half-written
    step = json.loads(metadata["genmnist"])["step"]
    assert step >= at_least
    load_tensors(run / WEIGHTS_FILE)
    assert read_json(run / CONFIG_FILE)["model"] == "vae-mlp"
    return step


@pytest.mark.slow
def test_sigkill_at_any_point_then_resume_gives_the_uninterrupted_run(
    tmp_path, make_mnist_folder, run_cli, assert_one_line_error
):
    make_mnist_folder(tmp_path / "data", n_train=64)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"hidden_dims": [8], "latent_dim": 2, "batch_size": 8,
                                  "precision": "fp32"}))  # fmt: skip
    run = tmp_path / "run"
    common = ["train", "vae-mlp", "--data-dir", tmp_path / "data", "--max-steps", STEPS,
              "--checkpoint-every", 1, "--seed", 7, "--quiet", "--device", "cpu"]  # fmt: skip
    fresh = [*common, "--out", run, "--config", config]
    resume = [*common, "--out", run, "--resume"]

    # 1. killed while writing the very first checkpoint: nothing to resume yet, and a
    #    fresh run into the folder (which holds the killed run's config) needs --overwrite
    _killed_at_write(fresh, "mid-write:1")
    assert not (run / CHECKPOINT_FILE).exists()
    assert len(temp_files(run)) == 1
    code, _, err = run_cli(*resume)
    assert code == 1
    assert_one_line_error(err, "nothing to resume")

    code, _, err = run_cli(*fresh)
    assert code == 1
    assert_one_line_error(err, "already holds a model", "--overwrite")

    # 2. killed half-way through writing checkpoint 5: checkpoint 4 stays whole (the
    #    temporary file of the first kill was removed when this run started)
    _killed_at_write([*fresh, "--overwrite"], "mid-write:5")
    assert assert_run_is_whole(run, 4) == 4
    assert len(temp_files(run)) == 1

    # 3. killed after checkpoint.safetensors of step 7, before its model.safetensors
    _killed_at_write(resume, "between-files:3")
    assert assert_run_is_whole(run, 7) == 7

    # 4. plain `python -m genmnist train --resume`, SIGKILLed at random moments
    step, rng = 7, random.Random(9)
    for _ in range(2):
        _killed_at_random(resume, rng)
        step = assert_run_is_whole(run, step)
    assert step < STEPS

    # 5. the last --resume finishes, removing the leftover temporary files...
    code, _, err = run_cli(*resume)
    assert code == 0, err
    assert temp_files(run) == []
    assert f"at step {step}" in err and f"Done: {STEPS} steps" in err
    steps = [json.loads(line)["step"] for line in (run / METRICS_FILE).read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS

    # ...with exactly the weights of a run that was never interrupted
    code, _, err = run_cli(*common, "--out", tmp_path / "ref", "--config", config)
    assert code == 0, err
    for name in (WEIGHTS_FILE, CHECKPOINT_FILE):
        resumed, _ = load_tensors(run / name)
        reference, _ = load_tensors(tmp_path / "ref" / name)
        assert resumed.keys() == reference.keys()
        different = [k for k in resumed if not torch.equal(resumed[k], reference[k])]
        assert not different, f"{name}: {different[:5]}"


def test_weights_that_become_non_finite_are_never_checkpointed(tmp_path, tiny_model, tiny_dataset):
    """A finite loss can still give a step to inf (here an absurd learning rate): the
    trainer stops before writing such weights."""
    model = tiny_model("vae-mlp", batch_size=16, precision="fp32", optimizer="sgd", lr=1e38)
    options = TrainOptions(out=tmp_path / "run", max_steps=5, checkpoint_every=1, progress=False)
    with pytest.raises(TrainingError, match="became NaN or inf at step 1"):
        Trainer(model, options, dataset=tiny_dataset, log=lambda line: None).fit()
    assert not (tmp_path / "run" / CHECKPOINT_FILE).exists()
    assert not (tmp_path / "run" / WEIGHTS_FILE).exists()


# --------------------------------------------------------------------------- output paths
@pytest.fixture
def tiny_folder(tmp_path, tiny_model):
    return tiny_model("vae-mlp").save_pretrained(tmp_path / "model")


def test_sample_into_a_path_under_a_file_is_a_one_line_error(
    tmp_path, tiny_folder, run_cli, assert_one_line_error
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for output in (blocker / "x.png", blocker / "deeper" / "x.npy"):
        code, _, err = run_cli(
            "sample", "vae-mlp", "--checkpoint", tiny_folder, "-n", "4", "-o", output
        )
        assert code == 1
        assert_one_line_error(err, str(blocker), "is not a folder")
    assert blocker.read_text() == "not a folder"
    (tmp_path / "a-folder").mkdir()
    code, _, err = run_cli(
        "sample", "vae-mlp", "--checkpoint", tiny_folder, "-o", tmp_path / "a-folder"
    )
    assert code == 1
    assert_one_line_error(err, "is a folder")


def test_sample_writes_exactly_the_given_path_creating_parents(tmp_path, tiny_folder, run_cli):
    for name in ("grid.png", "arr.npy", "t.pt", "no-suffix"):
        output = tmp_path / "new" / "deeper" / name
        args = ["-f", "npy"] if name == "no-suffix" else []
        code, out, err = run_cli(
            "sample", "vae-mlp", "--checkpoint", tiny_folder, "-n", "4", "-o", output,
            "--seed", "1", *args,
        )  # fmt: skip
        assert code == 0, err
        assert output.is_file() and str(output) in out
    assert sorted(p.name for p in (tmp_path / "new" / "deeper").iterdir()) == [
        "arr.npy", "grid.png", "no-suffix", "t.pt"
    ]  # fmt: skip
    with Image.open(tmp_path / "new" / "deeper" / "grid.png") as picture:
        assert picture.format == "PNG"


def test_sample_write_failure_is_a_one_line_error_and_leaves_nothing(
    monkeypatch, tmp_path, tiny_folder, run_cli, assert_one_line_error
):
    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    out = tmp_path / "out"
    code, _, err = run_cli(
        "sample", "vae-mlp", "--checkpoint", tiny_folder, "-n", "4", "-o", out / "x.png"
    )
    assert code == 1
    assert_one_line_error(err, "cannot write the samples", "No space left on device")
    assert list(out.iterdir()) == []  # no partial file, no temporary file


def test_train_into_a_path_under_a_file_is_a_one_line_error(
    tmp_path, idx_root, run_cli, assert_one_line_error
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "run"):
        code, _, err = run_cli(
            "train", "vae-mlp", "--data-dir", idx_root, "--out", out, "--max-steps", "1"
        )
        assert code == 1
        assert_one_line_error(err, "--out", str(blocker), "is not a folder")
    assert blocker.read_text() == "not a folder"


def test_train_write_failure_is_a_one_line_error(
    monkeypatch, tmp_path, idx_root, run_cli, assert_one_line_error
):
    import safetensors.torch

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"hidden_dims": [8], "latent_dim": 2, "batch_size": 16}))
    run = tmp_path / "a" / "b" / "run"  # parents are created
    code, _, err = run_cli(
        "train", "vae-mlp", "--data-dir", idx_root, "--out", run, "--config", config,
        "--max-steps", "2", "--quiet", "--device", "cpu",
    )  # fmt: skip
    assert code == 1
    assert err.startswith("Training vae-mlp") and "Traceback" not in err  # log, then error
    assert_one_line_error(
        err.strip().splitlines()[-1], f"cannot write the run in {run}", "No space left on device"
    )
    assert err.count("error: ") == 1
    assert not (run / CHECKPOINT_FILE).exists() and temp_files(run) == []


def test_read_only_output_folder_is_a_one_line_error(
    monkeypatch, tmp_path, tiny_folder, run_cli, assert_one_line_error
):
    """Root writes into read-only folders, so the permission check is faked here."""
    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode: p != locked and real_access(p, mode))
    code, _, err = run_cli(
        "sample", "vae-mlp", "--checkpoint", tiny_folder, "-o", locked / "new" / "x.png"
    )
    assert code == 1
    assert_one_line_error(err, str(locked), "is read-only")
    assert list(locked.iterdir()) == []


# --------------------------------------------------------------------------- plugins
class ClashingVAE(VAE):
    """A plugin VAE registered under a built-in's name."""


class UnbuildableVAE(VAE):
    """A plugin model whose config cannot even be made."""

    config_class = None


def not_a_model():
    return 42


@pytest.fixture
def hostile_plugins(plugin_registry, fake_entry_point):
    plugin_registry(
        fake_entry_point("exploding", error=RuntimeError("boom at import"), dist="hostile"),
        fake_entry_point("exiting", error=SystemExit(3), dist="hostile"),
        fake_entry_point("cvae", ClashingVAE, dist="hostile"),
        fake_entry_point("a-function", not_a_model, dist="hostile"),
        fake_entry_point("a-number", 42, dist="hostile"),
        fake_entry_point("unbuildable", UnbuildableVAE, dist="hostile"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def test_list_reports_every_hostile_plugin(hostile_plugins, run_cli):
    code, out, err = run_cli("list")
    assert code == 0, err
    rows = {line.split()[1] for line in out.splitlines() if line.startswith("│")}
    assert {"vae-mlp", "gan-mlp", "ddpm"} <= rows
    assert not rows & {"cvae", "exploding", "exiting", "a-function", "a-number", "unbuildable"}
    warnings_ = {
        line.split("entry point ")[1].split(" =")[0]: line
        for line in out.replace("\n", " ").split("warning: ")[1:]
        if "entry point " in line
    }
    assert "RuntimeError: boom at import" in warnings_["exploding"]
    assert "SystemExit: 3" in warnings_["exiting"]
    assert "registered twice" in warnings_["cvae"] and "genmnist (built-in)" in warnings_["cvae"]
    for name in ("a-function", "a-number"):
        assert "is not a subclass of" in warnings_[name]
    assert "unusable" in warnings_["unbuildable"]


def test_builtins_still_work_beside_hostile_plugins(tmp_path, hostile_plugins, run_cli):
    output = tmp_path / "x.png"
    code, _, err = run_cli("sample", "vae-mlp", "-n", "4", "-o", output, "--seed", "0")
    assert code == 0, err
    assert output.is_file()
    code, out, err = run_cli("info", "gan-mlp")
    assert code == 0, err
    assert out.startswith("gan-mlp - ")


@pytest.mark.parametrize(
    ("args", "code", "fragments"),
    [
        (["info", "cvae"], 2, ["registered twice", "genmnist (built-in)", "plugin 'hostile 1.0'"]),
        (["sample", "cvae", "-n", "2"], 2, ["genmnist (built-in)", "plugin 'hostile 1.0'"]),
        (["sample", "exploding"], 2, ["failed to load", "boom at import"]),
        (["train", "exiting", "--max-steps", "1"], 2, ["failed to load", "SystemExit"]),
        (["info", "a-number"], 2, ["42 is not a subclass"]),
        (["info", "unbuildable"], 1, ["cannot build model 'unbuildable'"]),
    ],
)
def test_using_a_hostile_plugin_is_a_one_line_error(
    hostile_plugins, args, code, fragments, run_cli, assert_one_line_error
):
    exit_code, _, err = run_cli(*args)
    assert exit_code == code, err
    assert_one_line_error(err, *fragments)


@pytest.mark.slow
def test_installed_hostile_plugin_end_to_end(tmp_path):
    """A real installed distribution (a dist-info folder on the path): its warnings and
    the error are one line each, and built-ins work in the same process."""
    site = tmp_path / "site"
    package = site / "hostile_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from genmnist.models import VAE\n\n"
        "class ClashingVAE(VAE):\n    '''Takes a built-in's name.'''\n\n"
        "def not_a_model():\n    return 42\n"
    )
    (package / "exploding.py").write_text("raise RuntimeError('boom at import')\n")
    (package / "exiting.py").write_text("import sys\nsys.exit(3)\n")
    dist_info = site / "hostile_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: hostile-plugin\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[genmnist.models]\n"
        "exploding = hostile_plugin.exploding:Model\n"
        "exiting = hostile_plugin.exiting:Model\n"
        "cvae = hostile_plugin:ClashingVAE\n"
        "a-function = hostile_plugin:not_a_model\n"
    )
    output = tmp_path / "x.png"
    script = (
        "import sys\n"
        "from genmnist.cli import main\n"
        f"for argv in (['info', 'cvae'], ['list'], ['sample', 'vae-mlp', '-n', '4', '-o', "
        f"{str(output)!r}], ['info', 'gan-mlp']):\n"
        "    print('=== ' + ' '.join(argv[:2]), file=sys.stderr, flush=True)\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        print(f'exit {exc.code}', file=sys.stderr, flush=True)\n"
    )
    env = {k: v for k, v in _env(COLUMNS="200").items() if k != "GENMNIST_DISABLE_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env
    )
    assert result.returncode == 0, result.stderr
    sections = {
        part.split("\n", 1)[0]: part.split("\n", 1)[1] for part in result.stderr.split("=== ")[1:]
    }
    clash = sections["info cvae"].strip().splitlines()
    assert clash[-1] == "exit 2" and "Traceback" not in result.stderr
    assert all(line.startswith("warning: ") for line in clash[:-2]), clash
    assert len(clash) >= 2 + 3  # the three broken entry points warn, one line each
    assert clash[-2].startswith("error: model 'cvae' is registered twice: by genmnist (built-in)")
    assert "hostile-plugin 1.0" in clash[-2]
    assert sections["list"].strip() == "exit 0"
    assert "boom at import" in result.stdout and "SystemExit: 3" in result.stdout
    assert sections["sample vae-mlp"].strip() == "exit 0" and output.is_file()
    assert sections["info gan-mlp"].strip() == "exit 0"
