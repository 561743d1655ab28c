"""The audit of a dataset, and of a run's data when a run or CV directory is given: the image
statistics, duplicates and outliers of ``medscope.data.audit``, plus label errors found by
confident learning on the model's probabilities (out-of-fold ones of a CV directory, else a run's
test-split predictions, which needs the run's ``Predictor``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medscope.data.audit import (
    PHASH_DISTANCE,
    Audit,
    LabelIssue,
    find_duplicates,
    find_outliers,
    find_source_issues,
    image_stats,
    progress_bar,
    rank_label_issues,
    read_rows,
    sample_splits,
)
from medscope.data.groups import pattern_groups
from medscope.data.sources import DataSource, load_source
from medscope.errors import MedscopeError
from medscope.parallel import process_map
from medscope.predictor import Predictor
from medscope.run import RunDir


def audit_data(path: Path | str, run: Path | str | None = None, *,
               phash_distance: int = PHASH_DISTANCE, workers: int | None = None,
               progress: bool = False, group_pattern: str | None = None) -> Audit:
    """Everything ``medscope audit`` reports, without writing anything. ``group_pattern``:
    source groups from the file names, as ``data.group_pattern``."""
    if not 0 <= phash_distance <= 32:
        raise MedscopeError(f"--phash-distance {phash_distance}: must be between 0 and 32")
    source = load_source(path)
    if group_pattern is not None:
        source = pattern_groups(source, group_pattern)
    splits, origin = sample_splits(source, Path(run) if run else None)
    stats = list(progress_bar(process_map(image_stats, source.samples, workers, chunksize=16),
                           len(source.samples), progress))
    audit = Audit(source, splits, origin, stats, phash_distance=phash_distance,
                  group_pattern=group_pattern)
    audit.duplicates = find_duplicates(audit)
    if any(s.group is not None for s in source.samples):
        audit.source_groups, audit.source_issues = find_source_issues(audit)
    audit.outliers = find_outliers(audit)
    if run is not None:
        audit.label_issues, audit.label_origin = find_label_issues(source, Path(run))
    else:
        audit.label_origin = "no --run given: pass a `medscope cv` directory to find label errors"
    return audit


def find_label_issues(source: DataSource, run: Path) -> tuple[list[LabelIssue], str]:
    """Confident learning on a CV directory's out-of-fold probabilities, else on a run's
    test-split predictions; ranked by self-confidence (lowest first)."""
    if source.multilabel:
        return [], "label issues are not searched for in multi-label data"
    oof = run / "oof_predictions.csv"
    if oof.is_file():
        index, probs = _oof_probs(source, oof)
        origin = f"out-of-fold probabilities of {run.name} (every image scored by a model " \
                 "that never saw it)"
    else:
        index, probs = _test_probs(source, run)
        origin = (f"test-split predictions of {run.name} only ({len(index)} images): "
                  "run `medscope cv` to search the whole dataset")
    if len(index) == 0:
        return [], origin
    labels = np.array([source.samples[i].label for i in index])
    return rank_label_issues(source, index, labels, probs), origin


def _oof_probs(source: DataSource, path: Path) -> tuple[np.ndarray, np.ndarray]:
    columns = tuple(f"p_{c}" for c in source.classes)
    rows = read_rows(path, ("path", *columns))
    position = {source.sample_id(s): i for i, s in enumerate(source.samples)}
    index, probs = [], []
    for row in rows:
        if row["path"] in position:
            index.append(position[row["path"]])
            try:
                probs.append([float(row[c]) for c in columns])
            except ValueError:
                raise MedscopeError(f"{path}: a probability of {row['path']} is not a number"
                                    ) from None
    return np.array(index, dtype=np.int64), np.array(probs, dtype=np.float64).reshape(
        len(index), len(columns))


def _test_probs(source: DataSource, run: Path) -> tuple[np.ndarray, np.ndarray]:
    predictor = Predictor.load(run)
    if predictor.classes != source.classes:
        raise MedscopeError(f"{run}: its classes {predictor.classes} differ from the data's "
                            f"{source.classes}")
    rows = read_rows(RunDir(run).splits, ("path", "split"))
    test = {r["path"] for r in rows if r["split"] == "test"}
    index = np.array([i for i, s in enumerate(source.samples)
                      if source.sample_id(s) in test], dtype=np.int64)
    decoded = predictor.decode([source.samples[i] for i in index], progress=False)
    return index[decoded.kept], predictor.probs_from_pixels(decoded.pixels)
