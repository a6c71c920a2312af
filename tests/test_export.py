"""``genmnist export``: ONNX and TorchScript files of the sampling networks, checked against
the models' own sampling, and the command's one-line errors."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from genmnist.errors import ConfigError
from genmnist.export import EXPORT_FORMATS, export_model, read_description
from genmnist.models import load
from genmnist.models.base import SampleNoise


def require(*modules: str) -> None:
    """Skip when an optional package is missing, except on CI, which installs the extras
    (a missing one there is a failure, not a skip)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing and not os.environ.get("CI"):
        pytest.skip(f"needs {', '.join(missing)} (pip install 'genmnist[export]')")
    assert not missing, f"CI must install genmnist[export]: {missing} missing"


def run_onnx(path, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(feeds)
    assert all(i.shape[0] == "batch" for i in session.get_inputs())  # dynamic batch axis
    return torch.from_numpy(session.run(None, {k: v.numpy() for k, v in feeds.items()})[0])


def run_torchscript(path, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream
        network = torch.jit.load(str(path))
    with torch.no_grad():
        return network(*feeds.values())


RUNNERS = {"onnx": run_onnx, "torchscript": run_torchscript}


def gan_feeds(model, n: int, seed: int, temperature: float = 1.0):
    """The noise `GAN.generate` draws for ``model.sample(n, seed=seed)`` at
    ``temperature``, and its labels."""
    noise = SampleNoise(SampleNoise.sample_seeds(n, seed=seed))
    feeds = {"z": noise.randn(model.config.latent_dim) * temperature}
    if model.conditional:
        feeds["labels"] = torch.arange(n) % model.config.num_classes
    return feeds


# ------------------------------------------------------------------------------ per family
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_gan_generator_reproduces_sampling(tmp_path, fmt):
    if fmt == "onnx":
        require("onnx", "onnxscript", "onnxruntime")
    model = load("cgan")
    model.config = model.config.replace(temperature=0.8)  # its sampling default
    path = export_model(model, tmp_path / f"cgan.{fmt}", fmt).path
    description = read_description(path)
    # another batch size than the export's example, at the temperature the file names
    feeds = gan_feeds(model, 5, seed=3, temperature=description["temperature"])
    got = RUNNERS[fmt](path, feeds)
    expected = model.sample(5, seed=3, precision="fp32")
    assert got.shape == (5, 1, 28, 28)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert description["model"] == "cgan"
    assert list(description["inputs"]) == ["z", "labels"]
    assert "[0, 1]" in description["output"]["images"]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_vae_decoder_reproduces_sampling(tmp_path, fmt):
    if fmt == "onnx":
        require("onnx", "onnxscript", "onnxruntime")
    model = load("vae-conv")  # standard prior: z = temperature * N(0, I)
    path = export_model(model, tmp_path / "vae.bin", fmt).path
    description = read_description(path)
    assert description["prior"]["name"] == "standard"
    noise = SampleNoise(SampleNoise.sample_seeds(3, seed=7))
    z = noise.randn(model.config.latent_dim) * description["temperature"]
    got = RUNNERS[fmt](path, {"z": z})
    torch.testing.assert_close(got, model.sample(3, seed=7, precision="fp32"), atol=1e-5, rtol=0)


def test_exported_mixture_prior_describes_how_to_draw_codes(tmp_path):
    """vae-gmm: the mixture in the metadata, used as its `draw` line says, gives the codes
    the model itself decodes."""
    model = load("vae-gmm")
    path = export_model(model, tmp_path / "vae-gmm.pt", "torchscript").path
    prior = read_description(path)["prior"]
    assert prior["name"] == "gmm"
    means, stds = torch.tensor(prior["means"])[0], torch.tensor(prior["stds"])[0]
    weights = torch.tensor(prior["weights"])[0]
    assert means.shape == (model.config.prior_components, model.config.latent_dim)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-4)
    component = torch.tensor([0, 5])
    eps = torch.randn(2, model.config.latent_dim)
    z = means[component] + stds[component] * eps
    own = model.prior
    expected_z = own.means[component] + (0.5 * own.log_vars[component]).exp() * eps
    torch.testing.assert_close(z, expected_z)
    torch.testing.assert_close(run_torchscript(path, {"z": z}), model.decode(z), atol=1e-5, rtol=0)


def _ddpm_check(model, path, fmt):
    description = read_description(path)
    T = description["timesteps"]
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 28, 28, generator=g) * 2 - 1
    t = torch.tensor([0, T // 2, T - 1])
    alpha = torch.tensor(description["alpha"])[t][:, None, None, None].float()
    sigma = torch.tensor(description["sigma"])[t][:, None, None, None].float()
    x_t = alpha * x0 + sigma * torch.randn(3, 1, 28, 28, generator=g)
    null = description["conditioning"]["null_label"]
    labels = torch.tensor([1, 4, null])
    got = RUNNERS[fmt](path, {"x_t": x_t, "t": t, "labels": labels})
    with torch.no_grad():
        expected = model.unet(x_t, t, labels).float()
        # the metadata's alpha, sigma and v formula give the model's own x0 estimate
        x0_hat = alpha * x_t - sigma * got
        torch.testing.assert_close(x0_hat, model.raw_x0(x_t, t, labels), atol=1e-4, rtol=0)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert description["objective"] == "v"


def test_exported_ddpm_unet_torchscript(tmp_path):
    model = load("ddpm-cfg")
    path = export_model(model, tmp_path / "unet.pt", "torchscript").path
    _ddpm_check(model, path, "torchscript")
    assert read_description(path)["conditioning"]["null_label"] == 10


@pytest.mark.slow  # the dynamo exporter takes several seconds for the U-Net
def test_exported_ddpm_unet_onnx(tmp_path):
    require("onnx", "onnxscript", "onnxruntime")
    model = load("ddpm")  # conditioned on its own clusters: shares in the metadata
    path = export_model(model, tmp_path / "unet.onnx", "onnx").path
    _ddpm_check(model, path, "onnx")
    shares = read_description(path)["conditioning"]["shares"]
    assert len(shares) == 128 and sum(shares) == pytest.approx(1.0, abs=1e-4)


def test_a_composite_model_is_not_exportable(tmp_path):
    from genmnist.models import DDPM, Autoguided

    tiny = {"channels": (8, 8, 8), "attention_levels": ()}
    model = Autoguided(model=DDPM(**tiny), guide=DDPM(**tiny))
    with pytest.raises(ConfigError, match="no network to export"):
        export_model(model, tmp_path / "x.pt", "torchscript")
    assert not (tmp_path / "x.pt").exists()


def test_export_refuses_to_overwrite_unless_asked(tmp_path):
    model = load("gan-mlp")
    path = tmp_path / "g.pt"
    path.write_bytes(b"keep me")
    with pytest.raises(ConfigError, match="--overwrite"):
        export_model(model, path, "torchscript")
    assert path.read_bytes() == b"keep me"
    export_model(model, path, "torchscript", overwrite=True)
    assert path.read_bytes()[:2] == b"PK"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.pt"]  # no temporary files


def test_formats_are_registered():
    assert EXPORT_FORMATS.list() == ["onnx", "torchscript"]


# ------------------------------------------------------------------------------ the command
def test_cli_export_writes_a_file_and_describes_it(run_cli, tmp_path):
    path = tmp_path / "vae.pt"
    code, out, err = run_cli("export", "vae-mlp", "-o", path)
    assert code == 0, err
    assert "input z: float32 (batch, 80)" in out
    assert "output images" in out
    assert read_description(path)["model"] == "vae-mlp"


def test_cli_export_onnx(run_cli, tmp_path):
    require("onnx", "onnxscript", "onnxruntime")
    path = tmp_path / "dcgan.onnx"
    code, out, err = run_cli("export", "dcgan", "--format", "onnx", "-o", path)
    assert code == 0, err
    assert "(onnx;" in out and err == ""  # the exporter's own chatter stays hidden
    model = load("dcgan")
    feeds = gan_feeds(model, 2, seed=0)
    torch.testing.assert_close(
        run_onnx(path, feeds), model.sample(2, seed=0, precision="fp32"), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--format", "tflite"], ["--format", "tflite", "onnx, torchscript"]),
        (["--format", "onx"], ["did you mean 'onnx'"]),
        ([], ["cannot tell the export format", "--format"]),
    ],
)
def test_cli_export_bad_format(run_cli, assert_one_line_error, tmp_path, args, fragments):
    code, _, err = run_cli("export", "dcgan", "-o", tmp_path / "out.bin", *args)
    assert code == 2
    assert_one_line_error(err, *fragments)
    assert not (tmp_path / "out.bin").exists()


def test_cli_export_keeps_an_existing_file(run_cli, assert_one_line_error, tmp_path):
    path = tmp_path / "g.pt"
    path.write_text("precious")
    code, _, err = run_cli("export", "dcgan", "-o", path)
    assert code == 2
    assert_one_line_error(err, str(path), "already exists", "--overwrite")
    assert path.read_text() == "precious"
    code, _, err = run_cli("export", "dcgan", "-o", path, "--overwrite")
    assert code == 0, err
    assert path.read_bytes()[:2] == b"PK"


def test_cli_export_of_a_model_without_network(run_cli, assert_one_line_error, tmp_path):
    from genmnist.models import DDPM, Autoguided

    tiny = {"channels": (8, 8, 8), "attention_levels": ()}
    Autoguided(model=DDPM(**tiny), guide=DDPM(**tiny)).save_pretrained(tmp_path / "auto")
    code, _, err = run_cli("export", tmp_path / "auto", "-o", tmp_path / "a.pt")
    assert code == 2
    assert_one_line_error(err, "ddpm-autoguided", "no network to export")


def test_cli_export_names_the_extra_when_onnx_is_missing(
    run_cli, assert_one_line_error, tmp_path, monkeypatch
):
    import sys

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # importing it raises ImportError
    code, _, err = run_cli("export", "dcgan", "-o", tmp_path / "g.onnx")
    assert code == 1
    assert_one_line_error(err, "onnxscript", "genmnist[export]")
    assert not (tmp_path / "g.onnx").exists()


def test_export_description_is_json_in_the_file(tmp_path):
    path = export_model(load("gan-mlp"), tmp_path / "g.pt", "torchscript").path
    description = read_description(path)
    assert json.loads(json.dumps(description)) == description
    assert description["inputs"] == {"z": "float32 (batch, 64): noise z = temperature * N(0, I)"}
    assert description["temperature"] == 1.0


def test_exported_flow_velocity_network_samples_like_the_model(tmp_path):
    """Euler steps over the exported velocity network, as its description says, give the
    model's own fp32 Euler samples."""
    from genmnist.models import create_model

    torch.manual_seed(0)
    model = create_model("flow", channels=(8, 8, 8), attention_levels=(), clusters=2)
    with torch.no_grad():
        for parameter in model.unet.parameters():  # a new U-Net's output layer is zero
            parameter.normal_(0, 0.1)
    model.eval()
    path = export_model(model, tmp_path / "velocity.pt", "torchscript").path
    description = read_description(path)
    assert description["guidance_scale"] == 1.0 and "t = 1" in description["inputs"]["x_t"]
    noise = SampleNoise(SampleNoise.sample_seeds(3, seed=5))
    labels = model.conditioning.sampling_labels(noise, None)
    x = noise.randn(1, 28, 28)
    times = torch.linspace(1, 0, 4).tolist()
    for t, t_next in zip(times, times[1:], strict=False):
        velocity = run_torchscript(path, {"x_t": x, "t": torch.full((3,), t), "labels": labels})
        x = x + (t_next - t) * velocity
    expected = model.sample(3, seed=5, sampler="euler", steps=3, precision="fp32")
    torch.testing.assert_close(((x + 1) / 2).clamp(0, 1), expected, atol=1e-5, rtol=0)
