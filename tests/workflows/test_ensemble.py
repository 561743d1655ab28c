"""``medscope evaluate RUN RUN ...``: several runs (even of different image sizes) scored as the
average of their calibrated probabilities on the test split they share."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medscope.api import evaluate
from medscope.cli import main


@pytest.fixture(scope="module")
def smaller_run(image_folder, tmp_path_factory):
    """Another architecture at another size, on the same split as ``trained_run``."""
    from medscope.api import train
    from tests.conftest import tiny_config

    config = tiny_config(image_folder, tmp_path_factory.mktemp("runs") / "r40",
                         **{"data.img_size": 40, "model.name": "lenet5", "train.seed": 1,
                            "data.split_seed": 0})
    return train(config, progress=False)


def _probs(path) -> dict[str, np.ndarray]:
    rows = list(csv.DictReader(path.open()))
    return {r["path"]: np.array([float(v) for k, v in r.items() if k.startswith("p_")])
            for r in rows}


def test_the_ensemble_averages_its_members_on_their_shared_test_split(
        trained_run, smaller_run, tmp_path, capsys):
    singles = [evaluate(r.root, out=tmp_path / r.root.name, progress=False, precision="fp32")
               for r in (trained_run, smaller_run)]
    out = tmp_path / "ensemble"
    rc = main(["evaluate", str(trained_run.root), str(smaller_run.root), "--out", str(out),
               "--precision", "fp32", "-q"])
    printed = capsys.readouterr().out
    assert rc == 0 and "ensemble of 2: accuracy" in printed and "95% CI" in printed
    one, two = (_probs(tmp_path / r.root.name / "predictions.csv")
                for r in (trained_run, smaller_run))
    both = _probs(out / "predictions.csv")
    assert set(both) == set(one) == set(two) and len(both) == singles[0]["n"]
    assert max(np.abs(one[k] - two[k]).max() for k in both) > 1e-3  # the members differ
    for k, p in both.items():
        assert np.allclose(p, (one[k] + two[k]) / 2, atol=2e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    members = metrics["ensemble"]["members"]
    assert [m["accuracy"] for m in members] == pytest.approx([s["accuracy"] for s in singles])
    assert metrics["selective"]["fitted_on"] == "validation"
    assert metrics["ci"]["accuracy"]["low"] <= metrics["accuracy"] <= \
        metrics["ci"]["accuracy"]["high"]
    assert (out / "confusion_matrix.png").is_file()


def test_runs_with_different_test_splits_are_refused_in_one_line(
        trained_run, image_folder, tmp_path, capsys):
    from medscope.api import train
    from tests.conftest import tiny_config

    other = train(tiny_config(image_folder, tmp_path / "other", **{"train.seed": 7}),
                  progress=False)
    out = tmp_path / "ensemble"
    rc = main(["evaluate", str(trained_run.root), str(other.root), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and str(other.root) in err and "--data" in err and "Traceback" not in err
    assert not out.exists()
    # on a folder neither trained on... here the whole folder, which the CLI accepts as asked
    rc = main(["evaluate", str(trained_run.root), str(other.root), "--out", str(out), "-q",
               "--data", str(image_folder)])
    assert rc == 0 and json.loads((out / "metrics.json").read_text())["n"] == 36


def test_an_ensemble_needs_an_out_dir(trained_run, smaller_run, capsys):
    rc = main(["evaluate", str(trained_run.root), str(smaller_run.root), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "give --out" in err
    assert not (trained_run.root / "ensemble").exists()


def test_predict_with_averages_runs_of_different_sizes(trained_run, smaller_run, image_folder,
                                                       tmp_path):
    from medscope.predict import predict_files

    folder = image_folder / "beta"

    def probs(rows):
        return np.array([[r[f"p_{c}"] for c in ("alpha", "beta", "gamma")] for r in rows])

    one = probs(predict_files(trained_run.root, [folder], progress=False, precision="fp32"))
    two = probs(predict_files(smaller_run.root, [folder], progress=False, precision="fp32"))
    out = tmp_path / "both.csv"
    assert main(["predict", str(trained_run.root), str(folder), "--with", str(smaller_run.root),
                 "--precision", "fp32", "-q", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert np.abs(probs(rows).astype(float) - (one + two) / 2).max() < 2e-6


def test_members_that_group_differently_are_named_when_a_folder_is_given(
        trained_run, smaller_run, image_folder, tmp_path, capsys):
    import shutil

    import yaml

    regrouped = tmp_path / "regrouped"
    shutil.copytree(smaller_run.root, regrouped)
    config = yaml.safe_load((regrouped / "config.yaml").read_text())
    config["data"]["group_pattern"] = r"([^/]+)_\d+\.png$"
    (regrouped / "config.yaml").write_text(yaml.safe_dump(config))
    rc = main(["evaluate", str(trained_run.root), str(regrouped), "--out",
               str(tmp_path / "ensemble"), "-q", "--data", str(image_folder),
               "--precision", "fp32"])
    err = capsys.readouterr().err
    assert rc == 0
    (line,) = [ln for ln in err.splitlines() if "group images differently" in ln]
    assert str(regrouped) in line and "first member's data.group_pattern None" in line
    main(["evaluate", str(trained_run.root), str(smaller_run.root), "--out",
          str(tmp_path / "same"), "-q", "--data", str(image_folder), "--precision", "fp32"])
    assert "group images differently" not in capsys.readouterr().err
