"""The report's figures per micrograph beside the per-image ones, and the whole micrographs the
demo diagnoses (``RUN/diagnosis/``) with their heat maps and verdicts."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from medscope.evaluate.groups import group_level_metrics
from medscope.report.html import MAX_HEATMAPS, render_report
from medscope.run import RunDir


def _group_block(classes):
    """Four micrographs a class, three patches each, one micrograph of the first class wrong."""
    probs, labels, groups = [], [], []
    for c in range(len(classes)):
        for g in range(4):
            p = np.full(len(classes), 0.1)
            p[(c + 1) % len(classes) if (c, g) == (0, 0) else c] = 0.8
            probs += [p / p.sum()] * 3
            labels += [c] * 3
            groups += [f"{c}-{g}"] * 3
    return group_level_metrics(np.array(probs), labels, groups, classes, unit="micrograph",
                               n_resamples=100, refer_threshold=0.5,
                               refer_fitted_on="validation", target_accuracy=0.95)


def write_diagnosis(folder, classes, n: int = 8) -> None:
    """What the demo leaves in RUN/diagnosis/: summary.json and a heat map per micrograph."""
    folder.mkdir()
    images = []
    for i in range(n):
        label, prediction = classes[i % len(classes)], classes[(i + (i == 3)) % len(classes)]
        name = f"micrograph_{i}.png"
        heat = np.zeros((60, 90, 3), np.uint8)
        heat[..., 0] = np.linspace(0, 255, 90)[None, :]
        heat[..., 2] = 30 * i
        Image.fromarray(heat).save(folder / f"{name}.heatmap.png")
        images.append({"file": f"slides/{name}", "label": label, "prediction": prediction,
                       "probability": 0.9 - 0.05 * i,
                       "refer_to_expert": "yes" if i == 5 else "no",
                       "refer_reason": "low confidence" if i == 5 else "",
                       "heatmap": f"{name}.heatmap.png"})
    (folder / "summary.json").write_text(json.dumps(
        {"unit": "micrograph", "n": n, "accuracy": (n - 1) / n, "images": images}))


def grouped_report(trained_run, tmp_path) -> RunDir:
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained_run.root, run.root)
    metrics = json.loads(run.metrics.read_text())
    classes = list(metrics["per_class"])
    metrics["group_level"] = _group_block(classes)
    run.metrics.write_text(json.dumps(metrics))
    write_diagnosis(run.root / "diagnosis", classes)
    render_report(run)
    return run


def test_report_shows_the_group_table_beside_the_per_image_one(trained_run, tmp_path):
    run = grouped_report(trained_run, tmp_path)
    page = run.report.read_text()
    assert "<h2>Per micrograph</h2>" in page
    assert "<th>per image</th><th>per micrograph</th>" in page
    block = json.loads(run.metrics.read_text())["group_level"]
    assert f"{block['accuracy']:.3f} (95% CI" in page and "12 micrographs" in page
    assert "below 0.500 (chosen for 95.0% accuracy on validation micrographs)" in page


def test_report_shows_whole_micrographs_with_at_most_six_heat_maps(trained_run, tmp_path):
    page = grouped_report(trained_run, tmp_path).report.read_text()
    assert "<h2>Whole micrographs</h2>" in page and "accuracy 0.875" in page
    section = page.split("<h2>Whole micrographs</h2>")[1].split("<h2>")[0]
    assert section.count("<figure>") == MAX_HEATMAPS
    # the mistake and the referral come first, each with its verdict
    assert section.index("micrograph_3.png") < section.index("micrograph_0.png")
    assert "wrong" in section and "refer: low confidence" in section


def test_report_without_groups_or_diagnosis_has_neither_section(trained_run, tmp_path):
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained_run.root, run.root)
    (run.root / "diagnosis").mkdir()
    (run.root / "diagnosis" / "summary.json").write_text('{"images": []}')  # no heat map
    page = render_report(run).read_text()
    assert "Per micrograph" not in page and "Whole micrographs" not in page
