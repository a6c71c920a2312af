"""Adversarial decoder tuning as a training task: the decoder of a trained VAE moves
against a discriminator the task trains and checkpoints; the encoder and prior stay."""

from __future__ import annotations

import json

import pytest
import torch

from genmnist.errors import CheckpointError, ConfigError
from genmnist.finetuning import AdversarialDecoderTuning
from genmnist.io import load_tensors
from genmnist.models import create_model, load
from genmnist.run_folder import CHECKPOINT_FILE
from genmnist.training import TRAINING_TASKS, Trainer, TrainingTask, TrainOptions

TINY_CVAE = dict(hidden_dims=(4, 8), latent_dim=4, prior_components=2, precision="fp32")
SMALL_D = {"name": "conv", "hidden_dims": [4, 8], "spectral_norm": True}


def _base(tmp_path, dataset, name="cvae", **overrides):
    """A tiny VAE trained a few steps (its prior fitted to the codes), saved as a folder."""
    model = create_model(name, **{**TINY_CVAE, **overrides}, batch_size=16, ema_decay=None)
    options = TrainOptions(out=tmp_path / "base", max_steps=4, progress=False, device="cpu")
    Trainer(model, options, dataset=dataset, log=lambda line: None).fit()
    return tmp_path / "base"


def _tuned_model(**overrides):
    settings = {**TINY_CVAE, "batch_size": 16, "ema_decay": None, "lr": 1e-3, **overrides}
    return create_model("cvae", **settings)


def test_the_task_is_registered_and_rebuilds_from_its_record():
    task = AdversarialDecoderTuning("runs/vae", weight=5.0, prior_share=0.25, discriminator=SMALL_D)
    record = task.record()
    assert record["name"] == "adversarial-decoder" and record["weight"] == 5.0
    rebuilt = TrainingTask.from_record(json.loads(json.dumps(record)))
    assert isinstance(rebuilt, AdversarialDecoderTuning) and rebuilt.record() == record
    assert "adversarial-decoder" in TRAINING_TASKS
    for bad in ({"weight": float("nan")}, {"weight": -1}, {"prior_share": 2}, {"weight": "x"}):
        with pytest.raises(ConfigError):
            AdversarialDecoderTuning("runs/vae", **bad)
    with pytest.raises(ConfigError, match="base"):
        AdversarialDecoderTuning(" ")
    for spec in ({"hidden_dims": [4]}, "conv", ["conv"]):
        with pytest.raises(ConfigError, match="name"):
            AdversarialDecoderTuning("runs/vae", discriminator=spec)
    with pytest.raises(ConfigError, match="loss"):
        AdversarialDecoderTuning("runs/vae", loss=3)
    with pytest.raises(Exception, match="no-such"):
        AdversarialDecoderTuning("runs/vae", discriminator={"name": "no-such"})
    with pytest.raises(Exception, match="no-such"):
        AdversarialDecoderTuning("runs/vae", loss="no-such")


def test_tuning_moves_only_the_decoder_and_checkpoints_the_discriminator(
    tmp_path, tiny_dataset, monkeypatch
):
    base_dir = _base(tmp_path, tiny_dataset)
    base = load(base_dir)
    model = _tuned_model()
    task = AdversarialDecoderTuning(str(base_dir), weight=10.0, discriminator=SMALL_D)
    options = TrainOptions(out=tmp_path / "tuned", max_steps=6, progress=False, device="cpu")
    refits = []  # the prior is kept as the base fitted it, not refitted to the same codes
    monkeypatch.setattr(type(model), "finish_training", lambda *args: refits.append(1))
    Trainer(model, options, dataset=tiny_dataset, log=lambda line: None, task=task).fit()
    monkeypatch.undo()
    assert refits == []

    tuned = load(tmp_path / "tuned")  # an ordinary cvae: no discriminator in its weights
    assert type(tuned) is type(base) and not any("discriminator" in k for k in tuned.state_dict())
    for key, value in base.state_dict().items():
        same = torch.equal(tuned.state_dict()[key], value)
        if key.startswith("decoder.") and value.is_floating_point() and "running" not in key:
            assert not same, key  # the decoder learned
        elif key.startswith(("encoder.", "prior.")):
            assert same, key  # frozen encoder (BatchNorm statistics too), and so its prior
    tensors, _ = load_tensors(tmp_path / "tuned" / CHECKPOINT_FILE)
    assert any(k.startswith("task.") for k in tensors)
    logged = [json.loads(line) for line in (tmp_path / "tuned" / "metrics.jsonl").open()]
    assert {"decoder_reconstruction", "decoder_adversarial", "discriminator_loss"} <= set(
        logged[-1]
    )

    # --resume restores the discriminator: the first step of the resumed run sees the
    # checkpoint's weights
    class Watched(AdversarialDecoderTuning):
        seen: dict = {}

        def loss(self, model, images, labels, step, phase):
            if not self.seen:
                self.seen.update({k: v.clone() for k, v in self.discriminator.named_parameters()})
            return super().loss(model, images, labels, step, phase)

    resumed = Watched(str(base_dir), weight=10.0, discriminator=SMALL_D)
    options = TrainOptions(
        out=tmp_path / "tuned", max_steps=7, resume=True, progress=False, device="cpu"
    )
    Trainer(_tuned_model(), options, dataset=tiny_dataset, log=print, task=resumed).fit()
    weights = resumed.seen
    assert weights and all(torch.equal(v, tensors[f"task.{k}"]) for k, v in weights.items())
    with pytest.raises(CheckpointError, match="task"):  # the run's task, not the data task
        options.max_steps = 8
        Trainer(_tuned_model(), options, dataset=tiny_dataset, log=print).fit()


