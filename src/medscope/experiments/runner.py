"""``medscope run``: every experiment of a recipe into ``OUT/<name>/`` (a run dir, or a CV dir),
then one comparison report over them all in ``OUT/comparison/``.

A finished experiment is skipped and an interrupted one resumed, so running the same command
again continues an interrupted recipe. An experiment whose ``model.pretrained`` is ``"@name"``
starts from the best checkpoint of experiment ``name`` (run first, also under ``--only``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medscope.config import RunConfig, parse_override
from medscope.errors import MedscopeError
from medscope.experiments.quick import quick_dataset
from medscope.experiments.recipe import Experiment, Recipe, experiment_config, load_recipe
from medscope.models.transfer import check_weights_source
from medscope.report.compare import markdown_table, write_comparison
from medscope.report.recipe import (
    RECIPE_MD,
    TRAINING_ERROR,
    plot_training_error,
    read_history,
    write_recipe_markdown,
)
from medscope.run import (
    METRICS,
    CvDir,
    RunDir,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from medscope.tracking import flatten
from medscope.train.preflight import check_model
from medscope.workflows.compare import compare_runs
from medscope.workflows.cv import run_cv
from medscope.workflows.ensemble import evaluate_ensemble
from medscope.workflows.evaluation import TTA_DIR, evaluate_run
from medscope.workflows.training import train_run

log = logging.getLogger("medscope")

COMPARISON = "comparison"
ENSEMBLE_DIR = "ensemble"
SKIPPED = "skipped.txt"
QUICK_DATA = "quick-data"
# Settings that say where a run ran, not what it is: a finished run made with other values of
# these is still the same experiment.
_WHERE = ("out", "data.path", "data.split_file", "data.num_workers", "data.cache",
          "data.cache_dir", "train.device", "train.precision", "train.channels_last",
          "train.compile", "track")


@dataclass
class Planned:
    exp: Experiment
    out: Path
    config: RunConfig  # model.pretrained of an @reference is filled in when it has run
    folds: int | None
    status: str = "to run"


def run_recipe(recipe: Recipe | Path | str, *, out: Path | None = None,
               data: list[str] | None = None, settings: list[str] | None = None,
               quick: bool = False, only: list[str] | None = None,
               latency_repeats: int | None = None, progress: bool = True) -> Path:
    """Run (or continue) ``recipe`` into ``out``; returns ``out/comparison``.

    ``data``: ``PATH`` replaces the recipe's default data, ``EXPERIMENT=PATH`` one experiment's.
    ``settings``: ``KEY=VALUE`` for every experiment, ``EXPERIMENT:KEY=VALUE`` for one.
    ``quick``: tiny synthetic data and the recipe's quick settings (a smoke test).
    ``only``: these experiments (and the ones they start from)."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    assert recipe.path is not None
    out = Path(out) if out is not None else Path("runs") / (
        recipe.path.stem + ("-quick" if quick else ""))
    default_data, data_for = _split_data_args(recipe, data or [])
    extra = _split_settings(recipe, settings or [])
    plan = [_plan(recipe, exp, out, quick, default_data, data_for, extra)
            for exp in _selected(recipe, only)]
    for p in plan:  # every model, kwargs and freeze spec checked before any training
        check_model(p.config)
        if p.config.model.pretrained:
            check_weights_source(p.config.model.pretrained, p.config.model.name)
    for i, p in enumerate(plan, 1):
        _run_one(recipe, p, out, i, len(plan), progress)
        if recipe.tta and not p.folds:
            _evaluate_tta(p, progress)
    if recipe.ensemble:
        for tta in (False, True) if recipe.tta else (False,):
            _evaluate_ensemble(plan, out / (ENSEMBLE_DIR + ("-tta" if tta else "")), tta,
                               progress)
    return write_report(recipe, plan, out, quick=quick, latency_repeats=latency_repeats)


def _selected(recipe: Recipe, only: list[str] | None) -> list[Experiment]:
    if not only:
        return list(recipe.experiments)
    wanted = {recipe.experiment(name).name for name in only}  # unknown name: one line
    for exp in reversed(recipe.experiments):  # what a wanted one starts from runs first
        ref = recipe.reference_of(exp)
        if exp.name in wanted and ref:
            if ref not in wanted:
                log.info("--only %s: also running %s, which it starts from", exp.name, ref)
            wanted.add(ref)
    return [e for e in recipe.experiments if e.name in wanted]


def _split_data_args(recipe: Recipe, items: list[str]) -> tuple[str | None, dict[str, str]]:
    default, per_exp = recipe.data, {}
    names = {e.name for e in recipe.experiments}
    for item in items:
        name, sep, path = item.partition("=")
        if sep and name in names:
            per_exp[name] = path
        else:
            default = item
    return default, per_exp


