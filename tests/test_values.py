"""Hostile values: non-finite outputs and weights, sizes beyond the available memory,
damaged files of every kind the library reads, and messages that say what is wrong.

Each failure must be a `GenmnistError` (through the CLI: one ``error:`` line, no
traceback, a non-zero exit) raised before any work or allocation it guards, and must
leave the files it was given unchanged.
"""

from __future__ import annotations

import json
import math
import os
import resource
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genmnist import memory
from genmnist.cli.app import DEBUG_OFF, debug_enabled, main
from genmnist.cli.common import UsageProblem
from genmnist.cli.evaluate import _read_results
from genmnist.cli.models import card_summary
from genmnist.data import read_idx
from genmnist.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    GenmnistError,
    SamplingError,
)
from genmnist.io import MAX_JSON_BYTES, flatten_state, load_tensors, read_json, save_tensors
from genmnist.metrics import distances
from genmnist.metrics.evaluation import image_metrics
from genmnist.models import create_model, load
from genmnist.run_folder import Checkpoint, read_metrics, trim_metrics

FAST = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


def small_vae():
    return create_model("vae-mlp", hidden_dims=[16], latent_dim=4)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------ non-finite outputs
def test_nonfinite_samples_are_never_returned(monkeypatch):
    model = small_vae()
    monkeypatch.setattr(
        type(model),
        "generate",
        lambda self, noise, labels: torch.full((len(noise), 1, 28, 28), math.inf),
    )
    with pytest.raises(SamplingError, match="NaN or inf.*guidance scale or temperature"):
        model.sample(4, seed=0)  # clamping would have hidden it
    monkeypatch.setattr(
        type(model),
        "generate",
        lambda self, noise, labels: torch.full((len(noise), 1, 28, 28), math.nan),
    )
    with pytest.raises(SamplingError):
        model.sample(4, seed=0)


def test_cli_never_writes_nonfinite_samples(run_cli, assert_one_line_error, tmp_path, monkeypatch):
    out = tmp_path / "x.npy"
    model = small_vae()
    model.save_pretrained(tmp_path / "m")
    with monkeypatch.context() as patch:
        patch.setattr(
            type(model),
            "generate",
            lambda self, noise, labels: torch.full((len(noise), 1, 28, 28), math.nan),
        )
        code, _, err = run_cli("sample", tmp_path / "m", "-n", 4, "-o", out)
        assert code == 1 and not out.exists()
        assert_one_line_error(err, "sampling produced NaN or inf values")
    code, _, err = run_cli("sample", "vae-mlp", "-n", 4, "--temperature", "1e300", "-o", out)
    assert code == 2 and not out.exists()
    assert_one_line_error(err, "temperature must be at most 100")
    code, _, err = run_cli("sample", "ddpm-cfg", "-n", 4, "--guidance", "1e30", "-o", out)
    assert code == 2 and not out.exists()
    assert_one_line_error(err, "guidance scale must be in -1000..1000")


def test_metrics_refuse_nonfinite_images_and_features():
    for bad in (math.nan, math.inf):
        with pytest.raises(ConfigError, match="NaN or inf"):
            image_metrics(torch.full((20, 1, 28, 28), bad))
    with pytest.raises(ConfigError, match="NaN or inf"):  # float64 beyond float32's range
        image_metrics(torch.full((20, 1, 28, 28), 1e300, dtype=torch.float64))
    real = torch.randn(20, 8)
    fake = real.clone()
    fake[3, 2] = math.nan
    for metric in (distances.frechet_distance, distances.kernel_distance):
        with pytest.raises(ConfigError, match="generated features hold NaN or inf"):
            metric(real, fake)
    with pytest.raises(ConfigError, match="real features hold NaN or inf"):
        distances.precision_recall(fake, real)


NUMBERS = st.sampled_from(["nan", "inf", "-inf", "1e30", "-1e30", "0", "-1", "1e-300", "2.5"])


@FAST
@given(
    option=st.sampled_from(["--temperature", "-n", "--batch-size", "--label", "--steps"]),
    value=NUMBERS | st.integers(-(2**80), 2**80).map(str),
)
def test_numeric_sampling_options_fail_in_one_line(
    run_cli, assert_one_line_error, tmp_path, option, value
):
    out = tmp_path / "x.npy"
    out.unlink(missing_ok=True)
    model = "vae-mlp" if option == "--temperature" else "cvae"
    if option == "-n" and value.lstrip("-").isdigit() and 0 < int(value) < 10**8:
        # a plain, working request: drawing hundreds of thousands of images would only
        # make this test slow (beyond 10**8 the memory check must refuse in one line)
        return
    args = ["sample", model, option, value, "-o", out, "--seed", 0]
    if option != "-n":
        args += ["-n", 2]
    code, _, err = run_cli(*args)
    if code == 0:
        assert out.is_file()
        assert bool(torch.isfinite(torch.from_numpy(__import__("numpy").load(out))).all())
    else:
        assert_one_line_error(err)
        assert not out.exists()


