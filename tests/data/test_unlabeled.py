"""Images without labels: every file under the folders, once; one size and one colour kind."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medscope.data.unlabeled import check_one_kind, scan_unlabeled
from medscope.errors import MedscopeError


def _img(path, size=16, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(np.full(shape, 90, np.uint8), mode).save(path)
    return path


def test_every_image_at_any_depth_once_class_folders_ignored(tmp_path):
    for rel in ("a/x/1.png", "a/2.jpg", "b/3.png"):
        _img(tmp_path / rel)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    samples = scan_unlabeled([tmp_path / "a", tmp_path, tmp_path / "b"])
    names = [s.path.relative_to(tmp_path).as_posix() for s in samples]
    assert sorted(names) == ["a/2.jpg", "a/x/1.png", "b/3.png"] and len(names) == 3
    assert check_one_kind(samples) == ((16, 16), "colour")


def test_a_folder_without_images_is_one_line(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    with pytest.raises(MedscopeError, match=r"docs: no images found at any depth"):
        scan_unlabeled([tmp_path / "docs"])
    with pytest.raises(MedscopeError, match="not a folder"):
        scan_unlabeled([tmp_path / "missing"])


@pytest.mark.parametrize("odd, message", [
    ({"size": 24}, r"b\.png: 24x24 px among 16x16 px images .*medscope patches"),
    ({"mode": "L"}, r"b\.png: grey among colour images"),
])
def test_mixed_sizes_or_grey_among_colour_name_the_file(tmp_path, odd, message):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png", **odd)
    samples = scan_unlabeled([tmp_path])
    with pytest.raises(MedscopeError, match=message) as err:
        check_one_kind(samples)
    assert "\n" not in str(err.value)