def _split_settings(recipe: Recipe, items: list[str]) -> dict[str | None, dict[str, Any]]:
    """``--set`` items by experiment (None: every experiment)."""
    extra: dict[str | None, dict[str, Any]] = {}
    names = {e.name for e in recipe.experiments}
    for item in items:
        head, sep, rest = item.partition(":")
        target = head if sep and head in names and "=" not in head else None
        key, value = parse_override(rest if target else item)
        extra.setdefault(target, {})[key] = value
    return extra


def _plan(recipe: Recipe, exp: Experiment, out: Path, quick: bool, default_data: str | None,
          data_for: dict[str, str], extra: dict[str | None, dict[str, Any]]) -> Planned:
    source = data_for.get(exp.name) or exp.data or default_data
    config = experiment_config(recipe, exp, out=out / exp.name, data=Path("."), quick=quick,
                               extra={**extra.get(None, {}), **extra.get(exp.name, {})})
    if quick:
        data = _quick_data(recipe, exp, out, multilabel=config.multilabel is True)
    else:
        data = _real_data(recipe, exp, source)
    config = config.model_copy(update={"data": config.data.model_copy(update={"path": data})})
    return Planned(exp, out / exp.name, config, recipe.folds_of(exp, quick))


def _real_data(recipe: Recipe, exp: Experiment, source: str | None) -> Path:
    if source is None:
        raise MedscopeError(f"{recipe.path}: experiment {exp.name!r} has no data: pass --data "
                            "PATH (or --quick for a synthetic smoke test)")
    path = Path(source).expanduser()
    if not path.exists():
        raise MedscopeError(f"{path}: data not found (experiment {exp.name!r}; relative paths "
                            f"are taken from the current directory {Path.cwd()}); pass --data")
    return path


def _quick_data(recipe: Recipe, exp: Experiment, out: Path, multilabel: bool) -> Path:
    """A synthetic set per data set the recipe names (two data sets stay two: the real paths
    do not matter), per class count and per multi-label-ness."""
    sources = [e.data for e in recipe.experiments]
    index = sources.index(exp.data) if exp.data in sources else 0
    classes, per_class = exp.quick_data.classes, exp.quick_data.per_class
    per_class = per_class or recipe.quick.per_class
    slug = f"set{index}-{classes}cls-{per_class}pc" + ("-multilabel" if multilabel else "")
    return quick_dataset(out / QUICK_DATA / slug, classes=classes, per_class=per_class,
                         size=recipe.quick.image_size, seed=index, multilabel=multilabel)


def _run_one(recipe: Recipe, p: Planned, out: Path, i: int, n: int, progress: bool) -> None:
    ref = recipe.reference_of(p.exp)
    if ref is not None:
        best = RunDir(out / ref).best.with_suffix(".safetensors")
        if not best.is_file():
            raise MedscopeError(f"{best}: experiment {p.exp.name!r} starts from {ref!r}, which "
                                "has no best checkpoint")
        p.config = p.config.model_copy(update={"model": p.config.model.model_copy(
            update={"pretrained": str(best.resolve())})})
    what = f"{p.folds}-fold CV" if p.folds else "train + evaluate"
    if _finished(p):
        p.status = "finished earlier (skipped)"
        log.info("[%d/%d] %s: already finished in %s; skipped", i, n, p.exp.name, p.out)
        _warn_if_changed(p)
        return
    resume = RunDir(p.out).config.is_file() or CvDir(p.out).settings.is_file()
    p.status = "resumed" if resume else "trained"
    log.info("[%d/%d] %s: %s %s, %s, %s", i, n, p.exp.name,
             "resuming" if resume else "running", p.config.model.name, what, p.config.data.path)
    if p.folds:
        run_cv(p.config, p.folds, progress=progress)
    else:
        train_run(p.config, resume=resume, progress=progress)


def _evaluate_tta(p: Planned, progress: bool) -> None:
    """RUN/eval-tta/metrics.json once per finished run (kept, like the run, when re-run)."""
    if (p.out / TTA_DIR / METRICS).is_file():
        return
    log.info("%s: evaluating with test-time augmentation (8 views)", p.exp.name)
    evaluate_run(p.out, tta=True, progress=progress)


