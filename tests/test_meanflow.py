"""MeanFlow: a flow U-Net with a step-length embedding that learns the average velocity
over a step, trained on the data (MeanFlow identity) or on a flow teacher's velocity."""

from __future__ import annotations

import json
import math

import pytest
import torch

from genmnist.distillation import MeanFlowDistillation
from genmnist.errors import CheckpointError, ConfigError
from genmnist.flow import FLOW_SAMPLERS, flow_times
from genmnist.models import MeanFlow, SampleNoise, create_model, load
from genmnist.nn.unet import UNet
from genmnist.training import Trainer, TrainingTask, TrainOptions

TINY = dict(channels=(8, 16, 16), attention_levels=(), precision="fp32")


def _noisy(model, seed=0, scale=0.05):
    torch.manual_seed(seed)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * scale)
    return model


def test_a_flow_network_loads_into_the_interval_unet_as_its_equal_times_behaviour():
    flow = _noisy(create_model("flow", **TINY))
    mean = create_model("meanflow", **TINY)
    missing, unexpected = mean.unet.load_state_dict(flow.unet.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("interval_mlp.") for k in missing)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0.9, 0.5, 0.2])
    with torch.no_grad():
        expected = flow.predict_velocity(x, t)
        torch.testing.assert_close(mean.predict_velocity(x, t), expected)
        # the step-length embedding starts at zero, so any r gives the flow's velocity...
        torch.testing.assert_close(mean.predict_average_velocity(x, t * 0, t), expected)
        _noisy(mean.unet.interval_mlp, seed=1, scale=0.5)  # ... until it is trained
        assert not torch.allclose(mean.predict_average_velocity(x, t * 0, t), expected)
    with pytest.raises(ConfigError, match="interval"):
        UNet(channels=(8, 16, 16), attention_levels=(), interval_embedding=True)(x, t * 1000)


def test_the_training_times_and_the_options():
    model = create_model("meanflow", **TINY, interval_share=0.25)
    torch.manual_seed(0)
    r, t = model.training_times(4000, torch.device("cpu"))
    assert bool((r <= t).all()) and bool(((r >= 0) & (t <= 1)).all())
    assert abs(float((r < t).float().mean()) - 0.25) < 0.03
    for bad in (dict(interval_share=1.5), dict(adaptive_loss_power=-1), dict(sampler="nope")):
        with pytest.raises(Exception, match="interval_share|adaptive_loss_power|nope"):
            create_model("meanflow", **TINY, **bad)


def test_the_target_is_the_meanflow_identity_on_a_linear_field():
    """On ``u(z, r, t) = a z + b t`` the total derivative along ``(v, 1)`` is ``a v + b``,
    so the loss is zero exactly when the network meets ``u = v - (t - r)(a v + b)``."""
    model = create_model("meanflow", **TINY, adaptive_loss_power=0.0)
    a, b = 0.5, 2.0
    model.predict_average_velocity = lambda z, r, t, labels=None: a * z + b * t[:, None, None, None]
    z, v = torch.randn(5, 1, 28, 28), torch.randn(5, 1, 28, 28)
    t = torch.rand(5)
    r = t * 0.3
    loss = model.mean_flow_loss(z, r, t, v, None)["mse"]
    u = a * z + b * t[:, None, None, None]
    target = v - (t - r)[:, None, None, None] * (a * v + b)
    torch.testing.assert_close(loss, torch.mean((u - target) ** 2))


