"""Loader throughput: decode-every-epoch vs the decode-once memmap cache.

    python benchmarks/data_loading.py [--data DIR] [--n 2000] [--size 112] [--epochs 3]

Uses the real images in ../shared/data (DeFungi, else blood cells) when present, else a
synthetic folder. Each epoch iterates a DataLoader (batch 64, shuffled, 'flips' augmentation)
over the same images; the cached loader's first epoch includes building the cache.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from machine import non_negative_int, positive_int  # noqa: E402

from medscope.data.cache import decode_images  # noqa: E402
from medscope.data.dataset import PixelDataset  # noqa: E402
from medscope.data.io import read_image  # noqa: E402
from medscope.data.sources import Sample, load_source  # noqa: E402
from medscope.data.transforms import augmentation  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


class DecodeEachTime(Dataset):
    """The baseline: every __getitem__ opens, decodes and resizes the file."""

    def __init__(self, samples: list[Sample], size: int, transform) -> None:
        self.samples, self.size, self.transform = samples, size, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        arr = np.array(read_image(self.samples[i].path, self.size, 3))  # writable for torch
        return self.transform(torch.from_numpy(arr).permute(2, 0, 1)), self.samples[i].label


def pick_data(arg: str | None) -> tuple[Path, str]:
    if arg:
        return Path(arg), "given"
    for name in ("defungi", "blood-cells-4"):
        if (SHARED / name).is_dir():
            return SHARED / name, "real"
    from medscope.data.synth import make_dataset

    tmp = Path(tempfile.mkdtemp(prefix="medscope-bench-"))
    make_dataset(tmp / "synth", per_class=20, progress=False)
    return tmp / "synth", "synthetic (no ../shared/data)"


def epochs_per_second(loader: DataLoader, epochs: int, before_first=None) -> list[float]:
    rates = []
    for epoch in range(epochs):
        start = time.perf_counter()
        if epoch == 0 and before_first is not None:
            loader = before_first()
        n = sum(len(x) for x, _ in loader)
        rates.append(n / (time.perf_counter() - start))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--n", type=positive_int, default=2000, help="images (a random subset)")
    ap.add_argument("--size", type=positive_int, default=112, help="training resolution")
    ap.add_argument("--epochs", type=positive_int, default=3)
    ap.add_argument("--workers", type=non_negative_int, default=0,
                    help="DataLoader worker processes")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    data, kind = pick_data(args.data)
    samples = load_source(data).samples
    random.Random(0).shuffle(samples)
    samples = samples[: args.n]
    labels = np.array([s.label for s in samples])
    aug = augmentation("flips")
    print(f"data: {data} ({kind}), {len(samples)} images -> {args.size}px, "
          f"{args.epochs} epochs, batch 64, workers {args.workers}")

    plain = DataLoader(DecodeEachTime(samples, args.size, aug), batch_size=64, shuffle=True,
                       num_workers=args.workers)
    decode_rates = epochs_per_second(plain, args.epochs)

    cache_dir = Path(tempfile.mkdtemp(prefix="medscope-cache-"))
    holder = {}

    def build():
        decoded = decode_images(samples, args.size, 3, progress=False, cache_dir=cache_dir)
        holder["decoded"] = decoded
        return DataLoader(PixelDataset(decoded.pixels, labels[decoded.kept], aug),
                          batch_size=64, shuffle=True, num_workers=args.workers)

    cached_rates = epochs_per_second(None, args.epochs, before_first=build)
    decoded = holder["decoded"]
    disk = sum(p.stat().st_size for p in cache_dir.iterdir())
    shutil.rmtree(cache_dir, ignore_errors=True)

    print(f"{'epoch':>5} {'decode each epoch':>18} {'cached':>10}   (images/s)")
    for e, (a, b) in enumerate(zip(decode_rates, cached_rates, strict=True), 1):
        print(f"{e:>5} {a:>18.0f} {b:>10.0f}" + ("   (cache built in this epoch)" if e == 1
                                                 else ""))
    later_plain = float(np.mean(decode_rates[1:])) if args.epochs > 1 else decode_rates[0]
    later_cached = float(np.mean(cached_rates[1:])) if args.epochs > 1 else cached_rates[0]
    ratio = later_cached / later_plain
    print(f"epochs >= 2: cached {later_cached:.0f} img/s vs decode {later_plain:.0f} img/s "
          f"-> {ratio:.1f}x {'(target >= 5x met)' if ratio >= 5 else '(below the 5x target)'}")
    print(f"cache: {decoded.pixels.nbytes / 2**20:.1f} MiB of pixels "
          f"({decoded.pixels.shape[0]} x {args.size} x {args.size} x 3 uint8), "
          f"{disk / 2**20:.1f} MiB on disk (memory-mapped: resident only as pages are read)")


if __name__ == "__main__":
    main()
