"""Evaluation: evaluator networks, metrics with known answers, real-data sanity, the CLI.

Tests marked ``real_data`` read MNIST from ``$GENMNIST_DATA`` (skipped when unset) and use
the shipped evaluator. Real-test features are computed once per session (the metrics
module caches them), so the real-data tests together cost one pass over the test set plus
a few thousand more images.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from genmnist.cli import main
from genmnist.errors import ConfigError
from genmnist.metrics import (
    SmallSampleWarning,
    acceptability,
    class_coverage,
    conditional_accuracy,
    evaluate,
    frechet_distance,
    image_metrics,
    inception_score,
    kernel_distance,
    load_evaluator,
    precision_recall,
    real_features,
    real_floor,
    training_stability,
)
from genmnist.metrics.classifier import EvaluatorConfig, EvaluatorNet, augment, evaluator_dir
from genmnist.metrics.evaluation import real_split
from genmnist.metrics.stability import training_time

DEGRADE_N = 2000


def run_cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


# --------------------------------------------------------------------------- evaluators
@pytest.mark.parametrize(("dataset", "minimum"), [("mnist", 0.993), ("fashion-mnist", 0.91)])
def test_shipped_evaluators_are_small_and_accurate(dataset, minimum):
    folder = evaluator_dir(dataset)
    assert (folder / "model.safetensors").stat().st_size < 1_000_000
    model = load_evaluator(dataset)
    assert not model.training
    info = model.info
    assert info["test_accuracy_float16"] >= minimum, info  # the shipped (float16) weights
    x = torch.rand(3, 1, 28, 28)
    assert model.features(x).shape == (3, 128)
    assert model(x).shape == (3, 10)


def test_evaluator_extract_accepts_uint8_and_floats():
    model = EvaluatorNet(EvaluatorConfig()).eval()
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    f1, p1 = model.extract(images, batch_size=2)
    f2, p2 = model.extract(images.unsqueeze(1).float() / 255)
    torch.testing.assert_close(f1, f2)
    torch.testing.assert_close(p1.sum(1), torch.ones(5))
    with pytest.raises(ConfigError, match="expected images"):
        model.extract(torch.zeros(2, 3, 28, 28))


def test_evaluator_training_is_seeded_and_round_trips(idx_root, tmp_path):
    from genmnist.metrics.classifier import read_evaluator, save_evaluator, train_evaluator

    cfg = EvaluatorConfig.for_dataset(
        "mnist", batch_size=16, epochs=1, outlier_steps=2, outlier_batch=4
    )
    runs = [train_evaluator("mnist", idx_root, cfg, log=lambda m: None) for _ in range(2)]
    (first, info), (second, _) = runs
    for key, value in first.state_dict().items():
        torch.testing.assert_close(value, second.state_dict()[key], rtol=0, atol=0)
    assert {"test_accuracy", "test_accuracy_float16", "training_seconds"} <= set(info)
    save_evaluator(first, tmp_path / "ev", info)
    loaded = read_evaluator(tmp_path / "ev")
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(loaded.features(x), first.eval().features(x))
    assert loaded.info["test_accuracy"] == info["test_accuracy"]


def test_augment_shifts_and_flips_within_bounds():
    x = torch.zeros(64, 1, 28, 28)
    x[:, 0, 10, 12] = 1
    out = augment(x, 2, True, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.all(out.sum((1, 2, 3)) == 1)
    rows, cols = torch.nonzero(out[:, 0], as_tuple=True)[1:]
    assert rows.min() >= 8 and rows.max() <= 12
    assert set(cols.tolist()) <= set(range(10, 15)) | set(range(27 - 14, 27 - 9))


# --------------------------------------------------------------------------- distances
def test_precision_recall_known_answers():
    g = torch.Generator().manual_seed(0)

    def two_modes(n):  # two far-apart Gaussian modes in 2-D, n/2 points each
        return torch.cat(
            [torch.randn(n // 2, 2, generator=g), torch.randn(n // 2, 2, generator=g) + 20]
        )

    real = two_modes(1000)
    assert precision_recall(real, real) == (1.0, 1.0)
    # Same distribution: both near 1 (k-NN balls leave a little of the tails uncovered).
    precision, recall = precision_recall(real, two_modes(1000))
    assert precision > 0.95 and recall > 0.95
    # Only one of the two modes: every sample is realistic, half the real data is missed.
    precision, recall = precision_recall(real, torch.randn(1000, 2, generator=g))
    assert precision > 0.95
    assert 0.45 < recall < 0.52
    # Nothing in common.
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)


def test_fid_matches_an_independent_formula():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 6, generator=g).double()
    y = (torch.randn(3000, 6, generator=g) * torch.linspace(0.5, 2, 6) + 0.3).double()
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)

    def stats(f):
        return f.mean(0), torch.cov(f.T)

    (m1, s1), (m2, s2) = stats(x), stats(y)
    vals, vecs = torch.linalg.eigh(s1)
    root = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(root @ s2 @ root).clamp_min(0).sqrt().sum()
    expected = float((m1 - m2).square().sum() + s1.trace() + s2.trace() - 2 * middle)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)


def test_kid_is_unbiased_where_fid_is_not():
    g = torch.Generator().manual_seed(2)
    kids, fids = [], []
    for _ in range(8):
        x, y = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g)
        kids.append(kernel_distance(x, y, subsets=10, subset_size=200)[0])
        fids.append(frechet_distance(x, y))
    shifted = kernel_distance(x, torch.randn(200, 16, generator=g) + 0.5, subsets=10)[0]
    # Same distribution: KID scatters around 0 (some values negative); FID is always > 0.
    assert min(kids) < 0 < max(kids)
    assert abs(sum(kids) / len(kids)) < 0.05 * shifted
    assert min(fids) > 0.5
    # Seeded: the same call gives the same value.
    assert kernel_distance(x, y, subsets=5, seed=3) == kernel_distance(x, y, subsets=5, seed=3)


# --------------------------------------------------------------------------- probabilities
def test_classification_metrics_known_answers():
    one_hot = F.one_hot(torch.arange(1000) % 10, 10).double()
    assert inception_score(one_hot)[0] == pytest.approx(10.0)
    assert inception_score(torch.full((100, 10), 0.1))[0] == pytest.approx(1.0)
    assert acceptability(one_hot) == 1.0
    assert acceptability(torch.full((10, 10), 0.1)) == 0.0
    balanced = class_coverage(one_hot)
    assert balanced["coverage"] == 1.0 and balanced["class_entropy"] == pytest.approx(1.0)
    assert balanced["rarest_class_share"] == pytest.approx(0.1) and not balanced["mode_collapse"]
    collapsed = class_coverage(F.one_hot(torch.full((500,), 3), 10).double())
    assert collapsed["mode_collapse"] and collapsed["coverage"] == pytest.approx(0.1)
    assert collapsed["class_entropy"] == 0.0 and collapsed["class_histogram"][3] == 1.0
    assert conditional_accuracy(one_hot, torch.arange(1000) % 10) == 1.0


def test_training_stability_from_records(tmp_path):
    records = []
    for i in range(1, 101):
        loss = 100 * math.exp(-i / 10) + 10 + (0.1 if i % 2 else -0.1)
        records.append({"step": 50 * i, "loss": loss, "time": float(i)})
    stats = training_stability(records)
    assert stats["loss_key"] == "loss" and stats["total_steps"] == 5000
    assert stats["final_loss"] == pytest.approx(10.0, abs=0.2)
    assert stats["loss_std_tail"] == pytest.approx(0.1, abs=0.02)
    # 100 exp(-i/10) falls below 5% of the 90-unit drop at i = 31: step ~1550
    assert 1200 <= stats["steps_to_converge"] <= 1800
    # a resumed run restarts its clock: 40 s, then 60 s more
    resumed = [{"step": i, "time": float(t)} for i, t in enumerate([10, 20, 40, 5, 30, 60])]
    assert training_time(resumed) == 100.0
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(json.dumps(r) for r in records) + "\n{broken\n"
    )
    assert training_stability(tmp_path)["total_steps"] == 5000


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    from genmnist.metrics.report import PlottingUnavailable, require_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlottingUnavailable, match=r"genmnist\[plot\]"):
        require_matplotlib()


def _fake_result(i: int, conditional: bool) -> dict:
    """An eval result with a few metrics, distinct per model (no evaluation needed)."""
    result = {
        "model": f"m{i}", "dataset": "mnist", "n": 64, "seed": 0, "conditional": conditional,
        "fid": 10.0 + i, "fid_floor": 0.2, "precision": 0.5 + i / 100, "parameters": 1000 * i,
        "class_histogram": [0.1] * 10, "warnings": [], "mode_collapse": False,
    }  # fmt: skip
    if conditional:
        result["conditional_accuracy"] = 0.9 + i / 100
    return result


@pytest.mark.parametrize("charts", [False, True])
def test_report_shows_pictures_first_and_narrow_tables(tmp_path, charts):
    from genmnist.metrics.report import TABLE_MODELS, chunks, write_report

    if charts:
        pytest.importorskip("matplotlib")
    labels = [f"m{i}" for i in range(9)]
    results = [_fake_result(i, conditional=i >= 7) for i in range(9)]
    samples = [torch.rand(4, 1, 28, 28) for _ in labels]
    text = write_report(tmp_path, labels, results, samples, charts=charts).read_text()
    lines = text.splitlines()
    first_table = next(i for i, line in enumerate(lines) if line.startswith("|"))
    last_image = max(i for i, line in enumerate(lines) if "![" in line)
    assert last_image < first_table, "the pictures come before the tables"
    assert text.index("## Samples") < text.index("## Metrics") < text.index("## Settings")
    for label in labels:  # every model's grid is shown or linked
        assert f"](samples/{label}.png)" in text
    if charts:
        assert "![samples of each model](samples.png)" in text
        assert text.index("](radar.png)") < text.index("## Metrics")
    # 9 models: two metric tables of 5 and 4, each at most TABLE_MODELS wide
    headers = [line for line in lines if line.startswith("| metric | better |")]
    assert headers == [
        "| metric | better | m0 | m1 | m2 | m3 | m4 | real floor |",
        "| metric | better | m5 | m6 | m7 | m8 | real floor |",
    ]
    assert all(line.count("|") <= TABLE_MODELS + 4 for line in lines if "| metric |" in line)
    # a row no model of a table has is left out of that table; the best value is bold
    # across all models (lowest FID: m0, highest conditional accuracy: m8)
    assert text.count("| conditional accuracy |") == 1
    assert "| FID | lower | **10.000** |" in text and "**0.980**" in text
    assert [list(r) for r in chunks(9)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8]]
    assert [len(r) for r in chunks(11)] == [4, 4, 3] and [len(r) for r in chunks(2)] == [2]


# --------------------------------------------------------------------------- real data
def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma == 0:
        return images
    radius = 3
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = F.conv2d(images, kernel.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(out, kernel.view(1, 1, -1, 1), padding=(radius, 0))


def _noise(images: torch.Tensor, sigma: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (images + sigma * torch.randn(images.shape, generator=g)).clamp(0, 1)


@pytest.fixture
def mnist_test(real_data):
    return real_split("mnist", "test", real_data)


@pytest.mark.real_data
def test_real_test_set_against_itself(real_data):
    features, probs, labels = real_features("mnist", "test", real_data)  # cached per session
    assert features.shape == (10000, 128)
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    kid, kid_std = kernel_distance(features, features, subsets=10)
    assert abs(kid) < kid_std  # zero within its subset-to-subset noise
    assert precision_recall(features[:2000], features[:2000]) == (1.0, 1.0)
    assert acceptability(probs) >= 0.97
    assert inception_score(probs)[0] > 9.5
    coverage = class_coverage(probs)
    assert coverage["coverage"] == 1.0 and not coverage["mode_collapse"]
    assert coverage["class_entropy"] > 0.99
    # The true labels as the "conditioning": the evaluator's own test accuracy.
    assert conditional_accuracy(probs, labels) >= 0.993


@pytest.mark.real_data
def test_degradation_is_monotonic_and_the_floor_is_small(real_data, mnist_test):
    floor = real_floor("mnist", DEGRADE_N, data_dir=real_data, kid_subsets=10)
    features, _, _ = real_features("mnist", "test", real_data)
    scale = float(torch.cov(features.double().T).trace())
    assert floor["fid"] < 0.01 * scale  # train-vs-test: tiny next to the feature spread
    assert floor["precision"] > 0.8 and floor["recall"] > 0.8
    assert floor["acceptability"] >= 0.97

    # A random subset: the test split's first half (writers of NIST SD-3) is cleaner than
    # its second half (SD-1), so its first images are not a typical sample.
    pick = torch.randperm(len(mnist_test), generator=torch.Generator().manual_seed(0))
    clean = mnist_test.images[pick[:DEGRADE_N]].unsqueeze(1).float() / 255
    for corrupt, levels in ((_noise, (0.1, 0.25, 0.5)), (_blur, (0.6, 1.0, 1.6))):
        rows = [image_metrics(clean, "mnist", data_dir=real_data, kid_subsets=10)]
        for level in levels:
            images = corrupt(clean, level)
            rows.append(image_metrics(images, "mnist", data_dir=real_data, kid_subsets=10))
        fid = [r["fid"] for r in rows]
        kid = [r["kid"] for r in rows]
        precision = [r["precision"] for r in rows]
        accept = [r["acceptability"] for r in rows]
        inception = [r["inception_score"] for r in rows]
        name = corrupt.__name__
        assert fid == sorted(fid) and len(set(fid)) == len(fid), (name, fid)
        assert kid == sorted(kid), (name, kid)
        assert precision == sorted(precision, reverse=True), (name, precision)
        assert accept == sorted(accept, reverse=True), (name, accept)
        assert inception == sorted(inception, reverse=True), (name, inception)
        assert fid[-1] > 10 * floor["fid"], (name, fid, floor["fid"])


@pytest.mark.real_data
def test_collapsed_generator_is_flagged(real_data, mnist_test):
    only_threes = mnist_test.images[mnist_test.labels == 3][:800]
    result = image_metrics(only_threes, "mnist", data_dir=real_data, kid_subsets=5)
    assert result["mode_collapse"]
    assert result["coverage"] == pytest.approx(0.1)
    assert result["class_entropy"] < 0.1
    assert result["rarest_class_share"] == 0.0
    assert result["inception_score"] < 1.5  # sharp but not diverse
    assert result["recall"] < 0.3 and result["precision"] > 0.9  # realistic, not diverse


# --------------------------------------------------------------------------- end to end
@pytest.fixture
def tiny_run(tmp_path, tiny_model, tiny_dataset):
    """Two tiny trained run folders (vae-mlp, cvae) with their training logs."""
    from genmnist.training import Trainer, TrainOptions

    folders = []
    for name in ("vae-mlp", "cvae"):
        model = tiny_model(name, precision="fp32", batch_size=32)
        options = TrainOptions(
            out=tmp_path / name, max_steps=16, log_every=2, progress=False, device="cpu"
        )
        Trainer(model, options, dataset=tiny_dataset, log=lambda m: None).fit()
        folders.append(tmp_path / name)
    return folders


@pytest.mark.real_data
def test_evaluate_a_vae_with_small_n_warns(real_data, tiny_run):
    from genmnist.models import load

    model = load(tiny_run[1])  # the cvae
    with pytest.warns(SmallSampleWarning, match="biased"):
        result = evaluate(
            model, "mnist", n=50, data_dir=real_data, run_dir=tiny_run[1], kid_subsets=5
        )
    for key in ("fid", "fid_floor", "kid_floor", "precision_floor", "recall_floor"):
        assert isinstance(result[key], float), key
    assert 0 <= result["conditional_accuracy"] <= 1
    assert result["elbo"] < 0 < result["recon_bce"]
    assert 0 <= result["latent_probe_accuracy"] <= 1
    assert result["total_steps"] == 16 and result["training_seconds"] > 0
    assert result["parameters"] == model.num_parameters() and result["images_per_second"] > 0
    json.dumps(result)  # plain JSON values only


@pytest.mark.real_data
def test_cli_eval_json_and_compare_report(capsys, real_data, tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli(
        capsys, "eval", "vae-mlp", "--checkpoint", tiny_run[0], "-n", "40", "--json",
        "--data-dir", real_data,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == "vae-mlp" and result["n"] == 40
    assert "fid_floor" in result and "recon_bce" in result
    assert "warning" in err and "biased" in err

    code, out, err = run_cli(capsys, "eval", tiny_run[0], "-n", "40", "--data-dir", real_data)
    assert code == 0, err
    assert "FID" in out and "real floor" in out and "class histogram" in out

    report = tmp_path / "report"
    code, out, err = run_cli(
        capsys, "compare", *tiny_run, "--out", report, "-n", "40", "--data-dir", real_data
    )
    assert code == 0, err
    text = (report / "report.md").read_text()
    assert "| metric | better | vae-mlp | cvae | real floor |" in text
    for chart in ("radar.png", "heatmap.png", "samples.png", "curves.png"):
        assert (report / chart).stat().st_size > 1000
        assert f"]({chart})" in text
    assert (report / "samples" / "cvae.png").is_file()
    assert set(json.loads((report / "metrics.json").read_text())) == {"vae-mlp", "cvae"}


@pytest.mark.real_data
def test_compare_reuses_eval_results_only_for_the_same_model(
    capsys, real_data, tiny_run, tmp_path, monkeypatch
):
    saved = tmp_path / "vae-mlp.json"
    code, _, err = run_cli(
        capsys, "eval", tiny_run[0], "-n", "40", "--data-dir", real_data, "-o", saved
    )
    assert code == 0, err
    result = json.loads(saved.read_text())
    result["fid"] = 1234.5  # a marker: only a reused result carries it
    saved.write_text(json.dumps(result))

    def fail(*args, **kwargs):
        raise AssertionError("evaluated again although a result was given")

    import genmnist.cli.evaluate as evaluation_cli

    with monkeypatch.context() as patch:
        patch.setattr(evaluation_cli, "_evaluate", fail)
        report = tmp_path / "reused"
        code, _, err = run_cli(
            capsys, "compare", tiny_run[0], "--out", report, "-n", "40", "--no-charts",
            "--data-dir", real_data, "--results", saved,
        )  # fmt: skip
    assert code == 0, err and "reusing" in err
    assert json.loads((report / "metrics.json").read_text())["vae-mlp"]["fid"] == 1234.5

    # Another n, or other weights (the cvae run), are evaluated afresh.
    report = tmp_path / "fresh"
    code, _, err = run_cli(
        capsys, "compare", tiny_run[0], "--out", report, "-n", "30", "--no-charts",
        "--data-dir", real_data, "--results", saved,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((report / "metrics.json").read_text())["vae-mlp"]["fid"] != 1234.5
    bogus = tmp_path / "bogus.json"
    bogus.write_text("[1, 2]")
    code, _, err = run_cli(capsys, "compare", tiny_run[0], "--results", bogus, "-n", "30")
    assert code == 2 and "--results" in err


def test_weights_fingerprint_changes_with_weights_and_config():
    from genmnist.metrics.efficiency import weights_fingerprint
    from genmnist.models import create_model

    torch.manual_seed(0)
    a = create_model("vae-mlp", hidden_dims=(8,), latent_dim=2)
    b = create_model("vae-mlp", hidden_dims=(8,), latent_dim=2)
    b.load_state_dict(a.state_dict())
    assert weights_fingerprint(a) == weights_fingerprint(b)
    with torch.no_grad():
        next(b.parameters())[0].add_(1e-3)
    assert weights_fingerprint(a) != weights_fingerprint(b)
    c = create_model("vae-mlp", hidden_dims=(8,), latent_dim=2, beta=2.0)
    c.load_state_dict(a.state_dict())
    assert weights_fingerprint(a) != weights_fingerprint(c)


def test_cli_eval_usage_errors(capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", "vae-mpl", "-n", "20")
    assert code == 2 and "did you mean" in err
    code, _, err = run_cli(capsys, "eval", "vae-mlp", "-n", "5")
    assert code == 2
    code, _, err = run_cli(capsys, "compare", str(tmp_path / "nope" / "x"), "--out", tmp_path)
    assert code == 1 and err.startswith("error:") and "no such checkpoint" in err


@pytest.mark.real_data
def test_compare_draws_the_training_log_shipped_beside_weights(
    capsys, real_data, tiny_run, tmp_path, monkeypatch
):
    import genmnist.models

    shipped_log = tmp_path / "shipped"
    shipped_log.mkdir()
    (shipped_log / "metrics.jsonl").write_text((Path(tiny_run[0]) / "metrics.jsonl").read_text())
    # compare looks up the shipped folder's log through genmnist.models.pretrained_dir
    monkeypatch.setattr(genmnist.models, "pretrained_dir", lambda name, dataset: shipped_log)
    report = tmp_path / "report"
    code, _, err = run_cli(
        capsys, "compare", "vae-mlp", "--out", report, "-n", "40", "--data-dir", real_data
    )
    assert code == 0, err
    text = (report / "report.md").read_text()
    assert (report / "curves.png").stat().st_size > 1000 and "](curves.png)" in text
    assert "No training log" not in text
