"""Reading one image file into a uint8 array of the size and channels a model wants.

DICOM pixel data is decoded by pydicom's pixel-data plugins. Compressed transfer syntaxes need
codecs that pydicom does not bundle; medscope depends on pylibjpeg with its three plugins:
pylibjpeg-libjpeg (JPEG baseline, extended 12-bit, lossless process 14, JPEG-LS lossless and
near-lossless), pylibjpeg-openjpeg (JPEG 2000) and pylibjpeg-rle (RLE, faster than pydicom's
own). Why these rather than python-gdcm: of the DICOM files pydicom ships, they decode every
valid one, while GDCM through pydicom refuses 12-bit JPEG Extended (JPGExtended.dcm); and they
are small binary wheels for Linux, macOS and Windows that pydicom finds on its own. Note that
pylibjpeg-libjpeg is GPLv3 (the others MIT); whoever redistributes medscope with it should know.
An installed python-gdcm is still used by pydicom when a pylibjpeg plugin fails.

Files without the DICOM file meta header (no 'DICM' preamble, as some older systems write
them) are read too, and a missing transfer syntax is taken from the dataset's own encoding when
the pixel data is uncompressed (it then determines the syntax); compressed pixel data without a
transfer syntax cannot be decoded and is refused.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".dcm"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})


class BadImageError(Exception):
    """A file that cannot be used as an image; ``str()`` is a one-line reason."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def open_image(path: Path) -> Image.Image:
    """Open, fully decode and orient ``path``; raise BadImageError with a one-line reason."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError("empty file (0 bytes)")
    except FileNotFoundError:
        raise BadImageError("file not found") from None
    except OSError as exc:
        raise BadImageError(f"unreadable file ({exc.strerror})") from None
    if is_dicom(path):
        return read_dicom(path)
    return _decode(path)


def open_image_bytes(data: bytes) -> Image.Image:
    """``open_image`` for bytes held in memory (an upload): the same bomb limit, orientation and
    one-line reasons, and nothing is written to disk."""
    if not data:
        raise BadImageError("empty file (0 bytes)")
    if data[128:132] == b"DICM":
        return read_dicom(io.BytesIO(data))
    return _decode(io.BytesIO(data))


def _decode(source: Path | BinaryIO) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # PIL warns below its bomb limit; past 2x the limit it raises, which we report.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
            img.load()
        return ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise BadImageError("file not found") from None
    except UnidentifiedImageError:
        raise BadImageError("not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"image too large, refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"corrupt or truncated image ({exc})") from None


def is_dicom(path: Path) -> bool:
    """By extension, or by the 'DICM' magic at byte 128 (many PACS exports have no extension)."""
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    if path.suffix:
        return False
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: Path | BinaryIO) -> Image.Image:
    """A DICOM's first frame as an 8-bit image: stored values -> modality units (rescale
    slope/intercept) -> the window the file asks for (VOI LUT or centre/width), MONOCHROME1
    inverted so that bright always means dense."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pragma: no cover - pydicom is a dependency
        raise BadImageError("DICOM support needs pydicom (pip install pydicom)") from None
    ds = _read_dataset(path)
    if "PixelData" not in ds:
        raise BadImageError("DICOM without pixel data")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - codec/compression errors of any kind
        raise BadImageError(f"DICOM pixel data not decodable ({_one_line(exc)})") from None
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if arr.ndim == 3:  # colour (RGB/YBR already converted to RGB by pydicom)
        return Image.fromarray(_to_uint8(arr.astype(np.float64)), mode="RGB")
    values = apply_modality_lut(arr, ds)
    values = apply_voi_lut(values, ds) if _has_window(ds) else values
    out = _to_uint8(np.asarray(values, dtype=np.float64))
    if photometric == "MONOCHROME1":
        out = 255 - out
    return Image.fromarray(out, mode="L")


