"""Time to accuracy: the DeFungi speedrun (issue #12 part 4), test accuracy against wall time.

    python benchmarks/speedrun.py [--recipe defungi-fast] [--experiment NAME]
        [--data ../shared/data/defungi] [--seeds 0,1,2] [--target 0.85] [--budget-min 8]
        [--set KEY=VALUE ...] [--tta] [--out FILE]

Each seed trains the recipe's first experiment (or ``--experiment NAME``) from nothing: its own
empty decode cache, so the clock (started before the data is scanned) includes decoding, model
creation and every epoch's validation. After each epoch a callback copies the weights
(milliseconds; the copy time is taken off the clock); once training ends each copy is scored on
the test split, giving the curve of test accuracy against wall time; with ``--tta`` one more
point, the last weights on the 8 flips/rotations averaged, at the last epoch's time plus that
inference (the test images are decoded once, off the clock, for every point alike). The
evaluation, calibration and report that `medscope train` writes after the last epoch are timed
separately ("after training").

Printed: per seed, the curve (epoch, wall s, val accuracy, test accuracy, test macro-F1) and
the time to ``--target`` test accuracy; then the median over seeds of the final test accuracy
and of the time to target, and whether the median run reached the target within
``--budget-min`` minutes. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import Report, describe_machine  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = Report(args.out)
    report(f"# speedrun: {args.recipe}, test accuracy against wall time (decoding included)")
    report(describe_machine())
    report(f"experiment {args.chosen[1].name}; data {args.data}; seeds {args.seeds}; "
           f"target {args.target:.3f} within {args.budget_min:g} min; "
           f"overrides {args.set or 'none'}")
    results = []
    with tempfile.TemporaryDirectory(prefix="medscope-speedrun-") as tmp:
        for seed in args.seeds:
            results.append(one_seed(args, seed, Path(tmp) / f"seed-{seed}", report))
    summarise(args, results, report)
    report.save()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="defungi-fast")
    ap.add_argument("--experiment", default=None, metavar="NAME",
                    help="which of the recipe's experiments to train (default: the first)")
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "defungi")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--target", type=float, default=0.85)
    ap.add_argument("--budget-min", type=float, default=8.0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the recipe's base (dotted key, YAML value); repeatable")
    ap.add_argument("--tta", action="store_true",
                    help="also score the last epoch's weights with the 8 dihedral views averaged, "
                         "its inference time added to the wall clock")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from medscope.config import parse_override
    from medscope.errors import MedscopeError

    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s]
        args.overrides = dict(map(parse_override, args.set))
        args.chosen = chosen_experiment(args)  # the recipe is read once, here
    except (ValueError, MedscopeError) as exc:
        ap.error(str(exc))
    return args


def chosen_experiment(args: argparse.Namespace):
    """The recipe and the experiment the speedrun trains (``--experiment``, else the first)."""
    from medscope.errors import MedscopeError
    from medscope.experiments.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    if args.experiment is None:
        return recipe, recipe.experiments[0]
    for exp in recipe.experiments:
        if exp.name == args.experiment:
            return recipe, exp
    names = ", ".join(e.name for e in recipe.experiments)
    raise MedscopeError(f"--experiment {args.experiment}: not in {args.recipe} ({names})")


def speedrun_config(args: argparse.Namespace, seed: int, work: Path):
    from medscope.experiments.recipe import experiment_config

    recipe, experiment = args.chosen
    extra = {"train.seed": seed, "data.cache_dir": str(work / "cache"), **args.overrides}
    return experiment_config(recipe, experiment, out=work / "run", data=args.data, extra=extra)


def one_seed(args: argparse.Namespace, seed: int, work: Path, report: Report) -> dict:
    from medscope.api import train
    from medscope.core.runtime import unwrap

    config = speedrun_config(args, seed, work)
    snapshots: list[dict] = []
    paused = 0.0

    def snapshot(model, _optimizer, state, row, _is_best) -> None:
        nonlocal paused
        t = time.perf_counter()
        snapshots.append({"epoch": int(row["epoch"]), "wall": t - start - paused,
                          "val": float(row.get("val_accuracy", "nan")),
                          "state": {k: v.detach().to("cpu", copy=True)
                                    for k, v in state.validated(unwrap(model))
                                    .state_dict().items()}})
        paused += time.perf_counter() - t

    start = time.perf_counter()
    run = train(config, progress=False, callbacks=[snapshot])
    after = time.perf_counter() - start - paused - snapshots[-1]["wall"]
    curve = score_snapshots(run.root, snapshots, tta=args.tta)
    hit = next((c["wall"] for c in curve if c["test"] >= args.target), None)
    report()
    report(f"## seed {seed}: {config.model.name} at {config.data.img_size} px, "
           f"{config.train.epochs} epochs, batch {config.train.batch_size}; after training "
           f"(calibration, test evaluation, report) {after:.0f} s")
    report("| epoch | wall s | val accuracy | test accuracy | test macro-F1 |")
    report("|---|---|---|---|---|")
    for c in curve:
        report(f"| {c['epoch']}{' + TTA' if c.get('tta') else ''} | {c['wall']:.1f} | "
               f"{c['val']:.4f} | {c['test']:.4f} | {c['f1']:.4f} |")
    report(f"time to {args.target:.2f} test accuracy: "
           f"{f'{hit:.0f} s ({hit / 60:.1f} min)' if hit is not None else 'not reached'}")
    return {"seed": seed, "curve": curve, "hit": hit}


def score_snapshots(run_root: Path, snapshots: list[dict], *, tta: bool = False) -> list[dict]:
    """Test accuracy and macro-F1 of each epoch's weights on the run's test split; with ``tta``
    one more point: the last weights scored on the 8 dihedral views averaged, at the last
    epoch's wall time plus the time that inference took."""
    import numpy as np
    from sklearn.metrics import f1_score

    from medscope.data.prepare import run_split
    from medscope.predictor import Predictor, tta_logits
    from medscope.run import RunDir

    predictor = Predictor.load(run_root)
    samples, _, _ = run_split(RunDir(run_root), predictor.classes, "test")
    decoded = predictor.decode(samples, progress=False)
    labels = np.array([samples[i].label for i in decoded.kept])
    pixels = np.asarray(decoded.pixels)

    def point(snap: dict, pred: np.ndarray, wall: float, **extra) -> dict:
        return {"epoch": snap["epoch"], "wall": wall, "val": snap["val"],
                "test": float((pred == labels).mean()),
                "f1": float(f1_score(labels, pred, average="macro")), **extra}

    curve = []
    for snap in snapshots:
        predictor.model.load_state_dict(snap["state"])
        curve.append(point(snap, predictor.logits_from_pixels(pixels).argmax(1), snap["wall"]))
    if tta:
        t = time.perf_counter()
        pred = tta_logits(predictor, pixels).argmax(1)
        last = snapshots[-1]
        curve.append(point(last, pred, last["wall"] + time.perf_counter() - t, tta=True))
    return curve


