"""Scoring images made anywhere: `read_images`, `evaluate_images` and `genmnist score`."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from genmnist.errors import ConfigError
from genmnist.io import save_tensors
from genmnist.metrics import image_metrics
from genmnist.metrics.evaluation import SmallSampleWarning, evaluate_images
from genmnist.metrics.image_files import as_unit_images, read_images


@pytest.fixture
def digits(tiny_dataset) -> tuple[np.ndarray, np.ndarray]:
    """20 synthetic 28x28 uint8 images and their labels."""
    return tiny_dataset.images[:20].numpy(), tiny_dataset.labels[:20].numpy()


def expected(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().div(255).reshape(-1, 1, 28, 28)


def test_every_layout_and_file_type_reads_the_same_images(tmp_path, digits):
    images, labels = digits
    as_float = images.astype(np.float32) / 255
    layouts = {
        "uint8.npy": images,
        "nchw.npy": as_float[:, None],
        "nhwc.npy": as_float[..., None],
        "flat.npy": as_float.reshape(-1, 784),
        "half.npy": as_float.astype(np.float16),
        "int64.npy": images.astype(np.int64),
    }
    for name, array in layouts.items():
        np.save(tmp_path / name, array)
        read, no_labels = read_images(tmp_path / name)
        assert no_labels is None
        tolerance = 1e-3 if name == "half.npy" else 1e-6
        torch.testing.assert_close(read, expected(images), atol=tolerance, rtol=0)

    np.savez(tmp_path / "both.npz", images=images, labels=labels)
    save_tensors(
        tmp_path / "both.safetensors",
        {"images": torch.from_numpy(as_float), "labels": torch.from_numpy(labels)},
    )
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images):  # names sort in the images' order
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    (folder / "notes.txt").write_text("not an image: skipped")
    for source in ("both.npz", "both.safetensors"):
        read, read_labels = read_images(tmp_path / source)
        torch.testing.assert_close(read, expected(images))
        assert read_labels.tolist() == labels.tolist()
    read, _ = read_images(folder)
    torch.testing.assert_close(read, expected(images))

    np.save(tmp_path / "labels.npy", labels.astype(np.uint8))
    _, read_labels = read_images(tmp_path / "uint8.npy", tmp_path / "labels.npy")
    assert read_labels.dtype == torch.int64 and read_labels.tolist() == labels.tolist()


@pytest.mark.parametrize(
    ("values", "fragments"),
    [
        (lambda x: x * 2 - 1, ["range from -1 to 1", "(x + 1) / 2"]),  # a tanh output
        (lambda x: x * 255, ["range from 0 to 255", "divide them by 255"]),
        (lambda x: x * 1000 - 3, ["rescale them to [0, 1]"]),
        (lambda x: x.masked_fill(x > 0.5, float("nan")), ["NaN or inf"]),
    ],
)
def test_pixels_outside_the_unit_range_are_refused_with_the_fix(values, fragments):
    images = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    images[0].fill_(1.0)
    images[1].fill_(0.0)
    with pytest.raises(ConfigError) as info:
        as_unit_images(values(images))
    assert all(fragment in str(info.value) for fragment in fragments), info.value
    with pytest.raises(ConfigError):  # the metric building block refuses them too
        image_metrics(values(images))
    # rounding just outside [0, 1] is clamped, and the caller's tensor is left alone
    nudged = images.clone()
    nudged[0, 0, 0, 0] = 1.004
    assert float(as_unit_images(nudged).max()) == 1.0 and float(nudged.max()) > 1


def test_files_that_are_not_images_fail_in_one_sentence(tmp_path, digits):
    images, labels = digits
    cases = {
        "rgb.npy": (np.zeros((12, 3, 32, 32), np.float32), "got shape (12, 3, 32, 32)"),
        "empty.npy": (images[:0], "holds no images"),
        "wide.npy": (images.astype(np.int64) * 2, "integer pixels must lie in 0..255"),
        "text.npy": (np.array(["a", "b"]), "expected a numeric array"),
        "bool.npy": (images > 0, "expected float or integer pixels"),
    }
    for name, (array, fragment) in cases.items():
        np.save(tmp_path / name, array)
        with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            read_images(tmp_path / name)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "rgb.npy").read_bytes()[:4000])
    (tmp_path / "grid.png").write_bytes(b"")
    (tmp_path / "weights.pt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "no-pngs").mkdir()
    (tmp_path / "odd").mkdir()
    Image.new("L", (32, 32)).save(tmp_path / "odd" / "a.png")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_text("not a png")
    for path, fragment in [
        ("cut.npy", "not a plain numeric array"),
        ("grid.png", "folder of 28x28 PNG images"),
        ("weights.pt", "pickles, which genmnist never opens"),
        ("notes.txt", "unknown image file type '.txt'"),
        ("missing.npy", "file not found"),
        ("no-pngs", "no .png images"),
        ("odd", "expected a 28x28 image, got 32x32"),
        ("broken", "not a readable PNG image"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            read_images(tmp_path / path)

    np.save(tmp_path / "images.npy", images)
    np.savez(tmp_path / "both.npz", images=images, labels=labels)
    for labels_array, fragment in [
        (labels[:5], "expected 20 labels"),
        (labels + 0.5, "whole numbers"),
        (labels - 10, "0 or more"),
        (np.eye(10)[labels], r"one-hot\? store labels.argmax\(1\)"),
    ]:
        np.save(tmp_path / "labels.npy", labels_array)
        with pytest.raises(ConfigError, match=fragment):
            read_images(tmp_path / "images.npy", tmp_path / "labels.npy")
    with pytest.raises(ConfigError, match="holds labels already"):
        read_images(tmp_path / "both.npz", tmp_path / "labels.npy")
    np.savez(tmp_path / "unnamed.npz", a=images, b=labels)
    with pytest.raises(ConfigError, match="expected an array named 'images', found a, b"):
        read_images(tmp_path / "unnamed.npz")


class _Trap:
    """Unpickling this creates a file: the test below checks that nothing unpickles it."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def __reduce__(self):
        return (open, (self.flag, "w"))


