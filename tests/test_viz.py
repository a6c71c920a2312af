"""Sample grids, array outputs and training curves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from genmnist.errors import ConfigError
from genmnist.viz import OUTPUT_FORMATS, make_grid, save_curves, save_grid, save_samples, to_uint8


def _images(n, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("n", "nrow"),
    [(2, 8), (5, 3), (8, 8), (10, 4), (16, 8), (3, 1), (7, 10), (64, 8)],
)
def test_make_grid_matches_torchvision(n, nrow):
    from torchvision.utils import make_grid as tv_make_grid

    images = _images(n)
    expected = tv_make_grid(images, nrow=nrow, padding=2)  # 3 channels for 1-channel input
    grid = make_grid(images, nrow=nrow)
    assert grid.shape == (1, *expected.shape[1:])
    assert torch.equal(grid[0], expected[0])


def test_make_grid_single_image_matches_torchvision():
    from torchvision.utils import make_grid as tv_make_grid

    images = _images(1)
    assert make_grid(images).shape[1:] == tv_make_grid(images, padding=2).shape[1:]


def test_make_grid_padding_and_pad_value():
    from torchvision.utils import make_grid as tv_make_grid

    images = _images(5)
    expected = tv_make_grid(images, nrow=2, padding=3, pad_value=0.5)
    assert torch.equal(make_grid(images, nrow=2, padding=3, pad_value=0.5)[0], expected[0])
    with pytest.raises(ValueError, match="expected"):
        make_grid(torch.rand(1, 28, 28))


def test_to_uint8_rounds_like_torchvision():
    values = torch.tensor([0.0, 0.001, 0.5, 0.999, 1.0, -0.2, 1.3])
    expected = torch.tensor([0, 0, 128, 255, 255, 0, 255], dtype=torch.uint8)
    assert torch.equal(to_uint8(values), expected)


def test_save_samples_png(tmp_path):
    images = _images(10)
    path = save_samples(images, tmp_path / "grid.png", nrow=4)
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.mode == "L"
        grid = make_grid(images, nrow=4)
        assert picture.size == (grid.shape[2], grid.shape[1])  # (width, height)
        assert np.array_equal(np.asarray(picture), to_uint8(grid)[0].numpy())


def test_save_grid_matches_torchvision_save_image(tmp_path):
    from torchvision.utils import save_image

    images = _images(12)
    ours = save_grid(images, tmp_path / "ours.png", nrow=5)
    save_image(images, tmp_path / "tv.png", nrow=5)
    with Image.open(ours) as a, Image.open(tmp_path / "tv.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b.convert("L")))


def test_save_samples_npy_and_pt(tmp_path):
    images = _images(4)
    npy = save_samples(images, tmp_path / "s.npy")
    array = np.load(npy)
    assert array.shape == (4, 1, 28, 28) and array.dtype == np.float32
    assert np.array_equal(array, images.numpy())
    pt = save_samples(images, tmp_path / "s.pt")
    loaded = torch.load(pt, weights_only=True)
    assert torch.equal(loaded, images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy", "s.pt"]  # no temp files


def test_save_samples_format_overrides_suffix(tmp_path):
    images = _images(3)
    path = save_samples(images, tmp_path / "samples.bin", fmt="npy")
    assert path == tmp_path / "samples.bin"
    assert np.array_equal(np.load(path), images.numpy())
    path = save_samples(images, tmp_path / "noext", fmt="PNG")
    assert Image.open(path).format == "PNG"
    default = save_samples(images, tmp_path / "no_suffix")  # no suffix, no fmt: PNG
    assert Image.open(default).format == "PNG"


def test_save_samples_unknown_format(tmp_path):
    assert OUTPUT_FORMATS == ("png", "npy", "pt")
    with pytest.raises(ConfigError, match="unknown output format 'gif'"):
        save_samples(_images(2), tmp_path / "x.gif")
    with pytest.raises(ConfigError, match="unknown output format 'jpeg'"):
        save_samples(_images(2), tmp_path / "x.png", fmt="jpeg")
    assert list(tmp_path.iterdir()) == []


def test_save_curves_png(tmp_path):
    series = {
        "loss": [(i, 100 / (i + 1)) for i in range(50)],
        "d_loss": [(i, 1 + math.sin(i)) for i in range(50)],
        "flat": [(0, 1.0), (10, 1.0)],
        "with_nan": [(0, 1.0), (1, math.nan), (2, 0.5)],
        "all_nan": [(0, math.nan)],
    }
    path = save_curves(series, tmp_path / "curves" / "loss.png", title="test", size=(500, 300))
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size == (500, 300)
        colours = {c for _, c in picture.convert("RGB").getcolors(maxcolors=100_000)}
        assert (0x1F, 0x77, 0xB4) in colours  # the first series was drawn
    empty = save_curves({}, tmp_path / "empty.png")
    assert Image.open(empty).size == (640, 400)
