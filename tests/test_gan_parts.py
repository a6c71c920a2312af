"""GAN parts: differentiable augmentations, the minibatch-std feature and self-conditioning
on k-means clusters (the ``gan-sc`` preset)."""

from __future__ import annotations

import pytest
import torch

from genmnist.conditioning import ClusterConditioning, Unconditioned
from genmnist.errors import ConfigError, RegistryError
from genmnist.losses import r1_penalty
from genmnist.models import GAN, create_model, load
from genmnist.nn import DECODERS, NORMS, ConvDiscriminator, MLPDiscriminator
from genmnist.nn.augment import AUGMENTATIONS, augment_pipeline, cutout, translation
from genmnist.nn.layers import BatchNorm, MinibatchStd
from genmnist.training import Trainer, TrainOptions

TINY = {
    "latent_dim": 4,
    "g_hidden_dims": (4, 8),
    "d_hidden_dims": (4, 8),
    "embed_dim": 3,
    "precision": "fp32",
    "metrics_samples": 8,
}


def digit_like(n: int = 8, seed: int = 0) -> torch.Tensor:
    """Images in [-1, 1]: background -1 with a random bright block in the middle."""
    g = torch.Generator().manual_seed(seed)
    images = torch.full((n, 1, 28, 28), -1.0)
    images[:, :, 10:18, 10:18] = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
    return images


# --------------------------------------------------------------------------- augmentations
def test_translation_shifts_whole_images_and_fills_with_background():
    torch.manual_seed(0)
    images = digit_like(32)
    out = translation(images)
    assert out.shape == images.shape
    shifts = []
    for original, shifted in zip(images, out, strict=True):
        found = [
            (dy, dx)
            for dy in range(-5, 6)
            for dx in range(-5, 6)
            if torch.equal(torch.roll(original, (dy, dx), dims=(1, 2)), shifted)
        ]
        assert len(found) == 1  # a pure shift of the image, nothing else changed
        shifts += found
    assert max(max(abs(dy), abs(dx)) for dy, dx in shifts) == 3  # up to 28 / 8 pixels
    assert {dy > 0 for dy, _ in shifts} == {True, False}
    assert {dx < 0 for _, dx in shifts} == {True, False}


def test_translation_of_an_edge_pixel_pads_with_background():
    images = torch.full((64, 1, 28, 28), -1.0)
    images[:, :, 0, 0] = 1.0  # the top-left pixel
    torch.manual_seed(1)
    out = translation(images)
    # the ink either stays (one pixel at value 1) or leaves the frame: never duplicated,
    # and nothing but background and that pixel appears
    assert set(out.unique().tolist()) <= {-1.0, 1.0}
    assert (out == 1).flatten(1).sum(1).max() == 1
    assert (out == 1).flatten(1).sum(1).min() == 0  # some shift moved it out


def test_cutout_blanks_one_square_of_background():
    torch.manual_seed(0)
    images = torch.ones(16, 1, 28, 28)
    out = cutout(images)
    blanked = (out == -1).flatten(1).sum(1)
    assert torch.equal(blanked, torch.full((16,), 49))  # a 7x7 square in every image
    assert ((out == 1) | (out == -1)).all()


def test_brightness_keeps_background_and_scales_ink():
    torch.manual_seed(0)
    images = digit_like(8)
    out = AUGMENTATIONS.get("brightness")(images)
    background = images == -1
    assert torch.equal(out[background], images[background])
    ratio = (out + 1)[~background] / (images + 1)[~background]
    assert ratio.min() >= 0.75 - 1e-6 and ratio.max() <= 1 + 1e-6


