"""The ``medscope`` command: parse arguments, build a config, call the API.

A user mistake (``MedscopeError``) prints one line and exits 2; anything else is a bug and
shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medscope.errors import MedscopeError

log = logging.getLogger("medscope")

# CLI flag -> config key; only flags the user actually gives override the YAML recipe.
TRAIN_FLAGS = {
    "data": "data.path", "img_size": "data.img_size", "in_chans": "data.in_chans",
    "augment": "data.augment", "strict": "data.strict", "split_file": "data.split_file",
    "format": "data.format", "balance": "data.balance", "cache_dir": "data.cache_dir",
    "cache": "data.cache",
    "workers": "data.num_workers", "model": "model.name", "pretrained": "model.pretrained",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr",
    "optimizer": "train.optimizer", "seed": "train.seed", "precision": "train.precision",
    "device": "train.device", "early_stopping": "train.early_stopping", "out": "out",
    "freeze": "train.freeze", "head_lr_mult": "train.head_lr_mult",
    "unfreeze_at": "train.unfreeze_at", "clip_grad": "train.clip_grad",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.quiet)
    # Progress bars only on a terminal; logs and CI get one line per epoch instead.
    args.progress = not args.quiet and sys.stderr.isatty()
    try:
        return args.func(args) or 0
    except MedscopeError as exc:
        print(f"medscope: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medscope: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medscope", description="Train, evaluate and use CNN classifiers for medical images.")
    parser.add_argument("--version", action="version", version=_version())
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or logs")
    sub = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", parents=[common], help="generate the built-in micrograph dataset")
    p.add_argument("--out", type=Path, required=True, help="folder to create")
    p.add_argument("--per-class", type=int, default=40, help="slides per class (default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=1000, help="slide side in pixels (>= 1000)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("patches", parents=[common],
                       help="cut micrographs into patches, dropping artifact patches")
    p.add_argument("src", type=Path, help="folder with one sub-folder of micrographs per class")
    p.add_argument("dst", type=Path, help="folder for the patches and patches.csv")
    p.add_argument("--size", type=int, default=500, help="patch side in pixels (default 500)")
    p.add_argument("--stride", type=int, default=None, help="step between patches (default size)")
    p.add_argument("--dark-level", type=int, default=40, help="luminance below which = dark")
    p.add_argument("--max-dark", type=float, default=0.4, help="max share of dark pixels")
    p.add_argument("--tissue-delta", type=float, default=30.0,
                   help="colour distance from background that counts as specimen")
    p.add_argument("--min-tissue", type=float, default=0.015, help="min share of specimen")
    p.add_argument("--noise-corr", type=float, default=0.35,
                   help="neighbour correlation below which a varied patch is noise")
    p.add_argument("--save-dropped", action="store_true",
                   help="also write dropped patches to DST/_dropped/<reason>/")
    p.add_argument("--overwrite", action="store_true", help="replace an existing patches.csv")
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    p.set_defaults(func=cmd_patches)

    p = sub.add_parser("train", parents=[common], help="train a classifier; writes a run dir")
    _add_train_args(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", parents=[common],
                       help="metrics of a run on its test split or on another folder")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--data", type=Path, default=None, help="folder with the same classes")
    p.add_argument("--out", type=Path, default=None, help="where metrics.json goes")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", parents=[common], help="classify images; writes a CSV")
    p.add_argument("run", type=Path, help="run directory or checkpoint")
    p.add_argument("inputs", type=Path, nargs="+", help="image files and/or folders")
    p.add_argument("--out", type=Path, default=None, help="CSV file (default: print)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", parents=[common],
                       help="list architectures with parameters and GMACs")
    p.add_argument("--img-size", type=int, default=224, help="input size for GMACs")
    p.add_argument("--filter", default="*", help="glob pattern, e.g. 'resnet*'")
    p.add_argument("--in-chans", type=int, default=3, choices=[1, 3])
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", parents=[common], help="inspect a dataset")
    data_sub = p.add_subparsers(title="data commands", required=True, metavar="DATA_COMMAND")
    q = data_sub.add_parser("info", parents=[common],
                            help="counts per class and split, sizes, modes, duplicates, bad files")
    q.add_argument("path", type=Path, help="image folder, CSV or .npz")
    q.add_argument("--format", choices=["auto", "folder", "csv", "npz"], default="auto")
    q.set_defaults(func=cmd_data_info)

    p = sub.add_parser("report", parents=[common], help="rebuild report.html of a run")
    p.add_argument("run", type=Path)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", parents=[common],
                       help="synth -> patches -> train -> evaluate -> report, end to end")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--per-class", type=int, default=40, help="synthetic slides per class")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--img-size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an earlier demo in --out")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("audit", parents=[common],
                       help="duplicates, leaks, label errors and outliers of a dataset")
    p.add_argument("data", type=Path, help="image folder, CSV or .npz")
    p.add_argument("--run", type=Path, default=None,
                   help="a `medscope cv` directory (label errors from out-of-fold "
                        "probabilities) or a run directory (its splits and test predictions)")
    p.add_argument("--out", type=Path, default=Path("audit"),
                   help="folder for audit.html and the audit_*.csv files (default ./audit)")
    p.add_argument("--phash-distance", type=int, default=None,
                   help="max pHash Hamming distance (of 64 bits) of near-duplicates (default 6)")
    p.add_argument("--write-exclude", type=Path, default=None, metavar="FILE",
                   help="also write the suspects (test-side copies of leaks, conflicting "
                        "copies, top label errors) as a commented list to edit")
    p.add_argument("--workers", type=int, default=None, help="processes (default: up to 4)")
    p.set_defaults(func=cmd_audit)
    return parser


def _add_train_args(p: argparse.ArgumentParser) -> None:
    # Defaults are None so that only flags given on the command line override the recipe.
    p.add_argument("--config", type=Path, help="YAML recipe (see recipes/)")
    p.add_argument("--data", type=Path,
                   help="image folder (one sub-folder per class, or train/val/test/<class>), "
                        "CSV or MedMNIST .npz")
    p.add_argument("--format", choices=["auto", "folder", "csv", "npz"],
                   help="data kind (default: detected)")
    p.add_argument("--balance", choices=["none", "weights", "sampler"],
                   help="class imbalance: loss weights or a weighted sampler")
    p.add_argument("--cache-dir", type=Path, help="decoded-image cache (default ~/.cache/medscope)")
    p.add_argument("--no-cache", dest="cache", action="store_false", default=None,
                   help="decode images in memory only, no disk cache")
    p.add_argument("--out", type=Path, help="run directory to create")
    p.add_argument("--model", help="architecture name (`medscope models` lists them)")
    p.add_argument("--pretrained", help="local weights file or hub id")
    p.add_argument("--freeze", help="none | backbone | stages:N (frozen layers get no gradient)")
    p.add_argument("--head-lr-mult", type=float, help="classifier learning rate = lr x this")
    p.add_argument("--unfreeze-at", type=int, metavar="EPOCH",
                   help="train everything from this epoch on (two-phase fine-tuning)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--img-size", type=int, help="training resolution")
    p.add_argument("--in-chans", type=int, choices=[1, 3])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["adamw", "sgd"])
    p.add_argument("--clip-grad", type=float, metavar="NORM",
                   help="clip the global gradient norm (steadies a high lr)")
    p.add_argument("--augment", help="augmentation preset: none, flips, microscopy, "
                   "keras-classic, randaugment")
    p.add_argument("--early-stopping", type=int, metavar="PATIENCE")
    p.add_argument("--seed", type=int)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--workers", type=int, help="data loader worker processes")
    p.add_argument("--split-file", type=Path, help="re-use the split of an earlier run")
    p.add_argument("--strict", action="store_true", default=None,
                   help="stop at the first unreadable image instead of skipping it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set train.weight_decay=0.01 (repeatable)")


# ---------------------------------------------------------------- commands


def cmd_synth(args) -> None:
    from medscope.data.synth import make_dataset

    if args.size < 1000:
        raise MedscopeError(f"--size {args.size}: slides must be at least 1000 px")
    _check_per_class(args.per_class)
    out = make_dataset(args.out, args.per_class, args.seed, args.size, progress=args.progress)
    print(f"wrote {args.per_class * 5} slides to {out}")


def cmd_patches(args) -> None:
    from medscope.data.patches import PatchFilter, extract_patches

    flt = PatchFilter(dark_level=args.dark_level, max_dark=args.max_dark,
                      tissue_delta=args.tissue_delta, min_tissue=args.min_tissue,
                      noise_corr=args.noise_corr)
    counts = extract_patches(args.src, args.dst, args.size, args.stride, flt,
                             save_dropped=args.save_dropped, overwrite=args.overwrite,
                             workers=args.workers, progress=args.progress)
    kept = counts.get("ok", 0)
    print(f"kept {kept} patches in {args.dst} (dropped: {_dropped_summary(counts)}); "
          f"manifest {args.dst / 'patches.csv'}")


def cmd_train(args) -> None:
    from medscope.api import train

    run = train(train_config(args), resume=args.resume, progress=args.progress)
    print(f"run finished: {run.root}  (report: {run.report})")


def cmd_evaluate(args) -> None:
    from medscope.api import evaluate

    m = evaluate(args.run, args.data, args.out, progress=args.progress)
    print(f"accuracy {m['accuracy']:.4f}  F1 macro {m['f1_macro']:.4f}  "
          f"F1 micro {m['f1_micro']:.4f}  on {m['n']} images")


def cmd_predict(args) -> None:
    from medscope.predict import predict_files

    rows = predict_files(args.run, args.inputs, args.out, precision=args.precision,
                         progress=args.progress)
    if args.out:
        print(f"wrote {len(rows)} predictions to {args.out}")
        return
    for r in rows:
        print(f"{r['file']}\t{r['error'] or r['prediction']}\t"
              f"{r['probability'] if r['error'] else format(r['probability'], '.4f')}")


def cmd_models(args) -> None:
    from medscope.models import zoo_table

    rows = zoo_table(args.img_size, args.filter, in_chans=args.in_chans)
    if not rows:
        raise MedscopeError(f"no model matches {args.filter!r}")
    print(f"{'name':<26}{'source':<10}{'params':>14}{'GMACs@' + str(args.img_size):>12}"
          f"{'default':>9}{'min':>6}  note")
    for r in rows:
        params = f"{r['params']:,}" if r["params"] is not None else "-"
        macs = f"{r['gmacs']:.3f}" if r["gmacs"] is not None else "-"
        print(f"{r['name']:<26}{r['source']:<10}{params:>14}{macs:>12}"
              f"{r['default_size'] or '-':>9}{r['min_size'] or '-':>6}  {r['note']}")

def cmd_data_info(args) -> None:
    from medscope.data.info import data_info, format_info

    print(format_info(data_info(args.path, args.format, progress=args.progress)))


def cmd_report(args) -> None:
    from medscope.report.html import render_report
    from medscope.run import RunDir

    run = RunDir(args.run)
    run.require_finished()
    if not run.metrics.is_file():
        raise MedscopeError(f"{run.root}: no metrics.json; run `medscope evaluate` first")
    print(f"wrote {render_report(run)}")


def cmd_demo(args) -> None:
    """The main job end to end on the built-in dataset."""
    from medscope.api import train
    from medscope.config import load_config
    from medscope.data.patches import extract_patches
    from medscope.data.synth import make_dataset
    from medscope.run import read_json

    _check_per_class(args.per_class)
    out: Path = args.out
    # Built before any work so that a bad --epochs or --img-size fails at once.
    # lr 1e-3 after 3 warm-up epochs, 30 epochs: the flatten head still underfits at 15 epochs
    # with lr 3e-4 (test 0.81); without warm-up lr 1e-3 diverges in epoch 1.
    config = load_config(overrides={
        "out": str(out / "run"), "data.path": str(out / "patches"),
        "data.img_size": args.img_size, "model.name": "simple_cnn",
        "train.epochs": args.epochs, "train.seed": args.seed, "train.lr": 1e-3,
        "train.warmup_epochs": 3, "train.batch_size": 32})
    _fresh_demo_dir(out, args.force)
    t0 = time.perf_counter()
    print(f"[1/3] synthesising {args.per_class} micrographs per class -> {out / 'slides'}")
    make_dataset(out / "slides", args.per_class, args.seed, progress=args.progress)
    print("[2/3] cutting 500x500 patches (stride 250), dropping artifact patches -> "
          f"{out / 'patches'}")
    # Overlapping patches (stride 250) give ~9 per slide; the split keeps a slide's together.
    counts = extract_patches(out / "slides", out / "patches", 500, stride=250,
                             progress=args.progress)
    print(f"      kept {counts.get('ok', 0)}, dropped {_dropped_summary(counts)}")
    print(f"[3/3] training simple_cnn at {args.img_size}px for {args.epochs} epochs, "
          "then evaluating on the held-out test slides")
    run = train(config, progress=args.progress)
    m = read_json(run.metrics)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s: test accuracy "
          f"{m['accuracy']:.4f}, F1 macro {m['f1_macro']:.4f} on {m['n']} patches")
    print(f"report: {run.report}")


def cmd_audit(args) -> None:
    from medscope.data.audit import PHASH_DISTANCE, audit_data, summary, write_exclude
    from medscope.report.audit import write_audit

    if args.write_exclude and args.write_exclude.exists():  # before the long scan, not after
        raise MedscopeError(f"{args.write_exclude}: already exists; edit it, or name a new file")
    distance = PHASH_DISTANCE if args.phash_distance is None else args.phash_distance
    audit = audit_data(args.data, args.run, phash_distance=distance, workers=args.workers,
                       progress=args.progress)
    page = write_audit(audit, args.out)
    s = summary(audit)
    print(f"{s['images']} images: {s['exact_groups']} exact and {s['near_groups']} near-duplicate "
          f"group(s), {s['leak_groups']} leak(s), {s['conflict_groups']} conflicting label(s), "
          f"{s['label_issues']} suspected label error(s), {s['outliers']} outlier(s); "
          f"{s['unreadable']} unreadable -> {page}")
    if args.write_exclude:
        n = write_exclude(audit, args.write_exclude)
        print(f"wrote {n} suspect(s) to {args.write_exclude}: review and edit before use")


# ---------------------------------------------------------------- helpers

DEMO_MARKER = ".medscope-demo"


def _fresh_demo_dir(out: Path, force: bool) -> None:
    """An empty ``out`` for the demo. --force replaces an earlier demo, and only that: a folder
    without the demo's marker (or an older demo's slides/synth.json) is never deleted."""
    if out.exists():
        if not out.is_dir():
            raise MedscopeError(f"{out}: exists and is not a directory")
        if not force:
            raise MedscopeError(f"{out}: exists; pass --force to replace the earlier demo")
        earlier = (out / DEMO_MARKER).is_file() or (out / "slides" / "synth.json").is_file()
        if any(out.iterdir()) and not earlier:
            raise MedscopeError(f"{out}: not an earlier medscope demo; refusing to delete it "
                                "(choose another --out)")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / DEMO_MARKER).write_text("made by `medscope demo`; --force may replace this folder\n")


def _check_per_class(n: int) -> None:
    if n < 1:
        raise MedscopeError(f"--per-class {n}: must be at least 1")


def _dropped_summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "ok") or "none"



def train_config(args):
    from medscope.config import load_config, parse_override

    overrides: dict[str, Any] = {key: getattr(args, flag) for flag, key in TRAIN_FLAGS.items()
                                 if getattr(args, flag, None) is not None}
    overrides = {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()}
    overrides.update(parse_override(item) for item in args.set)
    return load_config(args.config, overrides)


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def _version() -> str:
    from medscope import __version__

    return f"medscope {__version__}"


if __name__ == "__main__":
    sys.exit(main())