def test_the_base_must_be_the_same_vae(tmp_path, tiny_dataset):
    base_dir = str(_base(tmp_path, tiny_dataset))
    task = AdversarialDecoderTuning(base_dir, discriminator=SMALL_D)
    with pytest.raises(ConfigError, match="latent_dim"):
        task.prepare(_tuned_model(latent_dim=6), tiny_dataset, False)
    for options, message in (
        ({"hidden_dims": "wide"}, "discriminator"),
        ({"no_such_option": 1}, "discriminator"),
        ({"num_classes": 3}, "discriminator"),
        ({"name": "mlp", "image_shape": [1, 5, 5]}, "discriminator cannot take"),
        ({"hidden_dims": [10**8]}, "training the discriminator needs about .* of memory"),
    ):
        wrong = AdversarialDecoderTuning(base_dir, discriminator={"name": "conv", **options})
        with pytest.raises(ConfigError, match=message):
            wrong.prepare(_tuned_model(), tiny_dataset, False)
    with pytest.raises(ConfigError, match="trains a VAE"):
        task.prepare(create_model("dcgan"), tiny_dataset, False)
    with pytest.raises(CheckpointError, match="base"):
        AdversarialDecoderTuning(str(tmp_path / "nowhere")).prepare(
            _tuned_model(), tiny_dataset, False
        )
    ddpm = create_model("ddpm", channels=(8, 16, 16)).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(ConfigError, match="not a VAE"):
        AdversarialDecoderTuning(str(ddpm)).prepare(_tuned_model(), tiny_dataset, False)
    with pytest.raises(ConfigError, match="prepare"):
        AdversarialDecoderTuning(base_dir).loss(
            _tuned_model(), torch.rand(2, 1, 28, 28), torch.zeros(2), 0, "decoder"
        )


def test_the_discriminator_sees_reconstructions_and_prior_samples(tmp_path, tiny_dataset):
    base_dir = str(_base(tmp_path, tiny_dataset))
    model = _tuned_model()
    task = AdversarialDecoderTuning(base_dir, prior_share=0.5, discriminator=SMALL_D)
    task.prepare(model, tiny_dataset, resume=False)
    images, labels = tiny_dataset.batch(torch.arange(8))
    seen = []
    task.discriminator.register_forward_hook(lambda m, args, out: seen.append(args))
    losses = task.loss(model, images, labels, 0, "discriminator")
    assert set(losses) >= {"loss", "real_accuracy", "fake_accuracy"}
    (real, real_labels), (fake, fake_labels) = seen
    assert real.shape[0] == 8 and fake.shape[0] == 12  # 8 reconstructions, 4 prior draws
    assert torch.equal(fake_labels, torch.cat([labels, labels[:4]]).to(fake_labels.dtype))
    assert fake.min() >= -1 and fake.max() <= 1
    decoder = task.loss(model, images, labels, 0, "decoder")
    assert set(decoder) == {"loss", "reconstruction", "adversarial"}
    decoder["loss"].backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is None for p in task.discriminator.parameters())
    assert any(p.grad is not None for p in model.decoder.parameters())
    with pytest.raises(ConfigError, match="phases"):
        task.loss(model, images, labels, 0, "model")


def test_cli_trains_and_resumes_a_tuning_run(run_cli, tmp_path, idx_root, tiny_dataset):
    base_dir = _base(tmp_path, tiny_dataset)
    recipe = tmp_path / "tune.json"
    task = {"name": "adversarial-decoder", "base": str(base_dir), "discriminator": SMALL_D}
    recipe.write_text(json.dumps({**TINY_CVAE, "batch_size": 16, "task": task}))
    out = tmp_path / "tuned"
    base = ["train", "cvae", "--data-dir", idx_root, "--out", out, "--quiet", "--device", "cpu"]
    code, _, err = run_cli(*base, "--config", recipe, "--max-steps", "2")
    assert code == 0, err
    code, _, err = run_cli(*base, "--resume", "--max-steps", "3")
    assert code == 0 and "Resumed" in err, err
    assert load(out).config.latent_dim == TINY_CVAE["latent_dim"]
    bad = ["train", "cvae", "--data-dir", idx_root, "--out", tmp_path / "bad", "--quiet"]
    for wrong in ({"weight": -1}, {"discriminator": "conv"}, {"base": str(tmp_path / "no")}):
        recipe.write_text(json.dumps({**TINY_CVAE, "task": {**task, **wrong}}))
        code, _, err = run_cli(*bad, "--config", recipe, "--overwrite")
        assert code != 0 and len(err.strip().splitlines()) == 1, err
