"""Refer what the model has never seen: blank and degenerate images, and the OOD check fitted
at training, through ``predict``."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from medscope.core.checkpoint import read_meta, write_meta
from medscope.novelty import BLANK, DEGENERATE, UNLIKE_TRAINING, file_problem, image_problem
from medscope.predict import predict_files
from medscope.run import RunDir


def test_blank_and_degenerate_images(tmp_path):
    Image.new("RGB", (300, 200)).save(tmp_path / "black.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "dot.png")
    Image.new("RGB", (20000, 1), (90, 90, 90)).save(tmp_path / "strip.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    assert file_problem(tmp_path / "black.png") == BLANK
    assert file_problem(tmp_path / "dot.png") == DEGENERATE
    assert file_problem(tmp_path / "strip.png") == DEGENERATE
    assert file_problem(tmp_path / "ok.png") is None
    # A long but ordinary image is not degenerate however small its thumbnail's short side.
    Image.fromarray(rng.integers(0, 255, (60, 1000, 3), dtype=np.uint8)).save(tmp_path / "w.png")
    assert file_problem(tmp_path / "w.png") is None
    assert image_problem(np.full((50, 50, 3), 7, np.uint8)) == BLANK


def test_the_trained_run_carries_an_ood_check(trained_run):
    ood = read_meta(trained_run.best).ood
    assert ood is not None and ood["method"] == "mahalanobis"
    assert ood["flag_rate"] == pytest.approx(0.05) and np.isfinite(ood["threshold"])


@pytest.fixture
def run_copy(trained_run, tmp_path):
    return shutil.copytree(trained_run.root, tmp_path / "run")


def _with_threshold(run_root, threshold: float) -> None:
    best = RunDir(run_root).best
    meta = read_meta(best)
    write_meta(best, meta.model_copy(update={"ood": {**meta.ood, "threshold": threshold}}))


def test_predict_refers_unusual_and_blank_images(run_copy, image_folder, tmp_path):
    Image.new("RGB", (40, 40)).save(tmp_path / "black.png")
    inputs = [image_folder / "alpha", tmp_path / "black.png"]
    _with_threshold(run_copy, 1e30)  # nothing is unusual
    rows = predict_files(run_copy, inputs, precision="fp32", progress=False,
                         abstain_below=0)
    black, others = rows[-1], rows[:-1]
    assert (black["prediction"], black["refer_to_expert"], black["refer_reason"]) == \
        ("", "yes", BLANK)
    assert {r["refer_reason"] for r in others} == {""} and all(r["prediction"] for r in others)
    _with_threshold(run_copy, -1e30)  # everything is unusual
    rows = predict_files(run_copy, inputs[:1], precision="fp32", progress=False)
    assert {(r["refer_to_expert"], r["refer_reason"]) for r in rows} == \
        {("yes", UNLIKE_TRAINING)}
    assert all(r["prediction"] for r in rows)  # the call is still shown, with the warning


def test_the_trained_run_records_its_scale(trained_run):
    scale = read_meta(trained_run.best).scale
    assert scale == {"tile_px": 40, "source_px": 40, "origin": "image sizes"}