def test_augmentations_are_differentiable_and_the_pipeline_composes():
    images = digit_like(4).requires_grad_(True)
    pipeline = augment_pipeline(("translation", "cutout", "brightness"))
    pipeline(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert augment_pipeline(()) is None
    with pytest.raises(ConfigError, match="d_augment"):
        create_model("dcgan", **TINY, d_augment="cutout")  # a name, not a list
    with pytest.raises(RegistryError, match="rotation"):
        augment_pipeline(("rotation",))


# --------------------------------------------------------------------------- minibatch std
def test_minibatch_std_appends_the_batch_spread():
    layer = MinibatchStd()
    x = torch.tensor([[0.0, 2.0], [2.0, 2.0]])  # per-feature std (biased): 1 and 0
    expected = torch.tensor([[0.0, 2.0, 0.5], [2.0, 2.0, 0.5]])
    assert torch.allclose(layer(x), expected, atol=1e-4)  # sqrt(var + 1e-8) for var 0: 1e-4
    maps = torch.randn(3, 4, 5, 5)
    out = layer(maps)
    assert out.shape == (3, 5, 5, 5)
    assert torch.allclose(out[:, 4], maps.std(0, unbiased=False).mean().expand(3, 5, 5))
    assert torch.equal(layer(maps[:1])[:, 4], torch.zeros(1, 5, 5))  # a lone image


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_minibatch_std_has_finite_second_order_gradients_where_features_agree(dtype):
    # A feature that is the same for every image (blank background) has zero spread; the
    # R1 penalty differentiates the input gradient once more, and must not get NaN there.
    x = torch.randn(6, 3, 4, 4, dtype=dtype)
    x[:, 0] = 0.5
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(MinibatchStd()(x).square().sum(), x, create_graph=True)
    grad.float().square().sum().backward()
    assert torch.isfinite(grad).all() and torch.isfinite(x.grad).all()


def test_r1_penalty_trains_a_discriminator_with_minibatch_std():
    torch.manual_seed(0)
    d = ConvDiscriminator(hidden_dims=(4, 8), norm="none", minibatch_std=True)
    images = digit_like(6).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = d(images)
    penalty = r1_penalty(logits, images)
    penalty.backward()
    assert torch.isfinite(penalty) and penalty > 0
    assert all(torch.isfinite(p.grad).all() for p in d.parameters() if p.grad is not None)


@pytest.mark.parametrize("cls", [ConvDiscriminator, MLPDiscriminator])
def test_discriminators_take_minibatch_std_with_projection(cls):
    d = cls(hidden_dims=(4, 8), num_classes=3, minibatch_std=True)
    images = digit_like(5)
    logits = d(images, torch.tensor([0, 1, 2, 0, 1]))
    assert logits.shape == (5,)
    # a batch's logits depend on the other images in it
    varied = images.clone()
    varied[1:] = torch.rand(4, 1, 28, 28) * 2 - 1
    assert not torch.allclose(d(varied, torch.tensor([0, 1, 2, 0, 1]))[0], logits[0])


# --------------------------------------------------------------------------- self-conditioned GAN
def test_gan_sc_preset_is_unconditional_to_the_user_and_conditioned_on_clusters():
    model = create_model("gan-sc")
    assert not model.conditional and model.config.num_classes == 0
    assert isinstance(model.conditioning, ClusterConditioning)
    assert model.conditioning.num_labels == model.config.clusters > 1
    assert model.config.minibatch_std and model.config.real_target == 0.9
    assert model.label_embedding.num_embeddings == model.config.clusters
    assert model.discriminator.projection.num_embeddings == model.config.clusters
    with pytest.raises(ConfigError, match="unconditional"):
        model.sample(2, labels=1, seed=0)
    with pytest.raises(ConfigError, match="clusters"):
        create_model("gan-sc", num_classes=10)
    assert isinstance(create_model("dcgan").conditioning, Unconditioned)


def test_gan_sc_fits_clusters_trains_on_them_and_samples_them_by_share(tmp_path, tiny_dataset):
    model = create_model("gan-sc", **TINY, clusters=3, batch_size=16)
    Trainer(
        model, TrainOptions(out=tmp_path / "run", max_steps=2, progress=False), tiny_dataset,
        log=lambda _: None,
    ).fit()  # fmt: skip
    loaded = load(tmp_path / "run")
    shares = loaded.conditioning.shares
    assert torch.isclose(shares.sum(), torch.tensor(1.0)) and (shares > 0).all()
    assert loaded.conditioning.centers.abs().sum() > 0  # fitted, saved and loaded
    images, labels = tiny_dataset.batch(torch.arange(16))
    clusters = loaded.conditioning.training_labels(images, labels)
    assert clusters.max() < 3 and not torch.equal(clusters, labels)
    # sampling draws clusters by share, from each sample's own noise: reproducible and
    # independent of the batch
    a = loaded.sample(6, seed=3)
    b = torch.cat([loaded.sample(6, seed=3, batch_size=2)])
    assert torch.equal(a, b)


def test_cluster_labels_change_the_generated_image():
    torch.manual_seed(0)
    model = create_model("gan-sc", **TINY, clusters=4).eval()
    z = torch.randn(1, 4).expand(4, 4)
    images = model.generate_images(z, torch.arange(4))
    assert not torch.allclose(images[0], images[1])


def test_augmented_critic_is_used_in_both_phases(monkeypatch):
    model = create_model("dcgan", **TINY, d_augment=("translation",))
    calls = []
    original = model.augment
    monkeypatch.setattr(model, "augment", lambda x: calls.append(x.shape[0]) or original(x))
    images = torch.rand(6, 1, 28, 28)
    model.training_loss(images, torch.zeros(6), 0, "discriminator")
    model.training_loss(images, torch.zeros(6), 0, "generator")
    assert calls == [6, 6, 6]  # real, fake, then the generator's fakes


def test_old_gan_configs_load_with_the_old_behaviour(tmp_path):
    model = create_model("cgan", **TINY)
    folder = model.save_pretrained(tmp_path / "cgan")
    import json

    config = json.loads((folder / "config.json").read_text())
    for field in ("clusters", "minibatch_std", "d_augment"):
        del config["config"][field]  # as written before these fields existed
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load(folder)
    assert isinstance(loaded, GAN) and loaded.config.clusters == 0
    assert loaded.augment is None and loaded.config.minibatch_std is False
    assert torch.equal(loaded.sample(3, labels=2, seed=1), model.sample(3, labels=2, seed=1))


# --------------------------------------------------------------------------- MLP generators
def test_mlp_norm_decoder_normalises_each_hidden_layer_and_plain_mlp_does_not():
    plain = DECODERS.create("mlp", in_features=4, hidden_dims=(8, 16), norm="batch")
    normed = DECODERS.create("mlp-norm", in_features=4, hidden_dims=(8, 16), norm="batch")
    grouped = DECODERS.create("mlp-norm", in_features=4, hidden_dims=(8,), norm="group")
    # the plain decoder's layer numbering is what its saved weights were written with
    assert [k for k in plain.state_dict() if k.endswith("weight")] == [
        "net.0.weight", "net.2.weight", "net.4.weight"
    ]  # fmt: skip
    norms = [m for m in normed.net if isinstance(m, BatchNorm)]
    assert [m.num_features for m in norms] == [8, 16]
    assert isinstance(grouped.net[1], torch.nn.GroupNorm)
    z = torch.randn(6, 4)
    assert normed(z).shape == grouped(z).shape == plain(z).shape == (6, 1, 28, 28)
    hidden = normed.net[:2](z)  # in training mode: standardised over the batch
    assert torch.allclose(hidden.mean(0), torch.zeros(8), atol=1e-5)


def test_batch_norm_takes_flat_and_map_inputs_and_loads_batchnorm2d_weights():
    layer = NORMS.create("batch", channels=3)
    assert layer(torch.randn(5, 3)).shape == (5, 3)
    assert layer(torch.randn(5, 3, 4, 4)).shape == (5, 3, 4, 4)
    with pytest.raises(ValueError, match="3-D"):
        layer(torch.randn(5, 3, 4))
    saved = torch.nn.BatchNorm2d(3)
    saved.running_mean.fill_(0.5)
    layer.load_state_dict(saved.state_dict())  # conv models saved before keep loading
    assert torch.equal(layer.running_mean, torch.full((3,), 0.5))
