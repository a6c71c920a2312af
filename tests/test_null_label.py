"""Null-label tuning: a label-conditioned DDPM without an unconditional prediction (a
guidance-distilled student) learns one again while its labels keep their predictions."""

from __future__ import annotations

import json

import pytest
import torch

from genmnist.data import InMemoryDataset
from genmnist.errors import CheckpointError, ConfigError
from genmnist.finetuning import NullLabelTuning
from genmnist.models import create_model, load
from genmnist.training import TRAINING_TASKS, Trainer, TrainingTask, TrainOptions

TINY = dict(channels=(8, 16, 16), timesteps=50, sampling_steps=4, num_classes=10)
TUNED = dict(TINY, label_dropout=0.5, precision="fp32")

_MNIST = InMemoryDataset(
    torch.zeros(4, 28, 28, dtype=torch.uint8), torch.zeros(4), "mnist", "train"
)


def _base_folder(tmp_path, **overrides):
    """A tiny class-conditional DDPM trained without label dropout, saved as a folder."""
    torch.manual_seed(0)
    model = create_model("ddpm", **{**TINY, "label_dropout": 0.0, **overrides})
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    return model.save_pretrained(tmp_path / "base")


def test_the_task_is_registered_and_rebuilds_from_its_record():
    task = NullLabelTuning("runs/student")
    record = task.record()
    assert record == {"name": "null-label", "base": "runs/student"}
    rebuilt = TrainingTask.from_record(json.loads(json.dumps(record)))
    assert isinstance(rebuilt, NullLabelTuning) and rebuilt.record() == record
    assert "null-label" in TRAINING_TASKS
    with pytest.raises(ConfigError, match="base"):
        NullLabelTuning(" ")


def test_null_labels_learn_the_image_and_the_others_the_base(tmp_path):
    base_dir = _base_folder(tmp_path)
    base = load(base_dir)
    model = create_model("ddpm", **TUNED)
    task = NullLabelTuning(str(base_dir))
    task.prepare(model, _MNIST, resume=False)
    for key, value in base.unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[key], value)
    assert not any("base" in key for key in model.state_dict())  # held by the task

    torch.manual_seed(3)
    images = torch.rand(64, 1, 28, 28)
    labels = torch.arange(64) % 10
    seen = {}
    model.unet.register_forward_hook(lambda module, args, out: seen.update(labels=args[2]))
    torch.manual_seed(1)
    losses = task.loss(model, images, labels, 0, "model")
    null = seen["labels"] == model.conditioning.null_label
    assert 0 < int(null.sum()) < 64 and float(losses["null_share"]) == null.float().mean()
    assert torch.equal(seen["labels"][~null], labels[~null])

    # The model starts as its base, so only the null-labelled samples have anything to
    # learn: their target is the image, not the base's estimate.
    def loss_at(label_dropout):
        model.config.label_dropout = label_dropout
        torch.manual_seed(1)
        return float(task.loss(model, images, labels, 0, "model")["loss"].detach())

    assert loss_at(0.999999) > 10 * loss_at(1e-9)


def test_tuning_gives_a_model_that_takes_guidance(tmp_path, tiny_dataset):
    base_dir = _base_folder(tmp_path)
    with pytest.raises(ConfigError, match="takes no guidance"):
        load(base_dir).sample(2, guidance=2.0)
    model = create_model("ddpm", **TUNED, lr=1e-3, warmup_steps=0, ema_decay=None, batch_size=32)
    task = NullLabelTuning(str(base_dir))
    images, labels = tiny_dataset.batch(torch.arange(64))
    null = torch.full_like(labels, 10)

    def null_error():  # the null label's denoising error at fixed noise
        torch.manual_seed(5)
        with torch.no_grad():
            x0 = images * 2 - 1
            x_t, t, eps = model.add_noise(x0)
            return float(model.denoising_loss(x_t, t, null, x0, eps))

    task.prepare(model, tiny_dataset, resume=False)
    before = null_error()
    options = TrainOptions(out=tmp_path / "run", max_steps=40, progress=False, device="cpu")
    Trainer(model, options, dataset=tiny_dataset, log=lambda line: None, task=task).fit()
    assert null_error() < 0.7 * before
    tuned = load(tmp_path / "run")
    assert tuned.guidance_problem is None
    calls = []
    tuned.unet.register_forward_hook(lambda *args: calls.append(args[1][0].shape[0]))
    tuned.sample(2, seed=0, steps=4, guidance=0.5, guidance_interval=(-100.0, -3.0))
    # guided (one batched call of twice the images) only at the first, noisiest step
    assert calls == [4, 2, 2, 2]


def test_the_task_checks_its_model_and_base(tmp_path):
    base_dir = str(_base_folder(tmp_path))
    with pytest.raises(ConfigError, match="label_dropout"):
        NullLabelTuning(base_dir).prepare(
            create_model("ddpm", **{**TUNED, "label_dropout": 0.0}), _MNIST, False
        )
    with pytest.raises(ConfigError, match="classes or clusters"):
        NullLabelTuning(base_dir).prepare(
            create_model("ddpm", **{**TUNED, "num_classes": 0}), _MNIST, False
        )
    with pytest.raises(ConfigError, match="channels"):
        NullLabelTuning(base_dir).prepare(
            create_model("ddpm", **{**TUNED, "channels": (8, 16, 32)}), _MNIST, False
        )
    with pytest.raises(CheckpointError, match="null-label tuning base"):
        NullLabelTuning(str(tmp_path / "nowhere")).prepare(
            create_model("ddpm", **TUNED), _MNIST, False
        )
    with pytest.raises(ConfigError, match="DDPM"):
        NullLabelTuning(base_dir).prepare(create_model("vae-mlp"), _MNIST, False)
    with pytest.raises(ConfigError, match="prepare"):
        NullLabelTuning(base_dir).loss(
            create_model("ddpm", **TUNED), torch.rand(2, 1, 28, 28), torch.zeros(2).long(), 0, "m"
        )


def test_cli_tunes_a_distilled_model_and_resumes(run_cli, tmp_path, idx_root):
    base = str(_base_folder(tmp_path))
    recipe = tmp_path / "tune.json"
    recipe.write_text(
        json.dumps({**TUNED, "batch_size": 16, "task": {"name": "null-label", "base": base}})
    )
    out = tmp_path / "tuned"
    args = ["train", "ddpm", "--data-dir", idx_root, "--out", out, "--quiet", "--device", "cpu"]
    code, _, err = run_cli(*args, "--config", recipe, "--max-steps", "2")
    assert code == 0, err
    code, _, err = run_cli(*args, "--resume", "--max-steps", "3")
    assert code == 0 and "Resumed" in err, err
    image = tmp_path / "guided.png"
    code, _, err = run_cli(
        "sample", "ddpm", "--checkpoint", out, "--guidance", "0.5", "-n", "2", "-o", image
    )
    assert code == 0 and image.exists(), err
    task = {"name": "null-label", "base": str(tmp_path / "no-such-run")}
    recipe.write_text(json.dumps({**TUNED, "batch_size": 16, "task": task}))
    other = ["train", "ddpm", "--data-dir", idx_root, "--out", tmp_path / "other", "--quiet"]
    code, _, err = run_cli(*other, "--device", "cpu", "--config", recipe, "--max-steps", "1")
    assert code != 0 and "null-label tuning base" in err and "Traceback" not in err, err
