"""Figures per micrograph, slide or patient (issue #41 point 5): ``metrics.json["group_level"]``
through ``evaluate_run``, the group columns of ``cv_summary`` and the unit's name."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

import medscope.workflows.evaluation as evaluation
from medscope.data.prepare import labels_of, read_splits, run_split
from medscope.evaluate.groups import fit_group_refer_threshold, group_unit
from medscope.predictor import Predictor
from medscope.run import RunDir, atomic_write_csv
from medscope.workflows.evaluation import evaluate_run

MARGIN = 8.0  # logit of a patch's call over the other classes: a confident patch


def _grouped_copy(trained_run, tmp_path) -> RunDir:
    """The tiny run with its test and validation images in groups of up to 3 of one class
    (as patches of one micrograph), recorded in splits.csv as training records them."""
    run = tmp_path / "run"
    shutil.copytree(trained_run.root, run)
    rows = read_splits(run / "splits.csv")
    for split in ("test", "val"):
        by_class: dict[str, list[dict[str, str]]] = {}
        for r in rows:
            if r["split"] == split:
                by_class.setdefault(r["label"], []).append(r)
        for label, members in by_class.items():
            for i, r in enumerate(members):
                r["group"] = f"{split}-{label}-{i // 3}"
    atomic_write_csv(run / "splits.csv", list(rows[0]), [list(r.values()) for r in rows])
    return RunDir(run)


def _designed_logits(samples, wrong_of) -> np.ndarray:
    """Per sample a confident call: its true class unless ``wrong_of(sample, position in its
    group)``, then the next class. Every call gets the same probability whatever the
    temperature, so a group's mean is right iff more of its patches are right than wrong."""
    seen: dict[str, int] = {}
    logits = np.zeros((len(samples), 3))
    for i, s in enumerate(samples):
        pos = seen[s.group] = seen.get(s.group, -1) + 1
        logits[i, (s.label + 1) % 3 if wrong_of(s, pos) else s.label] = MARGIN
    return logits


def test_patch_and_group_accuracy_differ_as_built_through_evaluate_run(trained_run, tmp_path,
                                                                       monkeypatch):
    run = _grouped_copy(trained_run, tmp_path)
    predictor = Predictor.load(run.root)
    test, _, _ = run_split(run, predictor.classes, "test")
    val, _, _ = run_split(run, predictor.classes, "val")
    assert len(test) != len(val)  # the patched scorer tells the splits apart by their size
    # test: class 0's micrographs get 2 patches wrong (the group is called wrong), the others
    # 1 (the group is still right); validation: every patch right
    designed = {len(test): _designed_logits(test, lambda s, pos: pos < (2 if s.label == 0
                                                                         else 1)),
                len(val): _designed_logits(val, lambda s, pos: False)}
    monkeypatch.setattr(evaluation, "_scored",
                        lambda p, pixels, tta: (designed[len(pixels)], None))
    metrics = evaluate_run(run, out=tmp_path / "eval", progress=False)

    labels = labels_of(test)
    right = designed[len(test)].argmax(1) == labels
    assert metrics["accuracy"] == pytest.approx(right.mean())
    groups = sorted({s.group for s in test})
    votes = {g: sum(1 if ok else -1 for s, ok in zip(test, right, strict=True) if s.group == g)
             for g in groups}
    assert 0 not in votes.values()  # no tie by construction (groups of 3)
    block = metrics["group_level"]
    assert block["unit"] == "group" and block["aggregation"] == "mean"
    assert block["n_groups"] == len(groups) and block["n_patches"] == len(test)
    assert block["accuracy"] == pytest.approx(np.mean([v > 0 for v in votes.values()]))
    assert metrics["accuracy"] == pytest.approx(5 / 9) and block["accuracy"] == pytest.approx(
        2 / 3)  # 3 test images a class in the tiny run: one micrograph each
    first = predictor.classes[0]
    assert block["per_class"][first]["sensitivity"] == 0.0
    assert block["per_class"][predictor.classes[1]]["sensitivity"] == 1.0
    assert block["ci"]["accuracy"]["low"] <= block["accuracy"] <= block["ci"]["accuracy"]["high"]

    selective = block["selective"]
    assert selective["fitted_on"] == "validation"
    val_probs = predictor.probs_from_logits(designed[len(val)])
    assert selective["threshold"] == pytest.approx(fit_group_refer_threshold(
        val_probs, labels_of(val), [s.group for s in val], selective["target_accuracy"]))
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["group_level"]["accuracy"] == pytest.approx(block["accuracy"])


def test_no_group_level_without_groups_or_with_only_copies(trained_run, tmp_path):
    metrics = json.loads(trained_run.metrics.read_text())
    assert "group_level" not in metrics  # the stripes folder names no groups
    run = tmp_path / "run"
    shutil.copytree(trained_run.root, run)
    rows = read_splits(run / "splits.csv")
    for i, r in enumerate(rows):
        r["group"] = f"dup:{i // 2}"  # byte-identical copies are no specimen
    atomic_write_csv(run / "splits.csv", list(rows[0]), [list(r.values()) for r in rows])
    assert "group_level" not in evaluate_run(run, out=tmp_path / "eval", progress=False)


def test_a_group_holding_two_classes_gives_no_group_level_and_says_why(trained_run, tmp_path,
                                                                       caplog):
    run = tmp_path / "run"
    shutil.copytree(trained_run.root, run)
    rows = read_splits(run / "splits.csv")
    for r in rows:
        r["group"] = "patient-1"  # every class in one patient: not a one-label group
    atomic_write_csv(run / "splits.csv", list(rows[0]), [list(r.values()) for r in rows])
    with caplog.at_level("WARNING", logger="medscope"):
        metrics = evaluate_run(run, out=tmp_path / "eval", progress=False)
    assert "group_level" not in metrics and "holds patches of classes" in caplog.text


