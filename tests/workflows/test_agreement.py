"""predict = serve = evaluate: the same images get the same labels and refer-to-expert flags
whichever way they are scored (``medscope.evaluate.decisions`` is the one implementation,
``medscope.novelty`` adds the "unlike the training images" referral everywhere).

Two runs: a multi-label one whose checkpoint holds tuned label thresholds that label some
images differently than 0.5 would, and a single-label one with a ``selective_threshold``. Both
thresholds are put between the models' own probabilities (far from any of them), so the three
paths' float noise (different batch sizes) cannot flip a decision."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medscope.data.prepare import run_split
from medscope.data.sources import Sample
from medscope.predict import predict_files
from medscope.predictor import Predictor
from medscope.run import RunDir, open_run_csv
from medscope.workflows.evaluation import evaluate_run
from tests.conftest import one_torch_thread, tiny_config

GAP = 2e-3  # thresholds sit at least GAP / 2 from every probability they decide on


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory) -> RunDir:
    """A 2-epoch multi-label run on 48 tiny images: stripes (A) and/or a bright square (B)."""
    from medscope.api import train

    root = tmp_path_factory.mktemp("agree-ml")
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
        rows.append((f"{i}.png", "|".join(n for n, on in (("A", a), ("B", b)) if on)
                     or "No Finding", f"p{i // 2}"))
    with (root / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "group"), *rows])
    config = tiny_config(root / "labels.csv", root / "run", **{"data.img_size": 16,
                                                               "train.lr": 3e-3})
    with one_torch_thread():
        return train(config, progress=False)


def _split_between(values: np.ndarray, avoid: float | None = None) -> float:
    """A cut between two of ``values`` (at least GAP apart), nearest their median; with
    ``avoid``, one that puts a different number of values at or above it than ``avoid`` does."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    cuts = [(lo + hi) / 2 for lo, hi in zip(v[:-1], v[1:], strict=True) if hi - lo >= GAP]
    if avoid is not None:
        cuts = [c for c in cuts if (v >= c).sum() != (v >= avoid).sum()]
    assert cuts, f"no usable cut among {v}"
    return min(cuts, key=lambda c: abs(c - float(np.median(v))))


def _test_images(run: RunDir) -> tuple[dict[str, Path], np.ndarray, Predictor]:
    """The run's evaluated images by their predictions.csv id, and the model's probabilities."""
    predictor = Predictor.load(run.root)
    samples, _, source = run_split(run, predictor.classes)
    decoded = predictor.decode(samples, progress=False)
    kept = [samples[i] for i in decoded.kept]
    probs = predictor.probs_from_pixels(decoded.pixels)
    return {source.sample_id(s): Path(s.path) for s in kept}, probs, predictor


def _ood_cut(run: RunDir, images: dict[str, Path], predictor: Predictor) -> np.ndarray:
    """Put the run's out-of-distribution threshold in the widest gap of the middle half of
    the images' scores, so some are flagged and float noise cannot move one across; returns
    each image's flag (in ``images`` order)."""
    from medscope.evaluate.ood import ood_scores

    state = json.loads(run.best.with_suffix(".json").read_text())["ood"]
    decoded = predictor.decode([Sample(p, -1) for p in images.values()], progress=False)
    features, _ = predictor.features_from_pixels(decoded.pixels)
    scores = ood_scores(state, features=features)
    v = np.sort(scores)
    lo, hi = len(v) // 4, max(len(v) * 3 // 4, len(v) // 4 + 2)
    gaps = v[lo + 1:hi] - v[lo:hi - 1]
    j = lo + int(gaps.argmax())
    assert gaps.max() > 1e-3 * max(abs(v[j]), 1.0), "no clear gap among the OOD scores"
    _set_meta(run, ood={**state, "threshold": float((v[j] + v[j + 1]) / 2)})
    return scores > (v[j] + v[j + 1]) / 2


