"""medscope compare: one row per run or CV dir, every column filled, bad paths named."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medscope.cli import main
from medscope.errors import MedscopeError
from medscope.report.compare import COLUMNS, markdown_table
from medscope.workflows.compare import compare_runs, training_seconds
from tests.conftest import tiny_config

# Columns that only a CV directory or an ensemble has (a single run has no spread over folds).
CV_ONLY = {"accuracy_std", "folds", "members"}
WITH_GROUPS_ONLY = {"group_unit", "group_accuracy", "group_accuracy_std"}


def _add_lead_keys(metrics_path, seed: int) -> dict:
    """The ``ci`` and ``calibration`` blocks of the agreed metrics.json layout, which the
    evaluation being reshaped now will write; made up here around the real accuracy."""
    metrics = json.loads(metrics_path.read_text())
    acc = metrics["accuracy"]
    metrics.setdefault("ci", {"level": 0.95, "n_resamples": 1000, "seed": seed,
                              "grouped": False,
                              "accuracy": {"low": max(0.0, acc - 0.1),
                                           "high": min(1.0, acc + 0.05)}})
    metrics.setdefault("calibration", {"n_bins": 15, "temperature": 1.0,
                                       "ece_uncalibrated": 0.1 + seed / 100,
                                       "ece": 0.05 + seed / 100})
    metrics_path.write_text(json.dumps(metrics))
    return metrics


@pytest.fixture(scope="module")
def two_runs(trained_run, image_folder, tmp_path_factory):
    from medscope.api import train

    root = tmp_path_factory.mktemp("compare")
    simple = shutil.copytree(trained_run.root, root / "simple")
    lenet = train(tiny_config(image_folder, root / "lenet", **{"model.name": "lenet5",
                                                               "train.epochs": 1}),
                  progress=False).root
    for seed, run in enumerate((simple, lenet)):
        _add_lead_keys(run / "metrics.json", seed)
    return simple, lenet


def _cv_dir(two_runs, root, with_summary_stats: bool = True):
    for k, run in enumerate(two_runs, start=1):
        shutil.copytree(run, root / f"fold_{k}")
    metrics = [json.loads((run / "metrics.json").read_text()) for run in two_runs]
    rows = [{"fold": k, "loss": m["log_loss"], "accuracy": m["accuracy"],
             "f1_macro": m["f1_macro"], "roc_auc_macro": m["roc_auc_macro"], "n": m["n"]}
            for k, m in enumerate(metrics, start=1)]
    summary = {"model": "simple_cnn", "folds": 2, "rows": rows, "data": "stripes"}
    if with_summary_stats:
        keys = ("loss", "accuracy", "f1_macro", "roc_auc_macro")
        summary["mean"] = {k: float(np.mean([r[k] for r in rows])) for k in keys}
        summary["std"] = {k: float(np.std([r[k] for r in rows], ddof=1)) for k in keys}
    (root / "cv_summary.json").write_text(json.dumps(summary))
    return root, [m["accuracy"] for m in metrics]


def test_two_runs_fill_every_column(two_runs):
    rows = compare_runs(two_runs, latency_repeats=3)
    assert [r["model"] for r in rows] == ["simple_cnn", "lenet5"]
    for row in rows:
        assert list(row) == COLUMNS
        empty = [c for c in COLUMNS if row[c] is None and c not in CV_ONLY | WITH_GROUPS_ONLY]
        assert not empty, f"{row['name']}: empty {empty}"
        assert row["latency_ms"] > 0 and row["throughput_img_s"] > 0
        assert row["accuracy_ci_low"] <= row["accuracy"] <= row["accuracy_ci_high"]
        assert row["threads"] >= 1 and row["img_size"] == 32
    simple, lenet = rows
    assert simple["params"] != lenet["params"]
    assert simple["train_seconds"] == pytest.approx(training_seconds(two_runs[0] / "history.csv"))
    metrics = json.loads((two_runs[1] / "metrics.json").read_text())
    assert lenet["accuracy"] == metrics["accuracy"]
    assert lenet["ece"] == metrics["calibration"]["ece"]


def test_an_ensemble_row_adds_up_its_members(two_runs, tmp_path):
    from medscope.api import evaluate_ensemble

    out = tmp_path / "both"
    metrics = evaluate_ensemble(two_runs, out, progress=False, precision="fp32")
    ensemble, *singles = compare_runs([out, *two_runs], latency_repeats=3)
    assert ensemble["kind"] == "ensemble" and ensemble["members"] == 2
    assert ensemble["model"] == "simple_cnn+lenet5" and ensemble["img_size"] == 32
    for col in ("params", "gmacs", "checkpoint_mb", "train_seconds"):
        assert ensemble[col] == pytest.approx(sum(r[col] for r in singles)), col
    assert ensemble["accuracy"] == metrics["accuracy"] and ensemble["n"] == metrics["n"]
    assert ensemble["accuracy_ci_low"] <= ensemble["accuracy"] <= ensemble["accuracy_ci_high"]
    assert "(ensemble of 2)" in markdown_table([ensemble])
    assert main(["compare", str(out), "--out", str(tmp_path / "cmp"), "--repeats", "1",
                 "-q"]) == 0
    assert "both (ensemble of 2)" in (tmp_path / "cmp" / "comparison.html").read_text()


@pytest.mark.parametrize(("tta", "views"), [(False, 1), (True, 8)])
def test_an_ensemble_runs_each_member_so_latencies_add_and_rates_combine(
        two_runs, tmp_path, monkeypatch, tta, views):
    import medscope.workflows.compare as compare
    from medscope.api import evaluate_ensemble

    speed = {"simple": (2.0, 100.0), "lenet": (3.0, 300.0)}  # latency ms, img/s
    real = compare.measure_model

    def fake(run, **kw):
        latency, rate = speed[Path(run).name]
        return {**real(run, repeats=1), "latency_ms": latency, "throughput_img_s": rate}

    monkeypatch.setattr(compare, "measure_model", fake)
    out = tmp_path / "both"
    evaluate_ensemble(two_runs, out, progress=False, precision="fp32", tta=tta)
    (row,) = compare_runs([out], latency_repeats=1)
    assert row["latency_ms"] == pytest.approx(views * 5.0)
    assert row["throughput_img_s"] == pytest.approx(75.0 / views)  # 1 / (1/100 + 1/300)


def test_an_ensemble_with_a_missing_member_is_named_before_measuring(two_runs, tmp_path):
    from medscope.api import evaluate_ensemble

    members = [shutil.copytree(r, tmp_path / r.name) for r in two_runs]
    evaluate_ensemble(members, tmp_path / "both", progress=False, precision="fp32")
    shutil.rmtree(members[1] / "checkpoints")
    with pytest.raises(MedscopeError, match="ensemble member .*lenet.* is not a finished run"):
        compare_runs([tmp_path / "both"], latency_repeats=1)


def test_run_without_ci_or_calibration_leaves_those_cells_empty(trained_run):
    (row,) = compare_runs([trained_run.root], latency_repeats=1, threads=1)
    metrics = json.loads(trained_run.metrics.read_text())
    if "ci" not in metrics:
        assert row["accuracy_ci_low"] is None and row["accuracy_ci_high"] is None
    if "calibration" not in metrics:
        assert row["ece"] is None
    assert row["threads"] == 1 and row["accuracy"] == metrics["accuracy"]


@pytest.mark.parametrize("with_summary_stats", [True, False])
def test_cv_dir_is_mean_and_std_over_folds(two_runs, tmp_path, with_summary_stats):
    cv, accuracies = _cv_dir(two_runs, tmp_path / "cv", with_summary_stats)
    (row,) = compare_runs([cv], latency_repeats=1)
    assert row["kind"] == "cv" and row["folds"] == 2 and row["model"] == "simple_cnn"
    assert row["accuracy"] == pytest.approx(np.mean(accuracies))
    assert row["accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    eces = [json.loads((cv / f"fold_{k}" / "metrics.json").read_text())["calibration"]["ece"]
            for k in (1, 2)]
    assert row["ece"] == pytest.approx(np.mean(eces))
    assert row["train_seconds"] == pytest.approx(
        sum(training_seconds(cv / f"fold_{k}" / "history.csv") for k in (1, 2)))


def test_cv_dir_with_groups_shows_accuracy_per_group(two_runs, tmp_path):
    from medscope.report.compare import header_for, markdown_table

    cv, _ = _cv_dir(two_runs, tmp_path / "cv")
    summary = json.loads((cv / "cv_summary.json").read_text())
    summary["mean"]["group_accuracy"], summary["std"]["group_accuracy"] = 0.8, 0.05
    summary["group_unit"] = "micrograph"
    (cv / "cv_summary.json").write_text(json.dumps(summary))
    rows = compare_runs([cv, two_runs[0]], latency_repeats=1)
    assert rows[0]["group_accuracy"] == 0.8 and rows[0]["group_unit"] == "micrograph"
    assert header_for(rows)[-1] == "accuracy per group"
    assert "0.8000 ± 0.0500 per micrograph |" in markdown_table(rows)
    assert header_for(rows[1:])[-1] == "ECE"  # no run with groups: no empty column


def test_not_a_run_is_named_before_measuring(trained_run, tmp_path, monkeypatch):
    import medscope.workflows.compare as compare

    monkeypatch.setattr(compare, "measure_model", lambda *a, **k: pytest.fail("measured"))
    stray = tmp_path / "holiday_photos"
    stray.mkdir()
    with pytest.raises(MedscopeError, match="holiday_photos.*not a finished run"):
        compare_runs([trained_run.root, stray])
    with pytest.raises(MedscopeError, match="nowhere.*no such directory"):
        compare_runs([tmp_path / "nowhere"])
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "cv_summary.json").write_text("{}")
    with pytest.raises(MedscopeError, match="cv.*without a finished fold_1"):
        compare_runs([tmp_path / "cv"])


def test_cli_writes_three_files_and_prints_the_table(two_runs, tmp_path, capsys):
    from medscope.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", *map(str, two_runs), "--out", str(out), "--repeats", "2",
                 "--threads", "1", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "| simple |" in printed and "| lenet |" in printed and "1 torch thread" in printed
    with (out / "comparison.csv").open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["model"] for r in table] == ["simple_cnn", "lenet5"]
    assert all(table[0][c] != "" for c in COLUMNS if c not in CV_ONLY | WITH_GROUPS_ONLY)
    assert (out / "comparison.md").read_text().startswith("| run | model |")
    page = (out / "comparison.html").read_text()
    assert "data:image/png;base64," in page and "lenet5" in page and "$" not in page


def test_cli_bad_path_exits_2_with_one_line(tmp_path, capsys):
    from medscope.cli import main

    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing" in err
    assert not (tmp_path / "o").exists()
