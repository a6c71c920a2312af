"""The shared trainer: learning, run folder, exact resume, failures, signals, EMA, schedules."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from PIL import Image

from genmnist import precision
from genmnist.errors import CheckpointError, ConfigError, DataError, RegistryError, TrainingError
from genmnist.io import load_tensors, save_tensors
from genmnist.models import load
from genmnist.run_folder import read_task_record
from genmnist.training import (
    CHECKPOINT_FILE,
    CURVE_FILE,
    LR_SCHEDULES,
    METRICS_FILE,
    OPTIMIZERS,
    TRAINING_TASKS,
    Trainer,
    TrainingInterrupted,
    TrainingTask,
    TrainOptions,
    constant_schedule,
    cosine_schedule,
    linear_schedule,
)

BATCH = 16  # 256 synthetic images -> 16 batches per epoch


@pytest.fixture
def train(tiny_model, tiny_dataset):
    """``train(out, model=None, log=None, **options)`` -> ``(trainer, result)``."""

    def run(out, model=None, log=None, task=None, **options):
        model = model if model is not None else tiny_model("vae-mlp", **FP32)
        options = {"progress": False, "log_every": 5, "device": "cpu", **options}
        trainer = Trainer(
            model,
            TrainOptions(out=out, **options),
            dataset=tiny_dataset,
            log=log or print,
            task=task,
        )
        return trainer, trainer.fit()

    return run


FP32 = {"precision": "fp32", "batch_size": BATCH}


def _checkpoint_header(folder):
    _, metadata = load_tensors(folder / CHECKPOINT_FILE)
    return json.loads(metadata["genmnist"])


def _metrics(folder):
    return [json.loads(line) for line in (folder / METRICS_FILE).read_text().splitlines()]


def _plain(value):
    """Optimizer state with tuples as lists, for comparing a resumed state to a fresh one."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def assert_same_state(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}.{i}")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(t1: Trainer, t2: Trainer):
    assert_same_state(t1.model.state_dict(), t2.model.state_dict(), "model")
    for phase in t1.optimizers:
        assert_same_state(
            _plain(t1.optimizers[phase].state_dict()),
            _plain(t2.optimizers[phase].state_dict()),
            f"optimizer {phase}",
        )
    if t1.ema is not None:
        assert_same_state(t1.ema.state_dict(), t2.ema.state_dict(), "ema")


# --------------------------------------------------------------------------- learning
def test_loss_goes_down_and_run_folder_is_complete(train, tmp_path):
    out = tmp_path / "run"
    lines = []
    trainer, result = train(out, max_steps=100, log=lines.append, checkpoint_every=1000)
    assert result.step == 100 and not result.interrupted and result.resumed_from is None
    assert result.epoch == 100 // BATCH
    assert result.images_per_second > 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", CHECKPOINT_FILE, METRICS_FILE, CURVE_FILE]
    )
    records = _metrics(out)
    assert [r["step"] for r in records][:3] == [5, 10, 15] and records[-1]["step"] == 100
    for record in records:
        assert {"loss", "reconstruction", "kl", "lr", "epoch", "images_per_second"} <= set(record)
        assert math.isfinite(record["loss"])
    first, last = records[0]["loss"], records[-1]["loss"]
    assert last < 0.8 * first, (first, last)
    assert Image.open(out / CURVE_FILE).format == "PNG"
    header = _checkpoint_header(out)
    assert header["step"] == 100 and header["seed"] == 42 and header["model"] == "vae-mlp"
    # the exported weights are the trained model and load for sampling
    model = load(out)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    assert model.sample(2, seed=0).shape == (2, 1, 28, 28)
    assert any(line.startswith("Done: 100 steps") for line in lines)


def test_training_is_deterministic_for_a_seed(train, tmp_path):
    t1, _ = train(tmp_path / "a", max_steps=6, seed=3)
    t2, _ = train(tmp_path / "b", max_steps=6, seed=3)
    t3, _ = train(tmp_path / "c", max_steps=6, seed=4)
    assert_same_run(t1, t2)
    assert not torch.equal(
        next(t1.model.parameters()), next(t3.model.parameters())
    )  # the seed matters


def test_epochs_option(train, tmp_path):
    _, result = train(tmp_path / "run", epochs=2)
    assert result.step == 2 * 256 // BATCH and result.epoch == 2


