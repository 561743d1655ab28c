"""The ``medscope`` command: parse arguments, build a config, call the API.

A user mistake (``MedscopeError``) prints one line and exits 2; anything else is a bug and
shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medscope.errors import MedscopeError

log = logging.getLogger("medscope")

# Each training option once: flag -> (config key, argparse extras). Help text, choices and type
# come from the config schema (``describe_field``); defaults stay None so that only flags the
# user gives override the recipe (and, with --resume, the saved config).
TRAIN_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "--data": ("data.path", {}),
    "--format": ("data.format", {}),
    "--out": ("out", {}),
    "--model": ("model.name", {}),
    "--pretrained": ("model.pretrained", {}),
    "--freeze": ("train.freeze", {}),
    "--head-lr-mult": ("train.head_lr_mult", {}),
    "--unfreeze-at": ("train.unfreeze_at", {"metavar": "EPOCH"}),
    "--epochs": ("train.epochs", {}),
    "--img-size": ("data.img_size", {}),
    "--in-chans": ("data.in_chans", {}),
    "--batch-size": ("train.batch_size", {}),
    "--lr": ("train.lr", {}),
    "--optimizer": ("train.optimizer", {}),
    "--clip-grad": ("train.clip_grad", {"metavar": "NORM"}),
    "--scheduler": ("train.scheduler", {}),
    "--warmup-epochs": ("train.warmup_epochs", {"metavar": "EPOCHS"}),
    "--label-smoothing": ("train.label_smoothing", {"metavar": "EPS"}),
    "--ema": ("train.ema", {"metavar": "DECAY"}),
    "--progressive-from": ("train.progressive_from", {"metavar": "SIDE"}),
    "--augment": ("data.augment", {}),
    "--balance": ("data.balance", {}),
    "--early-stopping": ("train.early_stopping", {"metavar": "PATIENCE"}),
    "--seed": ("train.seed", {}),
    "--split-seed": ("data.split_seed", {}),
    "--precision": ("train.precision", {}),
    "--device": ("train.device", {}),
    "--compile": ("train.compile", {"action": "store_const", "const": True}),
    "--workers": ("data.num_workers", {}),
    "--split-file": ("data.split_file", {}),
    "--resplit": ("data.resplit", {"action": "store_const", "const": True}),
    "--cache-dir": ("data.cache_dir", {}),
    "--no-cache": ("data.cache", {"action": "store_const", "const": False}),
    "--strict": ("data.strict", {"action": "store_const", "const": True}),
    "--exclude": ("data.exclude", {"metavar": "FILE"}),
    "--duplicates": ("data.duplicates", {}),
    "--group-pattern": ("data.group_pattern", {"metavar": "REGEX"}),
    "--target-accuracy": ("train.target_accuracy", {}),
    "--checkpoint-every": ("train.checkpoint_every", {"metavar": "MINUTES"}),
    "--nan-policy": ("train.nan_policy", {}),
    "--deterministic": ("train.deterministic", {"action": "store_const", "const": True}),
    "--track": ("track", {"metavar": "SPEC"}),
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
    except KeyboardInterrupt as exc:
        from medscope.train.resumable import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            print(f"medscope: {exc}", file=sys.stderr)
            return exc.exit_code
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
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN",
                   help="continue an interrupted run: --resume RUN, or --out RUN --resume")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cv", parents=[common],
                       help="k-fold cross-validation: a run per fold, out-of-fold predictions, "
                            "mean and std table")
    _add_train_args(p)
    p.add_argument("--folds", type=int, default=None,
                   help="number of folds K (default data.folds, else 5)")
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("run", parents=[common],
                       help="run a recipe (recipes/*.yaml): its experiments, then a comparison")
    p.add_argument("recipe", type=Path,
                   help="recipe file, or the name of a shipped one (e.g. six-architectures)")
    p.add_argument("--data", action="append", default=[], metavar="[EXPERIMENT=]PATH",
                   help="data instead of the recipe's default; EXPERIMENT=PATH for one "
                        "experiment (repeatable)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for OUT/<experiment>/ and OUT/comparison/ "
                        "(default runs/<recipe>, runs/<recipe>-quick with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: tiny synthetic data, 32 px, 1 epoch, 2 folds")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="run only these experiments (and those they start from)")
    p.add_argument("--set", action="append", default=[], metavar="[EXPERIMENT:]KEY=VALUE",
                   help="config key for every experiment, or one (repeatable)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed batch-1 forwards per model in the comparison (default 30; "
                        "the recipe's quick value with --quick)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("evaluate", parents=[common],
                       help="metrics of a run (or of several averaged) on its test split or on "
                            "another folder")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                   help="run directory; several: evaluate the average of their calibrated "
                        "probabilities (an ensemble; they must share the test split, or give "
                        "--data) into --out")
    p.add_argument("--data", type=Path, default=None, help="folder with the same classes")
    p.add_argument("--out", type=Path, default=None,
                   help="where metrics.json goes (required for an ensemble)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="fp16: CUDA only")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--target-accuracy", type=float, default=None, metavar="P",
                   help="refer-to-expert target (0-1): its threshold is fitted again on the "
                        "run's validation split (default: the one training fitted)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: logits averaged over the 8 flips/rotations "
                        "(8x the time); written to RUN/eval-tta/ unless --out")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", parents=[common], help="classify images; writes a CSV")
    p.add_argument("run", type=Path, help="run directory or checkpoint")
    p.add_argument("inputs", type=Path, nargs="+", help="image files and/or folders")
    p.add_argument("--out", type=Path, default=None, help="CSV file (default: print)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="fp16: CUDA only")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--tta", action="store_true",
                   help="average over the 8 flips/rotations of each image")
    p.add_argument("--top-k", type=int, default=3, metavar="K", help="classes in top_k column")
    p.add_argument("--abstain-below", type=float, default=None, metavar="P",
                   help="refer_to_expert when the top probability is below P (default: the "
                        "checkpoint's selective threshold if any; 0 = off)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch",
                   help="onnx: onnxruntime on RUN/onnx (exported on the fly if missing); "
                        "onnx-int8: on RUN/onnx-int8 (statically quantized, calibrated on "
                        "the run's training images)")
    p.add_argument("--ensemble", action="store_true",
                   help="RUN (and each --with) is a `medscope cv` directory: average its fold "
                        "models")
    p.add_argument("--with", dest="with_runs", type=Path, action="append", default=[],
                   metavar="RUN", help="another run to average with RUN (repeatable); the "
                   "runs must share classes, and may differ in architecture and image size")
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
    q.add_argument("--group-pattern", metavar="REGEX", default=None,
                   help="groups from the file names, as in `medscope train --group-pattern`: "
                        "counts them and the groups that span the given splits")
    q.set_defaults(func=cmd_data_info)

    p = sub.add_parser("cache", parents=[common], help="the decoded-image cache: size, clear")
    cache_sub = p.add_subparsers(title="cache commands", required=True, metavar="CACHE_COMMAND")
    for name, helptext in (("info", "list the cached datasets, largest use first"),
                           ("clear", "delete every cached dataset")):
        q = cache_sub.add_parser(name, parents=[common], help=helptext)
        q.add_argument("--cache-dir", type=Path, default=None,
                       help="default $MEDSCOPE_CACHE or ~/.cache/medscope")
        q.set_defaults(func=cmd_cache, action=name)

    p = sub.add_parser("report", parents=[common], help="rebuild report.html of a run")
    p.add_argument("run", type=Path)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", parents=[common],
                       help="synth -> patches -> train -> evaluate -> report, end to end")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--per-class", type=int, default=40, help="synthetic slides per class")
    p.add_argument("--config", type=Path, default=Path("demo"),
                   help="training recipe (default recipes/demo.yaml)")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--img-size", type=int, default=None, help="override the recipe's size")
    p.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    p.add_argument("--force", action="store_true", help="replace an earlier demo in --out")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("compare", parents=[common],
                       help="one table across runs: size, CPU speed, accuracy (CSV, MD, HTML)")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN_CV_OR_ENSEMBLE_DIR",
                   help="finished runs, CV directories, and ensembles' evaluation folders "
                        "(medscope evaluate RUN RUN --out DIR)")
    p.add_argument("--out", type=Path, default=Path("comparison"),
                   help="folder for comparison.csv/.md/.html (default ./comparison)")
    p.add_argument("--repeats", type=int, default=30, help="timed batch-1 forwards per model")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads while measuring (default: torch's current count)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("explain", parents=[common],
                       help="heat-map overlays (PNG) of what the model looks at")
    p.add_argument("run", type=Path, help="run directory or checkpoint")
    p.add_argument("inputs", type=Path, nargs="+", help="image files and/or folders")
    p.add_argument("--out", type=Path, required=True, help="folder for the overlays and CSV")
    p.add_argument("--method", choices=["gradcam", "gradcam++", "occlusion"], default="gradcam")
    p.add_argument("--target", default=None, metavar="CLASS",
                   help="class to explain (default: the predicted one)")
    p.add_argument("--layer", default=None, metavar="NAME",
                   help="module name of the target layer (default: chosen per architecture)")
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("export", parents=[common],
                       help="export a run's model (ONNX + JSON metadata)")
    p.add_argument("run", type=Path, help="run directory or checkpoint")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--dynamic-batch", dest="dynamic_batch", action="store_true", default=True,
                   help="any batch size (default)")
    p.add_argument("--static-batch", dest="dynamic_batch", action="store_false",
                   help="batch size fixed to 1")
    p.add_argument("--int8", action="store_true",
                   help="static int8 quantization (onnxruntime), calibrated on the run's "
                        "training images")
    p.add_argument("--calibration-images", type=int, default=256, metavar="N",
                   help="--int8: training images that calibrate activation ranges")
    p.add_argument("--out", type=Path, default=None,
                   help="folder (default: RUN/onnx, or RUN/onnx-int8 with --int8)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", parents=[common],
                       help="serve runs as a JSON API and a web page (127.0.0.1 by default)")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                   help="run directories, or an ensemble's folder (medscope evaluate RUN RUN "
                        "--out DIR): its members averaged")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload (MB)")
    p.add_argument("--token", default=None,
                   help="require 'Authorization: Bearer TOKEN' (default: $MEDSCOPE_TOKEN)")
    p.add_argument("--abstain-below", type=float, default=None, metavar="P",
                   help="refer to an expert below this top probability (default: the "
                        "checkpoint's selective threshold, else 0.5)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="URL",
                   help="allow this web origin to call the API (repeatable; default none)")
    p.set_defaults(func=cmd_serve)

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
    p.add_argument("--group-pattern", metavar="REGEX", default=None,
                   help="source groups from the file names, as in `medscope train "
                        "--group-pattern`: lists those that span splits or folds")
    p.add_argument("--workers", type=int, default=None, help="processes (default: up to 4)")
    p.set_defaults(func=cmd_audit)
    return parser


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from medscope.config import describe_field

    p.add_argument("--config", type=Path,
                   help="YAML recipe: a file or the name of one in recipes/ (e.g. demo)")
    for flag, (key, extra) in TRAIN_OPTIONS.items():
        doc = describe_field(key)
        kwargs: dict[str, Any] = {"dest": _dest(key), "default": None}
        if "action" not in extra:
            kwargs["type"] = doc.type
            if doc.choices:
                kwargs["choices"] = doc.choices
        default = "" if doc.default is None or "action" in extra else f" (default {doc.default})"
        p.add_argument(flag, help=f"{doc.help}{default} [{key}]", **kwargs, **extra)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set train.weight_decay=0.01 (repeatable)")


def _dest(key: str) -> str:
    return "opt_" + key.replace(".", "_")


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
    from medscope.api import resume, train

    if args.resume is not None:
        if args.resume is not True:  # --resume RUN
            if args.opt_out is not None and Path(args.opt_out) != Path(args.resume):
                raise MedscopeError(f"--resume {args.resume} and --out {args.opt_out}: two "
                                    "different runs; give the run to continue once")
            args.opt_out = Path(args.resume)
        if args.opt_out is None:
            raise MedscopeError("--resume needs the run to continue: --resume RUN_DIR "
                                "(or --out RUN_DIR --resume)")
        if args.config is not None:
            raise MedscopeError("--resume continues with the run's saved config; pass single "
                                "options (e.g. --epochs 30) instead of --config")
        run = resume(args.opt_out, explicit_overrides(args), progress=args.progress)
    else:
        run = train(train_config(args), progress=args.progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the whole job
        print(f"run finished: {run.root}  (report: {run.report})")


def cmd_cv(args) -> None:
    from medscope.workflows.cv import run_cv

    if args.opt_out is None:
        raise MedscopeError("cv needs --out DIR (fold_1 ... fold_K go there)")
    config = train_config(args)
    out = run_cv(config, args.folds or config.data.folds or 5, progress=args.progress)
    print((out / "cv_summary.md").read_text())
    print(f"wrote {out / 'cv_summary.csv'}, {out / 'oof_predictions.csv'} and "
          f"{out / 'cv_report.html'}")


def cmd_run(args) -> None:
    from medscope.api import run_recipe

    where = run_recipe(args.recipe, out=args.out, data=args.data, settings=args.set,
                       quick=args.quick, only=args.only, latency_repeats=args.repeats,
                       progress=args.progress)
    print((where / "comparison.md").read_text())
    print(f"wrote {where / 'recipe.md'} and {where / 'comparison.html'}")


def cmd_evaluate(args) -> None:
    from medscope.api import evaluate

    if args.target_accuracy is not None and not 0 < args.target_accuracy < 1:
        raise MedscopeError(f"--target-accuracy {args.target_accuracy}: give a fraction "
                            "between 0 and 1 (e.g. 0.99)")
    if len(args.runs) > 1:
        _evaluate_ensemble(args)
        return
    m = evaluate(args.runs[0], args.data, args.out, precision=args.precision,
                 device=args.device, target_accuracy=args.target_accuracy, tta=args.tta,
                 progress=args.progress)
    print(f"accuracy {m['accuracy']:.4f}  F1 macro {m['f1_macro']:.4f}  "
          f"F1 micro {m['f1_micro']:.4f}  on {m['n']} images{' (TTA)' if args.tta else ''}")


def _evaluate_ensemble(args) -> None:
    from medscope.api import evaluate_ensemble

    if args.out is None:
        raise MedscopeError(f"{len(args.runs)} runs: give --out DIR for the ensemble's "
                            "metrics.json, predictions.csv and plots")
    m = evaluate_ensemble(args.runs, args.out, data_dir=args.data, precision=args.precision,
                          device=args.device, target_accuracy=args.target_accuracy,
                          tta=args.tta, progress=args.progress)
    ci = m["ci"].get("accuracy") or {}
    interval = f" (95% CI {ci['low']:.4f}-{ci['high']:.4f})" if "low" in ci else ""
    print(f"ensemble of {len(args.runs)}: accuracy {m['accuracy']:.4f}{interval}  F1 macro "
          f"{m['f1_macro']:.4f}  on {m['n']} images{' (TTA)' if args.tta else ''}")
    for member in m["ensemble"]["members"]:
        print(f"  {member['run']}: accuracy {member['accuracy']:.4f}  F1 macro "
              f"{member['f1_macro']:.4f}")
    print(f"wrote {Path(args.out) / 'metrics.json'}")


def cmd_predict(args) -> None:
    from medscope.predict import predict_files

    rows = predict_files([args.run, *args.with_runs], args.inputs, args.out,
                         precision=args.precision, device=args.device, progress=args.progress,
                         tta=args.tta, top_k=args.top_k, abstain_below=args.abstain_below,
                         batch_size=args.batch_size, backend=args.backend, ensemble=args.ensemble)
    if args.out:
        print(f"wrote {len(rows)} predictions to {args.out}")
        return
    for r in rows:
        print(f"{r['file']}\t{r['error'] or r['prediction']}\t"
              f"{r['probability'] if r['error'] else format(r['probability'], '.4f')}"
              + ("\trefer to expert" if r["refer_to_expert"] == "yes" else ""))


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

    print(format_info(data_info(args.path, args.format, progress=args.progress,
                                group_pattern=args.group_pattern)))


def cmd_cache(args) -> None:
    from datetime import datetime

    from medscope.data.cache import cache_entries, clear_cache, default_cache_dir

    where = args.cache_dir or default_cache_dir()
    if args.action == "clear":
        removed = clear_cache(where)
        print(f"removed {len(removed)} cached dataset(s), "
              f"{sum(e.bytes for e in removed) / 2**20:.1f} MB, from {where}")
        return
    entries = cache_entries(where)
    print(f"{where}: {len(entries)} dataset(s), {sum(e.bytes for e in entries) / 2**20:.1f} MB")
    for e in entries:
        used = datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M")
        print(f"  {e.key[:12]}  {e.bytes / 2**20:9.1f} MB  {e.n or '?':>6} images  "
              f"{e.size or '?'}px  last used {used}  {e.first}")


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
    given = {"data.img_size": args.img_size, "train.epochs": args.epochs,
             "train.seed": args.seed}
    config = load_config(args.config, {
        "out": str(out / "run"), "data.path": str(out / "patches"),
        **{k: v for k, v in given.items() if v is not None}})
    seed = config.train.seed
    _fresh_demo_dir(out, args.force)
    t0 = time.perf_counter()
    print(f"[1/3] synthesising {args.per_class} micrographs per class -> {out / 'slides'}")
    make_dataset(out / "slides", args.per_class, seed, progress=args.progress)
    print("[2/3] cutting 500x500 patches (stride 250), dropping artifact patches -> "
          f"{out / 'patches'}")
    # Overlapping patches (stride 250) give ~9 per slide; the split keeps a slide's together.
    counts = extract_patches(out / "slides", out / "patches", 500, stride=250,
                             progress=args.progress)
    print(f"      kept {counts.get('ok', 0)}, dropped {_dropped_summary(counts)}")
    print(f"[3/3] training {config.model.name} at {config.data.img_size}px for "
          f"{config.train.epochs} epochs, then evaluating on the held-out test slides")
    run = train(config, progress=args.progress)
    m = read_json(run.metrics)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s: test accuracy "
          f"{m['accuracy']:.4f}, F1 macro {m['f1_macro']:.4f} on {m['n']} patches")
    print(f"report: {run.report}")


def cmd_compare(args) -> None:
    from medscope.report.compare import markdown_table, write_comparison
    from medscope.workflows.compare import compare_runs

    rows = compare_runs(args.runs, latency_repeats=args.repeats, threads=args.threads)
    paths = write_comparison(rows, args.out)
    print(markdown_table(rows))
    print(f"\nwrote {', '.join(map(str, paths))}")

def cmd_explain(args) -> None:
    from medscope.explain import explain_files

    rows = explain_files(args.run, args.inputs, args.out, method=args.method,
                         target=args.target, layer=args.layer, progress=args.progress)
    bad = sum(1 for r in rows if r["error"])
    print(f"wrote {len(rows) - bad} {args.method} overlays to {args.out} "
          f"({bad} unreadable; see {args.out / 'explanations.csv'})")


def cmd_export(args) -> None:
    from medscope.export import export_onnx

    path = export_onnx(args.run, args.out, opset=args.opset, dynamic_batch=args.dynamic_batch,
                       int8=args.int8, calibration_images=args.calibration_images)
    print(f"wrote {path} and {path.with_name('model.json')}")

def cmd_serve(args) -> None:
    import os

    from medscope.threads import prefer_passive_wait

    prefer_passive_wait()  # before torch loads: a server shares the machine (threads.py)
    from medscope.serve import create_app, load_models, serve

    if not 0 < args.port < 65536:
        raise MedscopeError(f"--port {args.port}: must be between 1 and 65535")
    models = load_models(args.runs, abstain_below=args.abstain_below)
    app = create_app(models, max_upload_mb=args.max_upload_mb,
                     token=args.token or os.environ.get("MEDSCOPE_TOKEN") or None,
                     cors_origins=args.cors_origin)
    print(f"serving {', '.join(models)} at http://{args.host}:{args.port}/  (Ctrl-C stops)")
    serve(app, args.host, args.port)

def cmd_audit(args) -> None:
    from medscope.data.audit import PHASH_DISTANCE, summary, write_exclude
    from medscope.report.audit import write_audit
    from medscope.workflows.audit import audit_data

    if args.write_exclude and args.write_exclude.exists():  # before the long scan, not after
        raise MedscopeError(f"{args.write_exclude}: already exists; edit it, or name a new file")
    distance = PHASH_DISTANCE if args.phash_distance is None else args.phash_distance
    audit = audit_data(args.data, args.run, phash_distance=distance, workers=args.workers,
                       progress=args.progress, group_pattern=args.group_pattern)
    page = write_audit(audit, args.out)
    s = summary(audit)
    print(f"{s['images']} images: {s['exact_groups']} exact and {s['near_groups']} near-duplicate "
          f"group(s), {s['leak_groups']} leak(s), {s['conflict_groups']} conflicting label(s), "
          f"{s['label_issues']} suspected label error(s), {s['outliers']} outlier(s); "
          f"{s['unreadable']} unreadable -> {page}")
    if s["source_groups"]:
        print(f"source groups: {s['source_leak_groups']} of {s['source_groups']} span splits "
              f"({s['source_leak_test_images']} test image(s)), "
              f"{s['source_conflict_groups']} with conflicting labels")
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



def explicit_overrides(args) -> dict[str, Any]:
    """The config keys the user set on the command line: training flags and --set items."""
    from medscope.config import parse_override

    overrides = {key: getattr(args, _dest(key)) for key, _ in TRAIN_OPTIONS.values()
                 if getattr(args, _dest(key), None) is not None}
    overrides = {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()}
    overrides.update(parse_override(item) for item in args.set)
    return overrides


def train_config(args):
    from medscope.config import load_config

    return load_config(args.config, explicit_overrides(args))


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
