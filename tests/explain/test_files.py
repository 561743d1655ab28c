"""``medscope explain`` on files and folders, and the report's Grad-CAM grid of mistakes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medscope.cli import main
from medscope.explain import report_gradcam
from medscope.explain.files import overlay_names
from medscope.predictor import Predictor
from tests.test_diagnosis import scaled_run  # noqa: F401 (a fixture)


@pytest.fixture
def inputs(image_folder, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    return [image_folder / "alpha" / "alpha_000.png", image_folder / "beta", bad]


def test_explain_writes_an_overlay_per_image_and_lists_bad_files(trained_run, inputs, tmp_path,
                                                                  capsys):
    out = tmp_path / "cams"
    rc = main(["explain", str(trained_run.root), *map(str, inputs), "--out", str(out), "-q",
               "--method", "gradcam++", "--target", "gamma"])
    assert rc == 0 and "wrote 13 gradcam++ overlays" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "explanations.csv").open()))
    assert len(rows) == 14
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["file"].endswith("broken.png") and not bad[0]["overlay"]
    good = [r for r in rows if not r["error"]]
    assert {r["target"] for r in good} == {"gamma"}
    assert all(r["prediction"] in ("alpha", "beta", "gamma") for r in good)
    assert all(0 <= float(r["probability"]) <= 1 for r in good)
    first = Image.open(out / "alpha_000_gradcam++.png")
    assert first.size == (32, 32) and first.mode == "RGB"
    assert len(list(out.glob("*.png"))) == 13


def test_explain_unknown_class_or_layer_is_one_line(trained_run, inputs, tmp_path, capsys):
    out = tmp_path / "cams"
    rc = main(["explain", str(trained_run.root), str(inputs[0]), "--out", str(out), "-q",
               "--target", "delta"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown class 'delta'" in err and "alpha, beta, gamma" in err
    rc = main(["explain", str(trained_run.root), str(inputs[0]), "--out", str(out), "-q",
               "--layer", "features.99"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown layer 'features.99'" in err and "head" in err
    assert not out.exists()  # nothing half-written


def test_overlay_names_keep_same_stems_apart(tmp_path):
    paths = [tmp_path / "a" / "img.png", tmp_path / "b" / "img.png", tmp_path / "c.jpg"]
    assert overlay_names(paths, "gradcam") == ["img_gradcam.png", "img-2_gradcam.png",
                                               "c_gradcam.png"]


def test_report_gradcam_shows_the_most_confident_mistakes(trained_run, tmp_path, monkeypatch):
    import medscope.report.plots as plots

    predictor = Predictor.load(trained_run.root, precision="fp32", device="cpu")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    probs = np.full((10, 3), 0.1)
    probs[np.arange(10), labels] = 0.8
    probs[3] = [0.05, 0.9, 0.05]  # mistake, most confident
    probs[7] = [0.6, 0.3, 0.1]  # mistake, less confident
    seen = {}
    real = plots.plot_examples

    def spy(images, titles, path, cols=8, wrong=None):
        seen.update(images=images, titles=titles, wrong=wrong)
        real(images, titles, path, cols=cols, wrong=wrong)

    monkeypatch.setattr(plots, "plot_examples", spy)
    path = report_gradcam(predictor, pixels, labels, probs, predictor.classes,
                          tmp_path / "gradcam.png", n=8)
    assert path.is_file() and Image.open(path).format == "PNG"
    assert seen["titles"] == ["alpha → beta 0.90", "beta → alpha 0.60"]
    assert seen["wrong"] == [True, True] and seen["images"].shape == (2, 32, 32, 3)
    assert report_gradcam(predictor, pixels[:0], labels[:0], probs[:0], predictor.classes,
                          tmp_path / "none.png") is None


def test_explain_tiles_a_large_image_instead_of_squashing_it(scaled_run, image_folder,  # noqa: F811
                                                             tmp_path, capsys):
    tiles = [np.asarray(Image.open(p).convert("RGB"))
             for p in sorted((image_folder / "beta").glob("*.png"))[:6]]
    wide = tmp_path / "wide.png"  # 120 x 80 px: six tiles of the run's 40 px training scale
    Image.fromarray(np.vstack([np.hstack(tiles[:3]), np.hstack(tiles[3:])])).save(wide)
    small = image_folder / "alpha" / "alpha_000.png"  # one tile's size: explained whole
    out = tmp_path / "cams"
    assert main(["explain", str(scaled_run), str(wide), str(small), "--out", str(out), "-q",
                 "--explain-tiles", "3"]) == 0
    assert "wrote 4 gradcam overlays" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "explanations.csv").open()))
    assert [Path(r["file"]).name for r in rows] == ["alpha_000.png"] + ["wide.png"] * 3
    assert len({r["overlay"] for r in rows[1:]}) == 3
    for r in rows[1:]:
        assert r["overlay"].startswith("wide.tile_x") and r["target"] == r["prediction"]
        with Image.open(out / r["overlay"]) as img:
            assert img.size == (40, 40)
    with Image.open(out / "alpha_000_gradcam.png") as img:
        assert img.size == (32, 32)  # the model's input, as before