# --------------------------------------------------------------------------- resume
@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("vae-mlp", {"precision": "fp32"}),
        ("vae-mlp", {"precision": "bf16"}),
        ("vae-conv", {"precision": "fp32", "ema_decay": 0.9, "grad_clip": 1.0}),
    ],
    ids=["fp32", "bf16", "conv-ema-fp32"],
)
def test_resume_is_exact(train, tiny_model, tmp_path, name, extra):
    n = 20  # mid-epoch (16 batches per epoch), so resuming must restore the data position
    cfg = {"batch_size": BATCH, **extra}
    full, _ = train(tmp_path / "a", tiny_model(name, **cfg), max_steps=2 * n)
    train(tmp_path / "b", tiny_model(name, **cfg), max_steps=n)
    assert _checkpoint_header(tmp_path / "b")["step"] == n
    lines = []
    resumed, result = train(
        tmp_path / "b",
        tiny_model(name, seed=99, **cfg),  # other initial weights: all must come from disk
        max_steps=2 * n,
        resume=True,
        log=lines.append,
    )
    assert result.resumed_from == n and result.step == 2 * n
    assert any(line.startswith("Resumed") and f"step {n}" in line for line in lines)
    assert_same_run(full, resumed)
    for file in ("model.safetensors", CHECKPOINT_FILE):
        a, _ = load_tensors(tmp_path / "a" / file)
        b, _ = load_tensors(tmp_path / "b" / file)
        assert_same_state(a, b, file)
    # metrics continue where they stopped, without duplicates
    steps = [r["step"] for r in _metrics(tmp_path / "b")]
    assert steps == sorted(set(steps)) and steps[-1] == 2 * n


def test_resume_ignores_leftover_temporary_files(train, tmp_path):
    out = tmp_path / "run"
    full, _ = train(tmp_path / "full", max_steps=10)
    train(out, max_steps=5)
    (out / ".checkpoint.safetensors.xyz.tmp").write_bytes(b"half a checkpoint")
    (out / ".model.safetensors.abc.tmp").write_bytes(b"")
    resumed, result = train(out, max_steps=10, resume=True)
    assert result.resumed_from == 5
    assert_same_run(full, resumed)


