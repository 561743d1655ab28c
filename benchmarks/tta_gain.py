"""Accuracy gained by test-time augmentation (mean over the 8 flips/rotations), per fold of a
``medscope cv`` directory or for one run, on each model's own held-out test split.

    python benchmarks/tta_gain.py RUN_OR_CV_DIR [--json OUT.json]

Prints accuracy and macro-F1 without and with TTA, their difference, and the time each took.
Probabilities are the calibrated ones (each checkpoint's temperature), as ``medscope predict``
gives them; ``--tta`` there is the same code path (``medscope.predict.model_probs``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from medscope.data.prepare import labels_of, run_split
from medscope.predict import fold_dirs
from medscope.predictor import Predictor, model_probs
from medscope.run import RunDir


def tta_row(run_dir: Path) -> dict:
    predictor = Predictor.load(run_dir)
    samples, split, _ = run_split(RunDir(run_dir), predictor.classes)
    decoded = predictor.decode(samples, progress=False)
    labels = labels_of([samples[i] for i in decoded.kept])
    row = {"run": str(run_dir), "split": split, "n": int(len(labels))}
    for name, tta in (("plain", False), ("tta", True)):
        t0 = time.perf_counter()
        pred = model_probs(predictor, decoded.pixels, tta=tta).argmax(1)
        row[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
        row[f"{name}_accuracy"] = float(accuracy_score(labels, pred))
        row[f"{name}_f1_macro"] = float(f1_score(labels, pred, average="macro"))
    row["gain_accuracy"] = row["tta_accuracy"] - row["plain_accuracy"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    runs = fold_dirs(args.run) if (args.run / "cv_settings.json").is_file() else [args.run]
    rows = [tta_row(r) for r in runs]
    print(f"{'run':<40} {'n':>5} {'acc':>7} {'acc TTA':>8} {'gain':>7} "
          f"{'F1':>7} {'F1 TTA':>7} {'s':>6} {'s TTA':>6}")
    for r in rows:
        print(f"{Path(r['run']).name:<40} {r['n']:>5} {r['plain_accuracy']:>7.4f} "
              f"{r['tta_accuracy']:>8.4f} {r['gain_accuracy']:>+7.4f} {r['plain_f1_macro']:>7.4f} "
              f"{r['tta_f1_macro']:>7.4f} {r['plain_seconds']:>6.1f} {r['tta_seconds']:>6.1f}")
    gains = np.array([r["gain_accuracy"] for r in rows])
    if len(rows) > 1:
        print(f"mean gain {gains.mean():+.4f} ± {gains.std(ddof=1):.4f} (sample std over "
              f"{len(rows)} folds)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
