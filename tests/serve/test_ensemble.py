"""``medscope serve ENSEMBLE_DIR``: the folder ``medscope evaluate RUN RUN --out DIR`` wrote is
served as one model, its members' calibrated probabilities averaged, each at its own size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medscope.data.io import read_image
from medscope.errors import MedscopeError
from medscope.serve import create_app, load_models


@pytest.fixture(scope="module")
def ensemble_dir(trained_run, image_folder, tmp_path_factory):
    from medscope.api import evaluate_ensemble, train
    from tests.conftest import tiny_config

    root = tmp_path_factory.mktemp("serve-ensemble")
    other = train(tiny_config(image_folder, root / "lenet40",
                              **{"data.img_size": 40, "model.name": "lenet5",
                                 "train.seed": 1, "data.split_seed": 0}), progress=False)
    out = root / "both"
    evaluate_ensemble([trained_run.root, other.root], out, progress=False, precision="fp32")
    return out


@pytest.fixture(scope="module")
def client(ensemble_dir):
    from fastapi.testclient import TestClient

    return TestClient(create_app(load_models([ensemble_dir])))


def test_the_ensemble_is_one_model_averaging_its_members(client, ensemble_dir, image_folder):
    sample = sorted((image_folder / "gamma").glob("*.png"))[0]
    body = client.post("/api/predict", files={"file": ("x.png", sample.read_bytes(),
                                                       "image/png")}).json()
    members = load_models([ensemble_dir])["both"].members
    assert [m.img_size for m in members] == [32, 40]
    expected = np.mean([m.probs_from_pixels(read_image(sample, m.img_size, 3)[None])[0]
                        for m in members], axis=0)
    got = np.array([body["probabilities"][c] for c in members[0].classes])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    single = members[0].probs_from_pixels(read_image(sample, 32, 3)[None])[0]
    assert np.abs(got - single).max() > 1e-4  # not just the first member
    assert body["model"] == {"id": "both", "name": "simple_cnn+lenet5", "temperature": None}
    assert "heatmap_png_base64" in body


def test_model_info_names_the_members_and_the_ensembles_own_threshold(client, ensemble_dir):
    info = client.get("/api/model").json()
    metrics = json.loads((ensemble_dir / "metrics.json").read_text())
    assert [m["name"] for m in info["members"]] == ["simple_cnn", "lenet5"]
    assert info["metrics"]["accuracy"] == metrics["accuracy"]
    threshold = metrics["selective"]["threshold"]
    if threshold is None:  # unreachable on validation: no referral
        assert info["refer_below"] is None and info["refer_rule"].startswith("off")
    else:
        assert info["refer_below"] == threshold and "ensemble" in info["refer_rule"]


def test_a_missing_member_is_one_line_naming_it(ensemble_dir, tmp_path):
    copy = shutil.copytree(ensemble_dir, tmp_path / "moved")
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["ensemble"]["runs"][1] = str(tmp_path / "gone")
    metrics["ensemble"]["from_here"][1] = "../gone"
    (copy / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(MedscopeError, match="ensemble member .*gone not found"):
        load_models([copy])


def test_members_of_another_kind_of_labels_are_one_line_naming_them(ensemble_dir, tmp_path):
    from medscope.core.checkpoint import read_meta, write_meta
    from medscope.run import RunDir

    copy = shutil.copytree(ensemble_dir, tmp_path / "mixed")
    metrics = json.loads((copy / "metrics.json").read_text())
    second = shutil.copytree(metrics["ensemble"]["runs"][1], tmp_path / "second")
    best = RunDir(second).best
    write_meta(best, read_meta(best).model_copy(update={"multilabel": True}))
    metrics["ensemble"]["runs"][1], metrics["ensemble"]["from_here"][1] = str(second), None
    (copy / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(MedscopeError, match=r"second: multilabel True differ from .*False; "
                                            "cannot ensemble"):
        load_models([copy])


def test_an_ensemble_moved_with_its_members_finds_them(trained_run, image_folder, tmp_path,
                                                       monkeypatch):
    from medscope.api import evaluate_ensemble

    lab = tmp_path / "lab"
    for name in ("a", "b"):
        shutil.copytree(trained_run.root, lab / "runs" / name)
    monkeypatch.chdir(lab)  # relative member paths, as a user types them
    evaluate_ensemble([Path("runs/a"), Path("runs/b")], Path("runs/both"), progress=False,
                      precision="fp32")
    moved = shutil.move(lab, tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    served = load_models([Path(moved) / "runs" / "both"])["both"]
    assert [m.img_size for m in served.members] == [32, 32]
