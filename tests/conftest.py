"""Shared fixtures: tiny synthetic data, a fake MNIST folder, real data, registry isolation."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import torch

from genmnist.data import InMemoryDataset, write_idx

# Tiny models on 2 CPU cores: one thread avoids contention and keeps timings stable.
torch.set_num_threads(1)

#: Overrides that make a VAE small enough to train in milliseconds per step.
TINY = {
    "vae-mlp": {"hidden_dims": (32,), "latent_dim": 4},
    "vae-conv": {"hidden_dims": (4, 8), "latent_dim": 4},
    "vae-gmm": {"hidden_dims": (4, 8), "latent_dim": 4, "prior_components": 3},
    "cvae": {"hidden_dims": (4, 8), "latent_dim": 4},
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run the tests marked slow (subprocesses, real training); "
        "`pytest --run-slow -m slow` runs only those",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "real_data: reads real MNIST from $GENMNIST_DATA (skipped when unset)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Plain `pytest` is the quick tier a change is checked with; .ci/run adds the slow one.
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (.ci/run does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def synthetic_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 28x28 images with a class-dependent bright bar plus noise, and labels.

    Structured (not pure noise) so a tiny VAE visibly learns within ~100 steps.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 40, (n, 28, 28), generator=g, dtype=torch.uint8)
    for i, k in enumerate(labels.tolist()):
        images[i, :, 2 + 2 * k : 5 + 2 * k] = 255  # vertical bar, position = class
        images[i, 2 + 2 * k : 5 + 2 * k, :] = 200  # horizontal bar, same position
    return images, labels


@pytest.fixture
def tiny_dataset() -> InMemoryDataset:
    """256 synthetic 28x28 images, labels 0..9."""
    images, labels = synthetic_images(256)
    return InMemoryDataset(images, labels.long(), "mnist", "train")


def write_mnist_folder(root: Path, n_train: int = 64, n_test: int = 32) -> dict[str, torch.Tensor]:
    """Write the four MNIST IDX files under ``root/MNIST/raw`` and return what was written."""
    raw = root / "MNIST" / "raw"
    train_x, train_y = synthetic_images(n_train, seed=1)
    test_x, test_y = synthetic_images(n_test, seed=2)
    written = {
        "train-images-idx3-ubyte": train_x,
        "train-labels-idx1-ubyte": train_y.to(torch.uint8),
        "t10k-images-idx3-ubyte": test_x,
        "t10k-labels-idx1-ubyte": test_y.to(torch.uint8),
    }
    for name, tensor in written.items():
        write_idx(raw / name, tensor)
    return written


@pytest.fixture
def idx_root(tmp_path: Path) -> Path:
    """A data root holding a tiny MNIST (64 train, 32 test images) as IDX files."""
    root = tmp_path / "data"
    write_mnist_folder(root)
    return root


@pytest.fixture
def real_data() -> Path:
    """The real data root from ``GENMNIST_DATA``; skips when the variable is unset."""
    value = os.environ.get("GENMNIST_DATA", "").strip()
    if not value:
        pytest.skip("GENMNIST_DATA is not set: no real MNIST to test against")
    return Path(value).expanduser()


@pytest.fixture(autouse=True)
def isolated_model_registry(monkeypatch: pytest.MonkeyPatch):
    """Keep tests hermetic: no installed plugins are discovered (plugin tests opt back in
    with :func:`plugin_registry`), and whatever a test registers in ``MODELS`` is undone."""
    from genmnist.registry import MODELS

    importlib.import_module("genmnist.models")  # built-ins registered before the snapshot
    monkeypatch.setenv("GENMNIST_DISABLE_PLUGINS", "1")
    with MODELS.isolated():
        yield


class FakeDist:
    def __init__(self, name: str, version: str = "1.0") -> None:
        self.name, self.version = name, version


class FakeEntryPoint:
    """Quacks like ``importlib.metadata.EntryPoint``: name, value, dist, load()."""

    def __init__(self, name: str, obj=None, *, error: Exception | None = None, dist="fakepkg"):
        self.name = name
        self.value = f"{dist}.models:{name.replace('-', '_')}"
        self.dist = FakeDist(dist) if dist else None
        self.group = "genmnist.models"
        self._obj, self._error = obj, error
        self.loaded = False

    def load(self):
        self.loaded = True
        if self._error is not None:
            raise self._error
        return self._obj


@pytest.fixture
def plugin_registry(monkeypatch: pytest.MonkeyPatch):
    """Returns ``install(*entry_points)``: makes ``MODELS`` rediscover plugins from the
    given fake entry points (built-ins stay registered). The autouse fixture restores it."""
    import importlib.metadata

    from genmnist.registry import MODELS

    def install(*eps: FakeEntryPoint):
        def entry_points(**params):
            assert params.get("group") == "genmnist.models"
            return list(eps)

        monkeypatch.delenv("GENMNIST_DISABLE_PLUGINS", raising=False)
        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
        MODELS.rediscover_plugins()
        return MODELS

    return install


@pytest.fixture
def fake_entry_point() -> type[FakeEntryPoint]:
    """The :class:`FakeEntryPoint` class, to build entry points for ``plugin_registry``."""
    return FakeEntryPoint


@pytest.fixture
def tiny_model():
    """``tiny_model(name, **overrides)``: a small, freshly seeded model of a built-in kind."""
    from genmnist.models import create_model

    def make(name: str = "vae-mlp", seed: int = 0, **overrides):
        torch.manual_seed(seed)
        return create_model(name, **{**TINY[name], **overrides})

    return make


@pytest.fixture
def make_mnist_folder():
    """``make_mnist_folder(root, n_train=64, n_test=32)``: write the four IDX files under
    ``root/MNIST/raw`` and return ``{file name: tensor written}``."""
    return write_mnist_folder


# ------------------------------------------------------------------------------ the CLI
@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """``run_cli(*args)``: run ``genmnist ARGS`` in-process and return ``(exit code, stdout,
    stderr)``; rich tables get 200 columns (no wrapped cells) and tracebacks stay off."""
    from genmnist.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("GENMNIST_DEBUG", raising=False)

    def run(*args) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        return info.value.code, out, err

    return run


def _assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err


@pytest.fixture
def assert_one_line_error():
    """``assert_one_line_error(stderr, *fragments)``: stderr is one ``error: ...`` line, with
    no traceback, holding every fragment."""
    return _assert_one_line_error


@pytest.fixture
def run_python():
    """``run_python(*args, code=None, env=None)``: run ``python [-c CODE] ARGS`` in a
    subprocess (one thread, unless ``env`` says otherwise); returns the completed process."""
    import subprocess
    import sys

    def run(*args: str, code: str | None = None, env=None, timeout: float = 120):
        command = [sys.executable, *(["-c", code] if code is not None else []), *args]
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env if env is not None else {**os.environ, "OMP_NUM_THREADS": "1"},
            stdin=subprocess.DEVNULL,
        )

    return run
