"""Latent priors: the Gaussian mixture fitted after training, and VAEs that sample it."""

from __future__ import annotations

import json

import pytest
import torch

from genmnist.errors import ConfigError
from genmnist.models import create_model, load
from genmnist.models.base import SampleNoise
from genmnist.nn.priors import PRIORS, GaussianMixture, StandardNormal
from genmnist.training import Trainer, TrainOptions


def _three_blobs(n=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])
    scales = torch.tensor([[0.5, 0.2], [0.3, 0.6], [0.4, 0.4]])
    which = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), n, replacement=True, generator=g)
    return centers[which] + scales[which] * torch.randn(n, 2, generator=g), centers, scales


def test_the_mixture_recovers_known_components():
    codes, centers, scales = _three_blobs()
    prior = GaussianMixture(2, components=3)
    prior.fit(codes)
    order = prior.means[:, 0].argsort()  # left, top, right
    torch.testing.assert_close(prior.means[order], centers[[0, 2, 1]], atol=0.1, rtol=0)
    stds = (0.5 * prior.log_vars[order]).exp()
    torch.testing.assert_close(stds, scales[[0, 2, 1]], atol=0.05, rtol=0)
    torch.testing.assert_close(
        prior.weights[order], torch.tensor([0.5, 0.2, 0.3]), atol=0.03, rtol=0
    )
    # its samples follow the data, and its density is highest where the data is
    drawn = prior.sample(SampleNoise(range(4000)))
    torch.testing.assert_close(drawn.mean(0), codes.mean(0), atol=0.15, rtol=0)
    assert prior.log_prob(centers).min() > prior.log_prob(torch.tensor([[0.0, -6.0]])).max()


def test_mixture_draws_are_per_sample_and_the_fit_is_deterministic():
    codes, _, _ = _three_blobs()
    a, b = GaussianMixture(2, 3), GaussianMixture(2, 3)
    a.fit(codes)
    b.fit(codes)
    assert torch.equal(a.means, b.means)
    many = a.sample(SampleNoise(range(10)))
    assert torch.equal(a.sample(SampleNoise(range(4))), many[:4])
    with pytest.raises(ConfigError, match="components"):
        GaussianMixture(2, 0)
    with pytest.raises(ConfigError, match="at least one code"):
        GaussianMixture(2, 50).fit(codes[:0])


def test_a_mixture_with_more_components_than_codes_draws_only_fitted_ones():
    codes, _, _ = _three_blobs()
    few = codes[:6]
    prior = GaussianMixture(2, components=50)
    prior.fit(few)
    assert (prior.weights > 0).sum() == 6 and prior.weights.sum().item() == pytest.approx(1)
    drawn = prior.sample(SampleNoise(range(500)), temperature=0.0)
    # at temperature 0 every draw is a fitted component's mean, next to a code (the
    # unused components, at the origin, lie at least 3 away from every code)
    nearest = torch.cdist(drawn, few).min(1).values
    assert nearest.max() < 0.1
    assert torch.isfinite(prior.log_prob(few)).all()
    per_class = GaussianMixture(2, components=50, classes=2)
    per_class.fit(few, torch.tensor([0, 0, 1, 1, 1, 1]))
    assert (per_class.weights > 0).sum(1).tolist() == [2, 4]


def test_the_standard_prior_draws_what_vaes_always_drew():
    noise_a, noise_b = SampleNoise(range(5)), SampleNoise(range(5))
    torch.testing.assert_close(StandardNormal(8).sample(noise_a, 0.5), noise_b.randn(8) * 0.5)
    assert sorted(PRIORS.list()) == ["gmm", "standard"]


TINY_GMM = dict(hidden_dims=(4, 8), latent_dim=3, prior_components=5, batch_size=32)


def test_a_vae_fits_its_mixture_when_training_ends_and_saves_it(tmp_path, tiny_dataset):
    model = create_model("vae-gmm", **TINY_GMM)
    assert model.prior.means.abs().sum() == 0  # unfitted: the standard normal
    options = TrainOptions(out=tmp_path / "run", max_steps=4, progress=False, device="cpu")
    Trainer(model, options, dataset=tiny_dataset, log=lambda line: None).fit()
    assert model.prior.means.abs().sum() > 0
    codes = model.posterior_means(tiny_dataset)
    # the mixture sits on the codes of the training images
    assert model.prior.log_prob(codes).mean() > model.prior.log_prob(torch.randn(256, 3) * 3).mean()
    loaded = load(tmp_path / "run")
    torch.testing.assert_close(loaded.prior.means, model.prior.means)
    torch.testing.assert_close(loaded.sample(4, seed=1), model.sample(4, seed=1))


def test_an_interrupted_run_fits_its_mixture_only_when_it_completes(tmp_path, tiny_dataset):
    model = create_model("vae-gmm", **TINY_GMM)
    out = tmp_path / "run"
    Trainer(model, TrainOptions(out=out, max_steps=2, progress=False), dataset=tiny_dataset,
            log=lambda line: None).fit()  # fmt: skip
    first = model.prior.means.clone()
    resumed = load(out)
    options = TrainOptions(out=out, max_steps=4, resume=True, progress=False)
    Trainer(resumed, options, dataset=tiny_dataset, log=lambda line: None).fit()
    assert not torch.equal(resumed.prior.means, first)  # refitted on the final weights


