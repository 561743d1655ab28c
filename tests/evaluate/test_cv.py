"""medscope cv through the CLI: folds, out-of-fold predictions, the summary table, duplicates
kept together, continuing an interrupted CV, and a class too small for K."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from medscope.cli import main
from medscope.run import read_json
from tests.conftest import make_image_folder


def _cv(data, out, *extra):
    return ["cv", "-q", "--data", str(data), "--out", str(out), "--folds", "3", "--img-size",
            "16", "--epochs", "1", "--batch-size", "8", "--set", "data.val_fraction=0.34", *extra]


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    data = make_image_folder(root / "data", per_class=9, size=24)
    shutil.copy(data / "alpha" / "alpha_000.png", data / "alpha" / "copy_of_000.png")
    assert main(_cv(data, root / "cv")) == 0
    return data, root / "cv"


def test_folds_cover_every_image_once_and_keep_copies_together(cv_dir):
    data, out = cv_dir
    rows = list(csv.DictReader((out / "oof_predictions.csv").open()))
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    fold = {r["path"]: r["fold"] for r in rows}
    assert fold["alpha/alpha_000.png"] == fold["alpha/copy_of_000.png"]
    assert {r["fold"] for r in rows} == {"1", "2", "3"}
    for r in rows:
        assert sum(float(r[f"p_{c}"]) for c in ("alpha", "beta", "gamma")) == pytest.approx(
            1.0, abs=1e-4)
    for k in (1, 2, 3):
        assert (out / f"fold_{k}" / "report.html").is_file()


def test_summary_mean_and_std_are_numpys(cv_dir):
    _, out = cv_dir
    summary = read_json(out / "cv_summary.json")
    acc = np.array([r["accuracy"] for r in summary["rows"]])
    assert summary["mean"]["accuracy"] == pytest.approx(acc.mean())
    assert summary["std"]["accuracy"] == pytest.approx(acc.std(ddof=1))
    table = (out / "cv_summary.md").read_text()
    assert "| Average |" in table and "| Standard deviation |" in table


def test_rerun_skips_finished_folds(cv_dir):
    data, out = cv_dir
    before = {k: (out / f"fold_{k}" / "checkpoints" / "best.safetensors").stat().st_mtime_ns
              for k in (1, 2, 3)}
    assert main(_cv(data, out)) == 0
    after = {k: (out / f"fold_{k}" / "checkpoints" / "best.safetensors").stat().st_mtime_ns
             for k in (1, 2, 3)}
    assert before == after


def test_class_smaller_than_k_fails_before_training(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", per_class=4, size=24)
    for extra in list((data / "gamma").glob("*.png"))[2:]:
        extra.unlink()
    code = main(_cv(data, tmp_path / "cv"))
    err = capsys.readouterr().err
    assert code == 2 and "gamma" in err and "\n" not in err.strip()
    assert not (tmp_path / "cv" / "fold_1").exists()
