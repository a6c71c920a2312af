"""Cluster spaces: where a self-conditioned model's k-means looks at its training images."""

from __future__ import annotations

import json

import pytest
import torch

from genmnist.clustering import CLUSTER_SPACES, PixelSpace, VAELatentSpace
from genmnist.conditioning import ClusterConditioning, conditioning_for
from genmnist.errors import ConfigError, RegistryError
from genmnist.models import create_model, load


def test_pixel_space_is_the_flattened_image_and_adds_no_weights():
    images = torch.rand(5, 1, 28, 28)
    assert torch.equal(PixelSpace()(images), images.flatten(1))
    clusters = ClusterConditioning(4)
    # a model clustering on pixels saves exactly what it saved before spaces existed
    assert sorted(clusters.state_dict()) == ["centers", "shares"]
    assert clusters.centers.shape == (4, 28 * 28)


def test_latent_space_maps_images_to_the_shipped_vae_gmm_posterior_means():
    space = VAELatentSpace()
    space.fit("mnist")
    vae = load("vae-gmm")
    images = torch.rand(7, 1, 28, 28)
    with torch.no_grad():
        means, _ = vae.encode(images)
    assert space(images).shape == (7, VAELatentSpace.dim)
    torch.testing.assert_close(space(images), means)
    # the same features whatever the chunking of a whole split
    space.chunk = 3
    torch.testing.assert_close(space.features(images), means)


def test_latent_space_stays_frozen_inside_a_training_model(tiny_dataset):
    model = create_model("gan-sc", clusters=10, cluster_space="vae-gmm", metrics_samples=0)
    model.prepare_training(tiny_dataset, resume=False)
    space = model.conditioning.space
    before = {k: v.clone() for k, v in space.state_dict().items()}
    model.train()
    assert not space.training and not space.encoder.training  # BatchNorm keeps its stats
    assert not any(p.requires_grad for p in space.parameters())
    # the frozen encoder is not counted as trained parameters
    pixels = create_model("gan-sc", clusters=10, cluster_space="pixels")
    assert model.num_parameters() == pixels.num_parameters()
    images, labels = tiny_dataset.batch(torch.arange(64))
    optimizer = torch.optim.SGD(model.optimizer_groups()["discriminator"], lr=0.1)
    model.training_loss(images, labels, step=0, phase="discriminator")["loss"].backward()
    optimizer.step()
    after = space.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # each training image's cluster is its features' nearest centre
    found = model.conditioning.training_labels(images, labels)
    assert torch.equal(found, torch.cdist(space(images), model.conditioning.centers).argmin(1))


def test_adding_the_space_leaves_the_networks_initialisation_alone():
    torch.manual_seed(0)
    latent = create_model("gan-sc", cluster_space="vae-gmm")
    torch.manual_seed(0)
    pixels = create_model("gan-sc", cluster_space="pixels")
    for name, tensor in pixels.state_dict().items():
        if not name.startswith("conditioning."):
            assert torch.equal(tensor, latent.state_dict()[name]), name


def test_a_model_clustered_in_latent_space_saves_and_loads_its_space(tiny_dataset, tmp_path):
    model = create_model("gan-sc", clusters=10, cluster_space="vae-gmm", metrics_samples=0)
    model.prepare_training(tiny_dataset, resume=False)
    model.save_pretrained(tmp_path / "m")
    loaded = load(tmp_path / "m")
    assert loaded.config.cluster_space == "vae-gmm"
    images, labels = tiny_dataset.batch(torch.arange(32))
    assert torch.equal(
        loaded.conditioning.training_labels(images, labels),
        model.conditioning.training_labels(images, labels),
    )
    assert torch.equal(loaded.sample(4, seed=0), model.sample(4, seed=0))


def test_bad_cluster_spaces_fail_with_one_line_errors():
    with pytest.raises(RegistryError, match="cluster space"):
        create_model("gan-sc", cluster_space="no-such-space")
    with pytest.raises(ConfigError, match="set clusters too"):
        conditioning_for(0, 0, "vae-gmm")
    with pytest.raises(ConfigError, match="set clusters too"):
        create_model("dcgan", cluster_space="vae-gmm")
    assert "vae-gmm" in CLUSTER_SPACES.list() and "pixels" in CLUSTER_SPACES.list()


class _NotShipped(VAELatentSpace):
    model_name = "vae-mlp"  # no Fashion-MNIST weights ship for it


class _OtherArchitecture(VAELatentSpace):
    model_name = "vae-conv"  # a 64-dimensional latent space


def test_a_space_without_fitting_weights_says_so():
    with pytest.raises(ConfigError, match="no pretrained weights ship for 'vae-mlp'"):
        _NotShipped().fit("fashion-mnist")
    with pytest.raises(ConfigError, match="another encoder architecture"):
        _OtherArchitecture().fit("mnist")


def test_a_gan_saved_before_cluster_spaces_still_loads_on_pixels(tiny_dataset, tmp_path):
    model = create_model("gan-sc", clusters=10, cluster_space="pixels", metrics_samples=0)
    model.prepare_training(tiny_dataset, resume=False)
    model.save_pretrained(tmp_path / "old")
    config_path = tmp_path / "old" / "config.json"
    record = json.loads(config_path.read_text())
    del record["config"]["cluster_space"]  # what version 1 wrote
    record["config_version"] = 1
    config_path.write_text(json.dumps(record))
    loaded = load(tmp_path / "old")  # the preset now clusters in a latent space
    assert loaded.config.cluster_space == "pixels"
    assert torch.equal(loaded.sample(3, seed=0), model.sample(3, seed=0))
