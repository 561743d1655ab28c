"""``medscope predict``: top-k, abstention, TTA, the ONNX backend, CV ensembles, bad files."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from medscope.cli import main
from medscope.predict import collect_images, predict_files
from medscope.predictor import dihedral_views


def _read(path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def _probs(rows, classes=("alpha", "beta", "gamma")) -> np.ndarray:
    return np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows if not r["error"]])


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A writable copy of the shared run (exports and metadata edits go here)."""
    return shutil.copytree(trained_run.root, tmp_path / "run")


@pytest.fixture
def inputs(image_folder, tmp_path):
    bad = tmp_path / "in" / "truncated.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return [image_folder / "alpha", bad, image_folder / "gamma" / "gamma_000.png"]


def test_top_k_abstention_and_bad_files_in_the_csv(trained_run, inputs, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    rc = main(["predict", str(trained_run.root), *map(str, inputs), "--out", str(out), "-q",
               "--top-k", "2", "--abstain-below", "0.9", "--batch-size", "5"])
    assert rc == 0 and "wrote 14 predictions" in capsys.readouterr().out
    rows = _read(out)
    assert list(rows[0]) == ["file", "prediction", "probability", "top_k", "refer_to_expert",
                             "refer_reason", "p_alpha", "p_beta", "p_gamma", "error"]
    assert [r["file"] for r in rows][-2:] == [str(inputs[1]), str(inputs[2])]  # input order
    bad = rows[-2]
    assert bad["error"] and not bad["prediction"] and not bad["p_alpha"]
    good = [r for r in rows if not r["error"]]
    assert len(good) == 13
    for r in good:
        (c1, p1), (c2, p2) = (item.split(":") for item in r["top_k"].split("|"))
        assert c1 == r["prediction"] and c2 != c1 and float(p1) >= float(p2)
        assert float(r[f"p_{c2}"]) == pytest.approx(float(p2), abs=1e-4)
        assert r["refer_to_expert"] == ("yes" if float(r["probability"]) < 0.9 else "no")
    assert np.allclose(_probs(rows).sum(1), 1, atol=1e-4)


def test_tta_is_invariant_to_rotating_and_mirroring_the_image(trained_run, image_folder,
                                                              tmp_path):
    src = image_folder / "alpha" / "alpha_003.png"
    img = np.asarray(Image.open(src))[:32, :32]  # at model size: no resampling in between
    folder = tmp_path / "views"
    folder.mkdir()
    for k, view in enumerate([img, np.rot90(img), img[:, ::-1], np.rot90(img, 3)[::-1]]):
        Image.fromarray(np.ascontiguousarray(view)).save(folder / f"v{k}.png")
    plain = _probs(predict_files(trained_run.root, [folder], progress=False, precision="fp32"))
    tta = _probs(predict_files(trained_run.root, [folder], progress=False, precision="fp32",
                               tta=True))
    # The tiny 2-epoch model is nearly uniform (probabilities ~1/3), so its own differences
    # between views are small in absolute terms; TTA's must be float noise, 50x below them.
    assert np.abs(tta - tta[0]).max() < 1e-6
    assert np.abs(plain - plain[0]).max() > 5e-5  # the model alone is not invariant


def test_dihedral_views_are_the_eight_symmetries():
    img = np.arange(2 * 3 * 3 * 1, dtype=np.uint8).reshape(2, 3, 3, 1)
    views = dihedral_views(img)
    assert len(views) == 8 and len({v.tobytes() for v in views}) == 8
    assert all(v.flags.c_contiguous and v.shape == img.shape for v in views)


@pytest.mark.slow
def test_onnx_backend_exports_once_and_agrees_with_torch(run_copy, image_folder, tmp_path):
    folder = image_folder / "beta"
    ref = _probs(predict_files(run_copy, [folder], progress=False, precision="fp32"))
    rc = main(["predict", str(run_copy), str(folder), "--backend", "onnx", "-q",
               "--out", str(tmp_path / "onnx.csv")])
    assert rc == 0 and (run_copy / "onnx" / "model.onnx").is_file()
    assert np.abs(_probs(_read(tmp_path / "onnx.csv")) - ref).max() < 1e-4
    stamp = (run_copy / "onnx" / "model.onnx").stat().st_mtime_ns
    # An export folder is itself a model source; the run's export is re-used, not redone.
    direct = _probs(predict_files(run_copy / "onnx" / "model.onnx", [folder], progress=False))
    again = _probs(predict_files(run_copy, [folder], progress=False, backend="onnx"))
    assert (run_copy / "onnx" / "model.onnx").stat().st_mtime_ns == stamp
    assert np.abs(direct - ref).max() < 1e-4 and np.abs(again - ref).max() < 1e-4


def test_stored_selective_threshold_is_the_default(run_copy, image_folder):
    meta_path = run_copy / "checkpoints" / "best.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "selective_threshold": 0.999}))
    rows = predict_files(run_copy, [image_folder / "gamma"], progress=False)
    assert {r["refer_to_expert"] for r in rows} <= {"yes", "no"}
    assert all(r["refer_to_expert"] == ("yes" if r["probability"] < 0.999 else "no")
               for r in rows)
    off = predict_files(run_copy, [image_folder / "gamma"], progress=False, abstain_below=0)
    # Confidence no longer refers; only the out-of-distribution check may, saying so.
    assert all((r["refer_to_expert"], r["refer_reason"]) in
               {("", ""), ("yes", "unlike the training images")} for r in off)


@pytest.fixture(scope="module")
def second_run(image_folder, tmp_path_factory):
    from medscope.api import train
    from tests.conftest import tiny_config

    return train(tiny_config(image_folder, tmp_path_factory.mktemp("runs2") / "seed1",
                             **{"train.seed": 1}), progress=False)


def test_ensemble_averages_the_fold_models(trained_run, second_run, image_folder, tmp_path):
    cv = tmp_path / "cv"
    shutil.copytree(trained_run.root, cv / "fold_1")
    shutil.copytree(second_run.root, cv / "fold_2")
    folder = image_folder / "alpha"
    one = _probs(predict_files(cv / "fold_1", [folder], progress=False, precision="fp32"))
    two = _probs(predict_files(cv / "fold_2", [folder], progress=False, precision="fp32"))
    assert np.abs(one - two).max() > 1e-3
    out = tmp_path / "ens.csv"
    rc = main(["predict", str(cv), str(folder), "--ensemble", "--precision", "fp32", "-q",
               "--out", str(out)])
    assert rc == 0
    assert np.abs(_probs(_read(out)) - (one + two) / 2).max() < 1e-5


def test_cv_dir_lists_its_folds_in_numeric_order(tmp_path):
    from medscope.predict import fold_dirs
    from medscope.run import CvDir

    cv = CvDir(tmp_path / "cv")
    for name in ("fold_10", "fold_2", "fold_1", "fold_x", "notes"):
        (cv.root / name).mkdir(parents=True)
    (cv.root / "fold_3").write_text("a file, not a fold")
    assert [f.root.name for f in cv.folds()] == ["fold_1", "fold_2", "fold_10"]
    assert fold_dirs(cv.root) == [f.root for f in cv.folds()]
    assert cv.fold(2).metrics == cv.root / "fold_2" / "metrics.json"
    assert cv.fold_split(2) == cv.root / "splits" / "fold_2.csv"
    assert (cv.summary.name, cv.oof_predictions.name) == ("cv_summary.json",
                                                          "oof_predictions.csv")
    assert not cv.is_cv() and cv.finished_folds() == []


def test_ensemble_mistakes_are_one_line(trained_run, image_folder, tmp_path, capsys):
    cv = tmp_path / "cv"
    cv.mkdir()
    rc = main(["predict", str(cv), str(image_folder), "--ensemble", "-q"])
    assert rc == 2 and "no fold_*/ run directories" in capsys.readouterr().err
    shutil.copytree(trained_run.root, cv / "fold_1")
    shutil.copytree(trained_run.root, cv / "fold_2")
    meta_path = cv / "fold_2" / "checkpoints" / "best.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "classes": ["a", "b", "c"]}))
    rc = main(["predict", str(cv), str(image_folder), "--ensemble", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "fold_2: classes" in err and "cannot ensemble" in err


@pytest.mark.parametrize("exported_before", [False, True])
@pytest.mark.slow
def test_both_backends_apply_the_checkpoint_temperature(run_copy, image_folder, exported_before):
    from medscope.data.io import read_image
    from medscope.predictor import Predictor

    if exported_before:  # an export of the same weights under the old temperature is redone
        predict_files(run_copy, [image_folder / "beta"], progress=False, backend="onnx")
        assert json.loads((run_copy / "onnx" / "model.json").read_text())["temperature"] != 3.0
    meta_path = run_copy / "checkpoints" / "best.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "temperature": 3.0}))
    files = sorted((image_folder / "beta").glob("*.png"))[:4]
    logits = Predictor.load(run_copy, precision="fp32", device="cpu").logits_from_pixels(
        np.stack([read_image(f, 32, 3) for f in files]))
    expected = np.exp(logits / 3) / np.exp(logits / 3).sum(1, keepdims=True)
    for backend in ("torch", "onnx"):
        got = _probs(predict_files(run_copy, files, progress=False, precision="fp32",
                                   backend=backend))
        assert np.abs(got - expected).max() < 1e-5, backend
    assert json.loads((run_copy / "onnx" / "model.json").read_text())["temperature"] == 3.0


def test_folders_are_searched_for_slides_too(tmp_path):
    for name in ("b/s1.svs", "a/s2.NDPI", "a/m.png", "a/notes.txt", "a/.hidden.svs"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert collect_images([tmp_path]) == [tmp_path / "a" / "m.png", tmp_path / "a" / "s2.NDPI",
                                          tmp_path / "b" / "s1.svs"]
