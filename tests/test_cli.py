"""Every user mistake: one line on stderr naming the path or name, exit code 2, no traceback."""

import json
import subprocess
import sys

import pytest

from medscope.cli import main
from tests.conftest import make_image_folder


def _run(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture
def folders(tmp_path):
    good = make_image_folder(tmp_path / "good", per_class=4, size=24)
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    empty = make_image_folder(tmp_path / "emptycls", per_class=4, size=24)
    (empty / "zzz").mkdir()
    bad = make_image_folder(tmp_path / "bad", per_class=4, size=24)
    (bad / "beta" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n oops")
    return {"good": good, "one": one, "empty": empty, "bad": bad, "tmp": tmp_path}


def _train(data, out, *extra):
    return ["train", "-q", "--data", str(data), "--out", str(out), "--img-size", "16",
            "--epochs", "1", "--batch-size", "4", *extra]


@pytest.mark.parametrize("case, message", [
    ("missing", "data directory not found"),
    ("one", "need at least 2"),
    ("empty", "zzz: class folder holds no images"),
    ("bad_strict", "cut.png: not a readable image"),
    ("unknown_model", "unknown model 'resnet9000'"),
])
def test_bad_input_gives_one_line_and_exit_2(folders, capsys, case, message):
    out = folders["tmp"] / f"run-{case}"
    args = {
        "missing": _train(folders["tmp"] / "nowhere", out),
        "one": _train(folders["one"], out),
        "empty": _train(folders["empty"], out),
        "bad_strict": _train(folders["bad"], out, "--strict"),
        "unknown_model": _train(folders["good"], out, "--model", "resnet9000"),
    }[case]
    code, err = _run(args, capsys)
    assert code == 2
    assert message in err
    assert err.startswith("medscope: error: ") and "\n" not in err and "Traceback" not in err


def test_finished_run_dir_is_refused(trained_run, image_folder, capsys):
    code, err = _run(_train(image_folder, trained_run.root), capsys)
    assert code == 2 and "already holds a finished run" in err and str(trained_run.root) in err


def test_bad_image_is_skipped_and_listed_without_strict(folders, capsys):
    # 1 bad of 13 images is over the default 5% limit; allow it to see the skip path.
    out = folders["tmp"] / "run-skip"
    code, _ = _run(_train(folders["bad"], out, "--set", "data.max_bad_fraction=0.2",
                          "--set", "data.val_fraction=0.25", "--set", "data.test_fraction=0.25"),
                   capsys)
    assert code == 0
    assert "cut.png" in (out / "bad_files.csv").read_text()


def test_evaluate_and_predict_on_missing_things(tmp_path, capsys):
    code, err = _run(["evaluate", str(tmp_path / "norun")], capsys)
    assert code == 2 and "norun: run directory not found" in err
    code, err = _run(["predict", str(tmp_path / "norun"), str(tmp_path)], capsys)
    assert code == 2 and "norun" in err


def test_module_entry_point_and_help():
    out = subprocess.run([sys.executable, "-m", "medscope", "train", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--img-size" in out and "--resume" in out


def test_config_error_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  epochz: 3\n")
    code, err = _run(["train", "--config", str(recipe)], capsys)
    assert code == 2 and "r.yaml" in err and "epochz" in err


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline_and_refuses_to_overwrite(tmp_path, capsys):
    # The real demo, shrunk: 4 slides per class, 1 epoch at 32 px.
    out = tmp_path / "demo"
    args = ["demo", "-q", "--out", str(out), "--per-class", "4", "--epochs", "1",
            "--img-size", "32"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "demo finished in" in printed and str(out / "run" / "report.html") in printed
    assert len(list((out / "slides").rglob("*.jpg"))) == 20
    manifest = (out / "patches" / "patches.csv").read_text().splitlines()
    assert len(manifest) - 1 == 20 * 9  # 1000 px slides, 500 px patches, stride 250
    for name in ("report.html", "metrics.json", "splits.csv", "config.yaml"):
        assert (out / "run" / name).is_file(), name
    assert (out / ".medscope-demo").is_file()  # what lets --force replace it later
    # It ends by diagnosing the test micrographs whole (tiled), not their patches.
    assert "micrograph-level accuracy" in printed
    summary = json.loads((out / "run" / "diagnosis" / "summary.json").read_text())
    assert summary["unit"] == "micrograph" and 1 <= summary["n"] <= 20
    assert 0.0 <= summary["accuracy"] <= 1.0 and 0 <= summary["referred"] <= summary["n"]
    assert len(summary["images"]) == summary["n"]
    diagnosis = out / "run" / "diagnosis"  # paths in summary.json are relative to it
    for image in summary["images"]:
        assert (diagnosis / image["file"]).is_file() and "/slides/" in image["file"]
        assert image["label"] in {p.name for p in (out / "slides").iterdir() if p.is_dir()}
        assert image["heatmap"] is None or (diagnosis / image["heatmap"]).is_file()
    assert any(image["heatmap"] for image in summary["images"])  # 1000 px slides are tiled
    assert "Whole micrographs" in (out / "run" / "report.html").read_text()
    code, err = _run(args, capsys)
    assert code == 2 and str(out) in err and "--force" in err


@pytest.mark.parametrize("extra, message", [
    (["--per-class", "0"], "--per-class 0: must be at least 1"),
    (["--epochs", "0"], "train.epochs"),
    (["--img-size", "4"], "data.img_size"),
])
def test_demo_checks_its_arguments_before_writing_anything(tmp_path, capsys, extra, message):
    out = tmp_path / "demo"
    code, err = _run(["demo", "-q", "--out", str(out), *extra], capsys)
    assert code == 2 and message in err and "\n" not in err
    assert not out.exists()


def test_demo_force_never_deletes_a_folder_it_did_not_make(tmp_path, capsys):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    code, err = _run(["demo", "-q", "--out", str(precious), "--force"], capsys)
    assert code == 2 and "not an earlier medscope demo" in err
    assert (precious / "chapter1.tex").read_text() == "years of work"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    code, err = _run(["demo", "-q", "--out", str(a_file), "--force"], capsys)
    assert code == 2 and "is not a directory" in err and a_file.read_text() == "x"