def _evaluate_ensemble(plan: list[Planned], target: Path, tta: bool, progress: bool) -> None:
    """``target``/metrics.json for the train + evaluate experiments averaged, once per set of
    members. Members that do not share a test split leave a warning and the reason in
    ``target``/skipped.txt, not a failed recipe: their runs are still worth their report."""
    runs = [str(p.out) for p in plan if not p.folds]
    metrics = target / METRICS
    if metrics.is_file() and read_json(metrics).get("ensemble", {}).get("runs") == runs:
        return
    if len(runs) < 2:
        log.warning("ensemble: %d train + evaluate experiment(s) here; it needs two", len(runs))
        return
    log.info("evaluating the ensemble of %d experiments%s", len(runs), " with TTA" if tta else "")
    try:
        evaluate_ensemble(runs, target, tta=tta, progress=progress)
    except MedscopeError as exc:
        log.warning("ensemble not evaluated: %s", exc)
        atomic_write_text(target / SKIPPED, f"{exc}\n")
    else:
        (target / SKIPPED).unlink(missing_ok=True)


def _finished(p: Planned) -> bool:
    if not p.folds:
        return RunDir(p.out).is_finished()
    return CvDir(p.out).summary.is_file() and all(
        CvDir(p.out).fold(k + 1).is_finished() for k in range(p.folds))


def _warn_if_changed(p: Planned) -> None:
    """A finished run is kept as it is; say so when the recipe now asks for something else."""
    saved_path = (RunDir(p.out) if not p.folds else CvDir(p.out).fold(1)).config
    if not saved_path.is_file():
        return
    from medscope.config import load_config

    saved = flatten(load_config(saved_path).model_dump(mode="json"))
    now = flatten(p.config.model_dump(mode="json"))
    changed = [f"{k}: {saved.get(k)} -> {now.get(k)}" for k in sorted(saved.keys() | now.keys())
               if saved.get(k) != now.get(k) and not k.startswith(_WHERE)]
    if changed:
        log.warning("%s: finished with other settings (%s); delete it to run it again",
                    p.out, "; ".join(changed[:3]))


# ---------------------------------------------------------------- the report


def write_report(recipe: Recipe, plan: list[Planned], out: Path, *, quick: bool,
                 latency_repeats: int | None) -> Path:
    """comparison.csv/.md/.html (``medscope compare``), recipe.md and recipe.json, and the
    recipe's own plots, in ``out/comparison``."""
    where = out / COMPARISON
    repeats = latency_repeats or (recipe.quick.latency_repeats if quick else 30)
    rows = compare_runs([p.out for p in plan], latency_repeats=repeats)
    for row, p in zip(rows, plan, strict=True):
        row["name"] = p.exp.name  # the experiment, whatever its folder is called
    write_comparison(rows, where)
    sections = []
    if "training_error" in recipe.plots:
        histories = {p.exp.name: read_history(RunDir(p.out).history) for p in plan
                     if not p.folds and RunDir(p.out).history.is_file()}
        if histories:
            plot_training_error(histories, where / TRAINING_ERROR)
            sections.append(("Training error", f"![training and validation error per epoch]"
                             f"({TRAINING_ERROR})\n\nDashed: training error; bold: validation "
                             "error (He et al. 2016, Fig. 6)."))
    tta = tta_table(plan) if recipe.tta else ""
    if tta:
        sections.append(("Test-time augmentation", tta))
    ensemble = ensemble_table(out, recipe.tta) if recipe.ensemble else ""
    if ensemble:
        sections.append(("Ensemble", ensemble))
    multilabel = multilabel_table(plan)
    if multilabel:
        sections.append(("Multi-label metrics", multilabel))
    for p in plan:
        if p.folds and (p.out / "cv_summary.md").is_file():
            sections.append((f"{p.exp.name}: per-fold table",
                             (p.out / "cv_summary.md").read_text()))
    notes = [f"- **{p.exp.name}**: {p.exp.note}" for p in plan if p.exp.note]
    if notes:
        sections.append(("Notes", "\n".join(notes)))
    header = [line for line in (
        f"Recipe: `{recipe.path}`",
        f"Reproduces: {recipe.reproduces}" if recipe.reproduces else "",
        f"Compare with: {recipe.compare_with}" if recipe.compare_with else "",
        "**Quick smoke test** (`--quick`): tiny synthetic data, a few images per class, "
        "1-2 epochs; the figures below say nothing about the models." if quick else "",
    ) if line]
    table = [[p.exp.name, p.config.model.name, weights_text(recipe, p), _evaluation(p),
              _best_val(p), str(p.config.data.path), p.status] for p in plan]
    write_recipe_markdown(where / RECIPE_MD, title=recipe.title, header=header,
                          experiments=table, comparison=markdown_table(rows), sections=sections)
    atomic_write_json(where / "recipe.json", {
        "recipe": str(recipe.path), "title": recipe.title, "quick": quick,
        "experiments": [{"name": p.exp.name, "path": str(p.out), "model": p.config.model.name,
                         "weights": weights_text(recipe, p), "folds": p.folds,
                         "data": str(p.config.data.path), "status": p.status} for p in plan]})
    log.info("comparison of %d experiment(s): %s", len(plan), where / RECIPE_MD)
    return where


