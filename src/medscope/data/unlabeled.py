"""Images without labels, for self-supervised pretraining: every image file under one or more
folders, at any depth (class folders, a train/test layout or a tiler's output folders are all
just folders here), checked to be one kind of image before anything is decoded.

"One kind": one pixel size and one colour kind (grey or colour). The decode-once cache would
squash any size to the training side, but a backbone learns the scale and aspect of what it
sees: 224 px patches beside 4000 x 3000 micrographs squashed to the same side are two
magnifications, and the fine-tuning data has one. So mixed sizes are refused with the two files
that differ, pointing at ``medscope patches`` (which tiles large images at one size); grey
beside colour is refused likewise (two kinds of stain or camera, or a mistake)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from medscope.data.info import dicom_size
from medscope.data.io import IMAGE_EXTENSIONS, is_dicom, is_image_file
from medscope.data.sources import Sample
from medscope.errors import MedscopeError

GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def scan_unlabeled(folders: Sequence[Path | str]) -> list[Sample]:
    """One sample (label 0) per image file under each folder, sorted, each file once even when
    folders nest; a folder that is missing or holds no image is one line naming it."""
    samples: list[Sample] = []
    seen: set[Path] = set()
    if not folders:
        raise MedscopeError("no images given: pass --data DIR (repeatable)")
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise MedscopeError(f"{folder}: not a folder (pretraining takes folders of images)")
        files = sorted(p for p in folder.rglob("*") if is_image_file(p) and p.is_file())
        if not files:
            raise MedscopeError(f"{folder}: no images found at any depth (looked for "
                                f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
        for path in files:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                samples.append(Sample(path=path, label=0))
    return samples


def image_kind(path: Path) -> tuple[tuple[int, int], str] | None:
    """((width, height), 'grey' or 'colour') from the file's header; None when it cannot be
    read (decoding then reports it as a bad file)."""
    try:
        if is_dicom(path):
            size, mode = dicom_size(path)
            return size, "grey" if "MONOCHROME" in mode else "colour"
        with Image.open(path) as img:
            return img.size, "grey" if img.mode in GREY_MODES else "colour"
    except Exception:  # noqa: BLE001 - any unreadable header: decode_images reports the file
        return None


def check_one_kind(samples: Sequence[Sample], workers: int = 4) -> tuple[tuple[int, int], str]:
    """The (size, colour kind) all readable images share; mixed sizes or grey beside colour is
    one line naming two files that differ."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        kinds = list(pool.map(image_kind, (s.path for s in samples)))
    found = [(s.path, k) for s, k in zip(samples, kinds, strict=True) if k is not None]
    if not found:
        raise MedscopeError(f"{samples[0].path.parent}: none of the {len(samples)} images "
                            "can be read")
    first_path, (size, colour) = found[0]
    for path, (other_size, other_colour) in found[1:]:
        if other_colour != colour:
            raise MedscopeError(
                f"{path}: {other_colour} among {colour} images (e.g. {first_path}); pretrain "
                "on one kind: move them apart, or convert them all (--in-chans only sets the "
                "model's input)")
        if other_size != size:
            raise MedscopeError(
                f"{path}: {_wxh(other_size)} px among {_wxh(size)} px images (e.g. "
                f"{first_path}); pretraining takes images of one size (one scale): tile large "
                "images with `medscope patches` first, or pretrain each size apart")
    return size, colour


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
