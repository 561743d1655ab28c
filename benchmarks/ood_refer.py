"""Refer what the model has never seen: how often the "unlike the training images" check
(``medscope.novelty``, fitted at calibration) flags a model's own test images and images
of another kind, and what blank and degenerate images get.

    python benchmarks/ood_refer.py [--quick] [--demo-run RUN] [--blood-run RUN]
        [--work DIR] [--data DIR] [--foreign 200] [--epochs 20] [--out FILE]

1. The demo model (``medscope demo``: simple_cnn at 96 px on 500 px patches of synthetic
   1,000 px micrographs; trained into ``--work`` unless ``--demo-run`` names one): the share
   of its own test patches flagged (goal <= 5 %), and of ``--foreign`` blood-cell images
   (``DATA/blood-cells-4/test``, the same number per class, seeded) flagged (goal >= 95 %).
2. A blood-cell model (unless ``--blood-run``: the demo recipe, simple_cnn, at 64 px for
   ``--epochs`` epochs on 250 training and 50 test images per class of
   ``DATA/blood-cells-4``, seeded): the same for its own test images and ``--foreign``
   DeFungi images (``DATA/defungi/test``).
3. A black 500 x 500 frame, a 1 x 1 image and a 20,000 x 1 strip, through each model: each
   should be referred, with its reason.
Every image goes through ``medscope.predict.predict_files`` (``tiles="auto"``, as
``medscope predict`` does). Per set: the share flagged "unlike the training images", the share
referred for any reason (with the reasons), the mean confidence and the classes called.
Parts 1 (foreign) and 2 need ``DATA`` (default ``../shared/data``): without it they are
skipped, saying so. ``--quick``: a tiny demo (4 micrographs per class, 1 epoch, 32 px), to
check the script runs. Results: ``--out`` (default benchmarks/results/ood_refer.json, or
ood_refer_quick.json with --quick). Accuracy-type figures only: no timings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import SHARED_DATA, describe_machine, positive_int  # noqa: E402

UNLIKE = "unlike the training images"
BLOOD_TRAIN, BLOOD_TEST = 250, 50  # images per class of the blood-cell model's subset
GOALS = {"own_flagged_max": 0.05, "foreign_flagged_min": 0.95}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print("# ood_refer: 'unlike the training images' on own and foreign images")
    machine = describe_machine()
    print(machine)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        result = {"machine": machine, "goals": GOALS, "data": str(args.data),
                  "demo": demo_part(args, work), "blood": blood_part(args, work)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results -> {args.out}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny demo: check the script runs")
    ap.add_argument("--demo-run", type=Path, default=None, help="a trained demo run to use")
    ap.add_argument("--blood-run", type=Path, default=None,
                    help="a trained blood-cell run to use")
    ap.add_argument("--work", type=Path, default=None,
                    help="where models are trained and test images written (default: a "
                    "temporary folder)")
    ap.add_argument("--data", type=Path, default=SHARED_DATA, help="the real data folder")
    ap.add_argument("--foreign", type=positive_int, default=200,
                    help="foreign images per model")
    ap.add_argument("--epochs", type=positive_int, default=20, help="blood-cell model epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    args.out = args.out or ROOT / "benchmarks" / "results" / (
        "ood_refer_quick.json" if args.quick else "ood_refer.json")
    return args


def demo_part(args: argparse.Namespace, work: Path) -> dict:
    run = args.demo_run or train_demo(work / "demo", args.quick, args.seed)
    part = {"run": str(run), "model": describe_run(run)}
    own = own_test_images(run)
    part["own_test"] = report("demo model, its own test patches", run, own)
    blood = args.data / "blood-cells-4" / "test"
    if blood.is_dir():
        foreign = pick_images(blood, args.foreign, args.seed)
        part["foreign"] = report(f"demo model, {args.foreign} blood-cell images", run, foreign)
        part["foreign"]["source"] = str(blood)
    else:
        part["foreign"] = skipped(blood)
    part["edge"] = edge_cases(run, work / "edge")
    return part


def blood_part(args: argparse.Namespace, work: Path) -> dict:
    blood, fungi = args.data / "blood-cells-4", args.data / "defungi" / "test"
    if args.blood_run is None and not blood.is_dir():
        return skipped(blood)
    run = args.blood_run or train_blood(blood, work, args.epochs, args.seed)
    part = {"run": str(run), "model": describe_run(run)}
    own = own_test_images(run)
    part["own_test"] = report("blood-cell model, its own test images", run, own)
    if fungi.is_dir():
        foreign = pick_images(fungi, args.foreign, args.seed)
        part["foreign"] = report(f"blood-cell model, {args.foreign} DeFungi images", run,
                                 foreign)
        part["foreign"]["source"] = str(fungi)
    else:
        part["foreign"] = skipped(fungi)
    part["edge"] = edge_cases(run, work / "edge")
    return part


def skipped(folder: Path) -> dict:
    message = f"skipped: {folder} is absent (the real data lives in ../shared/data)"
    print(message)
    return {"skipped": message}


def train_demo(out: Path, quick: bool, seed: int) -> Path:
    from medscope import api

    tiny = {"per_class": 4, "epochs": 1, "img_size": 32} if quick else {}
    print(f"training the demo model into {out}" + (" (tiny: --quick)" if quick else ""))
    done = api.demo(out, seed=seed, force=True, progress=False, echo=print, **tiny)
    return done.run.root


def train_blood(blood: Path, work: Path, epochs: int, seed: int) -> Path:
    """simple_cnn (the demo recipe) at 64 px on a seeded subset of blood-cells-4, linked
    (never copied) into ``work/blood-subset``."""
    from medscope import api
    from medscope.config import load_config

    subset = work / "blood-subset"
    for split, per_class in (("train", BLOOD_TRAIN), ("test", BLOOD_TEST)):
        for cls in sorted(p.name for p in (blood / split).iterdir() if p.is_dir()):
            dst = subset / split / cls
            dst.mkdir(parents=True, exist_ok=True)
            for src in pick_images(blood / split / cls, per_class, seed):
                if not (dst / src.name).exists():
                    os.symlink(src.resolve(), dst / src.name)
    print(f"training the blood-cell model: simple_cnn, 64 px, {epochs} epochs, "
          f"{BLOOD_TRAIN} train + {BLOOD_TEST} test images per class")
    config = load_config(Path("demo"), {
        "data.path": str(subset), "out": str(work / "blood-run"), "data.img_size": 64,
        "train.epochs": epochs, "train.seed": seed, "train.warmup_epochs": 1})
    return api.train(config, progress=False).root


def describe_run(run: Path) -> dict:
    from medscope.predictor import Predictor
    from medscope.run import RunDir, read_json

    meta = Predictor.load(run).meta
    metrics = read_json(RunDir(run).metrics)
    ood = meta.get("ood") or {}
    return {"classes": list(meta["classes"]), "test_accuracy": metrics.get("accuracy"),
            "test_n": metrics.get("n"),
            "unlike_training_share": metrics.get("unlike_training_share"),
            "ood": {k: ood.get(k) for k in ("method", "dims", "threshold", "flag_rate",
                                            "n_val")}}


def own_test_images(run: Path) -> list[Path]:
    from medscope.data.prepare import run_samples
    from medscope.predictor import Predictor
    from medscope.run import RunDir

    samples, _ = run_samples(RunDir(run), list(Predictor.load(run).classes), "test")
    return [s.path for s in samples]


def pick_images(folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` images of ``folder``, the same number from each class folder (all of them when
    it has none), chosen with ``seed``."""
    from medscope.data.io import is_image_file

    groups = [d for d in sorted(folder.iterdir()) if d.is_dir()] or [folder]
    rng = random.Random(seed)
    picked = []
    for i, group in enumerate(groups):
        files = sorted(p for p in group.rglob("*") if p.is_file() and is_image_file(p))
        take = n // len(groups) + (1 if i < n % len(groups) else 0)
        picked += rng.sample(files, min(take, len(files)))
    return picked


