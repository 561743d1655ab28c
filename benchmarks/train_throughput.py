"""Training images/s, side by side in one run: medscope vs the model's in-memory limit vs the
pipeline a user would otherwise write, per augmentation preset, in fp32 NCHW, fp32 +
channels_last (the default on CPUs without BF16) and bf16 + channels_last.

    python benchmarks/train_throughput.py [--data ../shared/data/defungi] [--limit-images N]
        [--presets flips,microscopy,...] [--modes fp32,fp32-cl,bf16] [--epochs 5] [--ref-epochs 2]
        [--model resnet18] [--img-size 112] [--batch-size 64] [--threads T] [--out FILE]

- medscope: the training loop of ``medscope train`` (``fit`` with the loader, batched
  augmentation and MixUp-free batch ops that ``train_run`` builds) on the decoded cache;
  images/s of epochs 2.. (epoch 1 warms the memmap pages and the allocator), validation
  excluded (``fit`` gets no validation loader) and timed on its own afterwards; checkpoint
  writing is not in it either.
- limit: the same model, batch, threads, precision and layout, forward + backward + AdamW step
  on one normalised batch already in memory, as many steps as one epoch; measured before the
  first preset of a mode and after each, every preset set against the mean of the two
  measurements around it (their drift shows the machine's noise).
- reference: torchvision ``ImageFolder`` over the same training images, PIL decode + resize +
  the preset's per-image torchvision v2 pipeline + normalise in the ``__getitem__`` of every
  epoch, ``DataLoader(num_workers=2, shuffle=True)``, the same model and precision; images/s of
  its last epoch (``--ref-epochs``, default 2: the first starts the workers).

efficiency = medscope / limit, speedup = medscope / reference. Also the peak RSS and medscope's
RSS after epoch 1 and after the last epoch (a growing RSS is a leak). Do not run it while
others use the machine: compare only figures taken in one run.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import (  # noqa: E402
    SHARED_DATA,
    Report,
    describe_machine,
    non_negative_int,
    peak_rss_mib,
    positive_int,
    rss_mib,
    train_step,
)

from medscope.train.engine import flush_denormals  # noqa: E402

PRESETS = ("none", "flips", "microscopy", "keras-classic", "randaugment", "stain")
# name: (precision, channels_last); fp32-cl is `medscope train`'s default on a CPU without BF16
MODES = {"fp32": ("fp32", False), "fp32-cl": ("fp32", True), "bf16": ("bf16", True)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    flush_denormals()  # as medscope train does, before torch starts its threads
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    report = Report(args.out)
    report("# train_throughput: medscope vs in-memory limit vs plain torchvision pipeline")
    report(describe_machine())
    work = Path(tempfile.mkdtemp(prefix="medscope-train-bench-"))
    try:
        folder = limited_folder(args.data, args.limit_images, work / "data")
        run(args, folder, work, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.save()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "defungi")
    ap.add_argument("--limit-images", type=positive_int, default=None,
                    help="a random subset of this many images (same for every pipeline)")
    ap.add_argument("--presets", default=",".join(PRESETS[1:]))
    ap.add_argument("--modes", default="fp32,fp32-cl,bf16",
                    help="fp32 (NCHW), fp32-cl (channels_last), bf16 (+ channels_last)")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=positive_int, default=112)
    ap.add_argument("--batch-size", type=positive_int, default=64)
    ap.add_argument("--epochs", type=positive_int, default=5, help="medscope epochs (>= 2)")
    ap.add_argument("--ref-epochs", type=positive_int, default=2,
                    help="reference epochs (last timed)")
    ap.add_argument("--ref-workers", type=non_negative_int, default=2)
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None,
                    help="also write the report here (benchmarks/results/...)")
    args = ap.parse_args(argv)
    args.presets = [p for p in args.presets.split(",") if p]
    args.modes = [m for m in args.modes.split(",") if m]
    bad = [p for p in args.presets if p not in PRESETS] + [m for m in args.modes if m not in MODES]
    if bad or args.epochs < 2:
        ap.error(f"unknown preset or mode {bad}" if bad else "--epochs must be >= 2")
    if not args.data.is_dir():
        ap.error(f"{args.data}: data folder not found")
    return args


def limited_folder(data: Path, limit: int | None, dest: Path) -> Path:
    """``data`` itself, or a folder of symlinks to a seeded random ``limit`` of its images
    (same layout: class folders, or train/test/<class>)."""
    from medscope.data.io import is_image_file

    if limit is None:
        return data
    files = sorted(p for p in data.rglob("*") if p.is_file() and is_image_file(p))
    random.Random(0).shuffle(files)
    for f in files[:limit]:
        link = dest / f.relative_to(data)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f.resolve())
    return dest


def run(args: argparse.Namespace, folder: Path, work: Path, report: Report) -> None:
    from medscope.config import load_config
    from medscope.data.prepare import prepare_data
    from medscope.run import RunDir

    config = load_config(overrides={
        "data.path": str(folder), "data.img_size": args.img_size,
        "data.cache_dir": str(work / "cache"), "model.name": args.model,
        "train.batch_size": args.batch_size, "train.epochs": args.epochs,
        "out": str(work / "run"), "train.device": "cpu"})
    start = time.perf_counter()
    (work / "run").mkdir(parents=True, exist_ok=True)
    data = prepare_data(config, RunDir(work / "run"), progress=False)
    n_train = len(data.samples["train"])
    report(f"data: {args.data}{f' (random {args.limit_images})' if args.limit_images else ''}: "
           f"{n_train} training / {len(data.samples['val'])} validation images, decoded to "
           f"{args.img_size} px in {time.perf_counter() - start:.1f} s; {args.model}, batch "
           f"{args.batch_size}, medscope epochs {args.epochs} (timed 2-{args.epochs}), "
           f"reference epochs {args.ref_epochs} ({args.ref_workers} workers, last timed)")
    rows = []
    for mode in args.modes:
        # The limit is measured before each preset and once after the last, and each preset is
        # set against the mean of the two around it: these VMs drift by 10-20 % within minutes.
        limit = limit_rate(config, data, mode, n_train)
        report(f"[{mode}] limit {limit:.1f} img/s")
        for preset in args.presets:
            cfg = config.model_copy(update={"data": config.data.model_copy(
                update={"augment": preset})})
            ms = medscope_rates(cfg, data, mode)
            ref = reference_rate(cfg, data, mode, args.ref_epochs, args.ref_workers)
            after = limit_rate(config, data, mode, n_train)
            row = {"mode": mode, "preset": preset, "limit": (limit + after) / 2, **ms,
                   "reference": ref}
            rows.append(row)
            report(f"[{mode}] {preset}: medscope {ms['medscope']:.1f} img/s (val "
                   f"{ms['val']:.1f} img/s), reference {ref:.1f} img/s, RSS epoch 1 "
                   f"{ms['rss_first']:.0f} MiB -> epoch {args.epochs} {ms['rss_last']:.0f} MiB")
            report(f"[{mode}] limit {after:.1f} img/s")
            limit = after
    report()
    fp32_ref = {r["preset"]: r["reference"] for r in rows if r["mode"] == "fp32"}
    report("| mode | preset | medscope img/s | limit img/s | reference img/s | efficiency | "
           "speedup | vs fp32 NCHW reference | val img/s | RSS ep1 -> last (MiB) |")
    report("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        vs_fp32 = (f"{r['medscope'] / fp32_ref[r['preset']]:.2f}"
                   if r["preset"] in fp32_ref else "-")
        report(f"| {r['mode']} | {r['preset']} | {r['medscope']:.1f} | {r['limit']:.1f} | "
               f"{r['reference']:.1f} | {r['medscope'] / r['limit']:.3f} | "
               f"{r['medscope'] / r['reference']:.2f} | {vs_fp32} | {r['val']:.1f} | "
               f"{r['rss_first']:.0f} -> {r['rss_last']:.0f} |")
    report(f"peak RSS: this process {peak_rss_mib():.0f} MiB, largest worker "
           f"{peak_rss_mib(children=True):.0f} MiB")
    report("efficiency = medscope / limit (limit: mean of the measurements just before and just "
           "after that preset); "
           "speedup = medscope / reference (same mode); vs fp32 NCHW reference = medscope / "
           "the fp32 mode's reference (a user's plain fp32 pipeline)")


def runtime_for(mode: str):
    from medscope.core.runtime import select_runtime

    precision, channels_last = MODES[mode]
    return select_runtime("cpu", precision, channels_last)


def fresh_model(config, data, runtime):
    from medscope.models import create_model

    torch_seed(config.train.seed)
    model = create_model(config.model.name, num_classes=len(data.source.classes),
                         in_chans=config.data.in_chans, img_size=config.data.img_size)
    return runtime.prepare(model)


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def medscope_rates(config, data, mode: str) -> dict[str, float]:
    """Training img/s over epochs 2.. of medscope's own loop; then validation img/s."""
    from medscope.data.transforms import Normalize
    from medscope.train.engine import Callbacks, FitInputs, evaluate_loss, fit
    from medscope.train.setup import eval_loader, normalisation_for, train_batch_ops, train_loader

    runtime = runtime_for(mode)
    model = fresh_model(config, data, runtime)
    mean, std = normalisation_for(config, model, data.pixels["train"])
    normalize = Normalize(mean, std)
    augment, mix = train_batch_ops(config, data)
    loader = train_loader(config, data)
    images_per_epoch = len(loader) * config.train.batch_size
    rss: list[float] = []
    state = fit(FitInputs(model, loader, None, cfg=config.train, normalize=normalize,
                          runtime=runtime, augment=augment, mix=mix, progress=False),
                callbacks=Callbacks(on_epoch_end=[lambda *_: rss.append(rss_mib())]))
    seconds = [row["seconds"] for row in state.history[1:]]
    val = eval_loader(data, "val", config.train.batch_size)
    start = time.perf_counter()
    evaluate_loss(model, val, __import__("torch").nn.CrossEntropyLoss(), normalize, runtime)
    val_seconds = time.perf_counter() - start
    return {"medscope": images_per_epoch * len(seconds) / sum(seconds),
            "val": len(data.samples["val"]) / val_seconds,
            "rss_first": rss[0], "rss_last": rss[-1]}