@FAST
@given(scale=st.sampled_from(["nan", "inf", "1e30", "-5000", "1e308"]), low=NUMBERS, high=NUMBERS)
def test_guidance_values_fail_in_one_line(
    run_cli, assert_one_line_error, tmp_path, scale, low, high
):
    out = tmp_path / "x.npy"
    out.unlink(missing_ok=True)
    code, _, err = run_cli("sample", "ddpm-cfg", "-n", 2, "--guidance", scale, "-o", out)
    assert code == 2 and not out.exists()
    assert_one_line_error(err, "guidance")
    if math.isnan(float(low)) or math.isnan(float(high)) or float(low) > float(high):
        code, _, err = run_cli(
            "sample", "ddpm-cfg", "-n", 2, "--guidance-interval", low, high, "-o", out
        )
        assert code == 2 and not out.exists()
        assert_one_line_error(err, "guidance interval")


def test_sample_refuses_what_is_not_a_whole_number_in_one_sentence(tiny_model):
    """Counts, seeds, steps and labels given to `sample` from Python: a float, a string
    or a bool is refused by name, never truncated nor passed down to fail in PyTorch; 0
    steps is refused, not taken as "the default"; NumPy integers are integers."""
    import numpy as np

    from genmnist.models import create_model

    cvae = tiny_model("cvae")
    ddpm = create_model("ddpm", channels=[8], attention_levels=[], timesteps=50)
    flow = create_model("flow", channels=[8], attention_levels=[])
    refused = [
        (cvae, {"n": 2.5}, "the number of samples must be an integer, got 2.5"),
        (cvae, {"n": "4"}, "the number of samples must be an integer, got '4'"),
        (cvae, {"n": True}, "the number of samples must be an integer, got True"),
        (cvae, {"n": 0}, "the number of samples must be a positive integer, got 0"),
        (cvae, {"n": 2, "batch_size": 1.0}, "batch_size must be an integer"),
        (cvae, {"n": 2, "seed": 1.5}, "seed must be an integer, got 1.5"),
        (cvae, {"n": 2, "seed": "a"}, "seed must be an integer, got 'a'"),
        (cvae, {"n": 2, "labels": [0.5, 1.0]}, r"labels must be integers in 0\.\.9"),
        (cvae, {"n": 2, "labels": [True, False]}, r"labels must be integers in 0\.\.9"),
        (cvae, {"n": 2, "labels": [math.nan, 1.0]}, r"labels must be integers in 0\.\.9"),
        (ddpm, {"n": 1, "steps": 0}, r"steps must be in 1\.\.50, got 0"),
        (ddpm, {"n": 1, "steps": 2.5}, "steps must be an integer, got 2.5"),
        (flow, {"n": 1, "steps": 0}, "steps must be an integer in 1..1000, got 0"),
        (flow, {"n": 1, "steps": "3"}, "steps must be an integer, got '3'"),
    ]
    for model, kwargs, message in refused:
        with pytest.raises(ConfigError, match=message):
            model.sample(**kwargs)
    whole_labels = cvae.sample(2, labels=[3.0, 4.0], seed=np.int64(7))
    torch.testing.assert_close(whole_labels, cvae.sample(np.int32(2), labels=[3, 4], seed=7))
    assert ddpm.sample(1, steps=np.int64(2), seed=-1).shape == (1, 1, 28, 28)
    assert flow.sample(1, steps=np.int16(2), seed=0).shape == (1, 1, 28, 28)


