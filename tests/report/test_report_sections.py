"""The run report shows what data.duplicates found next to the counts, and Grad-CAM on the
model's most confident mistakes."""

from __future__ import annotations

import json
import shutil

import pytest

from medscope.api import train
from tests.conftest import make_image_folder, tiny_config


@pytest.fixture(scope="module")
def leaky_run(tmp_path_factory):
    """Pre-split data (train/ and test/ folders) where one test image is a copy of a training
    image: the report must call the test figure optimistic."""
    root = tmp_path_factory.mktemp("leaky") / "data"
    make_image_folder(root / "train", per_class=8, size=24)
    make_image_folder(root / "test", per_class=3, size=24, seed=1)
    shutil.copy(root / "train" / "beta" / "beta_002.png", root / "test" / "beta" / "leak.png")
    out = tmp_path_factory.mktemp("runs") / "leaky"
    return train(tiny_config(root, out, **{"train.epochs": 1}), progress=False)


def test_run_dir_records_what_duplicates_found(leaky_run):
    found = json.loads(leaky_run.duplicates.read_text())
    assert found["mode"] == "group" and found["test_leaks"] == 1 and found["groups"] == 1


def test_report_says_the_test_figure_is_optimistic(leaky_run):
    page = leaky_run.report.read_text()
    assert "1 test image(s) have a byte-identical copy" in page
    assert "optimistic" in page


def test_report_without_duplicates_has_no_duplicates_note(trained_run):
    assert json.loads(trained_run.duplicates.read_text())["groups"] == 0
    assert "Duplicates (data.duplicates" not in trained_run.report.read_text()


def test_report_shows_gradcam_of_the_most_confident_mistakes(trained_run):
    assert trained_run.gradcam_mistakes.is_file()
    assert trained_run.gradcam_mistakes.stat().st_size > 1000
    page = trained_run.report.read_text()
    assert "Grad-CAM on its most confident mistakes" in page
    assert page.count("data:image/png;base64,") >= 5