def test_resume_without_checkpoint(train, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(tmp_path / "empty", max_steps=2, resume=True)


def test_fresh_run_into_existing_run_is_refused(train, tmp_path):
    out = tmp_path / "run"
    train(out, max_steps=2)
    before = (out / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(out, max_steps=2)
    assert (out / CHECKPOINT_FILE).read_bytes() == before


def test_resume_with_another_config_is_refused(train, tiny_model, tmp_path):
    out = tmp_path / "run"
    train(out, max_steps=2)
    with pytest.raises(CheckpointError, match="another config"):
        train(out, tiny_model("vae-mlp", latent_dim=5, **FP32), max_steps=4, resume=True)


def test_resume_with_another_dataset_is_refused(train, tmp_path):
    out = tmp_path / "run"
    train(out, max_steps=2)
    with pytest.raises(CheckpointError, match="trained on mnist"):
        train(out, max_steps=4, resume=True, dataset="fashion-mnist")


def test_resume_of_corrupt_checkpoint(train, tmp_path):
    out = tmp_path / "run"
    train(out, max_steps=2)
    data = (out / CHECKPOINT_FILE).read_bytes()
    (out / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=CHECKPOINT_FILE):
        train(out, max_steps=4, resume=True)


# --------------------------------------------------------------------------- failures
def _poison(model, at_step, effect=None, nan=True):
    """Patch ``model.training_loss`` so that at ``at_step`` it runs ``effect`` and (with
    ``nan``) returns a NaN loss."""
    original = model.training_loss

    def training_loss(images, labels, step, phase="model"):
        losses = original(images, labels, step, phase)
        if step == at_step:
            if effect is not None:
                effect()
            if nan:
                losses = {**losses, "loss": losses["loss"] * float("nan")}
        return losses

    model.training_loss = training_loss
    return model


def test_nan_loss_stops_without_touching_the_checkpoint(train, tiny_model, tmp_path):
    out = tmp_path / "run"
    train(out, max_steps=20)
    files = (CHECKPOINT_FILE, "model.safetensors", "config.json")
    last_good = {}

    def remember_last_good():  # the checkpoint of step 24 is on disk when step 25 runs
        assert _checkpoint_header(out)["step"] == 24
        last_good.update({f: (out / f).read_bytes() for f in files})

    model = _poison(tiny_model("vae-mlp", **FP32), at_step=25, effect=remember_last_good)
    with pytest.raises(TrainingError) as info:
        train(out, model, max_steps=40, resume=True, checkpoint_every=2)
    message = str(info.value)
    assert "step 25" in message and "nan" in message and str(out) in message
    assert set(last_good) == set(files)
    for name, data in last_good.items():
        assert (out / name).read_bytes() == data, name
    # and the run resumes from the last good checkpoint, dropping metrics logged after it
    assert [r["step"] for r in _metrics(out)][-1] == 25
    _, result = train(out, max_steps=26, resume=True)
    assert result.resumed_from == 24
    steps = [r["step"] for r in _metrics(out)]
    assert steps == sorted(set(steps)) and steps[-2:] == [25, 26]


def test_skip_nonfinite_continues(train, tiny_model, tmp_path):
    lines = []
    model = _poison(tiny_model("vae-mlp", **FP32), at_step=3)
    trainer, result = train(
        tmp_path / "run", model, max_steps=8, skip_nonfinite=True, log=lines.append
    )
    assert result.step == 8
    assert any("step 3" in line and "skipped" in line for line in lines)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(math.isfinite(r["loss"]) for r in _metrics(tmp_path / "run"))


@pytest.mark.parametrize("how", ["flag", "real-signal"])
def test_interrupt_checkpoints_and_resumes_exactly(train, tiny_model, tmp_path, how):
    k = 6
    full, _ = train(tmp_path / "full", max_steps=12)
    out = tmp_path / "run"
    model = tiny_model("vae-mlp", **FP32)
    trainers = []
    if how == "flag":

        def stop():
            trainers[0].request_stop(signal.SIGTERM)
    else:

        def stop():
            os.kill(os.getpid(), signal.SIGINT)

    _poison(model, at_step=k, effect=stop, nan=False)
    options = TrainOptions(out=out, max_steps=12, progress=False, log_every=5, device="cpu")
    trainer = Trainer(model, options, dataset=full.dataset, log=lambda line: None)
    trainers.append(trainer)
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match=f"interrupted at step {k + 1}"):
        trainer.fit()
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored
    assert _checkpoint_header(out)["step"] == k + 1
    resumed, result = train(out, max_steps=12, resume=True)
    assert result.resumed_from == k + 1
    assert_same_run(full, resumed)


# --------------------------------------------------------------------------- EMA
def test_ema_weights_are_exported(train, tiny_model, tmp_path):
    out = tmp_path / "run"
    model = tiny_model("vae-mlp", ema_decay=0.9, **FP32)
    trainer, _ = train(out, model, max_steps=10)
    exported, _ = load_tensors(out / "model.safetensors")
    raw = trainer.model.state_dict()
    ema = trainer.ema.module.state_dict()
    assert set(exported) == set(raw)
    assert all(torch.equal(exported[k], ema[k]) for k in raw)
    assert any(not torch.equal(exported[k], raw[k]) for k in raw)
    assert int(trainer.ema.n_averaged) == 10
    # the EMA lies between the initial and the final weights, closer to the final ones
    start = tiny_model("vae-mlp", ema_decay=0.9, **FP32).state_dict()
    key = "encoder.net.0.weight"
    assert (exported[key] - raw[key]).norm() < (start[key] - raw[key]).norm()
    # the run folder loads as the EMA model
    loaded = load(out)
    assert torch.equal(loaded.state_dict()[key], ema[key])


# --------------------------------------------------------------------------- schedules
def test_lr_schedule_values():
    assert LR_SCHEDULES.list() == ["constant", "cosine", "linear"]
    assert constant_schedule(0, 100) == 1.0 and constant_schedule(99, 100) == 1.0
    assert constant_schedule(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert constant_schedule(4, 100, warmup_steps=10) == pytest.approx(0.5)
    assert constant_schedule(50, 100, warmup_steps=10) == 1.0
    assert cosine_schedule(0, 100) == pytest.approx(1.0)
    assert cosine_schedule(50, 100) == pytest.approx(0.5)
    assert cosine_schedule(25, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine_schedule(100, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_schedule(10, 110, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_schedule(60, 110, warmup_steps=10) == pytest.approx(0.5)
    assert linear_schedule(0, 100) == 1.0
    assert linear_schedule(25, 100) == pytest.approx(0.75)
    assert linear_schedule(100, 100) == 0.0
    assert linear_schedule(4, 100, warmup_steps=10) == pytest.approx(0.5)
    assert linear_schedule(55, 100, warmup_steps=10) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("constant", lambda s: 1.0),
        ("linear", lambda s: 1 - s / 10),
        ("cosine", lambda s: 0.5 * (1 + math.cos(math.pi * s / 10))),
    ],
)
def test_trainer_applies_the_lr_schedule(train, tiny_model, tmp_path, schedule, expected):
    model = tiny_model("vae-mlp", lr=2e-3, lr_schedule=schedule, **FP32)
    train(tmp_path / "run", model, max_steps=10, log_every=1)
    lrs = {r["step"]: r["lr"] for r in _metrics(tmp_path / "run")}
    assert sorted(lrs) == list(range(1, 11))
    for step, lr in lrs.items():
        assert lr == pytest.approx(2e-3 * expected(step), abs=1e-12), step


def test_optimizers_registry_and_choice(train, tiny_model, tmp_path):
    assert OPTIMIZERS.list() == ["adam", "adamw", "sgd"]
    model = tiny_model("vae-mlp", optimizer="sgd", lr=0.01, weight_decay=1e-4, **FP32)
    trainer, _ = train(tmp_path / "run", model, max_steps=2)
    optimizer = trainer.optimizers["model"]
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4


# --------------------------------------------------------------------------- bad options
@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"epochs": 1.5}, ConfigError, "epochs must be an integer, got 1.5"),
        ({"max_steps": "3"}, ConfigError, "max_steps must be an integer, got '3'"),
        ({"checkpoint_every": 0}, ConfigError, "checkpoint_every must be a positive integer"),
        ({"log_every": 0}, ConfigError, "log_every must be a positive integer"),
        ({"seed": "a"}, ConfigError, "seed must be an integer, got 'a'"),
        ({"dataset": "cifar"}, DataError, "unknown dataset 'cifar'"),
        ({"out": 5}, ConfigError, "out must be a folder path, got int"),
        ({"resume": "yes"}, ConfigError, "resume must be True or False"),
        ({"loggers": "jsonl"}, ConfigError, "loggers must be a sequence of names"),
    ],
)
def test_train_options_are_checked_when_made(tmp_path, options, error, message):
    """From Python no CLI parser checks them: a bad option fails at once, by name (a zero
    interval was a ZeroDivisionError mid-run; an unknown dataset was written in the run
    folder), and nothing is written."""
    with pytest.raises(error, match=message):
        TrainOptions(**{"out": tmp_path / "run", **options})
    assert not (tmp_path / "run").exists()
    made = TrainOptions(out=str(tmp_path / "run"), max_steps=2, loggers=["jsonl"])
    assert made.out == tmp_path / "run" and made.loggers == ("jsonl",)