def test_evaluation_settings_and_load_arguments_fail_in_one_sentence(idx_root):
    """The numbers of the evaluation protocol and `load`'s argument, given from Python,
    are checked before any sampling, by name."""
    import genmnist
    from genmnist.metrics import evaluate_images, real_floor

    images = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for kwargs, message in [
        ({"k": 0}, r"k \(neighbours of precision/recall\) must be a positive integer, got 0"),
        ({"kid_subsets": 0}, "kid_subsets must be a positive integer, got 0"),
        ({"kid_subsets": 1.5}, "kid_subsets must be an integer, got 1.5"),
        ({"seed": "x"}, "seed must be an integer, got 'x'"),
        ({"labels": "abc"}, "labels must be whole numbers"),
        ({"labels": torch.full((20,), 0.5)}, "labels must be whole numbers"),
    ]:
        with pytest.raises(ConfigError, match=message):
            evaluate_images(images, data_dir=idx_root, floor=False, **kwargs)
    with pytest.raises(ConfigError, match="the number of samples must be an integer, got '20'"):
        real_floor("mnist", "20", data_dir=idx_root)
    for bad in (5, None, ["ddpm"]):
        with pytest.raises(ConfigError, match="takes a model name or a folder path"):
            genmnist.load(bad)


def test_vae_image_inputs_are_checked_like_scored_images(tiny_model):
    """`reconstruct` and `interpolate` take images as `genmnist score` does and refuse a
    [-1, 1] range, a wrong size or bad labels in one sentence; `encode` names its shape."""
    import numpy as np

    vae, cvae = tiny_model("vae-conv"), tiny_model("cvae")
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    as_bytes = (images * 255).round().to(torch.uint8).squeeze(1).numpy()
    torch.testing.assert_close(
        vae.reconstruct(as_bytes), vae.reconstruct(torch.from_numpy(as_bytes)[:, None] / 255)
    )
    assert vae.interpolate(images[0, 0], np.asarray(images[1]), steps=3).shape == (3, 1, 28, 28)
    assert cvae.reconstruct(images, labels=[1.0, 2, 3]).shape == (3, 1, 28, 28)
    for call, message in [
        (lambda: vae.reconstruct(images * 2 - 1), r"\(x \+ 1\) / 2"),
        (lambda: vae.reconstruct(torch.rand(2, 3, 32, 32)), "expected 28x28 grey images"),
        (lambda: vae.reconstruct(images, labels=[1, 2, 3]), "unconditional: it takes no labels"),
        (lambda: cvae.reconstruct(images, labels=[1.5, 2, 3]), "labels must be integers"),
        (lambda: cvae.interpolate(images[0], images[1], labels=12), r"labels must be in 0\.\.9"),
        (lambda: vae.interpolate(images[:2], images[2]), "one start and one end image"),
        (lambda: vae.interpolate("x", images[2]), "start: not an array of pixels"),
        (lambda: vae.encode(torch.rand(2, 3, 32, 32)), r"takes a tensor \(b, 1, 28, 28\)"),
    ]:
        with pytest.raises(ConfigError, match=message):
            call()


def test_config_values_must_be_finite():
    for value in (math.nan, math.inf):
        with pytest.raises(ConfigError, match="must be a finite number"):
            create_model("vae-mlp", lr=value)


# ------------------------------------------------------------------ weights after casting
def test_weights_are_checked_finite_after_the_cast(tmp_path):
    model = small_vae()
    model.save_pretrained(tmp_path)
    tensors, _ = load_tensors(tmp_path / "model.safetensors")
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key] = tensors[key].double().fill_(1e300)  # finite as float64, inf as float32
    save_tensors(tmp_path / "model.safetensors", tensors, {"model": "vae-mlp"})
    with pytest.raises(CheckpointError, match=f"'{key}' holds NaN or inf values as torch.float32"):
        load(tmp_path)


def test_checkpoint_restore_checks_finite_after_the_cast(tmp_path):
    model = small_vae()
    state = {f"model.{k}": v.double() for k, v in model.state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].fill_(1e300)
    skeleton, tensors = flatten_state(
        {"optimizers": {}, "schedulers": {}, "rng": {"torch": torch.get_rng_state()}}
    )
    checkpoint = Checkpoint(
        tmp_path / "checkpoint.safetensors", {"state": skeleton}, {**state, **tensors}
    )
    with pytest.raises(CheckpointError, match="holds NaN or inf values as torch.float32"):
        checkpoint.restore(model, None, {}, {})


# ------------------------------------------------------------------ memory before allocation
def test_sample_count_is_checked_before_allocating(run_cli, assert_one_line_error, tmp_path):
    out = tmp_path / "x.npy"
    code, _, err = run_cli("sample", "vae-mlp", "-n", 10**9, "-o", out)
    assert code == 2 and not out.exists()
    assert_one_line_error(err, "holding 1,000,000,000 samples", "draw fewer samples (-n)")


def test_memory_limits_follow_the_available_memory(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 10**6)
    with pytest.raises(ConfigError, match="draw fewer samples"):
        small_vae().sample(1000, seed=0)
    with pytest.raises(ConfigError, match="make its layers smaller"):
        create_model("vae-mlp", hidden_dims=[4096])


