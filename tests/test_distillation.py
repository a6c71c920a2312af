"""Guidance distillation as a training task: a student DDPM learns its teacher's guided
denoiser and becomes an ordinary model that takes no guidance."""

from __future__ import annotations

import json

import pytest
import torch

from genmnist.data import InMemoryDataset
from genmnist.distillation import GuidanceDistillation
from genmnist.errors import CheckpointError, ConfigError
from genmnist.models import Autoguided, create_model, load
from genmnist.training import TRAINING_TASKS, Trainer, TrainingTask, TrainOptions

TINY = dict(channels=(8, 16, 16), timesteps=50, sampling_steps=4)
STUDENT = dict(TINY, label_dropout=0.0, precision="fp32")

#: A stand-in training split for tasks that only read its name.
_MNIST = InMemoryDataset(
    torch.zeros(4, 28, 28, dtype=torch.uint8), torch.zeros(4), "mnist", "train"
)


def _noisy(model, seed=0):
    torch.manual_seed(seed)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    return model


def _teacher_folder(tmp_path, scale=3.0):
    """A tiny autoguided DDPM saved as a folder, the teacher of a distillation run."""
    model = _noisy(create_model("ddpm", **TINY))
    guide = _noisy(create_model("ddpm", **{**TINY, "channels": (4, 8, 8)}), seed=1)
    composite = Autoguided(model=model, guide=guide, guidance_scale=scale)
    return composite.save_pretrained(tmp_path / "teacher")


def _images(n=16):
    return torch.rand(n, 1, 28, 28), torch.zeros(n, dtype=torch.long)


def test_the_task_is_registered_and_rebuilds_from_its_record():
    task = GuidanceDistillation("runs/teacher", guidance=2.0)
    record = task.record()
    assert record == {"name": "guidance-distillation", "teacher": "runs/teacher", "guidance": 2.0}
    rebuilt = TrainingTask.from_record(json.loads(json.dumps(record)))
    assert isinstance(rebuilt, GuidanceDistillation) and rebuilt.record() == record
    assert "guidance-distillation" in TRAINING_TASKS
    with pytest.raises(ConfigError, match="finite"):
        GuidanceDistillation("t", guidance=float("nan"))
    with pytest.raises(ConfigError, match="teacher"):
        GuidanceDistillation("")


def test_the_student_starts_from_the_teacher_and_learns_its_guided_estimate(tmp_path):
    teacher_dir = _teacher_folder(tmp_path)
    teacher = load(teacher_dir)
    student = create_model("ddpm", **STUDENT)
    task = GuidanceDistillation(str(teacher_dir))
    task.prepare(student, _MNIST, resume=False)
    for key, value in teacher.model.unet.state_dict().items():
        assert torch.equal(student.unet.state_dict()[key], value)
    assert not any("teacher" in key for key in student.state_dict())  # held by the task

    def loss(guidance):
        task.guidance = guidance
        torch.manual_seed(0)
        return float(task.loss(student, *_images(), step=0, phase="model")["loss"].detach())

    # at scale 1 the teacher is its model alone, which the student starts as (up to the
    # clipping of the target); at the teacher's scale, guidance is what there is to learn
    assert loss(3.0) > 5 * loss(1.0)
    assert loss(None) == loss(3.0)  # None: the teacher's default scale


def test_distillation_training_moves_the_student_to_the_guided_teacher(tmp_path, tiny_dataset):
    student = create_model(
        "ddpm", **STUDENT, lr=1e-3, warmup_steps=0, ema_decay=None, batch_size=32
    )
    task = GuidanceDistillation(str(_teacher_folder(tmp_path)))
    images, labels = tiny_dataset.batch(torch.arange(64))

    def distance_to_teacher():  # the distillation loss at fixed noise levels and noise
        torch.manual_seed(5)
        with torch.no_grad():
            return float(task.loss(student, images, labels, 0, "model")["loss"])

    task.prepare(student, tiny_dataset, resume=False)
    before = distance_to_teacher()
    options = TrainOptions(out=tmp_path / "run", max_steps=40, progress=False, device="cpu")
    Trainer(student, options, dataset=tiny_dataset, log=lambda line: None, task=task).fit()
    assert distance_to_teacher() < 0.7 * before
    # the student is an ordinary DDPM: one U-Net call per step, and no guidance to take
    trained = load(tmp_path / "run")
    assert type(trained) is type(student) and trained.config == student.config
    calls = []
    trained.unet.register_forward_hook(lambda *args: calls.append(1))
    trained.sample(2, seed=0, steps=4)
    assert len(calls) == 4
    with pytest.raises(ConfigError, match="takes no guidance"):
        trained.sample(2, guidance=2.0)


def test_the_task_checks_its_student_and_teacher(tmp_path):
    teacher_dir = str(_teacher_folder(tmp_path))
    with pytest.raises(ConfigError, match="label_dropout"):
        GuidanceDistillation(teacher_dir).prepare(create_model("ddpm", **TINY), _MNIST, False)
    wide = create_model("ddpm", **{**STUDENT, "channels": (8, 16, 32)})
    with pytest.raises(ConfigError, match="channels"):
        GuidanceDistillation(teacher_dir).prepare(wide, _MNIST, False)
    plain = create_model("ddpm", **TINY).save_pretrained(tmp_path / "plain")
    with pytest.raises(ConfigError, match="no guidance to distil"):
        GuidanceDistillation(str(plain)).prepare(create_model("ddpm", **STUDENT), _MNIST, False)
    with pytest.raises(CheckpointError, match="distillation teacher"):
        GuidanceDistillation(str(tmp_path / "nowhere")).prepare(
            create_model("ddpm", **STUDENT), _MNIST, False
        )
    with pytest.raises(ConfigError, match="not a VAE|DDPM"):
        GuidanceDistillation(teacher_dir).prepare(create_model("vae-mlp"), _MNIST, False)
    with pytest.raises(ConfigError, match="prepare"):
        GuidanceDistillation(teacher_dir).loss(create_model("ddpm", **STUDENT), *_images(2), 0, "m")


