"""Training time with and without flushing subnormal floats to zero, side by side.

    python benchmarks/denormals.py [--data runs/demo/patches] [--epochs 30] [--precision bf16]

medscope sets ``torch.set_flush_denormal(True)`` when ``medscope.train.engine`` is imported.
This runs the demo's training (simple_cnn, 96 px, AdamW lr 1e-3, 3 warm-up epochs) twice, each in
its own process, once as shipped and once with the flag turned back off before torch starts its
OpenMP threads (they copy the setting only when they start, so flipping it later in one process
would not measure what a user gets). Subnormals appear as the model grows confident, so the gap
shows in later epochs. Without --data it first makes a small synthetic patch set.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import positive_int  # noqa: E402

CHILD = """
import json, sys
sys.path.insert(0, {src!r})
import torch
import medscope.train.engine  # noqa: F401  (sets flushing on)
flush, args = json.loads(sys.argv[1])
torch.set_flush_denormal(flush)  # before the first op: the thread pool starts with this
from medscope.cli import main
sys.exit(main(args))
"""


def train(flush: bool, data: Path, out: Path, epochs: int, precision: str) -> list[float]:
    args = ["train", "-q", "--data", str(data), "--out", str(out), "--model", "simple_cnn",
            "--img-size", "96", "--epochs", str(epochs), "--batch-size", "32", "--lr", "1e-3",
            "--set", "train.warmup_epochs=3", "--precision", precision]
    subprocess.run([sys.executable, "-c", CHILD.format(src=str(ROOT / "src")),
                    json.dumps([flush, args])], check=True)
    with open(out / "history.csv", newline="") as f:
        return [float(row["seconds"]) for row in csv.DictReader(f)]


def accuracy(run: Path) -> float:
    return json.loads((run / "metrics.json").read_text())["accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="patch folder (default: a new synthetic one)")
    ap.add_argument("--epochs", type=positive_int, default=30)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            sys.path.insert(0, str(ROOT / "src"))
            from medscope.data.patches import extract_patches
            from medscope.data.synth import make_dataset

            make_dataset(tmp / "slides", 20, seed=0, progress=False)
            extract_patches(tmp / "slides", tmp / "patches", 500, stride=250, progress=False)
            data = tmp / "patches"
        seconds = {flush: train(flush, data, tmp / f"run-{flush}", args.epochs, args.precision)
                   for flush in (True, False)}
        acc = {flush: accuracy(tmp / f"run-{flush}") for flush in (True, False)}
    on, off = seconds[True], seconds[False]
    print(f"{args.precision}, {args.epochs} epochs on {data}: seconds per epoch")
    print("epoch   flush on  flush off")
    for i, (a, b) in enumerate(zip(on, off, strict=True), 1):
        print(f"{i:5d}   {a:8.1f}  {b:9.1f}")
    half = len(on) // 2
    for name, sl in (("first half", slice(0, half)), ("second half", slice(half, None)),
                     ("all", slice(None))):
        a, b = sum(on[sl]), sum(off[sl])
        print(f"{name:12s} {a:7.1f} s vs {b:7.1f} s: flushing is {b / a:.2f}x faster")
    print(f"test accuracy: {acc[True]:.4f} (flush on) vs {acc[False]:.4f} (off)")


if __name__ == "__main__":
    main()
