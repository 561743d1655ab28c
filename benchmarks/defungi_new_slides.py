"""Issue #42: DeFungi on new micrographs. Runs the ``defungi-new-slides`` recipe (5-fold CV
grouped by micrograph, one CV per lever) experiment by experiment and writes
``benchmarks/results/defungi_new_slides.json`` itself after each experiment.

    python benchmarks/defungi_new_slides.py [--only baseline stain-aug ...] [--out DIR]
        [--data DIR] [--quick] [--results FILE] [--collect]

Resumable: the CV skips finished folds and resumes an interrupted one (``medscope.workflows.cv``),
so after any interruption run the same command again. The wall time of every invocation is
added to ``DIR/bench_wall.json`` per experiment (a ``kill -9`` loses the current invocation's
share; the summed per-epoch training seconds from each fold's history.csv are recorded beside
it as a floor). ``--collect`` runs nothing: it writes the results file from what ``DIR`` holds,
finished experiments in ``experiments`` and, for unfinished ones, the folds done so far in
``partial`` (so an interrupted sweep can be committed honestly).

Per experiment: ``folds``; ``patch_accuracy_mean/std`` and ``group_accuracy_mean/std`` (mean and
sample std over folds; group = micrograph, its patches' probabilities averaged);
``patch_f1_macro_mean/std``, ``group_balanced_accuracy_mean``; the pooled out-of-fold figures
with CIs over micrographs; ``wall_s``; the exact command. Accuracy figures do not need a quiet
machine; ``wall_s`` does (the file says what else ran only if you tell it: ``--note``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import SHARED_DATA, describe_machine  # noqa: E402

RECIPE = "defungi-new-slides"
ORDER = ("baseline", "stain-aug", "stain-norm", "microscopy", "res96")
GOALS = {"patch_accuracy_mean": 0.85, "group_accuracy_mean": 0.95, "budget_s_per_cv": 3 * 3600}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    command = "python benchmarks/defungi_new_slides.py " + shlex.join(argv or sys.argv[1:])
    machine = describe_machine()
    print(f"# {RECIPE}: 5-fold CV grouped by micrograph\n{machine}")
    if args.collect:
        write_results(args, command, machine)
        return
    for name in args.only:  # the results file after every experiment, as each one finishes
        try:
            run_experiment(args, name)
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGINT: resumable, one line, no traceback
            print(f"interrupted in {name}: {exc or 'KeyboardInterrupt'}; the same command "
                  "continues it (--collect writes the folds done so far)", file=sys.stderr)
            raise SystemExit(130) from None
        write_results(args, command, machine)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", default=list(ORDER), help="experiments, in this order")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / RECIPE)
    p.add_argument("--data", type=Path, default=SHARED_DATA / "defungi")
    p.add_argument("--quick", action="store_true", help="the recipe's tiny synthetic smoke test")
    p.add_argument("--results", type=Path, default=None)
    p.add_argument("--collect", action="store_true", help="write the results file only")
    p.add_argument("--note", default="", help="recorded as is (e.g. what else ran)")
    args = p.parse_args(argv)
    if not args.quick and not args.data.is_dir():
        p.error(f"--data {args.data}: no such folder (DeFungi, see ../shared/data/README.md)")
    if args.results is None:
        name = "defungi_new_slides_quick.json" if args.quick else "defungi_new_slides.json"
        args.results = ROOT / "benchmarks" / "results" / name
    return args


def run_experiment(args: argparse.Namespace, name: str) -> None:
    from medscope.experiments.runner import run_recipe

    start = time.perf_counter()
    try:
        run_recipe(RECIPE, out=args.out, data=None if args.quick else [str(args.data)],
                   quick=args.quick, only=[name], progress=False)
    finally:
        add_wall(args.out, name, time.perf_counter() - start)


def add_wall(out: Path, name: str, seconds: float) -> None:
    path = out / "bench_wall.json"
    walls = json.loads(path.read_text()) if path.is_file() else {}
    walls[name] = round(walls.get(name, 0.0) + seconds, 1)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(walls, indent=2) + "\n")


def write_results(args: argparse.Namespace, command: str, machine: str) -> None:
    walls_path = args.out / "bench_wall.json"
    walls = json.loads(walls_path.read_text()) if walls_path.is_file() else {}
    finished, partial = {}, {}
    for name in ORDER:
        folder = args.out / name
        if (folder / "cv_summary.json").is_file():
            finished[name] = experiment_figures(folder, walls.get(name))
        elif any(folder.glob("fold_*/metrics.json")):
            partial[name] = fold_figures(folder)
    result = {"recipe": RECIPE, "command": command, "machine": machine, "quick": args.quick,
              "data": str(args.data), "goals": GOALS, "note": args.note,
              "experiments": finished, "partial": partial, "best": best_of(finished)}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    for name, e in finished.items():
        print(f"{name}: patch {e['patch_accuracy_mean']:.4f} ± {e['patch_accuracy_std']:.4f}, "
              f"micrograph {e['group_accuracy_mean']:.4f} ± {e['group_accuracy_std']:.4f}, "
              f"{e['wall_s']} s")
    print(f"wrote {args.results}")


def experiment_figures(folder: Path, wall: float | None) -> dict:
    from medscope.run import RunDir
    from medscope.workflows.compare import training_seconds

    summary = json.loads((folder / "cv_summary.json").read_text())
    mean, std, pooled = summary["mean"], summary["std"], summary.get("pooled") or {}
    folds = summary["folds"]
    train_s = [training_seconds(RunDir(folder / f"fold_{k + 1}").history) for k in range(folds)]
    return {
        "folds": folds,
        "patch_accuracy_mean": mean["accuracy"], "patch_accuracy_std": std["accuracy"],
        "group_accuracy_mean": mean.get("group_accuracy"),
        "group_accuracy_std": std.get("group_accuracy"),
        "patch_f1_macro_mean": mean["f1_macro"], "patch_f1_macro_std": std["f1_macro"],
        "group_balanced_accuracy_mean": mean.get("group_balanced_accuracy"),
        "group_f1_macro_mean": mean.get("group_f1_macro"),
        "per_fold": summary["rows"], "group_unit": summary.get("group_unit"),
        "pooled": pooled, "wall_s": wall,
        "training_s": round(sum(s for s in train_s if s is not None), 1),
    }


def fold_figures(folder: Path) -> dict:
    rows = []
    for path in sorted(folder.glob("fold_*/metrics.json")):
        m = json.loads(path.read_text())
        group = m.get("group_level") or {}
        rows.append({"fold": path.parent.name, "accuracy": m["accuracy"],
                     "group_accuracy": group.get("accuracy")})
    return {"folds_done": len(rows), "per_fold": rows}


def best_of(finished: dict) -> dict | None:
    if not finished:
        return None
    name = max(finished, key=lambda n: finished[n]["patch_accuracy_mean"])
    e = finished[name]
    return {"experiment": name, "patch_accuracy_mean": e["patch_accuracy_mean"],
            "group_accuracy_mean": e["group_accuracy_mean"],
            "patch_goal_met": e["patch_accuracy_mean"] >= GOALS["patch_accuracy_mean"],
            "group_goal_met": (e["group_accuracy_mean"] or 0) >= GOALS["group_accuracy_mean"]}


if __name__ == "__main__":
    main()