def test_a_class_conditional_mixture_draws_each_label_from_its_own_codes():
    codes, centers, _ = _three_blobs()
    labels = (codes[:, 0] > 2).long() + 2 * (codes[:, 1] > 2.5).long()  # the three blobs
    prior = GaussianMixture(2, components=2, classes=3)
    prior.fit(codes, labels)
    wanted = torch.tensor([0, 1, 2] * 200)
    drawn = prior.sample(SampleNoise(range(600)), labels=wanted)
    for label, center in zip((0, 1, 2), centers[[0, 1, 2]], strict=True):
        torch.testing.assert_close(drawn[wanted == label].mean(0), center, atol=0.15, rtol=0)
    assert (
        prior.log_prob(centers, torch.tensor([0, 1, 2])).min()
        > prior.log_prob(centers, torch.tensor([1, 2, 0])).max()
    )
    with pytest.raises(ConfigError, match="labels"):
        prior.sample(SampleNoise(range(2)))
    with pytest.raises(ConfigError, match="labels"):
        GaussianMixture(2, 2, classes=3).fit(codes)


def test_a_conditional_vae_fits_one_mixture_per_class(tmp_path, tiny_dataset):
    model = create_model("cvae", hidden_dims=(4, 8), latent_dim=3, prior="gmm",
                         prior_components=2, batch_size=32)  # fmt: skip
    options = TrainOptions(out=tmp_path / "run", max_steps=3, progress=False, device="cpu")
    Trainer(model, options, dataset=tiny_dataset, log=lambda line: None).fit()
    assert model.prior.means.shape == (20, 3) and model.prior.means.abs().sum() > 0
    images = model.sample(20, seed=0)  # labels cycle 0..9
    assert images.shape == (20, 1, 28, 28)
    torch.testing.assert_close(load(tmp_path / "run").sample(20, seed=0), images)
    with pytest.raises(Exception, match="unknown latent prior"):
        create_model("vae-mlp", prior="flowy")


def test_runs_written_before_the_prior_fields_existed_still_resume(tmp_path, tiny_dataset):
    model = create_model("vae-mlp", hidden_dims=(16,), latent_dim=2, batch_size=32)
    out = tmp_path / "run"
    Trainer(model, TrainOptions(out=out, max_steps=2, progress=False), dataset=tiny_dataset,
            log=lambda line: None).fit()  # fmt: skip
    # an older genmnist wrote neither prior field, in config.json or the checkpoint header
    from genmnist.io import load_tensors, save_tensors

    record = json.loads((out / "config.json").read_text())
    record["config_version"] = 1
    for key in ("prior", "prior_components"):
        record["config"].pop(key)
    (out / "config.json").write_text(json.dumps(record))
    tensors, metadata = load_tensors(out / "checkpoint.safetensors")
    header = json.loads(metadata["genmnist"])
    for key in ("prior", "prior_components"):
        header["config"].pop(key)
    header.pop("config_version")
    save_tensors(out / "checkpoint.safetensors", tensors, {"genmnist": json.dumps(header)})
    resumed = load(out)
    options = TrainOptions(out=out, max_steps=3, resume=True, progress=False)
    assert Trainer(resumed, options, dataset=tiny_dataset, log=lambda line: None).fit().step == 3


def test_version_1_vae_configs_keep_their_standard_prior(tmp_path):
    # a version-1 cvae folder has no prior field: it sampled N(0, I), though the cvae
    # preset now defaults to a mixture prior
    folder = create_model("cvae", hidden_dims=(4, 8), latent_dim=3, prior="standard")
    folder = folder.save_pretrained(tmp_path / "old")
    record = json.loads((folder / "config.json").read_text())
    record["config_version"] = 1
    for key in ("prior", "prior_components"):
        record["config"].pop(key)
    (folder / "config.json").write_text(json.dumps(record))
    loaded = load(folder)
    assert loaded.config.prior == "standard" and isinstance(loaded.prior, StandardNormal)


def test_a_per_class_prior_refuses_a_training_set_without_some_class(tmp_path, tiny_dataset):
    from genmnist.data import InMemoryDataset

    keep = tiny_dataset.labels != 3
    data = InMemoryDataset(tiny_dataset.images[keep], tiny_dataset.labels[keep], "mnist", "train")
    model = create_model("cvae", hidden_dims=(4, 8), latent_dim=3, prior_components=5)
    options = TrainOptions(out=tmp_path / "run", max_steps=4, progress=False, device="cpu")
    with pytest.raises(ConfigError, match="no images of class 3"):
        Trainer(model, options, dataset=data, log=lambda line: None).fit()
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()  # refused before a step
    # with every class present, even a class with fewer images than components trains
    model = create_model("cvae", hidden_dims=(4, 8), latent_dim=3, prior_components=100)
    Trainer(model, options, dataset=tiny_dataset, log=lambda line: None).fit()
    per_class = (model.prior.weights > 0).sum(1)
    counts = torch.bincount(tiny_dataset.labels, minlength=10)
    assert per_class.tolist() == counts.clamp(max=100).tolist()