def summarise(args: argparse.Namespace, results: list[dict], report: Report) -> None:
    trained = [[c for c in r["curve"] if not c.get("tta")][-1] for r in results]
    finals = [c["test"] for c in trained]
    walls = [c["wall"] for c in trained]
    hits = [r["hit"] for r in results]
    report()
    report(f"## median over {len(results)} seed(s)")
    report(f"final test accuracy: median {statistics.median(finals):.4f} (runs: "
           f"{', '.join(f'{a:.4f}' for a in finals)}); training wall median "
           f"{statistics.median(walls):.0f} s")
    tta = [r["curve"][-1] for r in results if r["curve"][-1].get("tta")]
    if tta:
        accs = [c["test"] for c in tta]
        report(f"with TTA: median {statistics.median(accs):.4f} (runs: "
               f"{', '.join(f'{a:.4f}' for a in accs)}); wall median "
               f"{statistics.median(c['wall'] for c in tta):.0f} s")
    reached = [h for h in hits if h is not None]
    if len(reached) * 2 > len(hits):
        # The median of times where an unreached run counts as infinitely slow.
        ordered = sorted(h if h is not None else float("inf") for h in hits)
        median = ordered[len(ordered) // 2]
        verdict = "within" if median <= args.budget_min * 60 else "over"
        report(f"time to {args.target:.2f}: median {median:.0f} s ({median / 60:.1f} min), "
               f"{verdict} the {args.budget_min:g} min budget")
    else:
        report(f"time to {args.target:.2f}: not reached by the median run "
               f"({len(reached)} of {len(hits)} seeds reached it)")


if __name__ == "__main__":
    from medscope.errors import MedscopeError

    try:
        main()
    except MedscopeError as exc:  # a bad recipe, data path or setting: one line, exit 1
        raise SystemExit(f"speedrun: {exc}") from None
