"""Shipped weights draw the same images, bit for bit, across refactors of the code.

Each digest was recorded from the shipped weights (one CPU thread, seed 0, six samples),
once per CPU kernel set, before a restructuring of the models; a change of the shipped
weights is the only reason to record new ones (as for ``cvae`` and the new ``vae-gmm``,
retrained with a mixture prior and later for twice as long, ``cvae`` again with ten
times the mixture components, and ``dcgan`` and ``cgan`` retrained with a minibatch-std
discriminator beside the new ``gan-sc``; ``cgan`` again for 15 epochs, ``gan-mlp`` with
a new recipe and a BatchNorm generator, the Fashion-MNIST ``vae-conv`` and ``cvae`` with
their decoders tuned against a discriminator, ``cgan`` with an auxiliary classifier, the
MNIST ``ddpm`` with its null label tuned, ``ddpm-cfg`` trained for 6, then 10 epochs,
``gan-sc`` with its clusters found in a latent space), or a
fix of a sampler (``heun``'s first step on
a cosine schedule).
New shipped models add theirs; a change of a model's sampling defaults keeps the old
digest under the old settings spelled out and adds one for the new defaults. Weights
retrained on a machine of one kernel set have that set's digest only (None for the other,
skipped) until they are sampled on a machine of the other kind.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import genmnist

#: The CPU kernel sets (`torch.backends.cpu.get_cpu_capability`, and the vendor where it
#: matters) the digests were recorded with: AVX-512 and AVX2 kernels round differently,
#: so the last bits of an image differ between them, and diffusion and flow models sample
#: in bf16 only where the CPU has native bf16 kernels (AVX-512), in fp32 on an AVX2-only
#: CPU. The math libraries take other AVX-512 code paths on AMD than on Intel CPUs, so an
#: AMD AVX-512 CPU has digests of its own.
KERNELS = ("AVX512", "AVX2", "AVX512 AMD")


def kernel_set() -> str:
    """This CPU's entry of `KERNELS` (or its capability, when none is recorded)."""
    kernels = torch.backends.cpu.get_cpu_capability()
    try:
        amd = "AuthenticAMD" in Path("/proc/cpuinfo").read_text()
    except OSError:
        amd = False
    return f"{kernels} AMD" if kernels == "AVX512" and amd else kernels


#: Guidance at every step in the even spacing: what ``ddpm-cfg`` did before its defaults
#: became guidance in a log-SNR interval and trailing steps.
EVERYWHERE = {"guidance_interval": (float("-inf"), float("inf")), "spacing": "uniform"}