def test_bad_training_configurations(train, tiny_model, tmp_path, tiny_dataset):
    with pytest.raises(ConfigError, match="precision"):
        Trainer(tiny_model("vae-mlp", precision="fp8"), TrainOptions(out=tmp_path / "x"))
    with pytest.raises(ConfigError, match="larger than the dataset"):
        train(tmp_path / "big", tiny_model("vae-mlp", batch_size=1000), max_steps=1)
    with pytest.raises(ConfigError, match="nothing to train"):
        train(tmp_path / "zero", epochs=0)
    # a config's own epochs is checked even where --max-steps would stop the run first
    with pytest.raises(ConfigError, match="epochs must be a positive integer, got -1"):
        train(tmp_path / "negative", tiny_model("vae-mlp", epochs=-1), max_steps=1)
    assert not (tmp_path / "negative").exists()


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_precision_auto_uses_bf16_on_cpus_with_bf16_kernels(
    tiny_model, tmp_path, monkeypatch, fast_bf16
):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast_bf16)
    options = TrainOptions(out=tmp_path, device="cpu")
    assert Trainer(tiny_model("vae-mlp"), options).use_bf16 is fast_bf16
    assert not Trainer(tiny_model("vae-mlp", precision="fp32"), options).use_bf16
    assert Trainer(tiny_model("vae-mlp", precision="bf16"), options).use_bf16  # asked for


def test_ema_with_batchnorm_model(train, tiny_model, tmp_path):
    # integer buffers (BatchNorm's num_batches_tracked) cannot be lerped: they are copied
    model = tiny_model("cvae", ema_decay=0.99, **FP32)
    trainer, result = train(tmp_path / "run", model, max_steps=4)
    assert result.step == 4
    ema = trainer.ema.module.state_dict()
    counters = [k for k in ema if k.endswith("num_batches_tracked")]
    assert counters and all(int(ema[k]) == 4 for k in counters)
    assert load(tmp_path / "run").sample(2, labels=1, seed=0).shape == (2, 1, 28, 28)


def test_resume_keeps_the_runs_seed(train, tmp_path):
    full, _ = train(tmp_path / "full", max_steps=10, seed=42)
    out = tmp_path / "run"
    train(out, max_steps=5, seed=42)
    lines = []
    resumed, _ = train(out, max_steps=10, seed=7, resume=True, log=lines.append)
    assert any("the run used seed 42; keeping it" in line for line in lines)
    assert_same_run(full, resumed)


