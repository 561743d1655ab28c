from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medscope.data.io import BadImageError, read_image


def _save(path: Path, arr: np.ndarray, **kw) -> Path:
    Image.fromarray(arr).save(path, **kw)
    return path


def test_reads_and_resizes_to_requested_size_and_channels(tmp_path):
    path = _save(tmp_path / "a.png", np.full((30, 50, 3), 200, np.uint8))
    assert read_image(path, 16, 3).shape == (16, 16, 3)
    grey = read_image(path, 16, 1)
    assert grey.shape == (16, 16, 1) and int(grey.mean()) == 200


def test_grayscale_file_becomes_three_equal_channels(tmp_path):
    path = _save(tmp_path / "g.png", np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1)))
    arr = read_image(path, None, 3)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    arr = read_image(_save(tmp_path / "t.png", rgba), None, 3)
    assert (arr == 255).all()


def test_exif_orientation_is_honoured(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)  # landscape, stored with "rotate 90" in EXIF
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    path = tmp_path / "r.jpg"
    img.save(path, exif=exif)
    assert read_image(path, None, 3).shape[:2] == (40, 20)


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"this is not an image at all", "not a readable image"),
])
def test_bad_files_raise_with_a_reason(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(BadImageError, match=reason):
        read_image(path, 16, 3)


def test_truncated_jpeg_is_reported(tmp_path):
    rng = np.random.default_rng(0)
    full = _save(tmp_path / "full.jpg", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:600])
    with pytest.raises(BadImageError, match="truncated"):
        read_image(cut, 32, 3)


def test_missing_file(tmp_path):
    with pytest.raises(BadImageError, match="not found"):
        read_image(tmp_path / "nope.png", 16, 3)
