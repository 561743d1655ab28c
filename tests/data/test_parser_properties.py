"""Property-based and fuzz tests of what reads user data: the label/CSV parser and the upload
decoder return a result or a clean one-line error, never another exception or a hang."""

from __future__ import annotations

import csv
import io
import random
import time
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medscope.data.io import BadImageError, read_image_bytes
from medscope.data.sources import scan_csv
from medscope.errors import MedscopeError

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

cells = st.text(max_size=12) | st.sampled_from(["0.png", "1.png", "a", "b", "a|b", "1", "0",
                                                "train", "val", "test", "", " "])
headers = st.lists(st.sampled_from(["path", "file", "label", "labels", "split", "group",
                                    "a", "b", "notes", ""]) | st.text(max_size=6),
                   min_size=0, max_size=5)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("csvprop")
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 90 * i, np.uint8)).save(root / f"{i}.png")
    return root


def _check_csv(path) -> None:
    try:
        source = scan_csv(path)
    except MedscopeError as exc:
        assert "\n" not in str(exc)
    else:
        assert source.classes and len(source.samples) >= 1


@SETTINGS
@given(headers, st.lists(st.lists(cells, max_size=6), max_size=6))
@pytest.mark.slow
def test_any_label_table_scans_or_is_one_line_error(folder, header, rows):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path = folder / "labels.csv"
    path.write_text(buf.getvalue(), encoding="utf-8", errors="surrogatepass")
    _check_csv(path)


@SETTINGS
@given(st.binary(max_size=300))
def test_any_bytes_as_a_csv_scan_or_are_one_line_error(folder, data):
    path = folder / "raw.csv"
    path.write_bytes(data)
    _check_csv(path)


# ---------------------------------------------------------------- the upload decoder

MAX_SECONDS = 2.0  # per upload: far above a real decode of these tiny images


def _decode_or_clean_error(data: bytes) -> None:
    start = time.monotonic()
    try:
        out = read_image_bytes(data, 16, 3)
    except BadImageError as exc:
        assert "\n" not in str(exc)
    else:
        assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert time.monotonic() - start < MAX_SECONDS


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_bytes_as_upload_decode_or_fail_cleanly(data):
    _decode_or_clean_error(data)


def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))
    grey16 = Image.fromarray(rng.integers(0, 65535, (24, 24)).astype(np.uint16))
    out = []
    for img, fmt in ((rgb, "PNG"), (rgb, "JPEG"), (rgb, "TIFF"), (rgb, "BMP"), (rgb, "GIF"),
                     (rgb.convert("CMYK"), "JPEG"), (grey16, "PNG"), (grey16, "TIFF")):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


@pytest.mark.slow
def test_mutated_real_images_as_upload_decode_or_fail_cleanly():
    """1,500 mutations (byte flips, cuts, insertions) of real PNG/JPEG/TIFF/BMP/GIF files,
    seeded: the decoder's own parsers meet malformed headers and chunks, not only noise."""
    seeds, rnd = _seed_images(), random.Random(14)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns about the damaged TIFF tags it skips
        for _ in range(1500):
            data = bytearray(rnd.choice(seeds))
            for _ in range(rnd.randint(1, 8)):
                i, op = rnd.randrange(len(data)), rnd.random()
                if op < 0.6:
                    data[i] = rnd.randrange(256)
                elif op < 0.8:
                    del data[i:i + rnd.randint(1, 64)]
                else:
                    data[i:i] = rnd.randbytes(rnd.randint(1, 16))
            _decode_or_clean_error(bytes(data))
