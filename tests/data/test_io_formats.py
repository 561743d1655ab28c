"""DICOM (rescale, window, MONOCHROME1, no pixel data), TIFF 16-bit and multi-page, BMP,
palette, image bombs."""

import numpy as np
import pytest
from PIL import Image

from medscope.data.io import BadImageError, read_image


def _dicom(path, pixels, **attrs):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PhotometricInterpretation = attrs.pop("photometric", "MONOCHROME2")
    for k, v in attrs.items():
        setattr(ds, k, v)
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 16, 15
        ds.PixelRepresentation = 1
        ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _ramp():
    return np.tile(np.arange(0, 2000, 125, dtype=np.int16), (16, 1))  # 0 .. 1875


@pytest.mark.slow
def test_dicom_window_is_applied(tmp_path):
    # Stored 0..1875, slope 1, intercept -1000 -> -1000..875 HU; window 0 +- 200.
    path = _dicom(tmp_path / "ct.dcm", _ramp(), RescaleSlope=1, RescaleIntercept=-1000,
                  WindowCenter=0, WindowWidth=400)
    row = read_image(path, None, 1)[0, :, 0]
    hu = _ramp()[0] - 1000
    assert (row[hu <= -200] == 0).all() and (row[hu >= 200] == 255).all()
    assert 0 < row[hu == 0][0] < 255


def test_dicom_monochrome1_is_inverted(tmp_path):
    m2 = read_image(_dicom(tmp_path / "a.dcm", _ramp()), None, 1)[0, :, 0]
    m1 = read_image(_dicom(tmp_path / "b.dcm", _ramp(), photometric="MONOCHROME1"),
                    None, 1)[0, :, 0]
    assert np.array_equal(m1, 255 - m2) and m2[0] < m2[-1]


def test_dicom_without_extension_is_recognised(tmp_path):
    path = _dicom(tmp_path / "IM0001", _ramp())
    assert read_image(path, 8, 3).shape == (8, 8, 3)


def test_dicom_without_pixel_data_is_a_bad_file(tmp_path):
    path = _dicom(tmp_path / "empty.dcm", None)
    with pytest.raises(BadImageError, match="DICOM without pixel data"):
        read_image(path, 8, 1)


def test_tiff_16bit_and_multipage_first_page(tmp_path):
    ramp = np.tile(np.arange(0, 65536, 4096, dtype=np.uint16), (16, 1))
    Image.fromarray(ramp).save(tmp_path / "a.tif")
    arr = read_image(tmp_path / "a.tif", None, 1)[..., 0]
    assert arr[0, 0] < 10 and arr[0, -1] > 245
    pages = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 200)]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    assert (read_image(tmp_path / "m.tif", None, 1) == 10).all()


def test_bmp_and_palette(tmp_path):
    Image.fromarray(np.full((8, 8, 3), 60, np.uint8)).save(tmp_path / "a.bmp")
    assert (read_image(tmp_path / "a.bmp", 4, 3) == 60).all()
    pal = Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).convert("P")
    pal.save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png", None, 1).shape == (8, 8, 1)


def test_image_bomb_is_refused(tmp_path, monkeypatch):
    # A tiny file that claims more pixels than twice PIL's limit: refused before decoding.
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImageError, match="decompression bomb"):
        read_image(tmp_path / "bomb.png", 16, 1)


def test_real_size_bomb_header_is_refused(tmp_path):
    """A 20000 x 10000 (200 Mpx > 178 Mpx) PNG header without data, as an attacker sends."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", 20000, 10000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    (tmp_path / "huge.png").write_bytes(png)
    with pytest.raises(BadImageError, match="decompression bomb"):
        read_image(tmp_path / "huge.png", 16, 1)
