"""Finding the samples of a dataset, whatever layout the lab uses:

- an image folder with one sub-folder per class (images at any depth below it);
- a pre-split folder ``train/<class>/…``, ``val/…``, ``test/…`` (the splits are used as given);
- a CSV ``path,label`` (multi-class), ``path,label`` with ``A|B`` (multi-label) or
  ``path,A,B,…`` with 0/1 columns (multi-label); optional ``split`` and ``group`` columns;
- a MedMNIST ``.npz`` (``train_images``/``train_labels``, ``val_…``, ``test_…``).

All become one ``DataSource``: a list of samples, each a file (or a row of an npz array) with a
class index or a 0/1 label vector, an optional group and an optional given split.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from medscope.data.io import is_image_file
from medscope.errors import MedscopeError

PATCH_MANIFEST = "patches.csv"
SPLIT_NAMES = ("train", "val", "test")
# Folder names that mean "validation" in the wild (Keras tutorials use 'validation').
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test"}
log = logging.getLogger("medscope")

NO_FINDING = "No Finding"  # NIH ChestX-ray14: the empty label set


@dataclass(frozen=True)
class Sample:
    path: Path  # the image file; for an npz sample, the npz file
    label: int  # class index; -1 for a multi-label sample
    group: str | None = None  # e.g. the micrograph a patch was cut from; never split across sets
    split: str | None = None  # 'train'/'val'/'test' when the dataset comes pre-split
    labels: tuple[int, ...] | None = None  # 0/1 per class, multi-label only
    index: int | None = None  # row of ``<split>_images`` in an npz file

    @property
    def in_array(self) -> bool:
        return self.index is not None


@dataclass
class DataSource:
    root: Path  # paths in splits.csv are relative to this
    classes: list[str]
    samples: list[Sample] = field(default_factory=list)
    multilabel: bool = False
    kind: str = "folder"  # folder, presplit, csv, npz

    def targets(self) -> np.ndarray:
        """N class indices, or an N x K 0/1 matrix for multi-label."""
        if self.multilabel:
            return np.array([s.labels for s in self.samples], dtype=np.int64).reshape(
                len(self.samples), len(self.classes))
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def counts(self) -> dict[str, int]:
        """Images per class (multi-label: images carrying the label)."""
        totals = (self.targets().sum(0) if self.multilabel
                  else np.bincount(self.targets(), minlength=len(self.classes)))
        return {c: int(n) for c, n in zip(self.classes, totals, strict=True)}

    def given_splits(self) -> np.ndarray | None:
        """The splits the data came with, or None when it must be split."""
        if not self.samples or any(s.split is None for s in self.samples):
            return None
        return np.array([s.split for s in self.samples], dtype=object)

    def sample_id(self, sample: Sample) -> str:
        """A stable name for splits.csv: the path relative to the root, or ``split[i]`` in npz."""
        if sample.in_array:
            return f"{sample.split}[{sample.index}]"
        try:
            return sample.path.relative_to(self.root).as_posix()
        except ValueError:  # a CSV may name files anywhere
            return sample.path.as_posix()

    def label_name(self, sample: Sample) -> str:
        if self.multilabel:
            return "|".join(c for c, on in zip(self.classes, sample.labels or (), strict=True)
                            if on)
        return self.classes[sample.label]


def load_source(path: Path | str, format: str = "auto", classes: list[str] | None = None,
                multilabel: bool | None = None) -> DataSource:
    """Any supported dataset -> DataSource; ``format`` 'auto' detects the kind from ``path``.
    ``multilabel`` (CSV only): None detects it ('|' in a label, or 0/1 columns)."""
    path = Path(path)
    kind = detect_format(path) if format == "auto" else format
    if kind == "csv":
        return scan_csv(path, classes, multilabel=multilabel)
    if kind == "npz":
        return load_npz(path, classes)
    if kind == "folder":
        return scan_presplit(path, classes) if presplit_dirs(path) else scan_folder(path, classes)
    raise MedscopeError(f"unknown data format {format!r} (auto, folder, csv or npz)")


def detect_format(path: Path) -> str:
    if not path.exists():
        raise MedscopeError(f"{path}: data directory not found")
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".npz":
        return "npz"
    raise MedscopeError(f"{path}: not a folder, .csv or .npz (pass --format to say which)")


# ---------------------------------------------------------------- folders


def scan_folder(root: Path | str, classes: list[str] | None = None, *,
                split: str | None = None) -> DataSource:
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
    found = _class_dirs(root)
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
    unknown = 0
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise MedscopeError(f"{root / name}: class folder holds no images")
        for path in files:
            rel = path.relative_to(root).as_posix()
            unknown += bool(groups) and rel not in groups
            samples.append(Sample(path, label, groups.get(rel), split))
    if unknown:
        log.warning("%s: %d image(s) are not in %s, so they have no slide group and may land "
                    "on both sides of a split; re-run `medscope patches --overwrite` or remove "
                    "them", root, unknown, PATCH_MANIFEST)
    return DataSource(root, list(classes), samples)


def presplit_dirs(root: Path) -> dict[str, Path]:
    """``{'train': root/train, 'test': root/test, …}`` when ``root`` is laid out pre-split: a
    ``train`` folder plus a ``val``/``test`` folder, each holding class folders."""
    if not root.is_dir():
        return {}
    dirs = {_SPLIT_ALIASES[p.name.lower()]: p for p in sorted(root.iterdir())
            if p.is_dir() and p.name.lower() in _SPLIT_ALIASES}
    if "train" not in dirs or len(dirs) < 2:
        return {}
    # A class could itself be called 'test'; only a folder of class folders counts as a split.
    if not all(_class_dirs(d) for d in dirs.values()):
        return {}
    return dirs


def scan_presplit(root: Path | str, classes: list[str] | None = None) -> DataSource:
    """``train/<class>/…`` + ``val/…`` and/or ``test/…``: every split must hold the same classes
    as ``train`` (an empty class folder may be absent from val/test)."""
    root = Path(root)
    dirs = presplit_dirs(root)
    if not dirs:
        raise MedscopeError(f"{root}: not a pre-split folder (expected train/<class>/ and "
                            "val/<class>/ or test/<class>/)")
    classes = classes or _class_dirs(dirs["train"])
    samples: list[Sample] = []
    for split, d in dirs.items():
        extra = sorted(set(_class_dirs(d)) - set(classes))
        if extra:
            raise MedscopeError(f"{d}: classes {extra} are not in {dirs['train']}")
        present = [c for c in classes if (d / c).is_dir()]
        part = scan_folder(d, present, split=split) if len(present) > 1 else None
        if part is None:
            raise MedscopeError(f"{d}: needs at least 2 class folders")
        remap = {i: classes.index(c) for i, c in enumerate(present)}
        groups_prefix = f"{split}/"
        samples += [Sample(s.path, remap[s.label],
                           None if s.group is None else groups_prefix + s.group, split)
                    for s in part.samples]
    return DataSource(root, list(classes), samples, kind="presplit")


def _class_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith((".", "_")))


def _patch_groups(root: Path) -> dict[str, str]:
    manifest = root / PATCH_MANIFEST
    if not manifest.is_file():
        return {}
    with manifest.open(newline="") as fh:
        return {row["patch"]: row["source"] for row in csv.DictReader(fh) if row.get("patch")}


# ---------------------------------------------------------------- CSV

_PATH_COLUMNS = ("path", "file", "filename", "image", "Image Index")
_LABEL_COLUMNS = ("label", "labels", "class", "Finding Labels")
_META_COLUMNS = {"split", "group", "patient", "patient_id", "Patient ID"}


def scan_csv(csv_path: Path | str, classes: list[str] | None = None, *,
             multilabel: bool | None = None) -> DataSource:
    """A CSV of image paths (relative to the CSV) and labels; see the module docstring.

    ``multilabel`` None detects it from a '|' in some label; True reads every label as a set
    (a data set with one finding per image, "No Finding" meaning none); False refuses '|'.

    A row whose file is missing is kept: decoding lists it as a bad file, like any other
    unreadable image, instead of stopping the run.
    """
    csv_path = Path(csv_path)
    rows, header = _read_csv(csv_path)
    path_col = _first_present(header, _PATH_COLUMNS)
    if path_col is None:
        raise MedscopeError(f"{csv_path}: no path column (expected one of "
                            f"{', '.join(_PATH_COLUMNS)})")
    group_col = _first_present(header, ("group", "patient", "patient_id", "Patient ID"))
    label_col = _first_present(header, _LABEL_COLUMNS)
    root = csv_path.parent
    splits = [_csv_split(csv_path, i, r.get("split")) for i, r in enumerate(rows)]
    groups = [(r.get(group_col) or None) if group_col else None for r in rows]
    paths = [_resolve(root, r[path_col]) for r in rows]
    if label_col is not None:
        raw = [(r.get(label_col) or "").strip() for r in rows]
        several = next((i for i, v in enumerate(raw) if "|" in v), None)
        if multilabel is False and several is not None:
            raise MedscopeError(f"{csv_path}: row {several + 2} holds several labels "
                                f"({raw[several]!r}) but data.multilabel is false")
        if multilabel or (multilabel is None and several is not None):
            sets = [[x.strip() for x in v.split("|") if x.strip() and x.strip() != NO_FINDING]
                    for v in raw]
            classes = classes or sorted({x for s in sets for x in s})
            vectors = [_vector(csv_path, i, s, classes) for i, s in enumerate(sets)]
            samples = [Sample(p, -1, g, s, v)
                       for p, g, s, v in zip(paths, groups, splits, vectors, strict=True)]
            return DataSource(root, list(classes), samples, multilabel=True, kind="csv")
        if any(not v for v in raw):
            i = next(i for i, v in enumerate(raw) if not v)
            raise MedscopeError(f"{csv_path}: row {i + 2} has an empty {label_col!r}")
        classes = classes or sorted(set(raw))
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(raw) - set(index))
        if unknown:
            raise MedscopeError(f"{csv_path}: labels {unknown} are not among the classes")
        samples = [Sample(p, index[v], g, s)
                   for p, v, g, s in zip(paths, raw, groups, splits, strict=True)]
        return DataSource(root, list(classes), samples, kind="csv")
    return _scan_one_hot(csv_path, rows, header, path_col, paths, groups, splits, classes,
                         multilabel)


def _scan_one_hot(csv_path: Path, rows, header: list[str], path_col: str, paths, groups, splits,
                  classes: list[str] | None, multilabel: bool | None) -> DataSource:
    """A CSV without a label column: one 0/1 column per class (multi-label unless
    ``multilabel`` is False)."""
    onehot = [c for c in header if c not in {path_col, *_META_COLUMNS}
              and all((r.get(c) or "").strip() in ("0", "1") for r in rows)]
    if not onehot:
        raise MedscopeError(f"{csv_path}: no label column (expected 'label', or one 0/1 "
                            "column per class)")
    classes = classes or onehot
    missing = sorted(set(classes) - set(onehot))
    if missing:
        raise MedscopeError(f"{csv_path}: label columns {missing} missing")
    if multilabel is False:
        return _one_hot_single(csv_path, rows, paths, groups, splits, list(classes))
    samples = [Sample(p, -1, g, s, tuple(int(r[c]) for c in classes))
               for p, r, g, s in zip(paths, rows, groups, splits, strict=True)]
    return DataSource(csv_path.parent, list(classes), samples, multilabel=True, kind="csv")


def _one_hot_single(csv_path: Path, rows, paths, groups, splits, classes: list[str]
                    ) -> DataSource:
    """0/1 class columns read as one class per image (data.multilabel false)."""
    samples = []
    for i, (p, r, g, s) in enumerate(zip(paths, rows, groups, splits, strict=True)):
        on = [k for k, c in enumerate(classes) if r[c].strip() == "1"]
        if len(on) != 1:
            raise MedscopeError(f"{csv_path}: row {i + 2} has {len(on)} classes set but "
                                "data.multilabel is false (exactly one expected)")
        samples.append(Sample(p, on[0], g, s))
    return DataSource(csv_path.parent, classes, samples, kind="csv")


def _read_csv(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    if not path.is_file():
        raise MedscopeError(f"{path}: CSV file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = [h.strip() for h in reader.fieldnames or []]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MedscopeError(f"{path}: not a readable CSV ({exc})") from None
    longer = next((i for i, r in enumerate(rows) if None in r), None)
    if longer is not None:  # e.g. a label with an unquoted comma: not silently cut short
        raise MedscopeError(f"{path}: row {longer + 2} has more fields than the header's "
                            f"{len(header)} (quote values that hold commas)")
    twice = sorted({h for h in header if h and header.count(h) > 1})
    if twice:
        raise MedscopeError(f"{path}: column {twice[0]!r} appears more than once in the header")
    # A short row's missing cells are empty, as in a spreadsheet, not None.
    rows = [{(k or "").strip(): v or "" for k, v in r.items()} for r in rows]
    if not rows:
        raise MedscopeError(f"{path}: CSV has no rows")
    return rows, header


def _first_present(header: list[str], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in header), None)


def _resolve(root: Path, value: str) -> Path:
    p = Path(value.strip())
    return p if p.is_absolute() else root / p


def _csv_split(path: Path, i: int, value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    name = _SPLIT_ALIASES.get(value.strip().lower())
    if name is None:
        raise MedscopeError(f"{path}: row {i + 2} has split {value!r} (train, val or test)")
    return name


def _vector(path: Path, i: int, names: list[str], classes: list[str]) -> tuple[int, ...]:
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise MedscopeError(f"{path}: row {i + 2} has labels {unknown} not among the classes")
    return tuple(int(c in names) for c in classes)


# ---------------------------------------------------------------- MedMNIST npz


def load_npz(path: Path | str, classes: list[str] | None = None) -> DataSource:
    """A MedMNIST-style npz. Class names come from ``<name>.json`` beside it (a list, or the
    MedMNIST ``{"label": {"0": "name", …}}``), else generic ``class_0`` …"""
    path = Path(path)
    splits = npz_splits(path)
    samples: list[Sample] = []
    n_classes, multilabel = 0, False
    for split in splits:
        labels = _npz_labels(path, split)
        n_images = _npz_images_shape(path, split)[0]
        if labels.shape[0] != n_images:
            raise MedscopeError(f"{path}: {split}_labels has {labels.shape[0]} rows but "
                                f"{split}_images has {n_images}")
        if labels.ndim == 2 and labels.shape[1] > 1:
            multilabel = True
            n_classes = max(n_classes, labels.shape[1])
            samples += [Sample(path, -1, None, split, tuple(int(x) for x in row), i)
                        for i, row in enumerate(labels)]
        else:
            flat = labels.reshape(-1).astype(np.int64)
            n_classes = max(n_classes, int(flat.max(initial=-1)) + 1)
            samples += [Sample(path, int(v), None, split, None, i) for i, v in enumerate(flat)]
    classes = classes or _npz_class_names(path, n_classes)
    if len(classes) < n_classes:
        raise MedscopeError(f"{path}: labels go up to {n_classes - 1} but only "
                            f"{len(classes)} class names are given")
    return DataSource(path.parent, list(classes), samples, multilabel=multilabel, kind="npz")


def _npz_read(path: Path, key: str) -> np.ndarray:
    try:
        return np.asarray(npz_array(path, key))
    except (OSError, ValueError, EOFError) as exc:  # object arrays (pickle), damaged members
        raise MedscopeError(f"{path}: {key} is not a readable array ({exc})") from None


def _npz_images_shape(path: Path, split: str) -> tuple[int, ...]:
    """N x H x W or N x H x W x 1|3, checked before any image is decoded."""
    images = _npz_read(path, f"{split}_images")
    shape = images.shape
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)) \
            or images.dtype.kind not in "iuf":
        raise MedscopeError(f"{path}: {split}_images has shape {shape} and dtype {images.dtype}"
                            "; expected numbers as N x H x W or N x H x W x 1|3")
    return shape


def _npz_labels(path: Path, split: str) -> np.ndarray:
    """Class indices (N or N x 1) or 0/1 rows (N x K, multi-label): whole, non-negative."""
    labels = _npz_read(path, f"{split}_labels")
    if labels.ndim not in (1, 2) or labels.dtype.kind not in "iub" and not (
            labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0)):
        raise MedscopeError(f"{path}: {split}_labels has shape {labels.shape} and dtype "
                            f"{labels.dtype}; expected whole class indices (N) or 0/1 rows (N x K)")
    if labels.size and labels.min() < 0:
        raise MedscopeError(f"{path}: {split}_labels holds {labels.min()}; class indices start "
                            "at 0")
    return labels


def npz_splits(path: Path) -> list[str]:
    arrays = open_npz(path)
    present = [s for s in SPLIT_NAMES if f"{s}_images" in arrays.files]
    missing = [f"{s}_labels" for s in present if f"{s}_labels" not in arrays.files]
    if "train" not in present or missing:
        need = missing or ["train_images", "train_labels"]
        raise MedscopeError(f"{path}: npz lacks {', '.join(need)} (has "
                            f"{', '.join(arrays.files) or 'no arrays'})")
    return present


@lru_cache(maxsize=4)
def open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """The npz, opened once per process (arrays load lazily, one key at a time)."""
    if not Path(path).is_file():
        raise MedscopeError(f"{path}: npz file not found")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MedscopeError(f"{path}: not a readable npz ({exc})") from None


@lru_cache(maxsize=8)
def npz_array(path: Path, key: str) -> np.ndarray:
    return open_npz(path)[key]


def _npz_class_names(path: Path, n: int) -> list[str]:
    for sidecar in (path.with_suffix(".json"), path.with_name(path.name + ".json")):
        if sidecar.is_file():
            try:
                info = json.loads(sidecar.read_text())
            except json.JSONDecodeError as exc:
                raise MedscopeError(f"{sidecar}: not valid JSON ({exc.msg})") from None
            names = info.get("label", info) if isinstance(info, dict) else info
            if isinstance(names, dict):
                names = [names[k] for k in sorted(names, key=int)]
            return [str(x) for x in names]
    return [f"class_{i}" for i in range(n)]
