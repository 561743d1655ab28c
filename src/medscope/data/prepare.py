"""Scan -> split -> decode: what training, cross-validation and evaluation share.

A run's split is written to ``splits.csv`` (path, label, group, split) before any training, so
that a resumed run, ``medscope evaluate`` and a later run with ``--split-file`` see the same
images on the same side."""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from medscope.config import RunConfig
from medscope.data.cache import decode_images, default_cache_dir
from medscope.data.duplicates import DuplicateReport, handle_duplicates
from medscope.data.groups import matches_any, pattern_groups, warn_groups_across_given_splits
from medscope.data.sources import DataSource, Sample, load_source
from medscope.data.splits import split_indices
from medscope.errors import MedscopeError
from medscope.run import RunDir, atomic_write_csv, atomic_write_json, open_run_csv, read_json

log = logging.getLogger("medscope")

SPLITS = ("train", "val", "test")


@dataclass
class PreparedData:
    source: DataSource
    samples: dict[str, list[Sample]]  # per split, readable images only
    pixels: dict[str, np.ndarray]
    # What data.duplicates found (e.g. test images copied in train), for the report.
    duplicates: DuplicateReport = field(default_factory=DuplicateReport)

    def labels(self, split: str) -> np.ndarray:
        return labels_of(self.samples[split])

    @property
    def eval_split(self) -> str:
        """'test', or 'val' when the data has no test split (the report then says so)."""
        return "test" if self.samples["test"] else "val"


def labels_of(samples: list[Sample]) -> np.ndarray:
    """Class indices, or an N x K 0/1 matrix for multi-label samples."""
    if samples and samples[0].labels is not None:
        return np.array([s.labels for s in samples], dtype=np.int64)
    return np.array([s.label for s in samples], dtype=np.int64)


def prepare_data(config: RunConfig, run: RunDir, progress: bool = True, *,
                 given_splits: bool | None = None) -> PreparedData:
    """Scan, split (or re-use a split), decode every image once; write splits and bad files.
    ``given_splits`` as in :func:`scan_source`; re-using the run's own ``splits.csv`` (a resume)
    scans as the run first did, so that the same copies are dropped."""
    dc = config.data
    if given_splits is None and _is_own_split(dc.split_file, run):
        given_splits = given_splits_of(run)
    source, duplicates = scan_source(config, given_splits=given_splits)
    assign = assign_splits(source, config)
    present = set(assign.tolist())
    if not present & {"val", "test"}:
        raise MedscopeError(f"{dc.path}: the split leaves no validation or test images to "
                            "evaluate on; set data.test_fraction or data.val_fraction above 0")
    if "test" not in present:
        log.warning("no test split: the final metrics come from the validation split, which "
                    "also chose the best epoch, so they are optimistic")
    write_splits(run.splits, source, assign)
    atomic_write_json(run.duplicates, {"mode": dc.duplicates, **asdict(duplicates)})
    decoded = decode_images(source.samples, dc.img_size, dc.in_chans, strict=dc.strict,
                            max_bad_fraction=dc.max_bad_fraction, progress=progress,
                            cache_dir=cache_dir(config))
    if decoded.bad:
        atomic_write_csv(run.bad_files, ["file", "reason"],
                         ((str(p), reason) for p, reason in decoded.bad))
    kept_assign = assign[decoded.kept]
    kept_samples = [source.samples[i] for i in decoded.kept]
    samples = {k: [s for s, a in zip(kept_samples, kept_assign, strict=True) if a == k]
               for k in SPLITS}
    pixels = {k: decoded.pixels[kept_assign == k] for k in SPLITS}
    if not samples["train"]:
        raise MedscopeError(f"{dc.path}: no readable training images")
    return PreparedData(source, samples, pixels, duplicates)


def _is_own_split(split_file: Path | None, run: RunDir) -> bool:
    return split_file is not None and run.splits.is_file() \
        and Path(split_file).resolve() == run.splits.resolve()


def given_splits_of(run: RunDir) -> bool | None:
    """Whether the run's first scan used the data's own train/test folders (it decides which
    copy of a duplicate survives): from its duplicates.json; None when the run has none.
    Runs from before it was recorded: test-side copies are only counted with the folders used;
    without any, the kept copy can differ only for train/val copies in data with a val folder."""
    if not run.duplicates.is_file():
        return None
    found = read_json(run.duplicates)
    if "given_splits" in found:
        return bool(found["given_splits"])
    return found.get("test_leaks", 0) > 0


def scan_source(config: RunConfig, *, given_splits: bool | None = None
                ) -> tuple[DataSource, DuplicateReport]:
    """The samples a run (or every CV fold) uses: the data without the excluded images, grouped
    by ``data.group_pattern`` when set, with byte-identical copies grouped or dropped as
    ``data.duplicates`` says; and what was found.
    ``given_splits``: whether the data's own train/test folders are used (default: unless a
    split file is given or ``data.resplit`` is set)."""
    dc = config.data
    source = load_source(dc.path, dc.format, multilabel=config.multilabel)
    if dc.exclude is not None:
        from medscope.data.exclude import drop_excluded, read_exclude

        source, dropped = drop_excluded(source, read_exclude(dc.exclude))
        log.info("excluded %d image(s) listed in %s", dropped, dc.exclude)
    if given_splits is None:
        given_splits = dc.split_file is None and not dc.resplit
    if dc.group_pattern is not None:
        source = pattern_groups(source, dc.group_pattern)
        if given_splits:
            warn_groups_across_given_splits(source.samples)
    return handle_duplicates(source, dc.duplicates, cache_dir(config), given_splits=given_splits)