def tta_table(plan: list[Planned]) -> str:
    """Test accuracy and macro-F1 of each run without and with test-time augmentation."""
    rows = []
    for p in plan:
        plain, tta = p.out / METRICS, p.out / TTA_DIR / METRICS
        if p.folds or not (plain.is_file() and tta.is_file()):
            continue
        a, b = read_json(plain), read_json(tta)
        rows.append(f"| {p.exp.name} | {a['accuracy']:.4f} | {b['accuracy']:.4f} | "
                    f"{b['accuracy'] - a['accuracy']:+.4f} | {a['f1_macro']:.4f} | "
                    f"{b['f1_macro']:.4f} | {b['n']} |")
    if not rows:
        return ""
    return "\n".join([
        "| experiment | accuracy | accuracy, TTA | gain | macro-F1 | macro-F1, TTA | images |",
        "|---|---|---|---|---|---|---|", *rows,
        "", "TTA: each image's logits averaged over its 8 flips/rotations "
        f"(`medscope evaluate RUN --tta`, in `RUN/{TTA_DIR}/`)."])


def ensemble_table(out: Path, tta: bool) -> str:
    """Each member and the ensemble on the same test images, with the ensemble's 95 % CIs (and
    the same with TTA); the reason when it could not be evaluated."""
    rows: list[str] = []
    notes: list[str] = []
    for suffix in ("", "-tta") if tta else ("",):
        folder = out / (ENSEMBLE_DIR + suffix)
        if (folder / SKIPPED).is_file():
            notes.append(f"Not evaluated{' with TTA' if suffix else ''}: "
                         f"{(folder / SKIPPED).read_text().strip()}")
        if not (folder / METRICS).is_file():
            continue
        m, label = read_json(folder / METRICS), " (TTA)" if suffix else ""
        for member in m["ensemble"]["members"]:
            rows.append(f"| {Path(member['run']).name}{label} | {member['accuracy']:.4f} | | "
                        f"{member['f1_macro']:.4f} | {m['n']} |")
        ci = m["ci"].get("accuracy") or {}
        interval = f"{ci['low']:.4f}–{ci['high']:.4f}" if ci else ""
        rows.append(f"| **ensemble of {len(m['ensemble']['members'])}**{label} | "
                    f"**{m['accuracy']:.4f}** | {interval} | **{m['f1_macro']:.4f}** | "
                    f"{m['n']} |")
    table = ["| model | accuracy | 95 % CI | macro-F1 | images |", "|---|---|---|---|---|", *rows,
             "", "Ensemble: the members' calibrated probabilities averaged on the test images "
             f"they share (`medscope evaluate RUN RUN ... --out DIR`, in `{ENSEMBLE_DIR}/`)."
             ] if rows else []
    return "\n".join([*table, *([""] if table and notes else []), *notes])


def multilabel_table(plan: list[Planned]) -> str:
    """Exact-match ratio (the runs' "accuracy"), Hamming loss, macro precision, recall and F1
    of the multi-label runs: the medical-ViT study's multi-label table."""
    keys = ("accuracy", "hamming_loss", "precision_macro", "recall_macro", "f1_macro")
    rows = []
    for p in plan:
        metrics = RunDir(p.out).metrics
        if p.folds or not metrics.is_file():
            continue
        m = read_json(metrics)
        if m.get("multilabel"):
            rows.append(f"| {p.exp.name} | " + " | ".join(
                "" if m.get(k) is None else f"{m[k]:.4f}" for k in keys) + " |")
    if not rows:
        return ""
    return "\n".join(["| experiment | exact match | Hamming loss | precision | recall | F1 |",
                      "|---|---:|---:|---:|---:|---:|", *rows,
                      "", "Macro averages over the labels at threshold 0.5 (each run's "
                      "metrics.json also has them at the thresholds tuned on validation, "
                      "under `tuned`)."])


def weights_text(recipe: Recipe, p: Planned) -> str:
    """How the experiment's model was initialised, said plainly in the report."""
    ref = recipe.reference_of(p.exp)
    if ref:
        return f"fine-tuned from experiment {ref} (its best checkpoint)"
    if p.config.model.pretrained:
        return f"pretrained: {p.config.model.pretrained}"
    return "from scratch (no pretrained weights given)"


def _best_val(p: Planned) -> str:
    """The best validation accuracy over the epochs (the histology study's figure per pool)."""
    history = RunDir(p.out).history
    if p.folds or not history.is_file():
        return ""
    values = [r["val_accuracy"] for r in read_history(history) if r.get("val_accuracy")]
    return f"{max(values):.4f}" if values else ""


def _evaluation(p: Planned) -> str:
    return f"{p.folds}-fold CV" if p.folds else "train/val/test split"