def report(name: str, run: Path, files: list[Path]) -> dict:
    """Predict ``files`` with ``run`` as ``medscope predict`` does; the refer figures."""
    from medscope.predict import predict_files

    rows = predict_files(run, files, tiles="auto", progress=False)
    n = len(rows)
    reasons = Counter(r.get("refer_reason") or r.get("error") or "?" for r in rows
                      if r.get("refer_to_expert") == "yes" or r.get("error"))
    confidences = [float(r["probability"]) for r in rows if r.get("probability") not in
                   ("", None)]
    out = {"n": n, "flagged_unlike_training": reasons.get(UNLIKE, 0),
           "flagged_share": round(reasons.get(UNLIKE, 0) / n, 4),
           "referred_any_reason": sum(reasons.values()),
           "referred_share": round(sum(reasons.values()) / n, 4),
           "referred_by_reason": dict(reasons.most_common()),
           "mean_confidence": round(float(np.mean(confidences)), 4) if confidences else None,
           "predicted": dict(Counter(r.get("prediction") or "(none)" for r in rows)
                             .most_common())}
    print(f"{name}: n {n}; flagged '{UNLIKE}' {out['flagged_share']:.1%}; referred for any "
          f"reason {out['referred_share']:.1%} {out['referred_by_reason']}; mean confidence "
          f"{out['mean_confidence']}")
    return out


def edge_cases(run: Path, folder: Path) -> dict:
    """A black frame, a 1 x 1 image and a 20,000 x 1 strip: each one's verdict."""
    from medscope.predict import predict_files

    folder.mkdir(parents=True, exist_ok=True)
    images = {"blank 500x500 black": np.zeros((500, 500, 3), np.uint8),
              "1x1": np.full((1, 1, 3), 128, np.uint8),
              "20000x1 strip": np.random.default_rng(0).integers(0, 256, (1, 20000, 3),
                                                                 dtype=np.uint8)}
    files = []
    for i, pixels in enumerate(images.values()):
        files.append(folder / f"edge_{i}.png")
        Image.fromarray(pixels).save(files[-1])
    rows = predict_files(run, files, tiles="auto", progress=False)
    out = {}
    for name, row in zip(images, rows, strict=True):
        out[name] = {k: row.get(k) for k in ("prediction", "probability", "refer_to_expert",
                                             "refer_reason", "error")}
        print(f"  {name}: refer {row.get('refer_to_expert')!r}, reason "
              f"{row.get('refer_reason') or row.get('error')!r}")
    return out


if __name__ == "__main__":
    main()