def test_sampling_takes_average_velocity_steps_or_an_ode_sampler():
    model = _noisy(create_model("meanflow", **TINY, sampling_steps=2)).eval()
    noise = SampleNoise(SampleNoise.sample_seeds(3, seed=0)).randn(1, 28, 28)
    images = model.sample(3, seed=0, precision="fp32")
    x = noise
    with torch.no_grad():
        for t, r in ((1.0, 0.5), (0.5, 0.0)):
            x = x - (t - r) * model.predict_average_velocity(
                x, torch.full((3,), r), torch.full((3,), t)
            )
    torch.testing.assert_close(images, ((x + 1) / 2).clamp(0, 1), atol=1e-5, rtol=0)
    with torch.no_grad():
        expected = FLOW_SAMPLERS.get("heun")(model.velocity(None), noise, flow_times(3))
    images = model.sample(3, seed=0, sampler="heun", steps=3, precision="fp32")
    torch.testing.assert_close(images, ((expected + 1) / 2).clamp(0, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_training_on_data(tmp_path, tiny_dataset, share):
    """With no long steps MeanFlow is flow matching, whose loss must fall; with them the
    target moves as the network learns, so the run need only stay finite."""
    model = create_model("meanflow", **TINY, lr=3e-3, warmup_steps=0, batch_size=16,
                         interval_share=share)  # fmt: skip
    options = TrainOptions(out=tmp_path / "run", max_steps=25, progress=False, device="cpu")
    Trainer(model, options, dataset=tiny_dataset, log=lambda line: None).fit()
    losses = [json.loads(line)["mse"] for line in (tmp_path / "run/metrics.jsonl").open()
              if "mse" in line]  # fmt: skip
    assert len(losses) >= 2 and all(map(math.isfinite, losses))
    if share == 0.0:
        assert losses[-1] < losses[0]
    trained = load(tmp_path / "run")
    assert isinstance(trained, MeanFlow) and trained.sample(2, seed=0).shape == (2, 1, 28, 28)


def _flow_folder(tmp_path, dataset, name="teacher", **overrides):
    flow = create_model("flow", **TINY, sampler="midpoint", sampling_steps=4, **overrides)
    flow.prepare_training(dataset, resume=False)
    return _noisy(flow).save_pretrained(tmp_path / name)


def test_distillation_learns_the_teachers_velocity(tmp_path, tiny_dataset):
    """With no long steps, the distilled student's velocity is the teacher's: started from
    another flow model, it moves toward the teacher (the long steps' target is the
    MeanFlow identity, tested above)."""
    folder = _flow_folder(tmp_path, tiny_dataset)
    start = tmp_path / "start"
    _noisy(create_model("flow", **TINY), seed=3, scale=0.1).save_pretrained(start)
    teacher = load(folder)
    student = create_model("meanflow", **TINY, lr=2e-3, warmup_steps=0, ema_decay=None,
                           batch_size=32, interval_share=0.0)  # fmt: skip
    task = MeanFlowDistillation(str(folder), start=str(start))
    task.prepare(student, tiny_dataset, resume=False)
    for key, value in load(start).unet.state_dict().items():
        assert torch.equal(student.unet.state_dict()[key], value)
    generator = torch.Generator().manual_seed(5)
    z, t = torch.randn(64, 1, 28, 28, generator=generator), torch.rand(64, generator=generator)

    def velocity_error(model):
        with torch.no_grad():
            gap = model.predict_velocity(z, t) - teacher.velocity(None)(z, t)
        return float(torch.mean(gap**2))

    before = velocity_error(student)
    options = TrainOptions(out=tmp_path / "run", max_steps=40, progress=False, device="cpu")
    Trainer(student, options, dataset=tiny_dataset, log=lambda line: None, task=task).fit()
    assert velocity_error(load(tmp_path / "run")) < 0.5 * before


def test_the_distillation_task_checks_its_models(tmp_path, tiny_dataset):
    record = MeanFlowDistillation("t", start="s").record()
    assert record == {"name": "meanflow-distillation", "teacher": "t", "start": "s"}
    assert TrainingTask.from_record(record).record() == record
    for bad in (dict(teacher=" "), dict(teacher="t", start=3)):
        with pytest.raises(ConfigError, match="teacher|start"):
            MeanFlowDistillation(**bad)
    folder = str(_flow_folder(tmp_path, tiny_dataset, clusters=4))
    student = create_model("meanflow", **TINY, clusters=4)
    with pytest.raises(ConfigError, match="not a FlowMatching|MeanFlow model"):
        MeanFlowDistillation(folder).prepare(create_model("flow", **TINY), tiny_dataset, False)
    with pytest.raises(ConfigError, match="label_dropout"):
        labelled = create_model("meanflow", **TINY, clusters=4, label_dropout=0.1)
        MeanFlowDistillation(folder).prepare(labelled, tiny_dataset, False)
    with pytest.raises(ConfigError, match="clusters"):
        MeanFlowDistillation(folder).prepare(create_model("meanflow", **TINY), tiny_dataset, False)
    with pytest.raises(CheckpointError, match="meanflow start"):
        MeanFlowDistillation(folder, start=str(tmp_path / "nowhere")).prepare(
            student, tiny_dataset, False)  # fmt: skip
    with pytest.raises(ConfigError, match="prepare"):
        MeanFlowDistillation(folder).loss(student, torch.rand(2, 1, 28, 28), None, 0, "m")
    other = str(_flow_folder(tmp_path, tiny_dataset, name="start", clusters=4))
    MeanFlowDistillation(folder, start=other).prepare(student, tiny_dataset, False)
    torch.testing.assert_close(student.unet.stem.weight, load(other).unet.stem.weight)


def test_cli_trains_and_samples_meanflow(run_cli, tmp_path, idx_root):
    out = tmp_path / "run"
    base = ["train", "meanflow", "--data-dir", idx_root, "--out", out, "--quiet",
            "--device", "cpu"]  # fmt: skip
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({**TINY, "batch_size": 8}))
    code, _, err = run_cli(*base, "--config", recipe, "--max-steps", "2")
    assert code == 0, err
    grid = tmp_path / "grid.png"
    code, _, err = run_cli("sample", "meanflow", "--checkpoint", out, "-n", "4", "--output", grid)
    assert code == 0 and grid.exists(), err
    code, _, err = run_cli("sample", "meanflow", "--checkpoint", out, "-n", "4", "--output",
                           tmp_path / "g2.png", "--sampler", "nope")  # fmt: skip
    assert code != 0 and "nope" in err and "Traceback" not in err