def assign_splits(source: DataSource, config: RunConfig) -> np.ndarray:
    """'train' / 'val' / 'test' per sample: from a split file, the data's own split (with a
    validation part carved out when missing) unless ``data.resplit``, or a stratified
    group-aware random split."""
    dc = config.data
    if dc.split_file is not None:
        return splits_from_file(dc.split_file, source)
    if source.given_splits() is not None and not dc.resplit:
        return complete_given_splits(source, dc.val_fraction, config.split_seed)
    return split_indices(source.targets(), [s.group for s in source.samples], dc.val_fraction,
                         dc.test_fraction, config.split_seed, source.classes)


def complete_given_splits(source: DataSource, val_fraction: float, seed: int) -> np.ndarray:
    """The data's own splits; a validation set is carved out of 'train' when none is given
    (stratified, group-aware), since early stopping and model selection need one."""
    assign = source.given_splits().copy()
    if "val" in set(assign.tolist()) or val_fraction <= 0:
        return assign
    train_idx = np.flatnonzero(assign == "train")
    targets = source.targets()[train_idx]
    groups = [source.samples[i].group for i in train_idx]
    inner = split_indices(targets, groups, 0.0, val_fraction, seed, source.classes)
    assign[train_idx[inner == "test"]] = "val"
    return assign


def cache_dir(config: RunConfig) -> Path | None:
    """Where decoded images are cached; None when the cache is switched off."""
    if not config.data.cache:
        return None
    return Path(config.data.cache_dir).expanduser() if config.data.cache_dir \
        else default_cache_dir()


# ---------------------------------------------------------------- split files


def write_splits(path: Path, source: DataSource, assign: np.ndarray) -> None:
    rows = ((source.sample_id(s), source.label_name(s), s.group or "", a)
            for s, a in zip(source.samples, assign, strict=True))
    atomic_write_csv(path, ["path", "label", "group", "split"], rows)


def read_splits(path: Path) -> list[dict[str, str]]:
    """The rows of a split file, checked: 'path' and 'split' columns, known split names."""
    path = Path(path)
    if not path.is_file():
        raise MedscopeError(f"{path}: split file not found")
    with open_run_csv(path) as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"path", "split"} <= rows[0].keys():
        raise MedscopeError(f"{path}: a split file needs 'path' and 'split' columns")
    unknown = sorted({r["split"] for r in rows} - set(SPLITS))
    if unknown:
        raise MedscopeError(f"{path}: unknown split name(s) {', '.join(map(repr, unknown))}; "
                            "use train, val and test")
    return rows


def splits_from_file(path: Path, source: DataSource) -> np.ndarray:
    by_path = {r["path"]: r["split"] for r in read_splits(path)}
    assign = []
    for s in source.samples:
        rel = source.sample_id(s)
        if rel not in by_path:
            raise MedscopeError(f"{path}: has no split for {rel} (the data changed?)")
        assign.append(by_path[rel])
    return np.array(assign, dtype=object)


def run_samples(run: RunDir, classes: list[str], split: str | None = None
                ) -> tuple[list[Sample], str]:
    """A finished run's evaluation images from its saved config and split: the test split, or
    the validation split when there is no test split. Returns (samples, split name)."""
    samples, split, _ = run_split(run, classes, split)
    return samples, split


def run_split(run: RunDir, classes: list[str], split: str | None = None
              ) -> tuple[list[Sample], str, DataSource]:
    """:func:`run_samples` and the source they come from (which names them)."""
    from medscope.config import load_config

    config = load_config(run.config)
    source = load_source(config.data.path, config.data.format, classes=classes,
                         multilabel=config.multilabel)
    rows = read_splits(run.splits)
    if split is None:
        split = "test" if any(r["split"] == "test" for r in rows) else "val"
    # The groups training used (copies found by the duplicate scan included), so that a later
    # evaluation resamples them together in its confidence intervals as training's did.
    chosen = {r["path"]: r.get("group") or None for r in rows if r["split"] == split}
    samples = [replace(s, group=chosen[source.sample_id(s)] or s.group)
               for s in source.samples if source.sample_id(s) in chosen]
    return samples, split, source


def run_group_pattern(run: RunDir) -> str | None:
    """The ``data.group_pattern`` the run was trained with (None without one or a config)."""
    from medscope.config import load_config

    return load_config(run.config).data.group_pattern if run.config.is_file() else None


def folder_source(run: RunDir, data_dir: Path, classes: list[str]) -> DataSource:
    """Another folder of the run's classes (``medscope evaluate RUN --data``), grouped by the
    run's ``data.group_pattern`` when its paths follow it: patches of one micrograph are then
    resampled together in the confidence intervals, as in the run's own evaluation."""
    source = load_source(data_dir, classes=classes)
    pattern = run_group_pattern(run)
    if pattern is None or any(s.group is not None for s in source.samples):
        return source
    if not matches_any(source, pattern):
        log.warning("%s: the run's data.group_pattern %r matches none of its image paths: each "
                    "image is its own unit in the confidence intervals", data_dir, pattern)
        return source
    return pattern_groups(source, pattern)
