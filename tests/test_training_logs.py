"""Where training metrics go: metrics.jsonl, TensorBoard event files, the loss curves."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import pytest
from PIL import Image

from genmnist.errors import RegistryError
from genmnist.run_folder import CURVE_FILE, METRICS_FILE, tensorboard_dir, write_curves
from genmnist.training import Trainer, TrainOptions
from genmnist.training.loggers import METRICS_LOGGERS, LoggerUnavailable, MetricsLogger

FP32 = {"precision": "fp32", "batch_size": 16}


def require(module: str, extra: str) -> None:
    """Skip when an optional package is missing, except on CI (which installs it)."""
    missing = importlib.util.find_spec(module) is None
    if missing and not os.environ.get("CI"):
        pytest.skip(f"needs {module} (pip install 'genmnist[{extra}]')")
    assert not missing, f"CI must install genmnist[{extra}]"


@pytest.fixture
def train(tiny_model, tiny_dataset):
    def run(out, **options):
        model = tiny_model("vae-mlp", **FP32)
        options = {"progress": False, "log_every": 5, "device": "cpu", **options}
        trainer = Trainer(model, TrainOptions(out=out, **options), tiny_dataset, log=lambda m: None)
        return trainer.fit()

    return run


def _records(folder):
    return [json.loads(line) for line in (folder / METRICS_FILE).read_text().splitlines()]


def _scalars(folder):
    """``{tag: [(step, value), ...]}`` from the run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir(folder)), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


# ------------------------------------------------------------------------------ TensorBoard
def test_tensorboard_gets_the_same_scalars_as_the_metrics_log(train, tmp_path):
    require("tensorboard", "tensorboard")
    out = tmp_path / "run"
    train(out, max_steps=20, loggers=("tensorboard",))
    records = _records(out)
    scalars = _scalars(out)
    keys = {k for r in records for k in r if k != "step"}
    assert {"loss", "kl", "lr", "epoch", "images_per_second"} <= keys
    assert set(scalars) == keys
    for key in keys:
        expected = [(r["step"], r[key]) for r in records]
        got = scalars[key]
        assert (
            [s for s, _ in got] == [s for s, _ in expected] == [5, 10, 15, 16, 20]
        )  # 16: end of epoch
        for (_, value), (_, want) in zip(got, expected, strict=True):
            assert value == pytest.approx(want, rel=1e-6)  # stored as float32


def test_tensorboard_after_resume_has_each_step_once(train, tmp_path):
    require("tensorboard", "tensorboard")
    out = tmp_path / "run"
    train(out, max_steps=10, loggers=("tensorboard",))
    from torch.utils.tensorboard import SummaryWriter

    stale = SummaryWriter(str(tensorboard_dir(out)))  # as if logged after the checkpoint
    stale.add_scalar("loss", 99.0, 12)
    stale.close()
    train(out, max_steps=20, loggers=("tensorboard",), resume=True)
    assert 99.0 not in [v for _, v in _scalars(out)["loss"]]
    assert [s for s, _ in _scalars(out)["loss"]] == [5, 10, 15, 16, 20]  # 16: end of epoch
    assert [r["step"] for r in _records(out)] == [5, 10, 15, 16, 20]  # 16: end of epoch


def test_a_new_run_drops_the_events_of_the_run_it_replaces(train, tmp_path):
    require("tensorboard", "tensorboard")
    out = tmp_path / "run"
    train(out, max_steps=10, loggers=("tensorboard",))
    train(out, max_steps=5, loggers=("tensorboard",), overwrite=True)
    assert [s for s, _ in _scalars(out)["loss"]] == [5]
    assert len(list(tensorboard_dir(out).iterdir())) == 1


def test_without_tensorboard_no_event_folder(train, tmp_path):
    out = tmp_path / "run"
    train(out, max_steps=5)
    assert not tensorboard_dir(out).exists()
    assert [r["step"] for r in _records(out)] == [5]


