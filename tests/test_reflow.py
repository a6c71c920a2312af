"""Reflow as a training task: a flow student learns the straight paths between noise and
its teacher's samples, so that few Euler steps follow them."""

from __future__ import annotations

import json

import pytest
import torch

from genmnist.distillation import Reflow
from genmnist.distillation.reflow import draw_pairs
from genmnist.errors import CheckpointError, ConfigError
from genmnist.flow import FLOW_SAMPLERS, flow_times
from genmnist.models import create_model, load
from genmnist.training import TRAINING_TASKS, Trainer, TrainingTask, TrainOptions

TINY = dict(channels=(8, 16, 16), attention_levels=(), sampler="midpoint", sampling_steps=3)
STUDENT = dict(TINY, label_dropout=0.0, precision="fp32", sampler="euler", sampling_steps=1)


def _noisy(model, seed=0):
    torch.manual_seed(seed)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    return model


def _teacher_folder(tmp_path, dataset, **overrides):
    teacher = create_model("flow", **TINY, **overrides)
    teacher.prepare_training(dataset, resume=False)
    return _noisy(teacher).save_pretrained(tmp_path / "teacher")


def test_the_task_is_registered_and_rebuilds_from_its_record():
    task = Reflow("runs/flow", pairs=1000, seed=3)
    record = task.record()
    assert record == {"name": "reflow", "teacher": "runs/flow", "pairs": 1000, "seed": 3}
    rebuilt = TrainingTask.from_record(json.loads(json.dumps(record)))
    assert isinstance(rebuilt, Reflow) and rebuilt.record() == record
    assert "reflow" in TRAINING_TASKS
    for bad in (dict(pairs=0), dict(pairs=2.5), dict(pairs=True), dict(seed=-1)):
        with pytest.raises(ConfigError, match="pairs|seed"):
            Reflow("t", **bad)
    with pytest.raises(ConfigError, match="teacher"):
        Reflow(" ")


def test_pairs_are_the_teachers_samples_from_their_noise(tmp_path, tiny_dataset):
    teacher = load(_teacher_folder(tmp_path, tiny_dataset, clusters=4))
    noise, images, labels = draw_pairs(teacher, 12, seed=1)
    assert noise.shape == images.shape == (12, 1, 28, 28) and labels.shape == (12,)
    assert set(labels.tolist()) <= set(range(4))
    # the teacher's own sampler, run by hand on three of the pairs
    velocity = teacher.velocity(labels[:3])
    expected = FLOW_SAMPLERS.get("midpoint")(velocity, noise[:3], flow_times(3))
    torch.testing.assert_close(images[:3], expected.clamp(-1, 1), atol=0.05, rtol=0)
    again = draw_pairs(teacher, 12, seed=1)
    assert torch.equal(again[0], noise) and torch.equal(again[2], labels)
    assert not torch.equal(draw_pairs(teacher, 12, seed=2)[0], noise)

    classes = create_model("flow-cfg", **TINY)
    assert draw_pairs(classes, 12, seed=0)[2].tolist() == [i % 10 for i in range(12)]
    assert draw_pairs(create_model("flow", **TINY), 3, seed=0)[2] is None


def test_reflow_straightens_the_students_paths(tmp_path, tiny_dataset):
    folder = _teacher_folder(tmp_path, tiny_dataset)
    student = create_model(
        "flow", **STUDENT, time_distribution="uniform", lr=2e-3, warmup_steps=0,
        ema_decay=None, batch_size=32,
    )  # fmt: skip
    task = Reflow(str(folder), pairs=64, seed=0)
    task.prepare(student, tiny_dataset, resume=False)
    teacher = load(folder)
    for key, value in teacher.unet.state_dict().items():
        assert torch.equal(student.unet.state_dict()[key], value)

    def one_step_error(model):  # one Euler step from the pairs' noise vs the teacher's images
        with torch.no_grad():
            velocity = model.velocity(None)
            x = FLOW_SAMPLERS.get("euler")(velocity, task.noise, flow_times(1))
        return float(torch.mean((x - task.images) ** 2))

    before = one_step_error(student)
    options = TrainOptions(out=tmp_path / "run", max_steps=30, progress=False, device="cpu")
    Trainer(student, options, dataset=tiny_dataset, log=lambda line: None, task=task).fit()
    trained = load(tmp_path / "run")
    assert one_step_error(trained) < 0.5 * before  # measured: 0.36
    assert type(trained) is type(student) and trained.config == student.config


def test_the_task_checks_its_student_and_teacher(tmp_path, tiny_dataset):
    folder = str(_teacher_folder(tmp_path, tiny_dataset, clusters=4))
    with pytest.raises(ConfigError, match="label_dropout"):
        Reflow(folder).prepare(create_model("flow", **TINY, clusters=4), tiny_dataset, False)
    with pytest.raises(ConfigError, match="clusters"):
        Reflow(folder).prepare(create_model("flow", **STUDENT), tiny_dataset, False)
    with pytest.raises(ConfigError, match="channels"):
        wide = create_model("flow", **{**STUDENT, "channels": (8, 16, 32)}, clusters=4)
        Reflow(folder).prepare(wide, tiny_dataset, False)
    with pytest.raises(ConfigError, match="not a DDPM|flow model"):
        Reflow(folder).prepare(create_model("ddpm", channels=(8, 16, 16)), tiny_dataset, False)
    ddpm = create_model("ddpm", channels=(8, 16, 16)).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(ConfigError, match="not a flow model"):
        Reflow(str(ddpm)).prepare(create_model("flow", **STUDENT), tiny_dataset, False)
    with pytest.raises(CheckpointError, match="reflow teacher"):
        Reflow(str(tmp_path / "nowhere")).prepare(
            create_model("flow", **STUDENT), tiny_dataset, False
        )
    with pytest.raises(ConfigError, match="prepare"):
        Reflow(folder).loss(create_model("flow", **STUDENT), torch.rand(2, 1, 28, 28), None, 0, "m")


def test_cli_trains_a_reflow_student_that_samples_in_one_step(run_cli, tmp_path, idx_root):
    teacher = create_model("flow", **TINY).save_pretrained(tmp_path / "teacher")
    recipe = tmp_path / "reflow.json"
    task = {"name": "reflow", "teacher": str(teacher), "pairs": 16}
    recipe.write_text(json.dumps({**STUDENT, "batch_size": 8, "task": task}))
    out = tmp_path / "student"
    base = ["train", "flow", "--data-dir", idx_root, "--out", out, "--quiet", "--device", "cpu"]
    code, _, err = run_cli(*base, "--config", recipe, "--max-steps", "2")
    assert code == 0, err
    code, _, err = run_cli(*base, "--resume", "--max-steps", "3")
    assert code == 0 and "Resumed" in err, err
    grid = tmp_path / "grid.png"
    code, _, err = run_cli("sample", "flow", "--checkpoint", out, "-n", "4", "--output", grid)
    assert code == 0 and grid.exists(), err