# --------------------------------------------------------------------------- training tasks
class ScaledLoss(TrainingTask):
    """The data loss times ``factor``, which it logs as ``scale``."""

    name = "test-scaled-loss"

    def __init__(self, factor: float = 2.0) -> None:
        self.factor = factor
        self.prepared: list[bool] = []

    def prepare(self, model, data, resume):
        self.prepared.append(resume)
        super().prepare(model, data, resume)

    def loss(self, model, images, labels, step, phase):
        losses = super().loss(model, images, labels, step, phase)
        scale = torch.tensor(self.factor)
        return {**losses, "loss": losses["loss"] * scale, "scale": scale}

    def record(self):
        return {"name": self.name, "factor": self.factor}


if ScaledLoss.name not in TRAINING_TASKS.list():
    TRAINING_TASKS.register(ScaledLoss.name, ScaledLoss)


def test_the_task_loss_is_trained_and_recorded(train, tmp_path):
    task = ScaledLoss(3.0)
    train(tmp_path / "data", max_steps=5)
    trainer, _ = train(tmp_path / "scaled", max_steps=5, task=task)
    assert task.prepared == [False]
    data, scaled = _metrics(tmp_path / "data")[0], _metrics(tmp_path / "scaled")[0]
    assert "scale" not in data and scaled["scale"] == 3.0
    assert scaled["loss"] == pytest.approx(3.0 * data["loss"], rel=0.05)
    assert _checkpoint_header(tmp_path / "scaled")["task"] == task.record()
    assert _checkpoint_header(tmp_path / "data")["task"] == {"name": "data"}
    rebuilt = TrainingTask.from_record(read_task_record(tmp_path / "scaled"))
    assert type(rebuilt) is ScaledLoss and rebuilt.factor == 3.0
    # the exported model is the model alone: it loads and samples without the task
    assert load(tmp_path / "scaled").config == trainer.model.config


def test_resume_with_the_runs_task_is_exact(train, tiny_model, tmp_path):
    full, _ = train(tmp_path / "full", max_steps=10, task=ScaledLoss(3.0))
    train(tmp_path / "run", max_steps=5, task=ScaledLoss(3.0))
    task = ScaledLoss(3.0)
    resumed, result = train(
        tmp_path / "run", tiny_model("vae-mlp", seed=5, **FP32), max_steps=10, resume=True,
        task=task,
    )  # fmt: skip
    assert result.resumed_from == 5 and task.prepared == [True]
    assert_same_run(full, resumed)


@pytest.mark.parametrize(
    ("first", "then"),
    [(None, ScaledLoss(3.0)), (ScaledLoss(3.0), None), (ScaledLoss(3.0), ScaledLoss(2.0))],
    ids=["data-then-scaled", "scaled-then-data", "other-factor"],
)
def test_resume_with_another_task_is_refused(train, tmp_path, first, then):
    out = tmp_path / "run"
    train(out, max_steps=2, task=first)
    before = (out / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(CheckpointError, match="trained with the task") as error:
        train(out, max_steps=4, resume=True, task=then)
    assert "\n" not in str(error.value)
    assert (out / CHECKPOINT_FILE).read_bytes() == before


def test_a_checkpoint_without_a_task_resumes_as_the_data_task(train, tiny_model, tmp_path):
    """Checkpoints written before tasks were recorded have no ``task`` in the header."""
    full, _ = train(tmp_path / "full", max_steps=10)
    out = tmp_path / "run"
    train(out, max_steps=5)
    tensors, metadata = load_tensors(out / CHECKPOINT_FILE)
    header = json.loads(metadata["genmnist"])
    del header["task"]
    save_tensors(out / CHECKPOINT_FILE, tensors, {"genmnist": json.dumps(header)})
    assert read_task_record(out) is None
    assert type(TrainingTask.from_record(None)) is TrainingTask
    resumed, result = train(out, tiny_model("vae-mlp", seed=5, **FP32), max_steps=10, resume=True)
    assert result.resumed_from == 5
    assert_same_run(full, resumed)
    with pytest.raises(CheckpointError, match="trained with the task"):
        train(tmp_path / "full", max_steps=12, resume=True, task=ScaledLoss())


def test_task_records_that_do_not_fit():
    with pytest.raises(RegistryError):
        TrainingTask.from_record({"name": "no-such-task"})
    with pytest.raises(CheckpointError, match="does not fit"):
        TrainingTask.from_record({"name": ScaledLoss.name, "unknown": 1})
    with pytest.raises(CheckpointError, match="not a training task record"):
        TrainingTask.from_record({"factor": 2.0})
