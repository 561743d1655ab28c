import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from medscope.data.io import BadImageError, read_image, read_image_bytes


def png_bomb(side: int = 30_000) -> bytes:
    """A valid PNG header announcing side x side pixels, with almost no data: Pillow must refuse
    it from the header, before decoding anything."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_bytes_decode_like_the_file_reader(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    data = _png_bytes(arr)
    (tmp_path / "a.png").write_bytes(data)
    for chans in (1, 3):
        got = read_image_bytes(data, 16, chans)
        assert got.shape == (16, 16, chans)
        assert np.array_equal(got, read_image(tmp_path / "a.png", 16, chans))


def test_exif_orientation_is_honoured_in_memory():
    img = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90: the landscape pixels are a portrait photo
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert read_image_bytes(buf.getvalue(), None, 3).shape == (40, 20, 3)


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"),
    (np.random.default_rng(1).bytes(5000), "not a readable image"),
    (_png_bytes(np.zeros((8, 8), np.uint8))[:45], "corrupt or truncated"),
    (png_bomb(), "decompression bomb"),
], ids=["empty", "random", "truncated", "bomb"])
def test_bad_bytes_raise_one_line_reason(data, reason):
    with pytest.raises(BadImageError, match=reason) as info:
        read_image_bytes(data, 32, 3)
    assert "\n" not in str(info.value)
