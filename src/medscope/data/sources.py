"""Finding the samples of a dataset: an image folder with one sub-folder per class."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from medscope.data.io import is_image_file
from medscope.errors import MedscopeError

PATCH_MANIFEST = "patches.csv"


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    group: str | None = None  # e.g. the micrograph a patch was cut from; never split across sets


@dataclass
class DataSource:
    root: Path
    classes: list[str]
    samples: list[Sample] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for s in self.samples:
            counts[self.classes[s.label]] += 1
        return counts


def scan_folder(root: Path | str, classes: list[str] | None = None) -> DataSource:
    """One sub-folder per class, images at any depth below it.

    Folders starting with '.' or '_' are ignored (``medscope patches`` keeps dropped patches in
    ``_dropped``). When ``classes`` is given (evaluating on a new folder), the folder must hold
    exactly those classes. A ``patches.csv`` manifest supplies each patch's source image as group.
    """
    root = Path(root)
    if not root.exists():
        raise MedscopeError(f"{root}: data directory not found")
    if not root.is_dir():
        raise MedscopeError(f"{root}: not a directory (expected one sub-folder per class)")
    found = sorted(p.name for p in root.iterdir()
                   if p.is_dir() and not p.name.startswith((".", "_")))
    if classes is None:
        if len(found) < 2:
            raise MedscopeError(
                f"{root}: found {len(found)} class folder(s) {found}; need at least 2 "
                "(one sub-folder per class)"
            )
        classes = found
    else:
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        if missing or extra:
            raise MedscopeError(
                f"{root}: classes differ from the model's (missing {missing}, unexpected {extra})"
            )
    groups = _patch_groups(root)
    samples: list[Sample] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise MedscopeError(f"{root / name}: class folder holds no images")
        for path in files:
            rel = path.relative_to(root).as_posix()
            samples.append(Sample(path, label, groups.get(rel)))
    return DataSource(root, list(classes), samples)


def _patch_groups(root: Path) -> dict[str, str]:
    manifest = root / PATCH_MANIFEST
    if not manifest.is_file():
        return {}
    with manifest.open(newline="") as fh:
        return {row["patch"]: row["source"] for row in csv.DictReader(fh) if row.get("patch")}
