"""Every DICOM file that pydicom ships, as hospitals' systems wrote them (JPEG baseline,
extended and lossless, JPEG-LS, JPEG 2000, RLE, big endian, no file meta...): each valid image
decodes, everything else is refused with a one-line reason.

The files are pydicom's own ``data/test_files`` (what ``get_testdata_files("*")`` returns
offline; online it would add files downloaded from pydicom-data, so the set would vary)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medscope.data.io import BadImageError, read_dicom, read_image

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

# Readable datasets that hold no image at all (structured reports, RT plans and structures,
# waveforms, sequences only): "DICOM without pixel data".
NO_IMAGE = {
    "ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm", "UN_sequence.dcm",
    "empty_charset_LEI.dcm", "no_meta_group_length.dcm", "priv_SQ.dcm", "reportsi.dcm",
    "reportsi_with_empty_number_tags.dcm", "rtplan.dcm", "rtplan_truncated.dcm",
    "rtstruct.dcm", "test-SR.dcm", "waveform_ecg.dcm",
}
# Broken on purpose (pydicom's README.txt says so, or the bytes show it).
MALFORMED = {
    "JPEG-lossy.dcm": "invalid SOS parameters in the JPEG stream; JPGExtended.dcm is its fix",
    "JPEG2000-embedded-sequence-delimiter.dcm": "4 bytes of the J2K stream overwritten",
    "MR_truncated.dcm": "pixel data shorter than rows x columns x bits",
    "badVR.dcm": "an IS element holding '1A'",
    "meta_missing_tsyntax.dcm": "no transfer syntax and no Bits Allocated",
    "nested_priv_SQ.dcm": "pixel data without Bits Allocated",
    "no_meta.dcm": "no file meta and a stray byte before the first element",
}
# Lossless encodings of MR_small.dcm must give exactly its image.
LOSSLESS_OF_MR_SMALL = ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                        "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm",
                        "MR_small_implicit.dcm", "MR_small_expb.dcm"]


def _dicom_files() -> list[Path]:
    files = []
    for path in sorted(TEST_FILES.iterdir()):
        if path.is_file():
            with path.open("rb") as fh:
                head = fh.read(132)
            if path.suffix.lower() == ".dcm" or head[128:132] == b"DICM":
                files.append(path)
    return files


FILES = _dicom_files()


def test_the_shipped_set_is_the_one_classified_here():
    names = {p.name for p in FILES}
    assert len(FILES) >= 70
    assert (NO_IMAGE | set(MALFORMED)) <= names  # a renamed file must not pass silently


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_shipped_dicom_decodes_or_is_refused_in_one_line(path):
    if path.name in NO_IMAGE or path.name in MALFORMED:
        with pytest.raises(BadImageError) as info:
            read_image(path, 32, 1)
        reason = str(info.value)
        assert reason and "\n" not in reason and len(reason) < 400
        if path.name in NO_IMAGE:
            assert reason == "DICOM without pixel data"
        return
    ds = pydicom.dcmread(path)
    img = read_dicom(path)
    assert img.size == (ds.Columns, ds.Rows)
    assert img.mode in ("L", "RGB")
    assert read_image(path, 32, 3).shape == (32, 32, 3)


@pytest.mark.parametrize("name", LOSSLESS_OF_MR_SMALL)
def test_lossless_encodings_give_the_uncompressed_image(name):
    reference = np.asarray(read_dicom(TEST_FILES / "MR_small.dcm"))
    assert np.array_equal(np.asarray(read_dicom(TEST_FILES / name)), reference)


def test_a_dataset_without_file_meta_is_read_with_its_own_encoding(tmp_path):
    """What some older systems write: the dataset alone, no preamble, no transfer syntax."""
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    reference = np.asarray(read_dicom(TEST_FILES / "CT_small.dcm"))
    del ds.file_meta
    ds.preamble = None
    for implicit in (True, False):
        path = tmp_path / f"headerless_{implicit}.dcm"
        ds.save_as(path, implicit_vr=implicit, little_endian=True)
        assert path.read_bytes()[128:132] != b"DICM"
        assert np.array_equal(np.asarray(read_dicom(path)), reference)


def test_a_non_dicom_file_named_dcm_keeps_the_first_reason(tmp_path):
    path = tmp_path / "photo.dcm"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(BadImageError, match=r"^not a readable DICOM \(") as info:
        read_image(path, 32, 1)
    assert "\n" not in str(info.value)