def _read_dataset(path: Path | BinaryIO):
    """The dataset of a DICOM file, also of one without file meta (read as pydicom's
    ``force=True`` does, accepted only if it holds an image or names its SOP class)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return _with_transfer_syntax(pydicom.dcmread(path))
    except InvalidDicomError as exc:
        refusal = BadImageError(f"not a readable DICOM ({_one_line(exc)})")
    except (OSError, ValueError, EOFError) as exc:
        raise BadImageError(f"not a readable DICOM ({_one_line(exc)})") from None
    if hasattr(path, "seek"):
        path.seek(0)
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception:  # noqa: BLE001 - not a headerless dataset either: the first reason
        raise refusal from None
    if "PixelData" not in ds and "SOPClassUID" not in ds:
        raise refusal
    return _with_transfer_syntax(ds)


def _with_transfer_syntax(ds):
    """Give native (uncompressed) pixel data a missing transfer syntax: the dataset's own
    encoding (implicit/explicit VR, endianness) then determines it."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return ds
    if "PixelData" not in ds or ds["PixelData"].is_undefined_length:
        return ds  # no image, or compressed fragments of unknown syntax: refused when decoded
    implicit, little = ds.original_encoding
    if implicit is None:
        return ds
    syntax = (ImplicitVRLittleEndian if implicit
              else ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    return ds


def _one_line(exc: BaseException) -> str:
    # pydicom lists each plugin's failure on its own line; a reason must stay one line.
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _has_window(ds) -> bool:
    return "VOILUTSequence" in ds or "WindowCenter" in ds


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Min-max to 0-255: after windowing the range is the window; otherwise the full range."""
    lo, hi = float(arr.min()), float(arr.max())
    return np.clip((arr - lo) / max(hi - lo, 1e-9) * 255.0, 0, 255).round().astype(np.uint8)


def array_to_image(arr: np.ndarray) -> Image.Image:
    """One image of an in-memory array (H x W, H x W x 1 or H x W x 3; any integer or float
    dtype) as a PIL image, for npz datasets."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise BadImageError(f"array of shape {arr.shape} is not a 2-D image")
    if arr.dtype != np.uint8:
        arr = _to_uint8(arr.astype(np.float64)) if arr.dtype.kind in "iuf" else arr
    return Image.fromarray(arr)


def read_array_image(arr: np.ndarray, size: int | None, in_chans: int) -> np.ndarray:
    return _finish(array_to_image(arr), size, in_chans)


def to_mode(img: Image.Image, in_chans: int) -> Image.Image:
    """Grayscale, palette, RGBA, 16-bit… all become 'L' (1 channel) or 'RGB' (3 channels)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = np.percentile(arr, (0.5, 99.5))
        arr = np.clip((arr - lo) / max(hi - lo, 1e-9) * 255.0, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent areas become white, the colour of an empty microscope field.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("L" if in_chans == 1 else "RGB")


def read_image(path: Path, size: int | None, in_chans: int) -> np.ndarray:
    """``path`` as a ``size``x``size``x``in_chans`` uint8 array (squashed to a square, no crop)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            probe = Image.open(path) if path.stat().st_size else None
            if probe is not None and size and probe.format == "JPEG":
                # JPEG can decode at 1/2, 1/4, 1/8 scale: far cheaper than full decode + resize.
                probe.draft("RGB" if in_chans == 3 else "L", (size, size))
    except Exception:  # noqa: BLE001 - any failure is reported by open_image's full path below
        probe = None
    img = _load_checked(probe, path) if probe is not None else open_image(path)
    return _finish(img, size, in_chans)


def read_image_bytes(data: bytes, size: int | None, in_chans: int) -> np.ndarray:
    """``read_image`` for an image file's bytes held in memory."""
    return _finish(open_image_bytes(data), size, in_chans)


def _finish(img: Image.Image, size: int | None, in_chans: int) -> np.ndarray:
    img = to_mode(img, in_chans)
    if size and img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _load_checked(img: Image.Image, path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - re-open on the slow path for a precise reason
        return open_image(path)
