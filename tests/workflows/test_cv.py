"""medscope cv through the CLI: folds, out-of-fold predictions, the summary table and page,
duplicates kept together (and conflicting ones dropped), continuing an interrupted CV, and a
class too small for K."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil

import numpy as np
import pytest

import medscope.workflows.cv as cv
from medscope.cli import main
from medscope.run import read_json
from tests.conftest import make_image_folder

CLASSES = ("alpha", "beta", "gamma")
COPIES = ("alpha/alpha_000.png", "alpha/copy_of_000.png", "alpha/nested/copy2.png")
CONFLICT = ("beta/beta_001.png", "gamma/was_beta_001.png")


def _cv(data, out, *extra):
    return ["cv", "--data", str(data), "--out", str(out), "--folds", "3", "--img-size", "32",
            "--epochs", "1", "--batch-size", "8", "--set", "data.val_fraction=0.34", *extra]


def _data_with_copies(root):
    data = make_image_folder(root / "data", per_class=9, size=32)
    (data / "alpha" / "nested").mkdir()
    for copy in COPIES[1:]:
        shutil.copy(data / COPIES[0], data / copy)
    shutil.copy(data / CONFLICT[0], data / CONFLICT[1])
    return data


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    data = _data_with_copies(root)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(_cv(data, root / "cv")) == 0
    return data, root / "cv", err.getvalue()


def _split_rows(out, k):
    return list(csv.DictReader((out / f"fold_{k}" / "splits.csv").open()))


def test_every_image_is_in_exactly_one_test_fold(cv_dir):
    data, out, _ = cv_dir
    rows = list(csv.DictReader((out / "oof_predictions.csv").open()))
    expected = {p.relative_to(data).as_posix() for p in data.rglob("*.png")} - set(CONFLICT)
    assert sorted(r["path"] for r in rows) == sorted(expected)
    tested = [r["path"] for k in (1, 2, 3) for r in _split_rows(out, k) if r["split"] == "test"]
    assert sorted(tested) == sorted(expected)
    assert {r["fold"] for r in rows} == {"1", "2", "3"}
    for r in rows:
        assert sum(float(r[f"p_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-4)


def test_no_group_in_two_test_folds_and_copies_stay_together(cv_dir):
    _, out, _ = cv_dir
    rows = list(csv.DictReader((out / "oof_predictions.csv").open()))
    folds_of_group: dict[str, set[str]] = {}
    for r in rows:
        if r["group"]:
            folds_of_group.setdefault(r["group"], set()).add(r["fold"])
    assert folds_of_group and all(len(f) == 1 for f in folds_of_group.values())
    fold = {r["path"]: r["fold"] for r in rows}
    assert len({fold[c] for c in COPIES}) == 1
    for k in (1, 2, 3):  # nor across train/val/test inside a fold
        sides = {r["split"] for r in _split_rows(out, k) if r["path"] in COPIES}
        assert len(sides) == 1


def test_conflicting_copies_are_dropped_with_a_warning(cv_dir):
    _, out, log = cv_dir
    assert all(CONFLICT[1] in line for line in log.splitlines() if "different labels" in line)
    assert "different labels" in log
    for k in (1, 2, 3):
        assert not {r["path"] for r in _split_rows(out, k)} & set(CONFLICT)


def test_summary_mean_and_std_are_numpys_over_fold_rows(cv_dir):
    _, out, _ = cv_dir
    summary = read_json(out / "cv_summary.json")
    assert [r["fold"] for r in summary["rows"]] == [1, 2, 3]
    for key in ("loss", "accuracy", "f1_macro", "roc_auc_macro"):
        values = np.array([r[key] for r in summary["rows"]], dtype=float)
        assert summary["mean"][key] == pytest.approx(values.mean())
        assert summary["std"][key] == pytest.approx(values.std(ddof=1))
    table = list(csv.reader((out / "cv_summary.csv").open()))
    assert table[0] == ["fold", "loss", "accuracy", "f1_macro", "roc_auc_macro", "n"]
    assert [row[0] for row in table[1:]] == ["1", "2", "3", "Average", "Standard deviation"]
    assert float(table[4][2]) == pytest.approx(summary["mean"]["accuracy"], abs=1e-4)
    md = (out / "cv_summary.md").read_text()
    assert "| Average |" in md and "| Standard deviation |" in md and "ddof = 1" in md
    page = (out / "cv_report.html").read_text()
    assert all(f'href="fold_{k}/report.html"' in page for k in (1, 2, 3))
    assert "Standard deviation" in page and "<style>" in page


@pytest.mark.slow
def test_interrupted_cv_continues_without_retraining_finished_folds(tmp_path, monkeypatch):
    import medscope.workflows.training as trainer

    data = make_image_folder(tmp_path / "data", per_class=6, size=32)
    real_train, real_prepare, calls, crash = cv.train_run, trainer.prepare_data, [], [True]

    def recorded(config, **kw):
        calls.append((config.out.name, kw["resume"]))
        return real_train(config, **kw)

    def prepare(config, run, **kw):  # the machine goes down once fold 2 has started
        if crash[0] and run.root.name == "fold_2":
            raise Interrupted
        return real_prepare(config, run, **kw)

    monkeypatch.setattr(cv, "train_run", recorded)
    monkeypatch.setattr(trainer, "prepare_data", prepare)
    with pytest.raises(Interrupted):
        cv.run_cv(_config(data, tmp_path / "cv"), 3, progress=False)
    fold_1 = tmp_path / "cv" / "fold_1"
    stamps = {p: p.stat().st_mtime_ns for p in fold_1.rglob("*") if p.is_file()}
    assert stamps and not (tmp_path / "cv" / "fold_2" / "metrics.json").exists()
    calls.clear()
    crash[0] = False
    cv.run_cv(_config(data, tmp_path / "cv"), 3, progress=False)
    assert calls == [("fold_2", True), ("fold_3", False)]
    assert {p: p.stat().st_mtime_ns for p in fold_1.rglob("*") if p.is_file()} == stamps
    assert len(read_json(tmp_path / "cv" / "cv_summary.json")["rows"]) == 3


class Interrupted(Exception):
    pass


def _config(data, out):
    from tests.conftest import tiny_config

    return tiny_config(data, out, **{"train.epochs": 1, "data.val_fraction": 0.34})


@pytest.mark.parametrize("shrink", ["images", "copies"])
def test_class_smaller_than_k_fails_before_training(tmp_path, capsys, shrink):
    data = make_image_folder(tmp_path / "data", per_class=4, size=24)
    gamma = sorted((data / "gamma").glob("*.png"))
    for extra in gamma[2:]:
        extra.unlink()
        if shrink == "copies":  # as many images as K, but only 2 distinct ones
            shutil.copy(gamma[0], extra)
    code = main(_cv(data, tmp_path / "cv", "-q"))
    err = capsys.readouterr().err
    assert code == 2 and "'gamma'" in err and "\n" not in err.strip()
    assert ("group" in err) == (shrink == "copies")
    assert not (tmp_path / "cv" / "fold_1").exists()


def test_rerun_with_other_settings_is_refused(cv_dir, capsys):
    data, out, _ = cv_dir
    code = main(_cv(data, out, "-q", "--model", "lenet5"))
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the duplicate warning
    assert code == 2 and "model.name: simple_cnn -> lenet5" in last and "use another" in last


def test_same_command_again_retrains_nothing(cv_dir):
    data, out, _ = cv_dir
    best = [out / f"fold_{k}" / "checkpoints" / "best.safetensors" for k in (1, 2, 3)]
    before = [p.stat().st_mtime_ns for p in best]
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(_cv(data, out, "-q", "--workers", "0")) == 0
    assert [p.stat().st_mtime_ns for p in best] == before


def test_oof_probabilities_are_each_fold_models_own_predictions(cv_dir):
    """oof_predictions.csv re-uses each fold's predictions.csv: they must be what the fold's
    best checkpoint gives on those images."""
    from medscope.data.sources import load_source
    from medscope.predictor import Predictor

    data, out, _ = cv_dir
    rows = [r for r in csv.DictReader((out / "oof_predictions.csv").open()) if r["fold"] == "2"]
    saved = {r["path"]: r for r in csv.DictReader((out / "fold_2" / "predictions.csv").open())}
    assert {r["path"] for r in rows} == set(saved)
    predictor = Predictor.load(out / "fold_2")
    source = load_source(data)
    by_id = {source.sample_id(s): s for s in source.samples}
    samples = [by_id[r["path"]] for r in rows]
    probs = predictor.probs_from_pixels(predictor.decode(samples, progress=False).pixels)
    for r, p in zip(rows, probs, strict=True):
        assert [float(r[f"p_{c}"]) for c in CLASSES] == pytest.approx(p.tolist(), abs=1e-5)
        assert saved[r["path"]]["predicted"] == CLASSES[int(p.argmax())]


def test_summary_pools_out_of_fold_predictions_with_grouped_cis(cv_dir):
    from sklearn.metrics import accuracy_score, f1_score

    _, out, _ = cv_dir
    pooled = json.loads((out / "cv_summary.json").read_text())["pooled"]
    rows = list(csv.DictReader((out / "oof_predictions.csv").open()))
    truth = [CLASSES.index(r["label"]) for r in rows]
    pred = [int(np.argmax([float(r[f"p_{c}"]) for c in CLASSES])) for r in rows]
    assert pooled["n"] == len(rows)
    assert pooled["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert pooled["f1_macro"] == pytest.approx(f1_score(truth, pred, average="macro"))
    ci = pooled["ci"]["accuracy"]
    assert ci["low"] <= pooled["accuracy"] <= ci["high"] and ci["low"] < ci["high"]
    assert "Pooled out-of-fold" in (out / "cv_summary.md").read_text()
    assert "Pooled out-of-fold" in (out / "cv_report.html").read_text()
