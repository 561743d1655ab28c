"""Issue #43: what self-supervised pretraining on the lab's unlabeled images buys when labels are
few. DeFungi split once by micrograph (seed 0, group-aware and stratified: 70 % train, 10 %
validation, 20 % test micrographs); ``medscope pretrain`` (SimCLR) on the training micrographs'
images only; then the ``defungi-fast`` resnet10t-64 recipe fine-tuned with 5, 10, 25 and 100 %
of the training labels, from scratch and from the pretrained backbone, seeds 0 and 1.

    python benchmarks/label_efficiency.py [--out DIR] [--data DIR] [--pretrain-epochs N]
        [--fractions 0.05 0.1 0.25 1] [--seeds 0 1] [--quick] [--results FILE] [--plot PNG]

- Never a test image in pretraining: it reads a folder of links to exactly the training
  split's files (``DIR/pretrain_images``), and the script checks that none of their
  micrographs is a validation or test micrograph before it starts.
- Label fractions are drawn by micrograph (a lab labels micrographs, and patches of one
  micrograph are near-copies): per class, the first ceil(f x n) of the class's training
  micrographs in a seeded order (at least one), so the 5 % set lies inside the 10 % set and so
  on; the images of the other training micrographs are left out (``data.exclude``). The
  validation micrographs (model selection) and the test micrographs stay whole for every run.
- Both arms use the recipe's settings unchanged (24 epochs, AdamW 2e-3, label smoothing 0.1);
  the pretrained arm only adds ``model.pretrained``, and with ``--protocols`` how the backbone
  is fine-tuned (``PROTOCOLS``): ``full`` (everything trains from epoch 1) and ``lp-ft``
  (linear probe, then fine-tune, Kumar et al. 2022: the backbone frozen for the first half of
  the epochs, so the new head does not tear the pretrained features apart before it fits).
  One protocol is the benchmark's: the one with the higher mean validation macro-F1 (the
  monitor, on the validation micrographs) over every fraction and seed, so the test
  micrographs never choose it; ``gain_at_10pct`` is that protocol's, every protocol's figures
  are in the file.

Resumable: finished runs are skipped, an interrupted pretraining or fine-tuning continues
(``--resume``); the results file is written after every run. Wall times of each invocation
add up in ``DIR/bench_wall.json`` (a ``kill -9`` loses that invocation's share).
``--quick``: a tiny synthetic set of micrographs (stripes), 32 px, one epoch, fractions 10 and
100 %, seed 0: checks the script runs (seconds), writes ``label_efficiency_quick.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import SHARED_DATA, describe_machine  # noqa: E402

PATTERN = r"([^/]+)_\d+\.jpg$"  # DeFungi: the micrograph H1_100a of train/TSH/H1_100a_3.jpg
RECIPE, EXPERIMENT = "defungi-fast", "resnet10t-64"
GOALS = {"gain_at_10pct_points_min": 5.0, "pretraining_s_max": 2 * 3600}
# How the pretrained arm is fine-tuned: the overrides each protocol adds to the recipe's.
# lp-ft's unfreeze_at "half": the epoch after the first half of the recipe's epochs.
PROTOCOLS = {"full": {}, "lp-ft": {"train.freeze": "backbone", "train.unfreeze_at": "half"}}
# ~6,300 training images at 64 px: ~35 s an epoch of two views on the 2-core CPU (bf16).
PRETRAIN_EPOCHS = 120


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = "python benchmarks/label_efficiency.py " + shlex.join(argv or sys.argv[1:])
    machine = describe_machine()
    print(f"# label efficiency of self-supervised pretraining\n{machine}")
    args.out.mkdir(parents=True, exist_ok=True)
    data = make_quick_data(args.out / "quick_data") if args.quick else args.data
    split = fixed_split(data, args.out)
    pre = pretrain(args, split)
    arms = [("scratch", None), *((p, pre) for p in args.protocols)]
    for fraction in args.fractions:
        for seed in args.seeds:
            for protocol, source in arms:
                finetune(args, split, fraction, seed, source, protocol)
                write_results(args, command, machine, split, pre)
    write_results(args, command, machine, split, pre)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "label-efficiency")
    p.add_argument("--data", type=Path, default=SHARED_DATA / "defungi")
    p.add_argument("--pretrain-epochs", type=int, default=PRETRAIN_EPOCHS)
    p.add_argument("--pretrain-batch", type=int, default=256)
    p.add_argument("--fractions", type=float, nargs="+", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--protocols", nargs="+", choices=list(PROTOCOLS), default=["full"],
                   help="how the pretrained backbone is fine-tuned (PROTOCOLS)")
    p.add_argument("--quick", action="store_true", help="tiny synthetic data: the script runs")
    p.add_argument("--results", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--note", default="", help="recorded as is (e.g. what else ran)")
    args = p.parse_args(argv)
    if not args.quick and not args.data.is_dir():
        p.error(f"--data {args.data}: no such folder (DeFungi, see ../shared/data/README.md)")
    quick = args.quick
    args.fractions = args.fractions or ([0.1, 1.0] if quick else [0.05, 0.1, 0.25, 1.0])
    args.seeds = args.seeds if args.seeds is not None else ([0] if quick else [0, 1])
    if quick:
        args.pretrain_epochs, args.pretrain_batch = 1, 16
    name = "label_efficiency_quick" if quick else "label_efficiency"
    args.results = args.results or ROOT / "benchmarks" / "results" / f"{name}.json"
    args.plot = args.plot or (args.out / f"{name}.png" if quick
                              else ROOT / "docs" / "figures" / f"{name}.png")
    return args


# ---------------------------------------------------------------- data and split


def make_quick_data(root: Path, classes: int = 3, micrographs: int = 8, patches: int = 3
                    ) -> Path:
    """Stripes of one orientation per class, one colour pair per 'micrograph', its patches
    named as DeFungi's (``<micrograph>_<i>.jpg``)."""
    from PIL import Image

    if root.is_dir():
        return root
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:40]
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for m in range(micrographs):
            fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            for i in range(patches):
                period = int(rng.integers(4, 8))
                stripes = ((yy, xx, xx + yy)[c] + i) // (period // 2) % 2
                img = np.where(stripes[..., None] == 1, fg, bg) + rng.normal(0, 8, (40, 40, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                    root / f"class{c}" / f"M{c}x{m}_{i}.jpg", quality=95)
    return root


def fixed_split(data: Path, out: Path) -> dict:
    """The one split by micrograph every run shares (``out/split.csv``), and the per-sample
    facts the label fractions and the pretraining folder need."""
    from medscope.config import load_config
    from medscope.data.prepare import scan_source, splits_from_file, write_splits
    from medscope.data.splits import split_indices

    config = load_config(None, {"data.path": str(data), "data.group_pattern": PATTERN,
                                "data.resplit": True, "data.duplicates": "drop"})
    source, _ = scan_source(config)
    path = out / "split.csv"
    if path.is_file():
        assign = splits_from_file(path, source)
    else:
        assign = split_indices(source.targets(), [s.group for s in source.samples], 0.1, 0.2,
                               0, source.classes)
        write_splits(path, source, assign)
    ids = [source.sample_id(s) for s in source.samples]
    groups = [s.group for s in source.samples]
    split = {"path": path, "data": data, "source": source, "ids": ids, "groups": groups,
             "assign": list(assign), "labels": [int(s.label) for s in source.samples]}
    split["counts"] = {k: {"images": int(sum(a == k for a in assign)),
                           "micrographs": len({g for g, a in zip(groups, assign, strict=True)
                                               if a == k})} for k in ("train", "val", "test")}
    return split


def pretraining_folder(split: dict, out: Path) -> Path:
    """Links to the training split's files only; refuses to go on if any of their micrographs
    is a validation or test micrograph."""
    train = [i for i, a in enumerate(split["assign"]) if a == "train"]
    held_out = {g for g, a in zip(split["groups"], split["assign"], strict=True) if a != "train"}
    leaked = {split["groups"][i] for i in train} & held_out
    if leaked:
        raise SystemExit(f"micrographs in train and held out: {sorted(leaked)[:5]}")
    folder = out / "pretrain_images"
    for i in train:
        link = folder / split["ids"][i]
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(split["source"].samples[i].path.resolve(), link)
    return folder


def label_subset_exclude(split: dict, fraction: float, seed: int, out: Path) -> Path:
    """The exclude file of a fraction: the training images of the micrographs not drawn."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[str]] = {}
    for g, a, y in zip(split["groups"], split["assign"], split["labels"], strict=True):
        if a == "train" and g not in by_class.setdefault(y, []):
            by_class[y].append(g)
    chosen = set()
    for y in sorted(by_class):
        order = sorted(by_class[y])
        rng.shuffle(order)
        chosen.update(order[:max(1, math.ceil(fraction * len(order)))])
    left_out = [i for i, (g, a) in enumerate(zip(split["groups"], split["assign"], strict=True))
                if a == "train" and g not in chosen]
    # The copies the fixed split dropped, too: with part of the images excluded, the scan's
    # duplicate rule would otherwise keep a copy whose twin is excluded, and it has no split.
    dropped = sorted(_image_ids(split["data"]) - set(split["ids"]))
    path = out / f"exclude_{fraction:g}_seed{seed}.txt"
    path.write_text("".join(f"{split['ids'][i]}\n" for i in left_out)
                    + "".join(f"{d}\n" for d in dropped))
    return path


def _image_ids(data: Path) -> set[str]:
    from medscope.data.io import is_image_file

    return {p.relative_to(data).as_posix() for p in Path(data).rglob("*")
            if p.is_file() and is_image_file(p)}


# ---------------------------------------------------------------- runs


def pretrain(args: argparse.Namespace, split: dict) -> Path:
    from medscope import api
    from medscope.config import load_pretrain_config
    from medscope.run import RunDir

    run = RunDir(args.out / "pretrain")
    if run.is_finished():
        return run.root
    start = time.perf_counter()
    try:
        if run.has_partial_run():
            api.resume_pretrain(run.root, progress=False)
        else:
            api.pretrain(load_pretrain_config(None, pretrain_overrides(args, split)),
                         progress=False)
    finally:
        add_wall(args.out, "pretrain", time.perf_counter() - start)
    return run.root


def pretrain_overrides(args: argparse.Namespace, split: dict) -> dict:
    size = 32 if args.quick else 64
    return {"data.paths": [str(pretraining_folder(split, args.out))], "model.name": "resnet10t",
            "out": str(args.out / "pretrain"), "data.img_size": size,
            "train.epochs": args.pretrain_epochs, "train.batch_size": args.pretrain_batch,
            "train.warmup_epochs": 0 if args.quick else 5, "train.seed": 0}


def finetune(args: argparse.Namespace, split: dict, fraction: float, seed: int,
             pre: Path | None, protocol: str = "full") -> None:
    from medscope import api
    from medscope.experiments.recipe import experiment_config, load_recipe
    from medscope.run import RunDir

    run = RunDir(run_dir(args, fraction, seed, pre, protocol))
    if run.is_finished():
        return
    recipe = load_recipe(RECIPE)
    # The fixed split was drawn with copies dropped: the same here, or a dropped copy has no
    # split (a recipe may keep copies grouped instead).
    extra = {"data.split_file": str(split["path"]), "data.group_pattern": PATTERN,
             "data.duplicates": "drop",
             "data.exclude": str(label_subset_exclude(split, fraction, seed, args.out)),
             "train.seed": seed, "model.pretrained": None if pre is None else str(pre)}
    config = experiment_config(recipe, recipe.experiment(EXPERIMENT), out=run.root,
                               data=split["data"], quick=args.quick, extra=extra)
    if pre is not None and PROTOCOLS[protocol]:
        half = config.train.epochs // 2 + 1
        extra |= {k: half if v == "half" else v for k, v in PROTOCOLS[protocol].items()}
        config = experiment_config(recipe, recipe.experiment(EXPERIMENT), out=run.root,
                                   data=split["data"], quick=args.quick, extra=extra)
    start = time.perf_counter()
    try:
        if run.has_partial_run():
            api.resume(run.root, progress=False)
        else:
            api.train(config, progress=False)
    finally:
        add_wall(args.out, run.root.name, time.perf_counter() - start)


def run_dir(args: argparse.Namespace, fraction: float, seed: int, pre: Path | None,
            protocol: str = "full") -> Path:
    arm = "scratch" if pre is None else "pretrained" if protocol == "full" else \
        f"pretrained-{protocol}"
    return args.out / f"{arm}_{fraction:g}_seed{seed}"


def add_wall(out: Path, name: str, seconds: float) -> None:
    path = out / "bench_wall.json"
    walls = json.loads(path.read_text()) if path.is_file() else {}
    walls[name] = round(walls.get(name, 0.0) + seconds, 1)
    path.write_text(json.dumps(walls, indent=2) + "\n")


# ---------------------------------------------------------------- results


def write_results(args: argparse.Namespace, command: str, machine: str, split: dict,
                  pre: Path) -> None:
    walls_path = args.out / "bench_wall.json"
    walls = json.loads(walls_path.read_text()) if walls_path.is_file() else {}
    arms = {f"{f:g}": {arm: arm_figures(args, f, pre if arm != "scratch" else None, arm)
                       for arm in ("scratch", *args.protocols)} for f in args.fractions}
    chosen = selected_protocol(arms, args.protocols)
    fractions = {f: fraction_figures(row, chosen) for f, row in arms.items()}
    ten = fractions.get("0.1", {})
    result = {
        "issue": 43, "command": command, "machine": machine, "quick": args.quick,
        "note": args.note, "data": str(split["data"]), "goals": GOALS,
        "split": {"group_pattern": PATTERN, "seed": 0, "fractions": "70/10/20 % of micrographs",
                  "counts": split["counts"], "label_fractions_by": "micrograph, per class"},
        "pretraining": pretraining_figures(pre, walls.get("pretrain")),
        "finetune": {"recipe": f"{RECIPE} --only {EXPERIMENT}", "seeds": args.seeds,
                     "protocols": {p: PROTOCOLS[p] for p in args.protocols},
                     "selected_protocol": chosen,
                     "selected_by": "mean validation macro-F1 (the monitor) over fractions "
                                    "and seeds"},
        "fractions": fractions, "gain_at_10pct": ten.get("gain_points"),
        "goal_met": goal_met(ten.get("gain_points"), walls.get("pretrain")),
        "plot": str(args.plot.relative_to(ROOT) if args.plot.is_relative_to(ROOT)
                    else args.plot),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    plot(fractions, args.plot)
    for f, row in fractions.items():
        gains = ", ".join(f"{p} {g}" for p, g in row["gain_points_by_protocol"].items())
        print(f"{f}: scratch {row['scratch']['accuracy_mean']}, pretrained ({chosen}) "
              f"{row['pretrained']['accuracy_mean']}, gain {row['gain_points']} points "
              f"(by protocol: {gains})")
    print(f"wrote {args.results}")


def arm_figures(args: argparse.Namespace, fraction: float, pre: Path | None,
                protocol: str) -> dict:
    """Test accuracy per seed (patch and micrograph), and the validation macro-F1 of the
    checkpoint kept (the monitor's best), of one arm at one fraction."""
    per_seed = {}
    for seed in args.seeds:
        run = Path(run_dir(args, fraction, seed, pre, protocol))
        if (run / "metrics.json").is_file():
            m = json.loads((run / "metrics.json").read_text())
            per_seed[str(seed)] = {"accuracy": m["accuracy"],
                                   "micrograph_accuracy": (m.get("group_level") or {}
                                                           ).get("accuracy"),
                                   "val_f1_macro": best_val_f1(run / "history.csv")}
    return {"per_seed": per_seed, "accuracy_mean": _mean(per_seed, "accuracy"),
            "micrograph_accuracy_mean": _mean(per_seed, "micrograph_accuracy"),
            "val_f1_macro_mean": _mean(per_seed, "val_f1_macro")}


def best_val_f1(history: Path) -> float | None:
    from medscope.report.recipe import read_history

    values = [r["val_f1_macro"] for r in read_history(history) if r["val_f1_macro"] is not None]
    return max(values) if values else None


def selected_protocol(arms: dict, protocols: list[str]) -> str:
    """The protocol with the highest mean validation macro-F1 over every fraction and seed it
    has finished (the first listed while none has)."""
    def score(p: str) -> float:
        values = [v["val_f1_macro"] for row in arms.values()
                  for v in row[p]["per_seed"].values() if v.get("val_f1_macro") is not None]
        return float(np.mean(values)) if values else -1.0
    return max(protocols, key=lambda p: (score(p), -protocols.index(p)))


def fraction_figures(row: dict, chosen: str) -> dict:
    """One fraction: scratch, the selected protocol as ``pretrained``, every protocol's arm
    and gain."""
    def gain(arm: dict) -> float | None:
        a, b = row["scratch"]["accuracy_mean"], arm["accuracy_mean"]
        return None if a is None or b is None else round(100 * (b - a), 2)
    protocols = {p: arm for p, arm in row.items() if p != "scratch"}
    return {"scratch": row["scratch"], "pretrained": {**row[chosen], "protocol": chosen},
            "gain_points": gain(row[chosen]),
            "by_protocol": protocols,
            "gain_points_by_protocol": {p: gain(arm) for p, arm in protocols.items()}}


def _mean(per_seed: dict, key: str) -> float | None:
    values = [v[key] for v in per_seed.values() if v.get(key) is not None]
    return round(float(np.mean(values)), 4) if values else None


def pretraining_figures(pre: Path, wall: float | None) -> dict:
    metrics = pre / "metrics.json"
    found = json.loads(metrics.read_text()) if metrics.is_file() else {}
    keep = ("model", "objective", "images", "image_size", "epochs", "epochs_done",
            "batch_size", "temperature", "proj_dim", "augment", "final_loss",
            "final_partner_accuracy", "train_seconds")
    return {**{k: found.get(k) for k in keep}, "wall_s": wall, "run": str(pre)}


def goal_met(gain: float | None, wall: float | None) -> bool | None:
    if gain is None or wall is None:
        return None
    return gain >= GOALS["gain_at_10pct_points_min"] and wall <= GOALS["pretraining_s_max"]


def plot(fractions: dict, path: Path) -> None:
    """Test accuracy against the share of labels: scratch and each fine-tuning protocol (the
    means as lines, each seed as a dot)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    xs = [100 * float(f) for f in fractions]
    first = next(iter(fractions.values()))
    arms = {"scratch": [row["scratch"] for row in fractions.values()]}
    for protocol in first.get("by_protocol", {}):
        arms[f"pretrained, {protocol}"] = [row["by_protocol"][protocol]
                                           for row in fractions.values()]
    for (label, cells), style in zip(arms.items(), ("o-", "s-", "^-", "d-"), strict=False):
        means = [c["accuracy_mean"] for c in cells]
        ax.plot(xs, [np.nan if m is None else m for m in means], style, label=label)
        for x, cell in zip(xs, cells, strict=True):
            seeds = [v["accuracy"] for v in cell["per_seed"].values()]
            ax.plot([x] * len(seeds), seeds, "k.", alpha=0.4)
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g} %" for x in xs])
    ax.set_xlabel("training labels (by micrograph)")
    ax.set_ylabel("test accuracy (new micrographs)")
    ax.set_title("DeFungi, resnet10t 64 px: from scratch vs SimCLR-pretrained")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