REFERENCE = [
    # trained with an auxiliary classifier on an AVX2-only machine: no AVX-512 digest yet
    ("mnist", "cgan", {}, (None, "31426532cfbdfbc2", "c57e685a8a871150")),
    ("mnist", "cvae", {}, ("a74ccdac8d5f44c3", "23380990380753cf", "103aa6fb97fcf588")),
    ("mnist", "dcgan", {}, ("95b29c755c5b7576", "8c32917c21ef29c1", "a569c80a5c1e0e21")),
    # retrained with clusters in the vae-gmm latent space on an AVX2-only machine: no
    # AVX-512 digest yet
    ("mnist", "gan-sc", {}, (None, "8d260f83f1051382", None)),
    ("mnist", "gan-mlp", {}, ("0e29cd15cf7679f4", "2e51e30ca95e19ef", "2e51e30ca95e19ef")),
    ("mnist", "vae-conv", {}, ("d0972a4b0f646506", "ebd94a84dc032586", "d0972a4b0f646506")),
    ("mnist", "vae-gmm", {}, ("f75c43dedebe9486", "83ad28a22d05e09b", "25625908b37bbeed")),
    ("mnist", "vae-mlp", {}, ("fdd52c9e12712017", "75afdbad25fcb3e8", "75afdbad25fcb3e8")),
    # its null label tuned on an AMD AVX-512 machine: no Intel AVX-512 digest yet
    ("mnist", "ddpm", {}, (None, "a30ca0cf95387624", "c7595965a7d494f4")),
    (
        "mnist",
        "ddpm",
        {"sampler": "ddim", "steps": 4},
        (None, "41807030c36cc0d0", "374b50070ac61808"),
    ),
    # retrained for 10 epochs on an AMD AVX-512 machine: no Intel AVX-512 digest yet; the
    # first three spell out ddpm-cfg's earlier defaults (guidance everywhere, uniform
    # steps; then guidance 2.0 in the interval), the last one, its default guidance 1.75,
    # was recorded on an AVX2-only machine
    (
        "mnist",
        "ddpm-cfg",
        {**EVERYWHERE, "guidance": 1.5, "steps": 20},
        (None, "9b0c3fe9996c830a", "e6cdb1badbe6cde6"),
    ),
    (
        "mnist",
        "ddpm-cfg",
        {**EVERYWHERE, "guidance": 3.0, "steps": 5, "sampler": "heun"},
        (None, "28ff0fe1a393f7b1", "a023a255c3a8f776"),
    ),
    ("mnist", "ddpm-cfg", {"guidance": 2.0}, (None, "1b8e904039cb26dc", "d76162abc31b5160")),
    ("mnist", "ddpm-cfg", {}, (None, "7c395e0b689f72b1", None)),
    ("mnist", "flow", {}, ("e5a5376a21bf99cb", "ae4c60a56fd35bd2", "e5a5376a21bf99cb")),
    (
        "mnist",
        "flow",
        {"sampler": "midpoint", "steps": 3, "guidance": 1.0},
        ("44c36b6b96817d0e", "937e81c1a0f61549", "44c36b6b96817d0e"),
    ),
    ("mnist", "flow-cfg", {}, ("3e9768ff08bf4db9", "9b1a525509a3121f", "3e9768ff08bf4db9")),
    ("mnist", "reflow", {}, ("21bdc396d54ed7e9", "9c486454538ef97c", "21bdc396d54ed7e9")),
    ("mnist", "reflow", {"steps": 1}, ("be635c1f75783497", "edd2e169074ed0e3", "be635c1f75783497")),
    ("fashion-mnist", "ddpm", {}, ("3333c5b667f692a5", "7cff041990564836", "1703a1cf70c3f4b3")),
    ("fashion-mnist", "flow", {}, ("ce4ee85d03a56347", "bf0637229447603c", "ce4ee85d03a56347")),
    # retrained for 10 epochs on an AMD AVX-512 machine: no Intel AVX-512 digest yet
    ("fashion-mnist", "ddpm-cfg", {}, (None, "118c737546053e71", "310667faadb10583")),
    ("fashion-mnist", "flow-cfg", {}, ("04ad0d2625fe363f", "dc8cc41d93dcaa50", "04ad0d2625fe363f")),
    # retrained with beta 0.1 on an AVX2-only machine: no AVX-512 digest recorded yet
    ("fashion-mnist", "vae-conv", {}, (None, "e2581c46c017aec2", "5307d2d5ad14de04")),
    ("fashion-mnist", "vae-gmm", {}, ("066ab7a330185723", "8bac2bb23904a0a3", "ac8fff792e205bf7")),
    ("fashion-mnist", "cvae", {}, (None, "608111e3d41aa084", "1570a6b028dd4773")),
    ("fashion-mnist", "dcgan", {}, ("d10dba029849f5ef", "2b1702a48012d344", "4b68e19a0f2063a0")),
    # its default temperature became 1.1 on an AVX2-only machine: the earlier 1.0 spelled out
    (
        "fashion-mnist",
        "cgan",
        {"temperature": 1.0},
        ("2d0c38f1fd4f8c76", "1723f8fd503a1a9f", "e743bd93da7a4863"),
    ),
    ("fashion-mnist", "cgan", {}, (None, "73c49c7bb4244d3f", None)),
]


@pytest.mark.parametrize(("dataset", "name", "options", "digests"), REFERENCE)
def test_shipped_model_samples_are_unchanged(dataset, name, options, digests):
    kernels = kernel_set()
    if kernels not in KERNELS:
        pytest.skip(f"no digests recorded with {kernels} kernels")
    digest = dict(zip(KERNELS, digests, strict=True))[kernels]
    if digest is None:
        pytest.skip(f"these weights have no digest recorded with {kernels} kernels yet")
    torch.set_num_threads(1)
    model = genmnist.load(name, dataset=dataset)
    images = model.sample(6, seed=0, **options)
    assert hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16] == digest
