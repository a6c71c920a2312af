"""Conditioning components, and a DDPM conditioned on clusters it finds itself."""

from __future__ import annotations

import json

import pytest
import torch

from genmnist.conditioning import (
    ClassConditioning,
    ClusterConditioning,
    Unconditioned,
    conditioning_for,
    drop_labels,
)
from genmnist.errors import ConfigError
from genmnist.models import create_model, load
from genmnist.models.base import SampleNoise

TINY = dict(channels=(8, 16, 16), timesteps=50, sampling_steps=4)


def test_conditioning_for_picks_the_component_a_config_describes():
    assert isinstance(conditioning_for(0, 0), Unconditioned)
    classes = conditioning_for(10, 0)
    assert isinstance(classes, ClassConditioning) and classes.null_label == 10
    assert isinstance(conditioning_for(0, 5), ClusterConditioning)
    for num_classes, clusters, fragment in [(0, 1, "at least 2"), (0, -3, "at least 2"),
                                            (10, 4, "unconditional")]:  # fmt: skip
        with pytest.raises(ConfigError, match=fragment):
            conditioning_for(num_classes, clusters)


def test_label_dropout_replaces_the_given_share_and_draws_nothing_when_off():
    labels = torch.zeros(10_000, dtype=torch.long)
    torch.manual_seed(0)
    dropped = drop_labels(labels, 7, 0.25)
    assert abs(float((dropped == 7).float().mean()) - 0.25) < 0.02
    state = torch.get_rng_state()
    assert drop_labels(labels, 7, 0.0) is labels and drop_labels(None, 7, 0.5) is None
    assert torch.equal(torch.get_rng_state(), state)


def test_clusters_are_fitted_on_the_data_and_drawn_per_sample(tiny_dataset):
    clusters = ClusterConditioning(10)
    clusters.prepare(tiny_dataset)
    # the ten bar positions of the synthetic data are its ten clusters
    class_shares = torch.bincount(tiny_dataset.labels).float() / len(tiny_dataset)
    assert torch.equal(clusters.shares.sort().values, class_shares.sort().values)
    images, labels = tiny_dataset.batch(torch.arange(40))
    found = clusters.training_labels(images, labels)
    assert len(set(zip(found.tolist(), labels.tolist(), strict=True))) == 10
    drawn = clusters.sampling_labels(SampleNoise(range(12)), None)
    assert len(set(drawn.tolist())) > 3
    assert torch.equal(clusters.sampling_labels(SampleNoise(range(5)), None), drawn[:5])
    clusters.shares.copy_(torch.nn.functional.one_hot(torch.tensor(7), 10).float())
    assert set(clusters.sampling_labels(SampleNoise(range(9)), None).tolist()) == {7}
    with pytest.raises(ConfigError, match="cannot exceed"):
        ClusterConditioning(300).prepare(tiny_dataset)


def _unet_labels(model):
    """Record the labels of every U-Net call of ``model``."""
    seen = []
    model.unet.register_forward_hook(lambda module, args, out: seen.append(args[2].clone()))
    return seen


def test_self_guided_ddpm_trains_on_its_clusters_and_guides_toward_them(tiny_dataset):
    model = create_model("ddpm", **TINY, clusters=10, label_dropout=0.0, precision="fp32")
    for p in model.parameters():  # an untrained U-Net's zero output layer ignores labels
        p.data.add_(torch.randn_like(p) * 0.05)
    assert not model.conditional  # users sample it without labels
    model.prepare_training(tiny_dataset, resume=False)
    images, labels = tiny_dataset.batch(torch.arange(40))
    seen = _unet_labels(model)
    model.training_loss(images, labels, step=0)
    assert torch.equal(seen[-1], model.conditioning.cluster_of(images))

    guided = create_model("ddpm", **TINY, clusters=10, precision="fp32")
    guided.load_state_dict(model.state_dict())
    guided.conditioning.shares.copy_(torch.nn.functional.one_hot(torch.tensor(7), 10).float())
    seen = _unet_labels(guided)
    guided.sample(3, seed=1, steps=2)
    # the null cluster is the other half of each guided call
    assert {int(label) for batch in seen for label in batch} == {7, guided.conditioning.null_label}
    assert not torch.allclose(guided.sample(2, seed=0, guidance=3.0), guided.sample(2, seed=0))


def test_self_guided_runs_save_their_clusters_and_resume_without_refitting(tmp_path, tiny_dataset):
    from genmnist.training import Trainer, TrainOptions

    model = create_model("ddpm", **TINY, clusters=4, batch_size=32, ema_decay=0.9)
    options = TrainOptions(out=tmp_path / "run", max_steps=3, progress=False, device="cpu")
    Trainer(model, options, dataset=tiny_dataset, log=lambda line: None).fit()
    trained = load(tmp_path / "run")
    assert trained.conditioning.centers.abs().sum() > 0  # the EMA export keeps the clusters
    torch.testing.assert_close(trained.conditioning.centers, model.conditioning.centers)
    torch.testing.assert_close(trained.conditioning.shares.sum(), torch.tensor(1.0))
    trained.conditioning.centers.zero_()
    trained.prepare_training(tiny_dataset, resume=True)  # the checkpoint brings them back
    assert trained.conditioning.centers.abs().sum() == 0


def test_cli_trains_a_self_guided_ddpm_and_samples_it_with_guidance(run_cli, tmp_path, idx_root):
    recipe = tmp_path / "sg.json"
    recipe.write_text(json.dumps({**TINY, "clusters": 3, "batch_size": 16}))
    out, grid = tmp_path / "sg", tmp_path / "g.png"
    base = ["train", "ddpm", "--data-dir", idx_root, "--out", out, "--quiet", "--device", "cpu"]
    code, _, err = run_cli(*base, "--config", recipe, "--max-steps", "2")
    assert code == 0, err
    assert load(out).conditioning.centers.abs().sum() > 0
    code, _, err = run_cli("sample", "ddpm", "--checkpoint", out, "-n", "4", "--steps", "2",
                           "--guidance", "2.5", "-o", grid)  # fmt: skip
    assert code == 0 and grid.is_file(), err
    recipe.write_text(json.dumps({**TINY, "clusters": 1}))
    code, _, err = run_cli(*base[:-3], "--out", tmp_path / "bad", "--config", recipe)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "clusters" in err, err
