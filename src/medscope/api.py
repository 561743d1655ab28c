"""The Python API: one function per user-facing verb, each a thin call into the workflows and
rooms below. The CLI (``medscope.cli``) is a layer over exactly these functions, one per command.

Arguments are checked here, against the same schemas the CLI derives its flags from (training:
``medscope.config.RunConfig``; the other commands: ``medscope.options``), so a Python caller gets
the same checks and one-line ``MedscopeError`` messages, naming the parameter.

    >>> from medscope.api import train, evaluate
    >>> from medscope.config import load_config
    >>> run = train(load_config("demo", {"data.path": "patches"}))

Training, evaluation and prediction are imported at module level (their modules are what
``import medscope.api`` is for); the rest lazily, so that importing the API stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medscope.config import PretrainRunConfig, RunConfig, load_config
from medscope.data.prepare import PreparedData
from medscope.errors import MedscopeError
from medscope.experiments.runner import run_recipe
from medscope.options import (
    AuditOptions,
    CompareOptions,
    DataInfoOptions,
    DemoOptions,
    EvaluateOptions,
    ExplainOptions,
    ModelsOptions,
    PredictOptions,
    ServeOptions,
    SynthOptions,
)
from medscope.predict import predict_files
from medscope.predictor import Predictor
from medscope.run import RunDir
from medscope.train.engine import EpochEnd
from medscope.workflows import ensemble as _ensemble
from medscope.workflows.evaluation import evaluate_run
from medscope.workflows.pretraining import pretrain_run, resume_pretrain_config
from medscope.workflows.training import resume_config, train_run

if TYPE_CHECKING:
    from fastapi import FastAPI

    from medscope.data.audit import Audit
    from medscope.data.cache import CacheEntry
    from medscope.data.info import DataInfo
    from medscope.workflows.demo import DemoResult

__all__ = ["AuditResult", "Comparison", "Predictor", "audit", "cache_clear", "cache_info",
           "compare", "create_app", "cv", "data_info", "demo", "evaluate", "evaluate_ensemble",
           "explain", "export", "list_models", "patches", "predict", "predict_files", "pretrain",
           "report", "resume", "resume_pretrain", "run_recipe", "serve", "synth", "train"]


# ---------------------------------------------------------------- training


def train(config: RunConfig, *, resume: bool = False, progress: bool = True,
          callbacks: Sequence[EpochEnd] = ()) -> RunDir:
    """Train a model as ``config`` says; everything lands in the run directory ``config.out``.
    ``resume`` continues an interrupted run there with this config (see :func:`resume`).
    ``callbacks(model, optimizer, state, row, is_best)`` run after each epoch is saved (``row``:
    that epoch's history row), e.g. to record a test-accuracy curve."""
    return train_run(config, resume=resume, progress=progress, callbacks=callbacks)


def resume(out: Path | str, overrides: dict[str, Any] | None = None, *,
           progress: bool = True) -> RunDir:
    """Continue the interrupted run in ``out`` with its saved config and split; ``overrides``
    (dotted keys, e.g. ``{"train.epochs": 30}``) change it, and each change is logged."""
    config, _ = resume_config(out, overrides)  # train_run logs each change
    return train_run(config, resume=True, progress=progress)


def pretrain(config: PretrainRunConfig, *, progress: bool = True) -> RunDir:
    """Self-supervised pretraining of ``config.model.name`` on the images of
    ``config.data.paths`` (no labels), into the run directory ``config.out``; its backbone is
    what ``train`` with ``model.pretrained: <that run>`` fine-tunes.

        >>> from medscope.config import load_pretrain_config
        >>> pre = pretrain(load_pretrain_config(None, {"data.paths": ["images"],
        ...                                           "model.name": "resnet10t"}))
    """
    return pretrain_run(config, progress=progress)


def resume_pretrain(out: Path | str, overrides: dict[str, Any] | None = None, *,
                    progress: bool = True) -> RunDir:
    """Continue the interrupted pretraining in ``out`` with its saved config; ``overrides``
    (dotted keys, e.g. ``{"train.epochs": 200}``) change it, and each change is logged."""
    return pretrain_run(resume_pretrain_config(out, overrides), resume=True, progress=progress)


def cv(config: RunConfig, folds: int | None = None, *, progress: bool = True) -> Path:
    """k-fold cross-validation into ``config.out`` (``fold_1`` … ``fold_K``, out-of-fold
    predictions, the mean and std table); ``folds`` defaults to ``data.folds``, else 5."""
    from medscope.workflows.cv import run_cv

    return run_cv(config, folds or config.data.folds or 5, progress=progress)


def demo(out: Path | str = "runs/demo", *, per_class: int = 40, config: Path | str = "demo",
         epochs: int | None = None, img_size: int | None = None, seed: int | None = None,
         force: bool = False, progress: bool = True,
         echo: Callable[[str], None] = print) -> DemoResult:
    """synth -> patches -> train -> evaluate -> report on the built-in dataset, in ``out``.
    Every argument is checked before anything is written."""
    from medscope.workflows.demo import run_demo

    DemoOptions.check(per_class=per_class, force=force)
    out = Path(out)
    given = {"data.img_size": img_size, "train.epochs": epochs, "train.seed": seed}
    run_config = load_config(Path(config), {
        "out": str(out / "run"), "data.path": str(out / "patches"),
        **{k: v for k, v in given.items() if v is not None}})
    return run_demo(out, per_class, run_config, force=force, progress=progress, echo=echo)


# ---------------------------------------------------------------- evaluation


def evaluate(run: RunDir | Path | str, data_dir: Path | None = None, out: Path | None = None,
             *, precision: str = "auto", device: str = "auto", progress: bool = True,
             data: PreparedData | None = None, target_accuracy: float | None = None,
             tta: bool = False) -> dict[str, Any]:
    """Metrics of a run's best checkpoint on its test split, or on another folder of the same
    classes (written to ``RUN/eval-<folder>/`` unless ``out`` says otherwise); ``tta`` averages
    the logits of the 8 dihedral views (written to ``RUN/eval-tta/``)."""
    opts = EvaluateOptions.check(precision=precision, device=device,
                                 target_accuracy=target_accuracy, tta=tta)
    return evaluate_run(run, data_dir, out, data=data, progress=progress, **opts.model_dump())


def evaluate_ensemble(runs: Sequence[Path | str], out: Path | str | None, *,
                      data_dir: Path | None = None, precision: str = "auto",
                      device: str = "auto", tta: bool = False,
                      target_accuracy: float | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Metrics of the average of ``runs``' calibrated probabilities, written to ``out``
    (see :func:`medscope.workflows.ensemble.evaluate_ensemble`)."""
    opts = EvaluateOptions.check(precision=precision, device=device,
                                 target_accuracy=target_accuracy, tta=tta)
    if out is None:
        raise MedscopeError(f"{len(runs)} runs: give --out DIR for the ensemble's "
                            "metrics.json, predictions.csv and plots")
    return _ensemble.evaluate_ensemble(runs, out, data_dir=data_dir, progress=progress,
                                       **opts.model_dump())


def compare(runs: Sequence[Path | str], out: Path | str = "comparison", *,
            latency_repeats: int = 30, threads: int | None = None) -> Comparison:
    """One table across runs, CV directories and ensembles (size, CPU speed measured now,
    quality), written to ``out`` as comparison.csv/.md/.html."""
    from medscope.report.compare import markdown_table, write_comparison
    from medscope.workflows.compare import compare_runs

    opts = CompareOptions.check(latency_repeats=latency_repeats, threads=threads)
    rows = compare_runs(runs, **opts.model_dump())
    paths = write_comparison(rows, Path(out))
    return Comparison(rows, paths, markdown_table(rows))


@dataclass(frozen=True)
class Comparison:
    rows: list[dict[str, Any]]
    paths: list[Path]
    markdown: str


def report(run: RunDir | Path | str) -> Path:
    """Rebuild ``report.html`` of a finished, evaluated run; returns its path."""
    from medscope.report.html import render_report

    run = run if isinstance(run, RunDir) else RunDir(run)
    run.require_finished()
    if not run.metrics.is_file():
        raise MedscopeError(f"{run.root}: no metrics.json; run `medscope evaluate` first")
    return render_report(run)


# ---------------------------------------------------------------- using a model


def predict(source: Path | str | Sequence[Path | str], inputs: Sequence[Path | str],
            out_csv: Path | None = None, *, precision: str = "auto", device: str = "auto",
            progress: bool = True, tta: bool = False, top_k: int = 3,
            abstain_below: float | None = None, batch_size: int = 64, backend: str = "torch",
            ensemble: bool = False, tiles: str = "auto", tile_size: int | None = None,
            aggregation: str = "mean", tissue: str = "auto", tiles_dir: Path | None = None,
            explain_tiles: int = 0) -> list[dict[str, Any]]:
    """Classify image files and folders with a run, a checkpoint, or several averaged; one row
    per image (see :func:`medscope.predict.predict_files`, large images tiled), also written
    to ``out_csv``; ``explain_tiles`` N: Grad-CAM overlays of each tiled image's N most
    decisive tiles in ``tiles_dir``."""
    opts = PredictOptions.check(precision=precision, device=device, tta=tta, top_k=top_k,
                                abstain_below=abstain_below, batch_size=batch_size,
                                backend=backend, ensemble=ensemble, tiles=tiles,
                                tile_size=tile_size, aggregation=aggregation, tissue=tissue,
                                tiles_dir=tiles_dir, explain_tiles=explain_tiles)
    explainer = None
    if opts.explain_tiles:
        from medscope.explain import tile_overlay as explainer
    return predict_files(source, inputs, out_csv, progress=progress,
                         tile_explainer=explainer, **opts.model_dump())


def explain(run: Path | str, inputs: Sequence[Path | str], out: Path | str, *,
            method: str = "gradcam", target: str | None = None, layer: str | None = None,
            progress: bool = False, explain_tiles: int = 4) -> list[dict[str, Any]]:
    """Heat-map overlays (PNG) of what the model looks at, and explanations.csv, in ``out``;
    a large image (tiled as predict tiles it): its ``explain_tiles`` most decisive tiles."""
    from medscope.explain import explain_files

    opts = ExplainOptions.check(explain_tiles=explain_tiles)
    return explain_files(run, inputs, out, method=method, target=target, layer=layer,
                         progress=progress, **opts.model_dump())


def export(run: Path | str, out: Path | str | None = None, *, opset: int | None = None,
           dynamic_batch: bool = True, int8: bool = False,
           calibration_images: int | None = None) -> Path:
    """ONNX model + JSON metadata of a run or checkpoint; returns the ``model.onnx`` path.
    ``opset`` and ``calibration_images`` default to the exporter's own."""
    from medscope.export import export_onnx

    given = {"opset": opset, "calibration_images": calibration_images}
    return export_onnx(run, out, dynamic_batch=dynamic_batch, int8=int8,
                       **{k: v for k, v in given.items() if v is not None})


def create_app(runs: Sequence[Path | str], *, max_upload_mb: float = 20.0,
               token: str | None = None, abstain_below: float | None = None,
               cors_origins: Sequence[str] = (), device: str = "auto",
               slides: Path | str | None = None) -> FastAPI:
    """The FastAPI app serving ``runs`` (run directories or ensembles' folders); ``slides``: a
    folder whose slides the page lists and analyses on request."""
    opts = ServeOptions.check(max_upload_mb=max_upload_mb, token=token,
                              abstain_below=abstain_below, cors_origins=list(cors_origins),
                              slides=slides)
    return _served(runs, opts, device)[0]


def serve(runs: Sequence[Path | str], *, host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = 20.0, token: str | None = None,
          abstain_below: float | None = None, cors_origins: Sequence[str] = (),
          slides: Path | str | None = None,
          on_start: Callable[[list[str]], None] | None = None) -> None:
    """Serve ``runs`` as a JSON API and a web page until interrupted; ``on_start`` gets the
    served model ids once they are loaded, before the server starts."""
    import medscope.serve  # looked up at call time: tests stand in for the blocking server

    opts = ServeOptions.check(host=host, port=port, max_upload_mb=max_upload_mb, token=token,
                              abstain_below=abstain_below, cors_origins=list(cors_origins),
                              slides=slides)
    app, ids = _served(runs, opts, "auto")
    if on_start is not None:
        on_start(ids)
    medscope.serve.serve(app, opts.host, opts.port)


def _served(runs: Sequence[Path | str], opts: ServeOptions, device: str
            ) -> tuple[FastAPI, list[str]]:
    from medscope.serve import create_app as make_app
    from medscope.serve import load_models

    models = load_models(runs, abstain_below=opts.abstain_below, device=device)
    app = make_app(models, max_upload_mb=opts.max_upload_mb, token=opts.token,
                   cors_origins=opts.cors_origins, slides_dir=opts.slides)
    return app, list(models)


# ---------------------------------------------------------------- data


def synth(out: Path | str, per_class: int = 40, seed: int = 0, size: int = 1000, *,
          progress: bool = True) -> Path:
    """The built-in micrograph dataset: ``per_class`` slides of ``size`` px per class."""
    from medscope.data.synth import make_dataset

    opts = SynthOptions.check(per_class=per_class, seed=seed, size=size)
    return make_dataset(out, progress=progress, **opts.model_dump())


def patches(src: Path | str, dst: Path | str, size: int = 500, stride: int | None = None, *,
            save_dropped: bool = False, overwrite: bool = False, workers: int | None = None,
            progress: bool = True, **thresholds: float) -> dict[str, int]:
    """Cut micrographs into patches, dropping artifact ones; ``thresholds`` are fields of
    :class:`medscope.data.patches.PatchFilter` (``dark_level``, ``max_dark`` …). Returns the
    count of kept (``ok``) and dropped patches by reason."""
    from medscope.data.patches import PatchFilter, extract_patches

    try:
        flt = PatchFilter(**thresholds)
    except TypeError:
        known = ", ".join(PatchFilter.__dataclass_fields__)
        raise MedscopeError(f"patch thresholds {sorted(thresholds)}: known ones are "
                            f"{known}") from None
    return extract_patches(src, dst, size, stride, flt, save_dropped=save_dropped,
                           overwrite=overwrite, workers=workers, progress=progress)


def data_info(path: Path | str, format: str = "auto", *, group_pattern: str | None = None,
              progress: bool = False) -> DataInfo:
    """Counts per class and split, sizes, modes, duplicates and unreadable files of a dataset
    (``medscope.data.info.format_info`` renders them)."""
    from medscope.data.info import data_info as inspect

    opts = DataInfoOptions.check(format=format, group_pattern=group_pattern)
    return inspect(path, opts.format, progress=progress, group_pattern=opts.group_pattern)


def audit(data: Path | str, *, run: Path | str | None = None, out: Path | str = "audit",
          phash_distance: int | None = None, group_pattern: str | None = None,
          workers: int | None = None, write_exclude: Path | str | None = None,
          progress: bool = False) -> AuditResult:
    """Duplicates, leaks, label errors (with a ``run`` or CV directory) and outliers of a
    dataset: audit.html and the audit_*.csv files in ``out``; ``write_exclude`` also lists the
    suspects in a new file to edit."""
    from medscope.data import audit as audits
    from medscope.report.audit import write_audit
    from medscope.workflows.audit import audit_data

    opts = AuditOptions.check(phash_distance=phash_distance, group_pattern=group_pattern,
                              workers=workers, write_exclude=write_exclude)
    if opts.write_exclude and opts.write_exclude.exists():  # before the long scan, not after
        raise MedscopeError(f"{opts.write_exclude}: already exists; edit it, or name a new file")
    distance = audits.PHASH_DISTANCE if opts.phash_distance is None else opts.phash_distance
    found = audit_data(data, run, phash_distance=distance, workers=opts.workers,
                       progress=progress, group_pattern=opts.group_pattern)
    page = write_audit(found, out)
    excluded = None
    if opts.write_exclude:
        excluded = audits.write_exclude(found, opts.write_exclude)
    return AuditResult(found, audits.summary(found), page, excluded)


@dataclass(frozen=True)
class AuditResult:
    audit: Audit
    summary: dict[str, int]
    page: Path
    excluded: int | None  # suspects written with write_exclude, else None


def list_models(img_size: int = 224, pattern: str = "*", in_chans: int = 3
                ) -> list[dict[str, Any]]:
    """Architectures matching the glob ``pattern`` with parameters and GMACs at ``img_size``."""
    from medscope.models import zoo_table

    opts = ModelsOptions.check(img_size=img_size, pattern=pattern, in_chans=in_chans)
    rows = zoo_table(opts.img_size, opts.pattern, in_chans=opts.in_chans)
    if not rows:
        raise MedscopeError(f"no model matches {pattern!r}")
    return rows


def cache_info(cache_dir: Path | str | None = None) -> tuple[Path, list[CacheEntry]]:
    """The decoded-image cache's folder and its datasets, largest use first."""
    from medscope.data.cache import cache_entries, default_cache_dir

    where = Path(cache_dir) if cache_dir else default_cache_dir()
    return where, cache_entries(where)


def cache_clear(cache_dir: Path | str | None = None) -> tuple[Path, list[CacheEntry]]:
    """Delete every cached dataset; returns the folder and what was removed."""
    from medscope.data.cache import clear_cache, default_cache_dir

    where = Path(cache_dir) if cache_dir else default_cache_dir()
    return where, clear_cache(where)