def test_missing_tensorboard_fails_before_training(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # importing it raises ImportError
    options = TrainOptions(out=tmp_path / "run", loggers=("tensorboard",), progress=False)
    with pytest.raises(LoggerUnavailable, match=r"genmnist\[tensorboard\]"):
        Trainer(tiny_model("vae-mlp"), options)
    assert not (tmp_path / "run").exists()


def test_cli_names_the_extra_when_tensorboard_is_missing(
    run_cli, assert_one_line_error, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    out = tmp_path / "run"
    code, _, err = run_cli("train", "vae-mlp", "--max-steps", "1", "--out", out, "--tensorboard")
    assert code == 1
    assert_one_line_error(err, "tensorboard", "pip install 'genmnist[tensorboard]'")
    assert not out.exists()


def test_unknown_logger_is_refused(tiny_model, tmp_path):
    with pytest.raises(RegistryError, match="metrics logger"):
        Trainer(tiny_model("vae-mlp"), TrainOptions(out=tmp_path, loggers=("wandb",)))


def test_a_registered_logger_sees_every_record(train, tmp_path):
    seen = []

    class Collect(MetricsLogger):
        name = "collect"

        def write(self, record):
            seen.append(dict(record))

        def close(self):
            seen.append("closed")

    with METRICS_LOGGERS.isolated():
        METRICS_LOGGERS.register("collect", Collect)
        train(tmp_path / "run", max_steps=10, loggers=("collect",))
    assert seen[-1] == "closed"
    assert seen[:-1] == _records(tmp_path / "run")


# ------------------------------------------------------------------------------ curves
def test_training_curves_have_labelled_axes_one_panel_per_loss():
    require("matplotlib", "plot")
    from genmnist.viz import training_curves_figure

    series = {
        "discriminator_loss": [(i, 1.4 - 0.01 * i) for i in range(1, 30)],
        "generator_loss": [(i, 0.7 + 0.02 * i) for i in range(1, 30)],
    }
    fig = training_curves_figure(series, "dcgan training loss")
    assert [ax.get_xlabel() for ax in fig.axes] == ["step", "step"]
    assert [ax.get_ylabel() for ax in fig.axes] == list(series)
    assert fig.axes[0].get_title() == "dcgan training loss"
    xs, ys = fig.axes[1].lines[0].get_data()
    assert list(xs) == list(range(1, 30)) and ys[0] == pytest.approx(0.72)


def test_run_folder_curves_use_matplotlib_when_installed(tmp_path):
    require("matplotlib", "plot")
    lines = [{"step": s, "loss": 100 / s, "kl": 3.0, "lr": 1e-3} for s in (5, 10, 15)]
    lines.append({"step": 20, "loss": math.inf})  # not drawn
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in lines))
    path = write_curves(tmp_path, "vae-mlp training loss")
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        assert picture.size == (704, 308)  # 6.4 x 2.8 inches at 110 dpi: one panel ("loss")


def test_run_folder_curves_fall_back_to_pillow(tmp_path, monkeypatch):
    import genmnist.viz

    monkeypatch.setattr(genmnist.viz, "has_matplotlib", lambda: False)
    records = [{"step": s, "loss": 10.0 / s} for s in (5, 10)]
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    with Image.open(write_curves(tmp_path, "t")) as picture:
        assert picture.size == (640, 400)  # the Pillow chart's size
    assert (tmp_path / CURVE_FILE).is_file()


def test_cli_train_tensorboard(run_cli, idx_root, tmp_path):
    require("tensorboard", "tensorboard")
    out = tmp_path / "run"
    code, _, err = run_cli(
        "train", "vae-mlp", "--max-steps", "2", "--data-dir", idx_root, "--out", out,
        "--config", _tiny_config(tmp_path), "--tensorboard", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert [s for s, _ in _scalars(out)["loss"]] == [r["step"] for r in _records(out)] == [2]


def _tiny_config(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"hidden_dims": [16], "latent_dim": 4, "batch_size": 16}))
    return path
