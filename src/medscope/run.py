"""RunDir and CvDir: where each artefact of a run (or of a cross-validation) lives, and atomic
writes so nothing is half-written. File names are spelled here and nowhere else."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medscope.errors import MedscopeError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it over: readers never see half,
    and after a crash the file is the old one or the new one, never a mix."""
    path = Path(path)
    tmp = write_synced_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_synced_temp(path: Path, data: bytes) -> Path:
    """``data`` in a new temporary file beside ``path``, flushed to disk (fsync): renaming it
    over ``path`` is then the only step left. A failed write (full disk) leaves nothing."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file private (0600); a run's files are meant to be shared, so give
        # them the permissions an ordinary open() would (0666 minus the umask).
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # full disk, read-only or vanished directory
            raise MedscopeError(f"{path}: cannot write ({exc.strerror or exc}); the previous "
                                "version, if any, is unchanged") from None
        raise
    return Path(tmp)


def fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable (POSIX; a no-op where directories cannot be
    opened, as on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    # surrogateescape: a file name that is not UTF-8 (POSIX allows any bytes) is written back
    # as its own bytes, and ``open_run_csv`` reads it back as the same path.
    atomic_write_bytes(path, text.encode("utf-8", errors="surrogateescape"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def open_run_csv(path: Path):
    """A CSV this package wrote (splits, predictions, history), for ``csv`` readers: UTF-8,
    with non-UTF-8 file names restored as written (see ``atomic_write_text``)."""
    return Path(path).open(newline="", encoding="utf-8", errors="surrogateescape")


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MedscopeError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise MedscopeError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


# What an evaluation writes into its folder (a run's own root, ``RUN/eval-*`` or an
# ensemble's ``--out``), so readers of any of them spell the names alike.
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"


class RunDir:
    """The directory of one run and the names of everything in it."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    config = property(lambda self: self.root / "config.yaml")
    splits = property(lambda self: self.root / "splits.csv")
    history = property(lambda self: self.root / "history.csv")
    metrics = property(lambda self: self.root / METRICS)
    predictions = property(lambda self: self.root / PREDICTIONS)
    bad_files = property(lambda self: self.root / "bad_files.csv")
    checkpoints = property(lambda self: self.root / "checkpoints")
    best = property(lambda self: self.root / "checkpoints" / "best")
    last = property(lambda self: self.root / "checkpoints" / "last")
    report = property(lambda self: self.root / "report.html")
    learning_curves = property(lambda self: self.root / "learning_curves.png")
    confusion_matrix = property(lambda self: self.root / "confusion_matrix.png")
    examples = property(lambda self: self.root / "examples.png")
    roc_curves = property(lambda self: self.root / "roc_curves.png")
    reliability_diagram = property(lambda self: self.root / "reliability_diagram.png")
    coverage_accuracy = property(lambda self: self.root / "coverage_accuracy.png")
    gradcam_mistakes = property(lambda self: self.root / "gradcam_mistakes.png")
    duplicates = property(lambda self: self.root / "duplicates.json")

    def is_finished(self) -> bool:
        return self.metrics.is_file() and (self.best.with_suffix(".safetensors")).is_file()

    def has_partial_run(self) -> bool:
        # ``last-previous`` alone: ``last`` was removed by hand; resume falls back to it.
        return (self.last.with_suffix(".safetensors").is_file()
                or self.last.with_name("last-previous.safetensors").is_file()
                ) and not self.is_finished()

    def prepare_new(self, *, resume: bool = False) -> None:
        """Create the directory for a new run; refuse to clobber a finished or partial one."""
        self.check_can_start(resume=resume)
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def check_can_start(self, *, resume: bool = False) -> None:
        """A new run may start here (or, with ``resume``, an interrupted one continue)."""
        if self.root.exists() and not self.root.is_dir():
            raise MedscopeError(f"{self.root}: exists and is not a directory")
        if self.is_finished():
            raise MedscopeError(
                f"{self.root}: already holds a finished run; choose another --out "
                "or delete it first"
            )
        if self.has_partial_run() and not resume:
            raise MedscopeError(
                f"{self.root}: holds an interrupted run; add --resume to continue it "
                "or choose another --out"
            )
        if resume and not self.has_partial_run() and not self.config.is_file():
            raise MedscopeError(f"{self.root}: nothing to resume (no config.yaml)")

    def require_finished(self) -> None:
        if not self.root.is_dir():
            raise MedscopeError(f"{self.root}: run directory not found")
        if not self.best.with_suffix(".safetensors").is_file():
            raise MedscopeError(f"{self.root}: no checkpoints/best.safetensors (has training run?)")


FOLD_PREFIX = "fold_"


class CvDir:
    """The directory of one ``medscope cv``: a run directory per fold (``fold_1 … fold_K``),
    the split file of each fold, and the pooled out-of-fold files."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    summary = property(lambda self: self.root / "cv_summary.json")
    summary_csv = property(lambda self: self.root / "cv_summary.csv")
    summary_md = property(lambda self: self.root / "cv_summary.md")
    settings = property(lambda self: self.root / "cv_settings.json")
    oof_predictions = property(lambda self: self.root / "oof_predictions.csv")
    report = property(lambda self: self.root / "cv_report.html")
    split_files = property(lambda self: self.root / "splits")

    def fold(self, k: int) -> RunDir:
        """Fold ``k``'s run directory (1-based, as the folder names count)."""
        return RunDir(self.root / f"{FOLD_PREFIX}{k}")

    def fold_split(self, k: int) -> Path:
        return self.split_files / f"{FOLD_PREFIX}{k}.csv"

    def folds(self) -> list[RunDir]:
        """The fold run directories present, in fold order (fold_2 before fold_10)."""
        found = [p for p in self.root.glob(f"{FOLD_PREFIX}*")
                 if p.is_dir() and p.name[len(FOLD_PREFIX):].isdigit()]
        return [RunDir(p) for p in sorted(found, key=lambda p: int(p.name[len(FOLD_PREFIX):]))]

    def require_folds(self) -> list[RunDir]:
        """``folds()``, refusing a directory without any."""
        folds = self.folds()
        if not folds:
            raise MedscopeError(f"{self.root}: no {FOLD_PREFIX}*/ run directories (is it a "
                                "`medscope cv` output?)")
        return folds

    def finished_folds(self) -> list[RunDir]:
        return [f for f in self.folds() if f.is_finished()]

    def is_cv(self) -> bool:
        """A finished (or summarised) cross-validation: its summary is written last."""
        return self.summary.is_file()
