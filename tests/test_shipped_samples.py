"""Shipped weights draw the same images, bit for bit, across refactors of the code.

Each digest was recorded from the shipped weights (one CPU thread, seed 0, six samples)
before a restructuring of the models; a change of the shipped weights is the only reason
to record new ones (as for ``cvae`` and the new ``vae-gmm``, retrained with a mixture
prior and later for twice as long, ``cvae`` again with ten times the mixture components,
and ``dcgan`` and ``cgan`` retrained with a minibatch-std discriminator beside the new
``gan-sc``; ``cgan`` again for 15 epochs, ``gan-mlp`` with a new recipe and a
BatchNorm generator), or a fix of a sampler (``heun``'s first step on a cosine schedule).
New shipped models add theirs; a change of a model's sampling defaults keeps the old
digest under the old settings spelled out and adds one for the new defaults.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

import genmnist

#: Guidance at every step in the even spacing: what ``ddpm-cfg`` did before its defaults
#: became guidance in a log-SNR interval and trailing steps.
EVERYWHERE = {"guidance_interval": (float("-inf"), float("inf")), "spacing": "uniform"}

REFERENCE = [
    ("mnist", "cgan", {}, "41826949f3278793"),
    ("mnist", "cvae", {}, "a74ccdac8d5f44c3"),
    ("mnist", "dcgan", {}, "95b29c755c5b7576"),
    ("mnist", "gan-sc", {}, "6a43b936afa3e21c"),
    ("mnist", "gan-mlp", {}, "0e29cd15cf7679f4"),
    ("mnist", "vae-conv", {}, "d0972a4b0f646506"),
    ("mnist", "vae-gmm", {}, "f75c43dedebe9486"),
    ("mnist", "vae-mlp", {}, "fdd52c9e12712017"),
    ("mnist", "ddpm", {}, "b7db346e125278c7"),
    ("mnist", "ddpm", {"sampler": "ddim", "steps": 4}, "2ef83daea9dd6cb9"),
    # ddpm-cfg's earlier defaults, spelled out since its defaults changed (same digests)
    ("mnist", "ddpm-cfg", {**EVERYWHERE, "guidance": 1.5, "steps": 20}, "89393e5c03975a61"),
    (
        "mnist",
        "ddpm-cfg",
        {**EVERYWHERE, "guidance": 3.0, "steps": 5, "sampler": "heun"},
        "81c37e406c54f6b0",
    ),
    ("mnist", "ddpm-cfg", {}, "dcb2c3fa88654fca"),
    ("mnist", "flow", {}, "e5a5376a21bf99cb"),
    ("mnist", "flow", {"sampler": "midpoint", "steps": 3, "guidance": 1.0}, "44c36b6b96817d0e"),
    ("mnist", "flow-cfg", {}, "3e9768ff08bf4db9"),
    ("mnist", "reflow", {}, "21bdc396d54ed7e9"),
    ("mnist", "reflow", {"steps": 1}, "be635c1f75783497"),
    ("fashion-mnist", "ddpm", {}, "3333c5b667f692a5"),
    ("fashion-mnist", "flow", {}, "ce4ee85d03a56347"),
    ("fashion-mnist", "flow-cfg", {}, "04ad0d2625fe363f"),
    ("fashion-mnist", "vae-conv", {}, "a7be108b5129f720"),
    ("fashion-mnist", "vae-gmm", {}, "066ab7a330185723"),
    ("fashion-mnist", "cvae", {}, "139d039f61164916"),
    ("fashion-mnist", "dcgan", {}, "d10dba029849f5ef"),
    ("fashion-mnist", "cgan", {}, "2d0c38f1fd4f8c76"),
]


@pytest.mark.parametrize(("dataset", "name", "options", "digest"), REFERENCE)
def test_shipped_model_samples_are_unchanged(dataset, name, options, digest):
    torch.set_num_threads(1)
    model = genmnist.load(name, dataset=dataset)
    images = model.sample(6, seed=0, **options)
    assert hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16] == digest