def test_the_task_can_distil_guidance_limited_to_a_noise_interval(tmp_path):
    teacher = _noisy(
        create_model("ddpm-cfg", **TINY, label_dropout=0.1, guidance_scale=3.0, precision="fp32")
    )
    folder = str(teacher.save_pretrained(tmp_path / "teacher"))
    task = GuidanceDistillation(folder, guidance=3.0, guidance_interval=[-3.4, 2.6])
    assert task.record()["guidance_interval"] == [-3.4, 2.6]
    assert TrainingTask.from_record(task.record()).guidance_interval == (-3.4, 2.6)
    task.prepare(create_model("ddpm-cfg", **STUDENT), _MNIST, resume=False)
    labels = torch.arange(4) % 10
    x = torch.randn(4, 1, 28, 28)
    log_snr = teacher.schedule.log_snr(torch.arange(TINY["timesteps"]))
    inside = int(((log_snr > -3.4) & (log_snr < 2.6)).nonzero()[0])
    outside = int((log_snr < -3.4).nonzero()[0])
    for step in (inside, outside):
        t = torch.full((4,), step)
        expected = teacher.denoiser(labels, 3.0, (-3.4, 2.6))(x, t)
        torch.testing.assert_close(task.guided_teacher(labels)(x, t), expected)
    t = torch.full((4,), outside)
    # outside the interval the target is the teacher's plain conditional estimate
    unguided = teacher.denoiser(labels, 1.0)(x, t)
    torch.testing.assert_close(task.guided_teacher(labels)(x, t), unguided)
    t = torch.full((4,), inside)
    assert not torch.allclose(
        task.guided_teacher(labels)(x, t), teacher.denoiser(labels, 1.0)(x, t)
    )
    with pytest.raises(ConfigError, match="LOW"):
        GuidanceDistillation(folder, guidance_interval=[2.6, -3.4])
    with pytest.raises(ConfigError, match="log-SNR"):
        GuidanceDistillation(folder, guidance_interval="middle")
    autoguided = GuidanceDistillation(str(_teacher_folder(tmp_path)), guidance_interval=[-1, 1])
    with pytest.raises(ConfigError, match="every noise level"):
        autoguided.prepare(create_model("ddpm", **STUDENT), _MNIST, resume=False)


def test_distilling_a_self_guided_teacher_keeps_its_clusters(tmp_path, tiny_dataset):
    teacher = create_model("ddpm", **TINY, clusters=10, guidance_scale=3.0, precision="fp32")
    teacher.prepare_training(tiny_dataset, resume=False)
    _noisy(teacher)
    folder = teacher.save_pretrained(tmp_path / "teacher")
    student = create_model("ddpm", **STUDENT, clusters=10)
    task = GuidanceDistillation(str(folder))
    task.prepare(student, tiny_dataset, resume=False)
    torch.testing.assert_close(student.conditioning.centers, teacher.conditioning.centers)
    images, labels = tiny_dataset.batch(torch.arange(8))
    seen = []
    student.unet.register_forward_hook(lambda module, args, out: seen.append(args[2].clone()))
    task.loss(student, images, labels, 0, "model")
    # no label dropout: it learns every cluster's guided estimate
    assert torch.equal(seen[-1], teacher.conditioning.cluster_of(images))
    with pytest.raises(ConfigError, match="clusters"):
        task.prepare(create_model("ddpm", **STUDENT, clusters=4), tiny_dataset, False)


def test_cli_trains_and_resumes_a_distillation_run(run_cli, tmp_path, idx_root):
    recipe = tmp_path / "distill.json"
    teacher = str(_teacher_folder(tmp_path))
    task = {"name": "guidance-distillation", "teacher": teacher, "guidance": 2.0}
    recipe.write_text(json.dumps({**STUDENT, "batch_size": 16, "task": task}))
    out = tmp_path / "student"
    base = ["train", "ddpm", "--data-dir", idx_root, "--out", out, "--quiet", "--device", "cpu"]
    code, _, err = run_cli(*base, "--config", recipe, "--max-steps", "2")
    assert code == 0, err
    code, _, err = run_cli(*base, "--resume", "--max-steps", "3")
    assert code == 0 and "Resumed" in err, err
    code, _, err = run_cli("sample", "ddpm", "--checkpoint", out, "--guidance", "2")
    assert code == 2 and "takes no guidance" in err
    recipe.write_text(
        json.dumps({**STUDENT, "batch_size": 16, "task": {**task, "teacher": "no/such"}})
    )
    bad = ["train", "ddpm", "--data-dir", idx_root, "--out", tmp_path / "bad", "--quiet"]
    code, _, err = run_cli(*bad, "--config", recipe)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "teacher" in err, err
    recipe.write_text(json.dumps({**STUDENT, "task": {"name": "no-such-task"}}))
    code, _, err = run_cli(*bad, "--config", recipe)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "no-such-task" in err, err