def test_a_small_folder_with_a_huge_config_allocates_nothing(tmp_path):
    small_vae().save_pretrained(tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())
    record["config"]["hidden_dims"] = [2_000_000]  # 6 GB of float32 weights
    (tmp_path / "config.json").write_text(json.dumps(record))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(
        CheckpointError, match=r"has shape \(16,\), the config in .*config.json needs \(2000000,\)"
    ):
        load(tmp_path)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 500_000


def test_json_files_are_read_with_a_size_bound(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[" + "0," * (MAX_JSON_BYTES // 2) + "0]")
    with pytest.raises(CheckpointError, match="too large for a genmnist JSON or config file"):
        read_json(path)


# ------------------------------------------------------------------ damaged inputs
def test_folders_and_fifos_are_named_for_what_they_are(tmp_path):
    (tmp_path / "folder").mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, what in ((tmp_path / "folder", "is a folder"), (fifo, "is a FIFO")):
        with pytest.raises(CheckpointError, match=what):
            read_json(path)  # never blocks on the FIFO
        with pytest.raises(CheckpointError, match=what):
            load_tensors(path)
        with pytest.raises(DataError, match=what):
            read_idx(path)
    run = tmp_path / "run"
    (run / "metrics.jsonl").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="metrics.jsonl: is a folder"):
        read_metrics(run)


def test_weights_that_are_a_folder_say_so(run_cli, assert_one_line_error, tmp_path):
    small_vae().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    (tmp_path / "m" / "model.safetensors").mkdir()
    code, _, err = run_cli("sample", tmp_path / "m", "-n", 2, "-o", tmp_path / "x.npy")
    assert code == 1
    assert_one_line_error(err, "model.safetensors: is a folder, not a file")


def test_config_that_is_a_fifo_fails_in_one_line(run_cli, assert_one_line_error, tmp_path):
    small_vae().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    os.mkfifo(tmp_path / "m" / "config.json")
    code, _, err = run_cli("sample", tmp_path / "m", "-n", 2, "-o", tmp_path / "x.npy")
    assert code != 0
    assert_one_line_error(err, "config.json: is a FIFO")


LINES = st.lists(
    JSON.map(json.dumps) | st.text(string.printable, max_size=20), min_size=1, max_size=6
)


@FAST
@given(lines=LINES)
def test_metrics_logs_with_any_lines_read_and_trim(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("run")
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    records = read_metrics(folder)
    assert all(math.isfinite(r["step"]) and not isinstance(r["step"], bool) for r in records)
    trim_metrics(folder, 10)
    assert all(r["step"] <= 10 for r in read_metrics(folder))
    from genmnist.metrics.stability import training_stability

    json.dumps(training_stability(folder))  # whatever the log held


def test_metrics_log_that_is_not_text_is_named(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1}\n\xff\xfe\x00junk\n')
    with pytest.raises(CheckpointError, match="metrics.jsonl: not a text file"):
        read_metrics(tmp_path)
    with pytest.raises(CheckpointError, match="metrics.jsonl: not a text file"):
        trim_metrics(tmp_path, 5)


def _card():
    from genmnist.models import model_card

    return model_card("vae-mlp", "mnist")


@FAST
@given(path=st.sampled_from([(), ("training",), ("evaluation",), ("evaluation", "metrics")]),
       key=st.sampled_from(["steps", "seconds", "epochs", "command", "metrics", "fid", "n",
                            "fid_floor", "guide", "training", "evaluation"]),
       value=JSON)  # fmt: skip
def test_damaged_cards_still_summarise(path, key, value):
    card = _card()
    target = card
    for part in path:
        target = target[part]
    target[key] = value
    assert isinstance(card_summary(card), str)


GOOD_RESULT = {
    "model": "vae-mlp",
    "dataset": "mnist",
    "n": 20,
    "seed": 0,
    "conditional": False,
    "fid": 40.0,
    "class_histogram": [0.1] * 10,
    "mode_collapse": False,
    "weights_sha256": "ab" * 32,
    "warnings": [],
}


@FAST
@given(key=st.sampled_from([*GOOD_RESULT, "kid", "loss_key"]), value=JSON)
def test_mistyped_results_files_are_refused_in_one_line(
    run_cli, assert_one_line_error, tmp_path, key, value
):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**GOOD_RESULT, key: value}))
    before = path.read_bytes()
    try:
        _read_results([path])
    except UsageProblem as exc:
        assert str(exc).startswith("--results:")
        code, _, err = run_cli("compare", "vae-mlp", "--results", path, "--no-charts",
                               "-o", tmp_path / "report")  # fmt: skip
        assert code == 2 and not (tmp_path / "report").exists()
        assert_one_line_error(err, "--results")
    assert path.read_bytes() == before


