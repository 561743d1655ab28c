"""Training end to end on each data kind: multi-label CSV, MedMNIST npz, pre-split folder."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medscope.api import train
from medscope.predict import predict_files
from medscope.predictor import Predictor
from tests.conftest import make_image_folder, tiny_config


@pytest.fixture(scope="module")
def multilabel_csv(tmp_path_factory):
    """Stripes (label A) and/or a bright square (label B): four combinations, learnable."""
    root = tmp_path_factory.mktemp("ml")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        a, b = i % 2, (i // 2) % 2
        img = rng.integers(60, 90, (24, 24, 3)).astype(np.uint8)
        if a:
            img[::4] = 20
        if b:
            img[8:16, 8:16] = 250
        Image.fromarray(img).save(root / f"{i}.png")
        labels = "|".join(n for n, on in (("A", a), ("B", b)) if on) or "No Finding"
        rows.append((f"{i}.png", labels + ("|" if i == 3 else ""), f"p{i // 2}"))
    with (root / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "group"), *rows])
    return root / "labels.csv"


@pytest.mark.slow
def test_multilabel_csv_trains_and_predicts_sigmoid(multilabel_csv, tmp_path):
    cfg = tiny_config(multilabel_csv, tmp_path / "run", **{
        "data.img_size": 16, "train.epochs": 8, "train.lr": 3e-3, "data.balance": "weights"})
    run = train(cfg, progress=False)
    assert Predictor.load(run.root).meta["multilabel"] is True
    metrics = json.loads(run.metrics.read_text())
    assert metrics["multilabel"] and {"hamming_loss", "f1_micro", "f1_macro"} <= metrics.keys()
    assert set(metrics["per_class"]) == {"A", "B"}
    splits = list(csv.DictReader(run.splits.open()))
    by_group: dict[str, set] = {}
    for r in splits:
        by_group.setdefault(r["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_group.values())
    p = Predictor.load(run.root)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    probs, logits = p.probs_from_pixels(pixels), p.logits_from_pixels(pixels)
    # One sigmoid per label, not a softmax over them (whose rows would sum to 1).
    assert probs.shape == (4, 2)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits.astype(np.float64))), atol=1e-5)
    truth = {f"{i}.png": {n for n, on in (("A", i % 2), ("B", (i // 2) % 2)) if on}
             for i in range(48)}
    rows = predict_files(run.root, [multilabel_csv.parent / f for f in truth], progress=False)
    predicted = {Path(r["file"]).name: set(filter(None, r["prediction"].split("|")))
                 for r in rows}
    assert all(p <= {"A", "B"} for p in predicted.values())
    # Empty predictions everywhere (or noise) fail here: chance exact match is 0.25.
    exact = np.mean([predicted[f] == truth[f] for f in truth])
    assert exact >= 0.6, f"exact match {exact:.2f}"


@pytest.mark.slow
def test_npz_trains_with_given_splits_and_sampler(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([[i % 2] for i in range(60)])
    images = rng.integers(0, 60, (60, 16, 16), dtype=np.uint8)
    images[labels[:, 0] == 1, 4:12, 4:12] = 240
    np.savez(tmp_path / "toy.npz", train_images=images[:40], train_labels=labels[:40],
             val_images=images[40:50], val_labels=labels[40:50], test_images=images[50:],
             test_labels=labels[50:])
    cfg = tiny_config(tmp_path / "toy.npz", tmp_path / "run", **{
        "data.img_size": 16, "data.in_chans": 1, "data.balance": "sampler"})
    run = train(cfg, progress=False)
    splits = list(csv.DictReader(run.splits.open()))
    assert [r["split"] for r in splits].count("test") == 10
    assert splits[0]["path"] == "train[0]"
    assert json.loads(run.metrics.read_text())["n"] == 10


@pytest.mark.slow
def test_presplit_folder_uses_its_test_set_and_carves_val(tmp_path):
    make_image_folder(tmp_path / "d" / "train", per_class=10, size=24)
    make_image_folder(tmp_path / "d" / "test", per_class=3, size=24, seed=1)
    run = train(tiny_config(tmp_path / "d", tmp_path / "run", **{"data.img_size": 16,
                                                                  "train.epochs": 1}),
                progress=False)
    splits = list(csv.DictReader(run.splits.open()))
    assert {r["path"].split("/")[0] for r in splits if r["split"] == "test"} == {"test"}
    assert any(r["split"] == "val" for r in splits)
    assert all(r["path"].startswith("train/") for r in splits if r["split"] == "val")
    assert json.loads(run.metrics.read_text())["n"] == 9
