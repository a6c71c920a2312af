"""``--compile``: torch.compile of a model's networks, in place, with one-line errors when it
cannot work."""

from __future__ import annotations

import pytest
import torch

import genmnist.compiling
from genmnist.compiling import CompileUnavailable, compile_errors, compile_model
from genmnist.models import load
from genmnist.training import Trainer, TrainOptions


@pytest.fixture
def no_compiler(monkeypatch):
    """As on a machine without a C++ compiler."""
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(genmnist.compiling.shutil, "which", lambda name: None)


def test_compiling_keeps_the_state_dict_so_weights_save_and_load(tiny_model, tmp_path):
    model = tiny_model("vae-mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compile_model(model)  # compiles lazily: nothing runs until a network is called
    assert model.decoder._compiled_call_impl is not None
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.save_pretrained(tmp_path / "m")
    assert list(load(tmp_path / "m").state_dict()) == list(before)


def test_without_a_cxx_compiler_compile_fails_in_one_line(tiny_model, no_compiler):
    with pytest.raises(CompileUnavailable, match="C\\+\\+ compiler"):
        compile_model(tiny_model("vae-mlp"))


def test_cli_sample_compile_without_compiler(run_cli, assert_one_line_error, tmp_path, no_compiler):
    code, _, err = run_cli("sample", "vae-mlp", "-n", "2", "-o", tmp_path / "x.png", "--compile")
    assert code == 1
    assert_one_line_error(err, "--compile", "C++ compiler")
    assert not (tmp_path / "x.png").exists()


def test_cli_train_compile_without_compiler(run_cli, assert_one_line_error, tmp_path, no_compiler):
    out = tmp_path / "run"
    code, _, err = run_cli("train", "vae-mlp", "--max-steps", "1", "--out", out, "--compile")
    assert code == 1
    assert_one_line_error(err, "--compile", "C++ compiler")
    assert not out.exists()


def test_a_compilation_failure_becomes_one_line():
    from torch._dynamo.exc import TorchDynamoException

    failed = pytest.raises(CompileUnavailable, match="torch.compile failed.*inductor broke")
    with failed, compile_errors():
        raise TorchDynamoException("inductor broke\nmany more lines")
    with pytest.raises(ValueError), compile_errors():  # anything else passes unchanged
        raise ValueError("not about compiling")


@pytest.mark.slow  # compiles for real: tens of seconds on 2 CPU cores
def test_compiled_sampling_and_training_match_eager(tiny_model, tiny_dataset, tmp_path):
    eager = tiny_model("vae-mlp", precision="fp32", batch_size=16)
    compiled = tiny_model("vae-mlp", precision="fp32", batch_size=16)
    compile_model(compiled)
    torch.testing.assert_close(
        compiled.sample(4, seed=0, precision="fp32"),
        eager.sample(4, seed=0, precision="fp32"),
        atol=1e-5,
        rtol=0,
    )
    results = []
    for flag in (False, True):
        model = tiny_model("vae-mlp", precision="fp32", batch_size=16)
        options = TrainOptions(
            out=tmp_path / str(flag), max_steps=4, log_every=2, progress=False, device="cpu",
            compile=flag,
        )  # fmt: skip
        torch.manual_seed(0)
        results.append(Trainer(model, options, tiny_dataset, log=lambda m: None).fit())
    assert results[1].last_metrics["loss"] == pytest.approx(results[0].last_metrics["loss"], 1e-3)
    reloaded = load(tmp_path / "True")  # the compiled run's weights load as usual
    assert list(reloaded.state_dict()) == list(eager.state_dict())