@pytest.mark.parametrize("device", ["quantum", "cuda:99", "meta", "cuda:-1"])
def test_unknown_or_missing_devices_fail_in_one_line(
    run_cli, assert_one_line_error, tmp_path, device
):
    if device == "cuda:99" and torch.cuda.is_available() and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    code, _, err = run_cli("train", "vae-mlp", "--device", device, "--out", tmp_path / "run")
    assert code == 1 and not (tmp_path / "run").exists()
    assert_one_line_error(err, "--device")


def test_clusters_beyond_the_data_fail_in_one_line(
    run_cli, assert_one_line_error, make_mnist_folder, tmp_path
):
    make_mnist_folder(tmp_path / "data")  # 64 training images, no download
    config = tmp_path / "c.json"
    config.write_text('{"clusters": 100, "batch_size": 16}')
    code, _, err = run_cli(
        "train", "ddpm", "--config", config, "--out", tmp_path / "run", "--epochs", 1,
        "--data-dir", tmp_path / "data",
    )  # fmt: skip
    assert code == 1
    assert_one_line_error(err, "clusters (100) cannot exceed the number of training images")


def test_damaged_evaluator_folders_are_named(tmp_path):
    from genmnist.metrics.classifier import (
        EvaluatorConfig,
        EvaluatorNet,
        read_evaluator,
        save_evaluator,
    )

    save_evaluator(EvaluatorNet(EvaluatorConfig()), tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())
    for config in ([1, 2], {"channels": [1, 2]}, {"channels": [8, 8, 8, 8]}):
        (tmp_path / "config.json").write_text(json.dumps({**record, "config": config}))
        with pytest.raises(GenmnistError, match="config.json|model.safetensors"):
            read_evaluator(tmp_path)


# ------------------------------------------------------------------ messages
@pytest.mark.parametrize("value", [*DEBUG_OFF, "FALSE", "Off", " No ", "0 "])
def test_debug_values_meaning_off_keep_tracebacks_off(monkeypatch, capsys, tmp_path, value):
    monkeypatch.setenv("GENMNIST_DEBUG", value)
    assert not debug_enabled()
    with pytest.raises(SystemExit) as info:
        main(["sample", str(tmp_path / "nothing/here"), "-o", str(tmp_path / "x.png")])
    assert info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "YES"])
def test_debug_values_meaning_on_turn_tracebacks_on(monkeypatch, value):
    monkeypatch.setenv("GENMNIST_DEBUG", value)
    assert debug_enabled()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--steps", "100000"], "steps"),
        (["--sampler", "nope"], "sampler"),
        (["--guidance", "1e30"], "guidance"),
        (["--guidance-interval", "3", "1"], "interval"),
    ],
)
def test_eval_refuses_sampling_options_before_it_prints_progress(
    run_cli, assert_one_line_error, tmp_path, args, fragment
):
    folder = create_model("ddpm-cfg", channels=(8, 16, 16), timesteps=50).save_pretrained(
        tmp_path / "m"
    )
    code, _, err = run_cli("eval", "ddpm-cfg", "--checkpoint", folder, "-n", 20, *args)
    assert code == 2
    assert_one_line_error(err, fragment)


def test_a_run_file_that_is_a_folder_is_named_when_a_run_starts_over(
    run_cli, assert_one_line_error, tmp_path, idx_root
):
    out = tmp_path / "run"
    (out / "metrics.jsonl").mkdir(parents=True)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"batch_size": 16, "hidden_dims": [16], "latent_dim": 2}))
    code, _, err = run_cli(
        "train", "vae-mlp", "--data-dir", idx_root, "--out", out, "--overwrite",
        "--config", recipe, "--max-steps", 1, "--quiet",
    )  # fmt: skip
    assert code == 1
    assert_one_line_error(err, "metrics.jsonl", "is a folder")
    assert (out / "metrics.jsonl").is_dir()


def test_the_size_checks_before_loading_stay_light(run_python):
    # the meta-device build that checks a config's sizes must not pull in torch's
    # compiler stack (seconds of imports on every `genmnist sample`)
    code = (
        "import sys, genmnist; genmnist.load('ddpm'); genmnist.create_model('cvae'); "
        "print('torch._dynamo' in sys.modules)"
    )
    result = run_python(code=code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