def test_pickled_files_are_never_unpickled(tmp_path):
    flag = tmp_path / "unpickled"
    np.save(tmp_path / "objects.npy", np.array([_Trap(str(flag))], dtype=object))
    with open(tmp_path / "raw.npy", "wb") as f:
        pickle.dump(_Trap(str(flag)), f)
    np.savez(tmp_path / "objects.npz", images=np.array([_Trap(str(flag))], dtype=object))
    for name in ("objects.npy", "raw.npy", "objects.npz"):
        with pytest.raises(ConfigError, match="never unpickles|not a plain numeric array"):
            read_images(tmp_path / name)
    assert not flag.exists()


def test_evaluate_images_matches_the_building_blocks_and_adds_the_floor(idx_root, digits):
    images, labels = digits
    with pytest.warns(SmallSampleWarning, match="fewer than the 10,000"):
        result = evaluate_images(
            images, labels=torch.from_numpy(labels), name="mine", data_dir=idx_root, kid_subsets=5
        )
    plain = image_metrics(images, labels=torch.from_numpy(labels), data_dir=idx_root, kid_subsets=5)
    assert result["model"] == "mine" and result["n"] == 20 and result["conditional"]
    for key in ("fid", "precision", "recall", "acceptability", "conditional_accuracy"):
        assert result[key] == pytest.approx(plain[key])
    assert result["fid_floor"] >= 0 and "fid_floor" not in plain
    assert any("fewer than the 10,000" in w for w in result["warnings"])
    with pytest.raises(ConfigError, match=r"labels must be in 0\.\.9"):
        evaluate_images(images, labels=torch.full((20,), 10), data_dir=idx_root)
    with pytest.raises(ConfigError, match="at least 10 samples"):
        evaluate_images(images[:5], data_dir=idx_root)


def test_score_command_reports_json_and_refuses_in_one_line(
    tmp_path, idx_root, digits, run_cli, assert_one_line_error
):
    images, labels = digits
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "tanh.npy", images.astype(np.float32) / 127.5 - 1)
    out = tmp_path / "score.json"
    args = ["--data-dir", idx_root, "--labels", tmp_path / "labels.npy"]
    code, stdout, err = run_cli("score", tmp_path / "images.npy", *args, "--json", "-o", out)
    assert code == 0, err
    result = json.loads(stdout)
    assert result == json.loads(out.read_text())
    assert result["model"] == "images.npy" and result["n"] == 20
    assert result["conditional_accuracy"] is not None and result["fid_floor"] is not None
    assert "fewer than the 10,000" in err

    code, _, err = run_cli("score", tmp_path / "images.npy", *args, "-o", out)
    assert code == 2
    assert_one_line_error(err, "already exists; pass --overwrite")
    code, _, err = run_cli("score", tmp_path / "tanh.npy", "--data-dir", idx_root)
    assert code == 1
    assert_one_line_error(err, "tanh.npy", "(x + 1) / 2")
    code, _, err = run_cli("score", tmp_path / "images.npy", "-d", "cifar")
    assert code == 2
    assert_one_line_error(err, "unknown dataset 'cifar'")