def test_the_unit_is_named_after_the_data(tmp_path):
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "patches.csv").write_text("patch,source\n")
    presplit = tmp_path / "presplit" / "train"
    presplit.mkdir(parents=True)
    (presplit / "patches.csv").write_text("patch,source\n")
    for name, header in (("patients.csv", "path,label,patient_id"),
                         ("groups.csv", "path,label,group,patient")):
        (tmp_path / name).write_text(header + "\n")
    assert group_unit(patches) == "micrograph"
    assert group_unit(tmp_path / "presplit") == "micrograph"
    assert group_unit(tmp_path / "patients.csv") == "patient"
    assert group_unit(tmp_path / "groups.csv") == "group"  # the group column is the one read
    assert group_unit(tmp_path) == "group" and group_unit(None) == "group"


def _fold_metrics(accuracy: float, group_accuracy: float | None) -> dict:
    m = {"accuracy": accuracy, "f1_macro": accuracy, "roc_auc_macro": None, "n": 6,
         "log_loss": 0.5}
    if group_accuracy is not None:
        m["group_level"] = {"unit": "micrograph", "accuracy": group_accuracy,
                            "balanced_accuracy": group_accuracy, "f1_macro": group_accuracy,
                            "n_groups": 2}
    return m


def test_cv_summary_has_group_columns_and_pooled_groups(tmp_path):
    from medscope.config import load_config
    from medscope.workflows.cv import write_summary

    out = tmp_path / "cv"
    for k, (acc, g_acc) in enumerate([(0.5, 1.0), (0.75, 0.5)], start=1):
        (out / f"fold_{k}").mkdir(parents=True)
        (out / f"fold_{k}" / "metrics.json").write_text(json.dumps(_fold_metrics(acc, g_acc)))
    # 4 micrographs of 3 patches, 2 of each class; micrograph m3 has 2 of 3 patches wrong
    rows, wrong = [], {("m0", 0), ("m1", 0), ("m2", 0), ("m3", 0), ("m3", 1)}
    for g in range(4):
        label = g % 2
        for i in range(3):
            p = 0.9 if (f"m{g}", i) not in wrong else 0.2
            probs = [p, 1 - p] if label == 0 else [1 - p, p]
            rows.append([f"m{g}_{i}.png", "ab"[label], f"m{g}", 1 + g // 2,
                         *(f"{x:.6f}" for x in probs)])
    with (out / "oof_predictions.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "group", "fold", "p_a", "p_b"], *rows])
    config = load_config(overrides={"data.path": str(tmp_path), "out": str(out)})
    write_summary(out, config, 2)

    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["group_unit"] == "micrograph"
    assert [r["group_accuracy"] for r in summary["rows"]] == [1.0, 0.5]
    assert summary["mean"]["group_accuracy"] == pytest.approx(0.75)
    assert summary["std"]["group_accuracy"] == pytest.approx(np.std([1.0, 0.5], ddof=1))
    pooled = summary["pooled"]
    assert pooled["accuracy"] == pytest.approx(7 / 12)
    group = pooled["group_level"]
    assert group["unit"] == "micrograph" and group["n_groups"] == 4
    assert group["accuracy"] == pytest.approx(3 / 4)  # m3 alone is called wrong
    assert "low" in group["ci"]["accuracy"]
    header = next(csv.reader((out / "cv_summary.csv").open()))
    assert header == ["fold", "loss", "accuracy", "f1_macro", "roc_auc_macro",
                      "group_accuracy", "group_balanced_accuracy", "group_f1_macro", "n"]
    assert "Pooled out-of-fold per micrograph, 4 micrographs" in (
        out / "cv_summary.md").read_text()
    page = (out / "cv_report.html").read_text()
    assert "<th>per micrograph: balanced accuracy</th>" in page
    assert page.count("Pooled out-of-fold") == 2  # patches and micrographs, a paragraph each


def test_cv_summary_without_groups_keeps_its_columns(tmp_path):
    from medscope.config import load_config
    from medscope.workflows.cv import write_summary

    out = tmp_path / "cv"
    for k in (1, 2):
        (out / f"fold_{k}").mkdir(parents=True)
        (out / f"fold_{k}" / "metrics.json").write_text(json.dumps(_fold_metrics(0.5, None)))
    with (out / "oof_predictions.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "group", "fold", "p_a", "p_b"],
                                  ["x.png", "a", "", 1, "0.9", "0.1"],
                                  ["y.png", "b", "dup:1", 2, "0.2", "0.8"],
                                  ["z.png", "b", "dup:1", 2, "0.3", "0.7"]])
    write_summary(out, load_config(overrides={"data.path": str(tmp_path), "out": str(out)}), 2)
    summary = json.loads((out / "cv_summary.json").read_text())
    assert "group_unit" not in summary and "group_level" not in summary["pooled"]
    assert "group_accuracy" not in next(csv.reader((out / "cv_summary.csv").open()))


def test_an_ensemble_evaluation_gives_the_group_level_too(trained_run, tmp_path):
    from medscope.workflows.ensemble import evaluate_ensemble

    first = _grouped_copy(trained_run, tmp_path)
    second = tmp_path / "second"
    shutil.copytree(first.root, second)
    metrics = evaluate_ensemble([first.root, second], tmp_path / "ens", progress=False)
    block = metrics["group_level"]
    test, _, _ = run_split(first, Predictor.load(first.root).classes, "test")
    assert block["n_groups"] == len({s.group for s in test}) and block["unit"] == "group"
    assert block["selective"]["fitted_on"] == "validation"
