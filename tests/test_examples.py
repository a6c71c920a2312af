"""The scripts in examples/ run and write valid PNGs; the plugin example works.

Each script runs in a subprocess (``sys.executable``, from the repository root) with tiny
settings. Scripts that train need real MNIST: they are skipped unless ``GENMNIST_DATA``
points at a folder holding ``MNIST/raw/`` (the ``real_data`` fixture of conftest.py).
Subprocesses inherit conftest's ``GENMNIST_DISABLE_PLUGINS=1`` except the one that checks
the installed plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PLUGIN_SRC = EXAMPLES / "plugin-example" / "src"
PLUGIN_WEIGHTS = PLUGIN_SRC / "genmnist_plugin_example" / "pretrained" / "mnist" / "pixel-gaussian"
CELL = 28 + 2  # make_grid: each image plus 2 pixels of padding


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python *args`` from the repository root; fail with its output if it fails."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (
        f"{' '.join(args)} exited with {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result


def png_size(path: Path) -> tuple[int, int]:
    """Assert ``path`` is a valid PNG file and return its (width, height)."""
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        image.load()
        return image.size


def grid_size(cols: int, rows: int) -> tuple[int, int]:
    return (cols * CELL + 2, rows * CELL + 2)


# ----------------------------------------------------------------- sample_pretrained.py
@pytest.mark.slow
def test_sample_pretrained_from_checkpoint(tmp_path):
    from genmnist.models import create_model

    checkpoint = tmp_path / "tiny-cvae"
    create_model("cvae", hidden_dims=(8, 16, 16), latent_dim=4).save_pretrained(checkpoint)
    out = tmp_path / "samples"
    result = run(
        "examples/sample_pretrained.py",
        "--checkpoint",
        str(checkpoint),
        "--per-label",
        "3",
        "--out",
        str(out),
    )
    assert "cvae" in result.stdout
    for label in range(10):
        assert png_size(out / f"label-{label}.png") == grid_size(3, 1)
    assert png_size(out / "all.png") == grid_size(3, 10)


@pytest.mark.slow
def test_sample_pretrained_shipped_weights(tmp_path):
    from genmnist.models import pretrained_dir

    if pretrained_dir("cvae") is None:
        pytest.skip("no weights ship for cvae yet (src/genmnist/pretrained/mnist/cvae/)")
    out = tmp_path / "samples"
    run("examples/sample_pretrained.py", "--per-label", "2", "--out", str(out))
    assert png_size(out / "all.png") == grid_size(2, 10)


# ----------------------------------------------------------------- training examples
@pytest.mark.slow
@pytest.mark.real_data
def test_custom_model(tmp_path, real_data):
    # The data root comes from GENMNIST_DATA, inherited by the subprocess.
    result = run("examples/custom_model.py", "--steps", "5", "--out", str(tmp_path))
    assert "trained 5 steps" in result.stdout
    assert png_size(tmp_path / "samples.png") == grid_size(8, 8)
    record = json.loads((tmp_path / "model" / "config.json").read_text())
    assert record["model"] == "split-vae"
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.real_data
def test_latent_interpolation(tmp_path, real_data):
    run(
        "examples/latent_interpolation.py",
        "--data-dir",
        str(real_data),
        "--steps",
        "5",
        "--num",
        "4",
        "--digits",
        "1",
        "7",
        "--out",
        str(tmp_path),
    )
    # Two rows (slerp, linear) of start + 4 decoded + end.
    assert png_size(tmp_path / "interpolation-1-7.png") == grid_size(6, 2)


# ----------------------------------------------------------------- plugin example
@pytest.fixture
def plugin_model(monkeypatch):
    """The plugin's model module, imported from the source tree (installed or not)."""
    monkeypatch.syspath_prepend(str(PLUGIN_SRC))
    from genmnist_plugin_example import model

    return model


def test_plugin_model_contract(plugin_model):
    from genmnist.models.base import GenerativeModel, ModelConfig

    cls = plugin_model.PixelGaussian
    assert issubclass(cls, GenerativeModel)
    assert issubclass(cls.config_class, ModelConfig)
    assert cls.pretrained_package == "genmnist_plugin_example.pretrained"
    model = cls()
    assert model.num_parameters() == 2 * 784

    images = torch.rand(6, 1, 28, 28)
    losses = model.training_loss(images, torch.zeros(6, dtype=torch.long), step=0)
    assert losses["loss"].ndim == 0 and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert model.mean_logits.grad is not None and model.log_std.grad is not None

    samples = model.sample(4, seed=3)
    assert samples.shape == (4, 1, 28, 28)
    # sample() clamps to [0, 1], which would hide a generate() that leaves the range
    from genmnist.models import SampleNoise

    with torch.no_grad():
        generated = model.generate(SampleNoise(SampleNoise.sample_seeds(4, seed=3)), None)
    assert generated.min() >= 0 and generated.max() <= 1
    assert torch.equal(samples, generated)
    assert torch.equal(samples[:2], model.sample(2, seed=3))  # per-sample noise


def test_plugin_shipped_weights(plugin_model):
    record = json.loads((PLUGIN_WEIGHTS / "config.json").read_text())
    assert record["format"] == "genmnist-model" and record["model"] == "pixel-gaussian"
    cls = plugin_model.PixelGaussian
    model = cls(cls.config_class.from_dict(record["config"]))
    model.load_weights(PLUGIN_WEIGHTS / "model.safetensors")
    # Trained on MNIST: the mean image has MNIST's mean intensity (0.1307).
    assert abs(torch.sigmoid(model.mean_logits).mean().item() - 0.1307) < 0.01


@pytest.mark.slow
def test_plugin_installed_sample_cli(tmp_path):
    if not entry_points(group="genmnist.models", name="pixel-gaussian"):
        pytest.skip("plugin not installed (pip install -e examples/plugin-example)")
    env = {k: v for k, v in os.environ.items() if k != "GENMNIST_DISABLE_PLUGINS"}
    out = tmp_path / "plugin.png"
    args = ("sample", "pixel-gaussian", "-n", "4", "-o", str(out), "--seed", "0")
    run("-m", "genmnist", *args, env=env)
    assert png_size(out) == grid_size(4, 1)
