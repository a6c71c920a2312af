"""The ``genmnist`` command line: output, exit codes, one-line errors, end to end runs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from genmnist.models import load
from genmnist.training import Trainer, TrainOptions


# --------------------------------------------------------------------------- help, list, info
def test_help_does_not_import_torch(run_python):
    code = (
        "import sys\n"
        "from genmnist.cli import main\n"
        "for argv in (['--help'], ['sample', '--help'], ['train', '--help'], []):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (argv, exc.code)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
        "print('HEAVY:', heavy)\n"
    )
    result = run_python(code=code)
    assert result.returncode == 0, result.stderr
    assert "HEAVY: []" in result.stdout
    assert "Usage: genmnist" in result.stdout
    for command in ("list", "info", "train", "sample"):
        assert command in result.stdout
    assert "--max-steps" in result.stdout and "--checkpoint" in result.stdout


@pytest.mark.slow
def test_python_m_genmnist_end_to_end_error_and_list(assert_one_line_error, run_python):
    result = run_python("-m", "genmnist", "sample", "vae-mlp", "-n", "0")
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "-n")
    listing = run_python("-m", "genmnist", "list")
    assert listing.returncode == 0, listing.stderr
    assert "vae-mlp" in listing.stdout


def test_list_shows_builtin_models(run_cli):
    code, out, err = run_cli("list")
    assert code == 0, err
    for name in ("vae-mlp", "vae-conv", "cvae"):
        assert name in out
    assert "genmnist (built-in)" in out
    cvae_row = next(line for line in out.splitlines() if " cvae " in line)
    assert " yes " in cvae_row  # conditional
    mlp_row = next(line for line in out.splitlines() if "vae-mlp" in line)
    assert " no " in mlp_row


def test_list_filters_with_wildcards(run_cli):
    code, out, _ = run_cli("list", "vae*")
    assert code == 0
    assert "vae-mlp" in out and "vae-conv" in out and "cvae" not in out
    code, out, _ = run_cli("list", "nothing-matches*")
    assert code == 0 and "vae" not in out


def test_list_reports_broken_plugins(plugin_registry, fake_entry_point, run_cli):
    plugin_registry(fake_entry_point("broken-gan", error=ImportError("no module named jax")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        code, out, err = run_cli("list")
    assert code == 0, err
    assert "vae-mlp" in out
    assert "warning" in out and "broken-gan" in out and "jax" in out


def test_info_shows_parameters_and_config(run_cli):
    from genmnist.models import create_model

    code, out, err = run_cli("info", "cvae")
    assert code == 0, err
    assert out.startswith("cvae - ")
    parameters = create_model("cvae").num_parameters()
    assert f"parameters: {parameters:,}" in out
    assert "conditional: yes, 10 classes" in out
    assert "source: genmnist (built-in)" in out
    for field in ("latent_dim", "hidden_dims", "batch_size", "lr_schedule"):
        assert field in out


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("args", "code", "fragments"),
    [
        (["sample", "vae-mlp", "-n", "0"], 2, ["-n"]),
        (["sample", "vae-mlp", "-n", "-5"], 2, ["-n"]),
        (["sample", "vae-mpl"], 2, ["unknown model 'vae-mpl'", "did you mean 'vae-mlp'"]),
        (["info", "cvea"], 2, ["unknown model 'cvea'", "'cvae'"]),
        (["train", "vae-mpl", "--max-steps", "1"], 2, ["did you mean 'vae-mlp'"]),
        (["sample", "cvae", "--label", "12"], 2, ["labels must be in 0..9"]),
        (["sample", "vae-mlp", "--label", "3"], 2, ["unconditional"]),
        (["sample", "vae-mlp", "--format", "gif"], 2, ["unknown output format 'gif'"]),
        (["sample", "vae-mlp", "--dataset", "cifar"], 2, ["unknown dataset 'cifar'"]),
        (["train", "vae-mlp", "--dataset", "cifar"], 2, ["unknown dataset 'cifar'"]),
        (["sample", "vae-mlp", "--batch-size", "0"], 2, ["--batch-size"]),
        (["frobnicate"], 2, ["frobnicate"]),
        (["sample", "vae-mlp", "--checkpoint", "{tmp}/missing"], 1, ["is not a folder"]),
        (["sample", "vae-mlp", "--checkpoint", "{tmp}/empty"], 1, ["no config.json"]),
        (["train", "vae-mlp", "--resume", "--out", "{tmp}/empty"], 1, ["nothing to resume"]),
        (["train", "vae-mlp", "--config", "{tmp}/missing.json"], 1, ["file not found"]),
        (["train", "vae-mlp", "--config", "{tmp}/bad.json"], 1, ["not valid JSON"]),
        (["train", "vae-mlp", "--config", "{tmp}/unknown.json"], 1, ["unknown VAEConfig field"]),
    ],
)
def test_errors_are_one_line_with_exit_code(
    tmp_path, args, code, fragments, run_cli, assert_one_line_error
):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "unknown.json").write_text('{"warp_factor": 9}')
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    exit_code, _, err = run_cli(*args)
    assert exit_code == code, err
    assert_one_line_error(err, *fragments)


# --------------------------------------------------------------------------- end to end
@pytest.fixture
def trained_folder(tmp_path, tiny_model, tiny_dataset):
    """A tiny vae-mlp trained for a few steps and saved with save_pretrained."""
    model = tiny_model("vae-mlp", batch_size=16, precision="fp32")
    options = TrainOptions(out=tmp_path / "run", max_steps=5, progress=False, device="cpu")
    Trainer(model, options, dataset=tiny_dataset, log=lambda line: None).fit()
    return model.save_pretrained(tmp_path / "exported")


def test_a_run_folder_brings_its_dataset(
    tmp_path, tiny_model, tiny_dataset, trained_folder, run_cli, capsys, monkeypatch
):
    from genmnist.cli.common import UsageProblem, resolve_model
    from genmnist.cli.evaluate import _resolve_compared

    run = tmp_path / "fashion-run"
    model = tiny_model("vae-mlp", batch_size=16, precision="fp32")
    options = TrainOptions(
        out=run, max_steps=2, progress=False, device="cpu", dataset="fashion-mnist"
    )
    Trainer(model, options, dataset=tiny_dataset, log=lambda line: None).fit()
    assert resolve_model(str(run), None, None).dataset == "fashion-mnist"
    assert capsys.readouterr().err == ""
    assert resolve_model(str(run), None, "mnist").dataset == "mnist"  # asked for: obeyed
    assert "trained on fashion-mnist, not mnist" in capsys.readouterr().err
    assert resolve_model("vae-mlp", None, None).dataset == "mnist"

    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("sample", run, "-n", "2")
    assert code == 0 and err == "", err
    assert "to vae-mlp-fashion-mnist-samples.png" in out

    loaded, dataset = _resolve_compared([str(run), "cvae"], None)
    assert dataset == "fashion-mnist" and loaded[1][2] == "shipped weights (fashion-mnist)"
    with pytest.raises(UsageProblem, match="trained on fashion-mnist and mnist; choose"):
        _resolve_compared([str(run), str(tmp_path / "run")], None)
    assert _resolve_compared([str(run), str(tmp_path / "run")], "mnist")[1] == "mnist"


def test_sample_png_and_npy_from_checkpoint(tmp_path, trained_folder, run_cli):
    png = tmp_path / "g.png"
    code, out, err = run_cli(
        "sample", "vae-mlp", "--checkpoint", trained_folder, "-n", "4", "-o", png,
        "--seed", "1",
    )  # fmt: skip
    assert code == 0, err
    assert "Saved 4 samples of vae-mlp (seed 1)" in out
    with Image.open(png) as picture:
        assert picture.format == "PNG" and picture.size == (4 * 30 + 2, 32)

    npy = tmp_path / "g.npy"
    code, _, err = run_cli(
        "sample", "vae-mlp", "--checkpoint", trained_folder, "-n", "4", "-o", npy,
        "--seed", "1", "--format", "npy",
    )  # fmt: skip
    assert code == 0, err
    array = np.load(npy)
    assert array.shape == (4, 1, 28, 28) and array.dtype == np.float32
    expected = load(trained_folder).sample(4, seed=1)
    np.testing.assert_allclose(array, expected.numpy(), atol=1e-6)
    assert np.asarray(Image.open(png)).std() > 0


def test_sample_pt_nrow_and_the_run_folder(tmp_path, trained_folder, run_cli):
    run_folder = tmp_path / "run"  # a training run folder works as --checkpoint too
    out_pt = tmp_path / "s.pt"
    code, _, err = run_cli(
        "sample", "vae-mlp", "--checkpoint", run_folder, "-n", "3", "-o", out_pt,
        "--seed", "2", "--batch-size", "2",
    )  # fmt: skip
    assert code == 0, err
    images = torch.load(out_pt, weights_only=True)
    assert images.shape == (3, 1, 28, 28)
    torch.testing.assert_close(images, load(run_folder).sample(3, seed=2), atol=1e-6, rtol=0)
    png = tmp_path / "rows.png"
    code, _, _ = run_cli(
        "sample", "vae-mlp", "--checkpoint", run_folder, "-n", "6", "--nrow", "2",
        "-o", png,
    )  # fmt: skip
    assert code == 0
    assert Image.open(png).size == (2 * 30 + 2, 3 * 30 + 2)


def test_a_folder_in_place_of_a_name(tmp_path, monkeypatch, trained_folder, run_cli):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("sample", trained_folder, "-n", "3", "--seed", "4", "-f", "npy")
    assert code == 0, err
    assert "Saved 3 samples of vae-mlp (seed 4) to vae-mlp-mnist-samples.npy" in out
    expected = load(trained_folder).sample(3, seed=4).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "vae-mlp-mnist-samples.npy"), expected, atol=1e-6)
    code, out, err = run_cli("info", trained_folder)
    assert code == 0, err
    assert out.startswith("vae-mlp - ") and f"folder: {trained_folder}" in out
    assert "config of" in out and "hidden_dims" in out


def test_resolve_model_names_folders_and_the_run_dataset(tmp_path, trained_folder, capsys):
    from genmnist.cli.common import UsageProblem, resolve_model

    run = tmp_path / "run"  # the training run behind trained_folder, on (synthetic) mnist
    resolved = resolve_model("vae-mlp", run, "mnist")
    assert resolved.model.name == "vae-mlp" and resolved.folder == run
    assert resolved.source == str(run) and capsys.readouterr().err == ""
    model, folder, _ = resolve_model(str(run), None, "fashion-mnist")
    assert folder == run and "trained on mnist, not fashion-mnist" in capsys.readouterr().err
    assert resolve_model(str(run), None, None).dataset == "mnist"  # no --dataset: the run's
    assert capsys.readouterr().err == ""
    shipped = resolve_model("vae-mlp", None, "mnist")
    assert shipped.folder is None and shipped.source == "shipped weights (mnist)"
    fresh = resolve_model("vae-mlp", None, "mnist", weights=False)
    assert fresh.folder is None and fresh.source == "registered defaults"
    with pytest.raises(UsageProblem, match="holds a 'vae-mlp' model, not 'cvae'"):
        resolve_model("cvae", run, "mnist")
    with pytest.raises(UsageProblem, match="did you mean 'vae-mlp'"):
        resolve_model("vae-mpl", run, "mnist")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--label", "3"], "model 'vae-mlp' is unconditional: it takes no labels"),
        (["--temperature", "-1"], "--temperature must be a positive number"),
        (["--sampler", "ddim"], "'vae-mlp' takes no --sampler"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_sampling_arguments_the_model_refuses_are_usage_errors(
    trained_folder, run_cli, assert_one_line_error, args, fragment
):
    code, _, err = run_cli("sample", "vae-mlp", "--checkpoint", trained_folder, "-n", "2", *args)
    assert code == 2
    assert_one_line_error(err, fragment)


def test_sample_with_checkpoint_of_another_model(trained_folder, run_cli, assert_one_line_error):
    code, _, err = run_cli("sample", "cvae", "--checkpoint", trained_folder, "-n", "2")
    assert code == 2
    assert_one_line_error(err, "holds a 'vae-mlp' model, not 'cvae'")


def test_sample_without_shipped_weights(monkeypatch, tmp_path, run_cli, assert_one_line_error):
    from genmnist.models.vae import VAE
    from genmnist.registry import MODELS

    MODELS.register("unshipped-vae", VAE, hidden_dims=(8,), latent_dim=2)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("sample", "unshipped-vae", "-n", "2")
    assert code == 1
    assert_one_line_error(err, "no pretrained weights ship for 'unshipped-vae'")
    assert list(tmp_path.iterdir()) == []


def test_train_and_resume_via_cli(tmp_path, idx_root, run_cli, assert_one_line_error):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"hidden_dims": [32], "latent_dim": 4, "batch_size": 16}))
    out = tmp_path / "run"
    base = ["train", "vae-mlp", "--data-dir", idx_root, "--out", out, "--quiet", "--device", "cpu"]
    code, _, err = run_cli(*base, "--max-steps", "5", "--config", config)
    assert code == 0, err
    assert "Done: 5 steps" in err
    record = json.loads((out / "config.json").read_text())
    assert record["model"] == "vae-mlp" and record["config"]["latent_dim"] == 4
    assert (out / "model.safetensors").is_file() and (out / "checkpoint.safetensors").is_file()

    # a second fresh run into the same folder is refused
    code, _, err = run_cli(*base, "--max-steps", "5", "--config", config)
    assert code == 1
    assert_one_line_error(err, "already holds a run")

    # --resume reads the run's own config (no --config needed) and continues
    code, _, err = run_cli(*base, "--max-steps", "8", "--resume")
    assert code == 0, err
    assert "Resumed" in err and "at step 5" in err
    assert "Done: 8 steps" in err
    assert load(out).config.latent_dim == 4

    code, _, err = run_cli(*base, "--max-steps", "9", "--resume", "--config", config)
    assert code == 2
    assert_one_line_error(err, "--config cannot change a run being resumed")
    code, _, err = run_cli("train", "vae-conv", "--out", out, "--resume", "--data-dir", idx_root)
    assert code == 2
    assert_one_line_error(err, "holds a 'vae-mlp' run, not 'vae-conv'")


def test_train_with_missing_data(tmp_path, monkeypatch, run_cli, assert_one_line_error):
    import torchvision.datasets

    # no network in tests: make the download fail fast, as offline machines do
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: network unreachable")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"hidden_dims": [8], "latent_dim": 2, "batch_size": 16}))
    code, _, err = run_cli(
        "train", "vae-mlp", "--data-dir", tmp_path / "nodata", "--out",
        tmp_path / "run", "--config", config, "--max-steps", "1",
    )  # fmt: skip
    assert code == 1
    assert_one_line_error(err, "mnist not found under", "download failed")


def test_sample_cvae_with_label(tmp_path, tiny_model, run_cli):
    model = tiny_model("cvae").eval()
    folder = model.save_pretrained(tmp_path / "cvae")
    out = tmp_path / "threes.npy"
    code, _, err = run_cli(
        "sample", "cvae", "--checkpoint", folder, "-n", "3", "--label", "3",
        "--seed", "5", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    expected = model.sample(3, labels=3, seed=5)
    np.testing.assert_allclose(np.load(out), expected.numpy(), atol=1e-6)
    assert not np.allclose(np.load(out), model.sample(3, labels=4, seed=5).numpy())


def test_sample_unknown_output_suffix_is_a_usage_error(
    tmp_path, trained_folder, run_cli, assert_one_line_error
):
    code, _, err = run_cli(
        "sample", "vae-mlp", "--checkpoint", trained_folder, "-o", tmp_path / "x.gif"
    )
    assert_one_line_error(err, "gif")
    assert code == 2


def test_outputs_that_exist_are_kept_without_overwrite(
    tmp_path, trained_folder, run_cli, assert_one_line_error
):
    png = tmp_path / "g.png"
    png.write_bytes(b"earlier work")
    sample = ("sample", "vae-mlp", "--checkpoint", trained_folder, "-n", "2", "-o", png)
    code, _, err = run_cli(*sample)
    assert code == 2
    assert_one_line_error(err, "--output", "already exists", "--overwrite")
    assert png.read_bytes() == b"earlier work"
    code, _, err = run_cli(*sample, "--overwrite")
    assert code == 0, err
    with Image.open(png) as picture:
        assert picture.format == "PNG"
    gif = tmp_path / "d.gif"
    gif.write_bytes(b"kept")  # checked before sampling, as -o is
    code, _, err = run_cli(*sample, "--overwrite", "--gif", gif)
    assert code == 2 and gif.read_bytes() == b"kept"
    # eval refuses before evaluating anything; compare refuses a folder holding a report
    result = tmp_path / "r.json"
    result.write_text("{}")
    code, _, err = run_cli("eval", "vae-mlp", "--checkpoint", trained_folder, "-o", result)
    assert code == 2 and result.read_text() == "{}"
    assert_one_line_error(err, "already exists")
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("earlier report")
    code, _, err = run_cli("compare", trained_folder, "-o", report)
    assert code == 2 and (report / "report.md").read_text() == "earlier report"
    assert_one_line_error(err, "already holds a report", "--overwrite")
    code, _, err = run_cli("compare", trained_folder, "-o", result)  # a file, not a folder
    assert code == 2 and result.read_text() == "{}"
    assert_one_line_error(err, "--out", "is not a folder")


@pytest.mark.parametrize(
    ("error", "code", "fragment"),
    [
        ("interrupted", 130, None),
        (KeyboardInterrupt(), 130, ""),  # Typer turns Ctrl-C into a silent exit 130
        (ZeroDivisionError("boom"), 1, "error: unexpected ZeroDivisionError: boom"),
    ],
)
def test_train_failures_map_to_exit_codes(
    monkeypatch, tmp_path, error, code, fragment, run_cli, assert_one_line_error
):
    from genmnist.training import TrainingInterrupted

    if error == "interrupted":
        error = TrainingInterrupted("interrupted at step 3; checkpoint saved in x")

    def fit(self):
        raise error

    monkeypatch.setattr(Trainer, "fit", fit)
    exit_code, out, err = run_cli("train", "vae-mlp", "--out", tmp_path / "run")
    assert exit_code == code
    assert "Traceback" not in err
    if fragment is None:  # the interruption message is printed, not an error line
        assert "interrupted at step 3" in out and "error" not in err
    elif not fragment:
        assert "error" not in err
    else:
        assert_one_line_error(err)
        assert err.startswith(fragment)


def test_debug_env_shows_the_exception(monkeypatch, tmp_path):
    def fit(self):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(Trainer, "fit", fit)
    from genmnist.cli import main

    monkeypatch.setenv("GENMNIST_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["train", "vae-mlp", "--out", str(tmp_path / "run")])


def test_train_config_from_another_runs_config_json(tmp_path, idx_root, trained_folder, run_cli):
    out = tmp_path / "again"
    code, _, err = run_cli(
        "train", "vae-mlp", "--config", trained_folder / "config.json", "--out", out,
        "--data-dir", idx_root, "--max-steps", "1", "--quiet", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert load(out).config == load(trained_folder).config


def test_sample_label_follows_the_checkpoint_config(tmp_path, tiny_model, run_cli):
    model = tiny_model("vae-mlp", num_classes=10).eval()
    folder = model.save_pretrained(tmp_path / "conditional-mlp")
    out = tmp_path / "s.npy"
    code, _, err = run_cli(
        "sample", "vae-mlp", "--checkpoint", folder, "-n", "2", "--label", "3",
        "--seed", "0", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    np.testing.assert_allclose(np.load(out), model.sample(2, labels=3, seed=0).numpy(), atol=1e-6)


def test_version_prints_the_package_version(run_cli):
    from genmnist._version import __version__

    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"genmnist {__version__}"


def test_default_sample_names_hold_the_model_and_the_dataset(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for dataset in ("mnist", "fashion-mnist"):
        code, _, err = run_cli("sample", "vae-conv", "-n", 2, "--dataset", dataset, "--seed", 0)
        assert code == 0, err
    mnist, fashion = (
        tmp_path / "vae-conv-mnist-samples.png",
        tmp_path / "vae-conv-fashion-mnist-samples.png",
    )
    assert mnist.is_file() and fashion.is_file()
    assert mnist.read_bytes() != fashion.read_bytes()


def test_info_describes_the_shipped_weights(run_cli):
    import genmnist

    shipped = genmnist.load("ddpm")
    code, out, _ = run_cli("info", "ddpm")
    assert code == 0 and f"parameters: {shipped.num_parameters():,}" in out
    assert "weights shipped for mnist" in out and "128" in out  # its clusters
    code, out, _ = run_cli("info", "gan-mlp", "--dataset", "fashion-mnist")
    assert code == 0 and "registered defaults (no weights ship for fashion-mnist)" in out


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".yml"])
def test_toml_and_yaml_configs_train_like_json(run_cli, tmp_path, idx_root, suffix):
    import json

    fields = {"hidden_dims": [16], "latent_dim": 3, "batch_size": 16, "lr": 0.002}
    texts = {
        ".toml": "hidden_dims = [16]\nlatent_dim = 3\nbatch_size = 16\nlr = 0.002\n",
        ".yaml": "hidden_dims: [16]\nlatent_dim: 3\nbatch_size: 16\nlr: 0.002\n",
        ".yml": "hidden_dims:\n  - 16\nlatent_dim: 3\nbatch_size: 16\nlr: 0.002\n",
    }
    runs = {}
    for kind, text in ((".json", json.dumps(fields)), (suffix, texts[suffix])):
        recipe = tmp_path / f"recipe{kind}"
        recipe.write_text(text)
        out = tmp_path / f"run{kind}"
        code, _, err = run_cli(
            "train", "vae-mlp", "--data-dir", idx_root, "--out", out, "--config", recipe,
            "--max-steps", 2, "--quiet", "--device", "cpu",
        )  # fmt: skip
        assert code == 0, err
        runs[kind] = out
    config = {k: json.loads((runs[k] / "config.json").read_text())["config"] for k in runs}
    assert config[".json"] == config[suffix]
    from genmnist.io import load_tensors

    weights = {k: load_tensors(runs[k] / "model.safetensors")[0] for k in runs}
    assert weights[".json"].keys() == weights[suffix].keys()
    assert all(torch.equal(weights[".json"][k], weights[suffix][k]) for k in weights[".json"])


@pytest.mark.parametrize(
    "name, text, fragment",
    [
        ("bad.toml", "latent_dim = = 3", "not valid TOML"),
        ("bad.yaml", "latent_dim: [3", "not valid YAML"),
        ("list.yaml", "- 1\n- 2\n", "config fields"),
        ("typed.toml", 'latent_dim = "three"', "latent_dim"),
        ("python.yaml", "x: !!python/object:os.system ls", "not valid YAML"),
    ],
)
def test_broken_toml_and_yaml_configs_fail_in_one_line(
    run_cli, assert_one_line_error, tmp_path, idx_root, name, text, fragment
):
    recipe = tmp_path / name
    recipe.write_text(text)
    code, _, err = run_cli(
        "train", "vae-mlp", "--data-dir", idx_root, "--out", tmp_path / "run", "--config", recipe
    )
    assert code != 0
    assert_one_line_error(err, fragment)
    assert not (tmp_path / "run").exists()


def test_sampling_reports_progress_per_batch_and_the_cli_bar_is_quiet_off_a_terminal(
    run_cli, tmp_path
):
    import genmnist
    from genmnist.cli.common import progress_bar

    seen = []
    genmnist.load("vae-mlp").sample(25, seed=0, batch_size=10, progress=seen.append)
    assert seen == [10, 20, 25]
    with progress_bar(5, "x") as update:  # stderr is not a terminal under pytest
        update(5)
    code, _, err = run_cli("sample", "vae-mlp", "-n", 3, "-o", tmp_path / "s.png")
    assert code == 0 and "sampling" not in err and "━" not in err