def limit_rate(config, data, mode: str, n_train: int) -> float:
    """Forward + backward + step on one in-memory normalised batch, one epoch's worth of steps
    (the first 3 untimed)."""
    import torch

    from medscope.train.engine import build_optimizer

    runtime = runtime_for(mode)
    model = fresh_model(config, data, runtime).train()
    optimizer = build_optimizer(model, config.train)
    loss_fn = torch.nn.CrossEntropyLoss()
    bs = config.train.batch_size
    images = runtime.to_input(torch.randn(bs, config.data.in_chans, config.data.img_size,
                                          config.data.img_size))
    labels = torch.randint(0, len(data.source.classes), (bs,))
    steps = max(n_train // bs, 4)

    def step() -> None:
        train_step(model, images, labels, loss_fn, optimizer, runtime)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * bs / (time.perf_counter() - start)


def reference_rate(config, data, mode: str, epochs: int, workers: int) -> float:
    """What a user writes without medscope: ImageFolder + PIL + per-image transforms in 2
    workers, every epoch; the same model, precision and layout."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets
    from torchvision.transforms import v2

    from medscope.data.transforms import augmentation
    from medscope.train.engine import build_optimizer
    from medscope.train.setup import normalisation_for

    runtime = runtime_for(mode)
    model = fresh_model(config, data, runtime).train()
    mean, std = normalisation_for(config, model, data.pixels["train"])
    size = config.data.img_size
    transform = v2.Compose([
        v2.PILToTensor(), v2.Resize((size, size), antialias=True),
        augmentation(config.data.augment),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    root = Path(config.data.path)
    folder = root / "train" if (root / "train").is_dir() else root
    dataset = datasets.ImageFolder(str(folder), transform=transform,
                                   loader=_pil_rgb)
    wanted = {str(Path(s.path).resolve()) for s in data.samples["train"]}
    keep = [i for i, (p, _) in enumerate(dataset.samples) if str(Path(p).resolve()) in wanted]
    loader = DataLoader(Subset(dataset, keep), batch_size=config.train.batch_size, shuffle=True,
                        num_workers=workers, drop_last=True)
    optimizer = build_optimizer(model, config.train)
    loss_fn = torch.nn.CrossEntropyLoss()
    rate = 0.0
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for images, labels in loader:
            train_step(model, runtime.to_input(images), labels, loss_fn, optimizer, runtime)
            seen += len(labels)
        rate = seen / (time.perf_counter() - start)
    return rate


def _pil_rgb(path: str):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


if __name__ == "__main__":
    main()
