"""One test per row of docs/reliability.md's hostile-input table (rows covered elsewhere name
their test there): each input gives a clean, one-line outcome, never a traceback or a hang."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medscope.config import load_config
from medscope.data.io import BadImageError, read_image, read_image_bytes
from medscope.data.prepare import read_splits, write_splits
from medscope.data.sources import load_npz, scan_csv, scan_folder
from medscope.errors import MedscopeError


def _encoded(fmt: str, mode: str = "RGB", size: int = 48) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_truncated_or_corrupt_image_is_a_one_line_bad_file(tmp_path, fmt):
    data = _encoded(fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    for damaged in (data[: len(data) // 3], data[:20] + bytes(200) + data[220:]):
        path.write_bytes(damaged)
        for source, read in ((path, read_image), (damaged, read_image_bytes)):
            try:
                out = read(source, 16, 3)
            except BadImageError as exc:
                assert "\n" not in str(exc)
            else:  # a decoder may recover what is left; then it is a whole image
                assert out.shape == (16, 16, 3)
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(BadImageError, match="truncated|corrupt|not a readable"):
        read_image(path, 16, 3)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(BadImageError, match=r"empty file \(0 bytes\)"):
        read_image(tmp_path / "empty.png", 16, 3)


def test_non_image_with_an_image_extension(tmp_path):
    (tmp_path / "notes.jpg").write_text("patient notes, not pixels\n" * 20)
    with pytest.raises(BadImageError, match="not a readable image"):
        read_image(tmp_path / "notes.jpg", 16, 3)


def test_16_bit_png_and_tiff_are_stretched_to_8_bit(tmp_path):
    ramp = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)
    for name in ("g16.png", "g16.tif"):
        Image.fromarray(ramp).save(tmp_path / name)
        out = read_image(tmp_path / name, 32, 1)
        assert out.dtype == np.uint8 and out.shape == (32, 32, 1)
        assert out.min() == 0 and out.max() == 255  # the range is used, not clipped to black


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour(tmp_path):
    Image.new("CMYK", (24, 24), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    out = read_image(tmp_path / "cmyk.jpg", 16, 3)
    assert out.shape == (16, 16, 3)
    red, green, blue = out[8, 8].astype(int)
    assert red > 200 and green < 60 and blue > 200  # full magenta ink = magenta


def test_huge_dimensions_within_the_limit_decode_and_resize(tmp_path):
    # 30000 x 2 pixels: a real image far wider than any model input, a few kB on disk.
    Image.fromarray(np.full((2, 30000, 3), 120, np.uint8)).save(tmp_path / "wide.png")
    assert read_image(tmp_path / "wide.png", 16, 3).shape == (16, 16, 3)


def test_symlink_loops_in_a_data_folder_do_not_hang_the_scan(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 60 * i + (cls == "b"), np.uint8)).save(
                tmp_path / cls / f"{i}.png")
    os.symlink("..", tmp_path / "a" / "parent_loop")
    os.symlink(".", tmp_path / "b" / "self_loop")
    start = time.monotonic()
    source = scan_folder(tmp_path)
    assert time.monotonic() - start < 5
    assert source.classes == ["a", "b"] and len(source.samples) == 4


def _images(root: Path, n: int = 4) -> None:
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / f"{i}.png")


@pytest.mark.parametrize(("text", "outcome"), [
    ("path,label,notes,site\n0.png,a,x,1\n1.png,b,,2\n2.png,a,,\n3.png,b,,\n", "ok"),
    ("file_name,label\n0.png,a\n1.png,b\n", "no path column"),
    ("path,diagnosis\n0.png,a\n1.png,b\n", "no label column"),
    ("path,label\n0.png,a\n1.png\n2.png,b\n", "row 3 has an empty 'label'"),
    ("path,label\n0.png,a\n1.png,Zellkern, ä\n", "row 3 has more fields than the header"),
    ("path,label\n", "CSV has no rows"),
], ids=["extra-columns", "missing-path", "missing-label", "short-row", "long-row", "header-only"])
def test_csv_with_missing_or_extra_columns(tmp_path, text, outcome):
    _images(tmp_path)
    (tmp_path / "labels.csv").write_text(text)
    if outcome == "ok":
        assert scan_csv(tmp_path / "labels.csv").classes == ["a", "b"]
        return
    with pytest.raises(MedscopeError, match=outcome) as err:
        scan_csv(tmp_path / "labels.csv")
    assert str(err.value).startswith(str(tmp_path / "labels.csv")) and "\n" not in str(err.value)


def test_csv_not_in_utf8_is_one_line(tmp_path):
    _images(tmp_path)
    (tmp_path / "labels.csv").write_bytes("path,label\n0.png,Zellkern ä\n".encode("latin-1"))
    with pytest.raises(MedscopeError, match="not a readable CSV"):
        scan_csv(tmp_path / "labels.csv")


def test_non_utf8_file_name_round_trips_through_the_split_file(tmp_path):
    data = tmp_path / "data"
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        _images(data / cls)
    odd = data / "a" / os.fsdecode(b"slide \xff\xfe.png")  # Latin-1 bytes, not UTF-8
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(odd)
    source = scan_folder(data)
    assert odd in [s.path for s in source.samples]
    split_file = tmp_path / "splits.csv"
    write_splits(split_file, source, np.array(["train"] * len(source.samples)))
    assert os.fsencode(odd.relative_to(data)) in split_file.read_bytes()
    paths = {r["path"] for r in read_splits(split_file)}
    assert any(os.fsencode(p).endswith(b"slide \xff\xfe.png") for p in paths)
    assert read_image(odd, 8, 3).shape == (8, 8, 3)


def test_labels_with_unicode_and_spaces(tmp_path):
    names = ["Zellkern ä", "γ gamma", "budding yeast (spp.)"]
    for name in names:
        (tmp_path / "f" / name).mkdir(parents=True)
        _images(tmp_path / "f" / name, 2)
    assert scan_folder(tmp_path / "f").classes == sorted(names)
    _images(tmp_path)
    (tmp_path / "l.csv").write_text(
        "path,label\n0.png,Zellkern ä\n1.png, γ gamma \n2.png,Zellkern ä\n3.png,γ gamma\n",
        encoding="utf-8")
    assert scan_csv(tmp_path / "l.csv").classes == ["Zellkern ä", "γ gamma"]


@pytest.mark.parametrize(("yaml_text", "named"), [
    ("train:\n  epoch: 3\n", "train.epoch: Extra inputs are not permitted"),
    ("train:\n  lr: fast\n", "train.lr: Input should be a valid number"),
    ("data:\n  img_size: [1, 2]\n", "data.img_size: Input should be a valid integer"),
    ("trian:\n  lr: 0.1\n", "trian: Extra inputs are not permitted"),
    ("train:\n  lr: .inf\n", "train.lr: Input should be a finite number"),
    ("- just\n- a list\n", "a config must be a mapping"),
    ("train: {lr: 0.1\n", "not valid YAML"),
], ids=["unknown-key", "wrong-type", "list-for-int", "unknown-section", "inf", "list",
        "broken-yaml"])
def test_yaml_config_with_unknown_keys_or_wrong_types_names_the_key(tmp_path, yaml_text,
                                                                    named):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml_text)
    with pytest.raises(MedscopeError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path)) and named in message and "\n" not in message


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("arrays", "message"), [
    ({"train_images": np.zeros((4, 8), np.uint8), "train_labels": np.arange(4) % 2},
     r"train_images has shape \(4, 8\)"),
    ({"train_images": np.zeros((4, 8, 8, 5), np.uint8), "train_labels": np.arange(4) % 2},
     r"expected numbers as N x H x W or N x H x W x 1\|3"),
    ({"train_images": np.zeros((4, 8, 8), np.uint8), "train_labels": np.zeros(3, np.int64)},
     "train_labels has 3 rows but train_images has 4"),
    ({"train_images": np.zeros((4, 8, 8), np.uint8), "train_labels": np.array([0.5, 1, 0, 1])},
     "expected whole class indices"),
    ({"train_images": np.zeros((4, 8, 8), np.uint8), "train_labels": np.array([-1, 1, 0, 1])},
     "class indices start at 0"),
    ({"train_images": np.array([None] * 4, dtype=object), "train_labels": np.arange(4) % 2},
     "not a readable array"),
    ({"images": np.zeros((4, 8, 8), np.uint8)}, "npz lacks train_images, train_labels"),
], ids=["2d-images", "5-channels", "row-mismatch", "fractional-labels", "negative-labels",
        "object-array", "missing-keys"])
def test_npz_with_wrong_shapes_is_one_line(tmp_path, arrays, message):
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(MedscopeError, match=message) as err:
        load_npz(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


@pytest.mark.parametrize("change", ["model", "classes"])
def test_checkpoint_for_another_architecture_or_class_count_is_one_line(tmp_path, change):
    import json

    from medscope.core.checkpoint import CheckpointMeta, save_checkpoint
    from medscope.models import create_model
    from medscope.predictor import Predictor

    model = create_model("simple_cnn", num_classes=2, in_chans=3, img_size=32)
    meta = CheckpointMeta(model="simple_cnn", classes=["a", "b"], img_size=32, in_chans=3,
                          mean=[0.5] * 3, std=[0.2] * 3)
    stem = tmp_path / "checkpoints" / "best"
    save_checkpoint(stem, model, meta)
    raw = json.loads(stem.with_suffix(".json").read_text())
    if change == "model":
        raw["model"] = "lenet5"
    else:
        raw["classes"] = ["a", "b", "c"]
    stem.with_suffix(".json").write_text(json.dumps(raw))
    with pytest.raises(MedscopeError, match="weights do not fit") as err:
        Predictor.load(stem, device="cpu")
    assert "\n" not in str(err.value)
