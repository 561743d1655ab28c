"""Milliseconds to augment one training batch, per preset, eager vs compiled, in one run.

    python benchmarks/augment_batch.py [--data ../shared/data/defungi] [--img-size 112]
        [--batch-size 64] [--reps 30] [--threads T] [--out FILE]

``BatchAugment`` on a uint8 batch of real images (``--batch-size`` of ``--data`` spread over
its class folders, resized; seeded noise when the folder has no images), the median of
``--reps`` calls after three warm-up calls, each call drawing new parameters. ``microscopy``
runs twice: eager (every op a separate tensor pass) and through the
inductor kernels that training-sized CPU batches take (``COMPILE_MIN_PIXELS``); the first
call (compiling included, with a warm or cold inductor cache, as found) and whether both
paths give the same pixels are printed beside them. The figure to set against is the model
step: ``train_throughput.py``'s limit (about 515 ms per 64 x 112 px batch for resnet18 in
bf16 on an AVX512-BF16 core pair).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import SHARED_DATA, Report, describe_machine, positive_int  # noqa: E402

PRESETS = ("flips", "microscopy", "keras-classic", "randaugment", "stain")
COMPILED = ("microscopy", "stain")  # the presets with inductor kernels


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    report = Report(args.out)
    report("# augment_batch: ms per training batch, per preset, eager vs compiled")
    report(describe_machine())
    images, source = batch(args.data, args.batch_size, args.img_size)
    report(f"batch: {tuple(images.shape)} uint8 from {source}; median of {args.reps} calls")
    run(images, args.reps, report)
    report.save()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED_DATA / "defungi")
    p.add_argument("--img-size", type=positive_int, default=112)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--reps", type=positive_int, default=30)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def batch(folder: Path, n: int, size: int):
    """(uint8 N x 3 x size x size, where it came from): real images, decoded and resized as
    the training cache does, when the folder has them."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from medscope.data.io import is_image_file, read_image

    files = sorted(p for p in folder.rglob("*") if is_image_file(p)) if folder.is_dir() else []
    if not files:
        g = torch.Generator().manual_seed(0)
        coarse = torch.randint(0, 256, (n, 3, 8, 8), generator=g).float()
        return F.interpolate(coarse, size=size, mode="bilinear").to(torch.uint8), "noise"
    step = max(len(files) // n, 1)  # spread over the classes, which are sorted folders
    picked = [files[i * step % len(files)] for i in range(n)]
    arrays = np.stack([read_image(p, size, 3) for p in picked])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous(), f"{folder} ({n} files)"


def run(images, reps: int, report: Report) -> None:
    import torch

    from medscope.data import augment as A

    rows = []
    for preset in PRESETS:
        compiled_too = preset in COMPILED and A._inductor_works()
        for compiled in (False, True) if compiled_too else (False,):
            threshold = 1 if compiled else 1 << 62
            A.COMPILE_MIN_PIXELS, original = threshold, A.COMPILE_MIN_PIXELS
            try:
                ms, first_ms, out = timed_calls(A.BatchAugment(preset), images, reps)
            finally:
                A.COMPILE_MIN_PIXELS = original
            rows.append({"preset": preset, "path": "compiled" if compiled else "eager",
                         "ms": ms, "first": first_ms, "out": out})
    eager = {r["preset"]: r for r in rows if r["path"] == "eager"}
    report("| preset | path | ms per batch (median) | first call ms | vs eager | same pixels |")
    report("|---|---|---|---|---|---|")
    for r in rows:
        base = eager[r["preset"]]
        same = "-" if r is base else ("yes" if torch.equal(r["out"], base["out"]) else "NO")
        ratio = f"{base['ms'] / r['ms']:.2f}x" if r["preset"] in COMPILED else "-"
        report(f"| {r['preset']} | {r['path']} | {r['ms']:.2f} | {r['first']:.0f} | {ratio} | "
               f"{same} |")
    if not any(r["path"] == "compiled" for r in rows):
        report("torch.compile does not work here: every preset measured eager only")


def timed_calls(aug, images, reps: int):
    """(median ms, first call ms, output of a fixed seed) of ``aug`` on ``images``."""
    import torch

    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    aug(images, g)
    first = time.perf_counter() - start
    for _ in range(2):
        aug(images, g)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        aug(images, g)
        times.append(time.perf_counter() - start)
    fixed = aug(images, torch.Generator().manual_seed(1))
    return 1e3 * statistics.median(times), 1e3 * first, fixed


if __name__ == "__main__":
    main()
