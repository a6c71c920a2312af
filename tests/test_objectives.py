"""The auxiliary-classifier objective: a labelled GAN trained with a classifier (its own
network, trained on real images only) whose cross-entropy on the generator's images
joins the generator's loss."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from genmnist.errors import CheckpointError, ConfigError
from genmnist.io import load_tensors
from genmnist.models import create_model, load
from genmnist.objectives import AuxiliaryClassifier
from genmnist.run_folder import CHECKPOINT_FILE
from genmnist.training import TRAINING_TASKS, Trainer, TrainingTask, TrainOptions

TINY_CGAN = dict(
    latent_dim=4, g_hidden_dims=(4, 8), d_hidden_dims=(4, 8), embed_dim=3,
    precision="fp32", metrics_samples=8, batch_size=16, ema_decay=None,
)  # fmt: skip
SMALL_C = {"name": "conv", "hidden_dims": [4, 8]}


def _cgan(seed: int = 0, name: str = "cgan", **overrides):
    torch.manual_seed(seed)
    return create_model(name, **{**TINY_CGAN, **overrides})


def test_the_task_is_registered_and_rebuilds_from_its_record():
    task = AuxiliaryClassifier(weight=0.25, classifier=SMALL_C)
    record = task.record()
    assert record == {"name": "auxiliary-classifier", "weight": 0.25, "classifier": SMALL_C}
    rebuilt = TrainingTask.from_record(json.loads(json.dumps(record)))
    assert isinstance(rebuilt, AuxiliaryClassifier) and rebuilt.record() == record
    assert "auxiliary-classifier" in TRAINING_TASKS
    for bad in (float("nan"), float("inf"), -0.5, "1", True, None):
        with pytest.raises(ConfigError, match="weight"):
            AuxiliaryClassifier(weight=bad)
    for spec in ({"hidden_dims": [4]}, "conv", ["conv"], {"name": 3}):
        with pytest.raises(ConfigError, match="name"):
            AuxiliaryClassifier(classifier=spec)
    with pytest.raises(Exception, match="no-such"):
        AuxiliaryClassifier(classifier={"name": "no-such"})


def test_it_trains_labelled_gans_only(tiny_dataset):
    with pytest.raises(ConfigError, match="neither"):
        AuxiliaryClassifier().prepare(
            create_model("dcgan", latent_dim=4, g_hidden_dims=(4, 8), d_hidden_dims=(4, 8)),
            tiny_dataset,
            False,
        )
    with pytest.raises(ConfigError, match="trains a GAN"):
        AuxiliaryClassifier().prepare(create_model("cvae"), tiny_dataset, False)
    for options, message in (
        ({"hidden_dims": "wide"}, "classifier"),
        ({"no_such_option": 1}, "classifier"),
        ({"out_features": 3}, "classifier"),
        ({"image_shape": [1, 5, 5]}, "classifier cannot take the model's images"),
        ({"hidden_dims": [10**8]}, "training the classifier needs about .* of memory"),
    ):
        wrong = AuxiliaryClassifier(classifier={"name": "conv", **options})
        with pytest.raises(ConfigError, match=message):
            wrong.prepare(_cgan(), tiny_dataset, False)
    with pytest.raises(ConfigError, match="prepare"):
        AuxiliaryClassifier().loss(
            _cgan(), torch.rand(2, 1, 28, 28), torch.zeros(2), 0, "generator"
        )


def test_each_phase_moves_only_its_own_network(tiny_dataset):
    model, task = _cgan(), AuxiliaryClassifier(weight=2.0, classifier=SMALL_C)
    task.prepare(model, tiny_dataset, resume=False)
    assert list(task.optimizer_groups(model)) == ["discriminator", "classifier", "generator"]
    images, labels = tiny_dataset.batch(torch.arange(8))
    networks = {
        "discriminator": model.discriminator,
        "classifier": task.classifier,
        "generator": model.generator,
    }
    for phase in networks:
        for net in networks.values():
            net.zero_grad(set_to_none=True)
        losses = task.loss(model, images, labels, 0, phase)
        losses["loss"].backward()
        for name, net in networks.items():
            moved = any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
            assert moved == (name == phase), (phase, name)
    with pytest.raises(ConfigError, match="phases"):
        task.loss(model, images, labels, 0, "model")


def test_the_generator_loss_is_the_gans_plus_the_weighted_classification(tiny_dataset):
    images, labels = tiny_dataset.batch(torch.arange(8))
    totals = {}
    for weight in (0.0, 3.0):
        model, task = _cgan(seed=1), AuxiliaryClassifier(weight=weight, classifier=SMALL_C)
        torch.manual_seed(2)
        task.prepare(model, tiny_dataset, resume=False)
        task.loss(model, images, labels, 0, "discriminator")  # draws the step's fakes
        fakes = model._fakes[1].detach()
        with torch.no_grad():
            task.classifier.eval()
            expected = F.cross_entropy(task.classifier(fakes), labels)
            task.classifier.train()
        out = task.loss(model, images, labels, 0, "generator")
        assert torch.allclose(out["classification"], expected, atol=1e-6)
        assert torch.allclose(out["loss"], out["adversarial"] + weight * expected, atol=1e-6)
        totals[weight] = out
    # the same fakes and discriminator, so the same adversarial term either way
    assert torch.allclose(totals[0.0]["adversarial"], totals[3.0]["adversarial"])


def test_the_classification_term_draws_the_requested_labels(tiny_dataset):
    """With the classifier fitted to real images and the adversarial term switched off (a
    discriminator of zero weights says the same of every image), the generator learns to
    draw what the classifier calls the label it was asked for."""
    model, task = _cgan(seed=3), AuxiliaryClassifier(weight=1.0, classifier=SMALL_C)
    task.prepare(model, tiny_dataset, resume=False)
    images, labels = tiny_dataset.batch(torch.arange(256))
    classifier_opt = torch.optim.Adam(task.classifier.parameters(), lr=1e-2)
    for _ in range(60):
        classifier_opt.zero_grad()
        task.loss(model, images, labels, 0, "classifier")["loss"].backward()
        classifier_opt.step()
    with torch.no_grad():
        for parameter in model.discriminator.parameters():
            parameter.zero_()
    generator_opt = torch.optim.Adam(model.optimizer_groups()["generator"], lr=1e-2)

    def classification(step):
        task.loss(model, images[:64], labels[:64], step, "discriminator")
        return task.loss(model, images[:64], labels[:64], step, "generator")

    before = float(classification(0)["classification"])
    for step in range(1, 40):
        out = classification(step)
        generator_opt.zero_grad()
        out["loss"].backward()
        generator_opt.step()
    after = float(classification(99)["classification"])
    assert after < 0.5 * before, (before, after)


def test_the_classifier_is_checkpointed_and_restored_but_not_exported(tmp_path, tiny_dataset):
    task = AuxiliaryClassifier(classifier=SMALL_C)
    options = TrainOptions(out=tmp_path / "run", max_steps=4, progress=False, device="cpu")
    Trainer(_cgan(), options, dataset=tiny_dataset, log=lambda line: None, task=task).fit()
    tensors, _ = load_tensors(tmp_path / "run" / CHECKPOINT_FILE)
    assert any(k.startswith("task.") for k in tensors)
    exported = load(tmp_path / "run")
    assert type(exported).__name__ == "GAN" and exported.conditional
    assert not any(k.startswith("task.") for k in exported.state_dict())
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert {"classifier_accuracy", "generator_classification", "discriminator_loss"} <= set(
        logged[-1]
    )

    class Watched(AuxiliaryClassifier):
        seen: dict = {}

        def loss(self, model, images, labels, step, phase):
            if not self.seen:
                self.seen.update({k: v.clone() for k, v in self.classifier.named_parameters()})
            return super().loss(model, images, labels, step, phase)

    resumed = Watched(classifier=SMALL_C)
    options = TrainOptions(
        out=tmp_path / "run", max_steps=5, resume=True, progress=False, device="cpu"
    )
    Trainer(_cgan(), options, dataset=tiny_dataset, log=lambda line: None, task=resumed).fit()
    assert resumed.seen and all(
        torch.equal(v, tensors[f"task.{k}"]) for k, v in resumed.seen.items()
    )
    with pytest.raises(CheckpointError, match="task"):
        options.max_steps = 6
        Trainer(_cgan(), options, dataset=tiny_dataset, log=lambda line: None).fit()


def test_a_self_conditioned_gan_is_classified_by_its_clusters(tiny_dataset):
    model = _cgan(name="gan-sc", clusters=4)
    task = AuxiliaryClassifier(classifier=SMALL_C)
    task.prepare(model, tiny_dataset, resume=False)
    assert task.classifier.head.out_features == 4
    images, labels = tiny_dataset.batch(torch.arange(16))
    clusters = model.conditioning.training_labels(images, labels)
    seen = []
    task.classifier.register_forward_hook(lambda m, args, out: seen.append(out))
    out = task.loss(model, images, labels, 0, "classifier")
    assert torch.allclose(out["loss"], F.cross_entropy(seen[-1], clusters.long()))


def test_cli_trains_and_resumes_with_the_objective(run_cli, tmp_path, idx_root):
    recipe = tmp_path / "ac.json"
    task = {"name": "auxiliary-classifier", "weight": 0.5, "classifier": SMALL_C}
    recipe.write_text(json.dumps({**TINY_CGAN, "task": task}))
    out = tmp_path / "run"
    base = ["train", "cgan", "--data-dir", idx_root, "--out", out, "--quiet", "--device", "cpu"]
    code, _, err = run_cli(*base, "--config", recipe, "--max-steps", "2")
    assert code == 0, err
    code, _, err = run_cli(*base, "--resume", "--max-steps", "3")
    assert code == 0 and "Resumed" in err, err
    bad = ["train", "dcgan", "--data-dir", idx_root, "--out", tmp_path / "bad", "--quiet"]
    for wrong in ({"weight": -1}, {"classifier": "conv"}, {"weight": "high"}, {}):
        recipe.write_text(json.dumps({"task": {**task, **wrong}}))
        code, _, err = run_cli(*bad, "--config", recipe, "--overwrite")
        assert code != 0 and len(err.strip().splitlines()) == 1, err
