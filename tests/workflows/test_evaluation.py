"""evaluate_run: --target-accuracy re-fits the refer-to-expert threshold on the validation split,
and every evaluated image gets a row in predictions.csv."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medscope.cli import main
from medscope.data.prepare import labels_of, read_splits, run_split
from medscope.evaluate.calibration import threshold_for_accuracy
from medscope.predictor import Predictor
from medscope.run import RunDir, atomic_write_csv


def test_target_accuracy_refits_the_threshold_on_validation(trained_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(trained_run.root), "--out", str(out), "-q",
                 "--target-accuracy", "0.6"]) == 0
    selective = json.loads((out / "metrics.json").read_text())["selective"]
    assert selective["target_accuracy"] == 0.6 and selective["fitted_on"] == "validation"
    predictor = Predictor.load(trained_run.root)
    samples, _, _ = run_split(trained_run, predictor.classes, "val")
    decoded = predictor.decode(samples, progress=False)
    expected = threshold_for_accuracy(predictor.probs_from_pixels(decoded.pixels),
                                      labels_of(samples), 0.6)
    assert selective["threshold"] == pytest.approx(expected)
    stored = json.loads(trained_run.best.with_suffix(".json").read_text())
    assert stored["target_accuracy"] != 0.6  # the checkpoint is left as training fitted it


@pytest.mark.parametrize("bad", ["1.5", "0"])
def test_target_accuracy_out_of_range_is_one_line(trained_run, tmp_path, capsys, bad):
    code = main(["evaluate", str(trained_run.root), "--out", str(tmp_path), "-q",
                 "--target-accuracy", bad])
    err = capsys.readouterr().err
    assert code == 2 and f"--target-accuracy {float(bad)}" in err and "Traceback" not in err


def test_predictions_csv_has_a_row_per_evaluated_image(trained_run):
    rows = list(csv.DictReader((trained_run.root / "predictions.csv").open()))
    metrics = json.loads(trained_run.metrics.read_text())
    assert len(rows) == metrics["n"]
    classes = [c for c in rows[0] if c.startswith("p_")]
    probs = np.array([[float(r[c]) for c in classes] for r in rows])
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
    predicted = [r["predicted"] for r in rows]
    assert predicted == [classes[i][2:] for i in probs.argmax(1)]
    accuracy = np.mean([r["predicted"] == r["label"] for r in rows])
    assert accuracy == pytest.approx(metrics["accuracy"])
    # Referral as predict and serve decide it: the checkpoint's validated threshold, else none.
    stored = json.loads(trained_run.best.with_suffix(".json").read_text()).get(
        "selective_threshold")
    # An image unlike the training images (the OOD check) is referred whatever its confidence.
    unusual = [r["refer_reason"] == "unlike the training images" for r in rows]
    flags = [r["refer_to_expert"] for r in rows]
    if stored is None:
        assert flags == ["yes" if u else "" for u in unusual]
    else:
        assert flags == ["yes" if u or p < stored else "no"
                         for u, p in zip(unusual, probs.max(1), strict=True)]
    assert metrics["unlike_training_share"] == pytest.approx(np.mean(unusual))


def test_tta_evaluation_averages_the_views_logits_beside_the_runs_own_metrics(trained_run,
                                                                             tmp_path):
    import shutil

    from medscope.predictor import dihedral_views

    run = tmp_path / "run"
    shutil.copytree(trained_run.root, run)
    own = (run / "metrics.json").read_bytes()
    assert main(["evaluate", str(run), "--tta", "--precision", "fp32", "-q"]) == 0
    assert (run / "metrics.json").read_bytes() == own  # the run's own figures stay
    metrics = json.loads((run / "eval-tta" / "metrics.json").read_text())
    assert metrics["tta"] is True and metrics["data"].startswith("test split")

    predictor = Predictor.load(run, precision="fp32")
    samples, _, _ = run_split(trained_run, predictor.classes, "test")
    pixels = predictor.decode(samples, progress=False).pixels
    logits = np.mean([predictor.logits_from_pixels(v) for v in dihedral_views(pixels)], axis=0)
    expected = predictor.probs_from_logits(logits)
    rows = list(csv.DictReader((run / "eval-tta" / "predictions.csv").open()))
    got = np.array([[float(r[f"p_{c}"]) for c in predictor.classes] for r in rows])
    # predictions.csv has 6 decimals; the tiny model's views differ by ~1e-5..1e-4, so the
    # tolerance tells averaged views from a single one
    assert got.shape == expected.shape and np.abs(got - expected).max() < 3e-6
    assert np.abs(predictor.probs_from_pixels(pixels) - expected).max() > 1e-5
    assert metrics["accuracy"] == pytest.approx(
        np.mean(expected.argmax(1) == np.asarray(labels_of(samples))))


def test_a_later_evaluation_resamples_the_groups_training_recorded(trained_run, tmp_path):
    """Groups found at training time (e.g. byte-identical copies) live only in splits.csv; a
    re-evaluation must bootstrap them together too, not image by image."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run.root, run)
    rows = read_splits(run / "splits.csv")
    test_rows = [r for r in rows if r["split"] == "test"]
    for i, r in enumerate(test_rows):
        r["group"] = f"dup:{i // 2}"  # pairs of test images, as copies would be
    atomic_write_csv(run / "splits.csv", list(rows[0]), [list(r.values()) for r in rows])

    predictor = Predictor.load(run)
    samples, split, _ = run_split(RunDir(run), predictor.classes)
    assert split == "test" and len(samples) == len(test_rows)
    assert sorted(s.group for s in samples) == sorted(r["group"] for r in test_rows)
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--out", str(out), "-q"]) == 0
    assert json.loads((out / "metrics.json").read_text())["ci"]["grouped"] is True


@pytest.mark.parametrize("named_like_training", [True, False])
def test_another_folder_is_grouped_by_the_runs_group_pattern_when_its_names_follow_it(
        trained_run, tmp_path, capsys, named_like_training):
    """``evaluate RUN --data NEW``: patches of one micrograph in NEW are resampled together, as
    in the run's own evaluation; a folder named otherwise is evaluated image by image, said."""
    import shutil

    import yaml

    from tests.conftest import make_image_folder

    run = tmp_path / "run"
    shutil.copytree(trained_run.root, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["group_pattern"] = r"([^/]+)_\d+\.png$"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    new = make_image_folder(tmp_path / "new", per_class=6, seed=3)
    for folder in (p for p in new.iterdir() if p.is_dir()):
        for i, f in enumerate(sorted(folder.glob("*.png"))):
            name = f"{folder.name}{i // 3}_{i % 3}" if named_like_training else f"cell{i}"
            f.rename(folder / f"{name}.png")
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--data", str(new), "--out", str(out), "-q"]) == 0
    assert json.loads((out / "metrics.json").read_text())["ci"]["grouped"] is named_like_training
    err = capsys.readouterr().err
    assert ("group_pattern" in err and "matches none" in err) is not named_like_training