def _set_meta(run: RunDir, **values) -> None:
    path = run.best.with_suffix(".json")
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def _three_ways(run: RunDir, images: dict[str, Path], out: Path
                ) -> dict[str, dict[str, tuple[str, str]]]:
    """(labels, refer flag) per image id, from predict_files, the served app and evaluate."""
    from fastapi.testclient import TestClient

    from medscope.serve import create_app, load_models

    predicted = predict_files(run.root, list(images.values()), progress=False)
    by_file = {r["file"]: (r["prediction"], r["refer_to_expert"]) for r in predicted}
    client = TestClient(create_app(load_models([run.root])))
    served = {}
    for ident, path in images.items():
        body = client.post("/api/predict", params={"heatmap": "false"},
                           files={"file": (path.name, path.read_bytes(), "image/png")}).json()
        flag = {True: "yes", False: "no", None: ""}[body["refer_to_expert"]]
        served[ident] = (body["label"], flag)
    evaluate_run(run, out=out, progress=False)
    with open_run_csv(out / "predictions.csv") as fh:
        evaluated = {r["path"]: (r["predicted"], r.get("refer_to_expert", "(no column)"))
                     for r in csv.DictReader(fh)}
    return {"predict": {i: by_file[str(p)] for i, p in images.items()},
            "serve": served, "evaluate": evaluated}


def _disagreements(answers: dict[str, dict[str, tuple[str, str]]],
                   expected: dict[str, tuple[str, str]]) -> dict[str, dict[str, str]]:
    """Per way that disagrees: image -> "got (labels, flag), expected (labels, flag)"."""
    wrong = {}
    for way, got in answers.items():
        diff = {i: f"got {got.get(i)}, expected {want}" for i, want in expected.items()
                if got.get(i) != want}
        if diff or set(got) != set(expected):
            wrong[way] = diff or {"images": f"{sorted(got)} != {sorted(expected)}"}
    return wrong


def test_multilabel_tuned_thresholds_agree_across_predict_serve_evaluate(multilabel_run,
                                                                         tmp_path):
    run = RunDir(shutil.copytree(multilabel_run.root, tmp_path / "run"))
    images, probs, predictor = _test_images(run)
    classes = predictor.classes
    # Tuned thresholds that change at least one label against 0.5, and a refer threshold
    # splitting the images by their least certain label.
    tuned = [_split_between(probs[:, k], avoid=0.5) for k in range(len(classes))]
    least_certain = np.maximum(probs, 1 - probs).min(axis=1)
    refer_below = _split_between(least_certain)
    _set_meta(run, thresholds=tuned, selective_threshold=refer_below)
    odd = _ood_cut(run, images, predictor)
    ids = list(images)
    expected = {i: ("|".join(c for c, p, t in zip(classes, row, tuned, strict=True) if p >= t),
                    "yes" if c < refer_below or o else "no")
                for i, row, c, o in zip(ids, probs, least_certain, odd, strict=True)}
    at_half = {i: "|".join(c for c, p in zip(classes, row, strict=True) if p >= 0.5)
               for i, row in zip(ids, probs, strict=True)}
    assert any(expected[i][0] != at_half[i] for i in ids)  # the tuned thresholds matter
    assert {flag for _, flag in expected.values()} == {"yes", "no"}

    assert _disagreements(_three_ways(run, images, tmp_path / "eval"), expected) == {}


def test_single_label_selective_threshold_agrees_across_predict_serve_evaluate(trained_run,
                                                                               tmp_path):
    run = RunDir(shutil.copytree(trained_run.root, tmp_path / "run"))
    images, probs, predictor = _test_images(run)
    top = probs.max(axis=1)
    refer_below = _split_between(top)
    _set_meta(run, selective_threshold=refer_below)
    odd = _ood_cut(run, images, predictor)
    assert odd.any() and not odd.all()
    expected = {i: (predictor.classes[int(row.argmax())],
                    "yes" if t < refer_below or o else "no")
                for i, row, t, o in zip(images, probs, top, odd, strict=True)}
    assert {flag for _, flag in expected.values()} == {"yes", "no"}

    assert _disagreements(_three_ways(run, images, tmp_path / "eval"), expected) == {}
