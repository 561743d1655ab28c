"""Prediction on files: collect the images, load the model(s) behind a source (a run, a
checkpoint, an ONNX export made on demand, a CV directory's folds), predict in bounded chunks and
write one CSV row per image. One model's inference lives in ``medscope.predictor``."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from medscope.data.io import is_image_file
from medscope.data.sources import Sample
from medscope.diagnosis import (
    TILE_COLUMNS,
    TileExplainer,
    TilePlan,
    check_tiles,
    diagnose_path,
    tile_plan,
    tiled_row,
    wants_tiles,
    write_tile_explanations,
    write_tile_outputs,
)
from medscope.errors import MedscopeError
from medscope.evaluate.decisions import Rules, check_abstain_below, refer_flag, rules_for
from medscope.export import OnnxPredictor
from medscope.export.onnx import checkpoint_digest, default_export_dir, export_onnx
from medscope.novelty import BLANK, DEGENERATE, UNLIKE_TRAINING, file_problem, ood_checks, unusual
from medscope.predictor import Classifier, Predictor, checkpoint_stem, outputs_per_model
from medscope.run import CvDir, atomic_write_csv, read_json
from medscope.slides.aggregate import LOW_CONFIDENCE
from medscope.slides.readers import WSI_EXTENSIONS
from medscope.train.distributed import DistContext, init_distributed

log = logging.getLogger(__name__)


def collect_images(inputs: Sequence[Path | str]) -> list[Path]:
    """Files as given, folders searched recursively for images and whole-slide files; sorted,
    no duplicates."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and _is_input(p))
        elif item.is_file():
            found.append(item)
        else:
            raise MedscopeError(f"{item}: no such file or directory")
    if not found:
        raise MedscopeError(f"no images found in {', '.join(map(str, inputs))}")
    return list(dict.fromkeys(found))


def _is_input(path: Path) -> bool:
    return is_image_file(path) or (path.suffix.lower() in WSI_EXTENSIONS
                                   and not path.name.startswith("."))


PREDICT_CHUNK = 512  # images decoded at a time: memory stays bounded on big folders


def predict_files(
    source: Path | str | Sequence[Path | str],
    inputs: Sequence[Path | str],
    out_csv: Path | None = None,
    *,
    precision: str = "auto",
    device: str = "auto",
    progress: bool = True,
    tta: bool = False,
    top_k: int = 3,
    abstain_below: float | None = None,
    batch_size: int = 64,
    backend: str = "torch",
    ensemble: bool = False,
    tiles: str = "auto",
    tile_size: int | None = None,
    aggregation: str = "mean",
    tissue: str = "auto",
    tiles_dir: Path | None = None,
    explain_tiles: int = 0,
    tile_explainer: TileExplainer | None = None,
) -> list[dict[str, Any]]:
    """One row per image, in input order: file, predicted class, its probability, the top-k
    classes, ``refer_to_expert``, every class probability, and ``error`` for unreadable files
    (listed with the reason, not fatal).

    ``source``: a run directory, a checkpoint, an ONNX export (folder or ``model.onnx``), or
    with ``ensemble`` a ``medscope cv`` directory whose ``fold_*`` models are averaged; a list
    of them averages their models (image sizes may differ: each gets the images at its own).
    ``tta``: each model's logits averaged over the 8 dihedral views (4 rotations x mirror).
    ``abstain_below``: refer the image to an expert when its confidence is below this;
    default the checkpoint's ``selective_threshold`` (single model only), 0 switches it off.
    Labels and referral follow ``medscope.evaluate.decisions``, as serve and evaluate do.
    ``backend="onnx"``: onnxruntime on the run's export (made into ``RUN/onnx`` if missing or
    stale); ``"onnx-int8"``: on its int8 export (``RUN/onnx-int8``, calibrated on the run's
    training images). Probabilities are calibrated by each model's temperature.
    ``tiles``/``tile_size``/``aggregation``/``tissue``: large images are tiled at the training
    scale where the tissue finder sees specimen (``medscope.diagnosis``); their rows add
    ``tiled``, tile counts and ``refer_reason``; ``tiles_dir`` gets each one's per-tile CSV and
    heat map, and with ``explain_tiles`` N the ``tile_explainer``'s overlays of its N most
    decisive tiles. Under ``torchrun`` the inputs are shared out (``work_rounds``), and rank 0
    writes ``out_csv`` as one process would; a user error on any rank is raised on every rank."""
    _check_options(backend, abstain_below, (tiles, aggregation, tissue), batch_size)
    _check_explain(explain_tiles, tile_explainer, tiles_dir, backend,
                   several=ensemble or not isinstance(source, str | Path) and len(source) > 1)
    ctx = init_distributed(device)  # under torchrun: this rank's share; rank 0 writes
    ctx.limit_cpu_threads()
    models = _load_on_ranks(ctx, source, backend=backend, precision=precision,
                            device=_rank_device(ctx, device), ensemble=ensemble)
    rules = rules_for([m.meta for m in models], abstain_below)
    paths, plan = ctx.agree(lambda: (collect_images(inputs), tile_plan(models, tiles,
                                                                        tile_size, tissue)))
    names = _tile_output_names(paths, [p for p in paths if wants_tiles(p, plan, tiles)])
    job = _Job(models, rules, max(1, min(int(top_k), len(models[0].classes))), tta,
               batch_size, plan, aggregation, None if tiles_dir is None else Path(tiles_dir),
               names, explain_tiles, tile_explainer)
    rows = _run_job(ctx, job, paths, progress)
    if out_csv is not None and ctx.is_main:
        _write_rows(out_csv, rows, models[0].classes, tiled=bool(names))
    return rows


def _run_job(ctx: DistContext, job: _Job, paths: list[Path], progress: bool
             ) -> list[dict[str, Any]]:
    """Every input's row, in input order: each rank runs its unit of every round, and the
    round's rows are gathered on every rank (the progress bar is rank 0's)."""
    bar = _progress_bar(len(paths), progress and ctx.is_main)
    by_path: dict[Path, dict[str, Any]] = {}
    for units in work_rounds(paths, job.names, ctx.world_size):
        mine = units[ctx.rank] if ctx.rank < len(units) else ()
        for part in ctx.gather_results(partial(_run_unit, job, mine)):
            by_path.update(part)
            bar.update(len(part))
    bar.close()
    return [by_path[p] for p in paths]


@dataclass(frozen=True)
class _Job:
    """What every unit of a predict job needs (the same on every rank)."""

    models: list[Classifier]
    rules: Rules
    top_k: int
    tta: bool
    batch_size: int
    plan: TilePlan | None
    aggregation: str
    tiles_dir: Path | None
    names: dict[Path, str]  # the tiled inputs and their outputs' names, decided for the job
    explain_tiles: int = 0
    tile_explainer: TileExplainer | None = None


Unit = tuple[Path, ...] | Path  # images classified whole together, or one tiled image


def work_rounds(paths: Sequence[Path], names: dict[Path, str], world: int
                ) -> list[list[Unit]]:
    """The job's work in rounds of at most one unit per rank (the same list on every rank):
    the images classified whole in chunks of ``PREDICT_CHUNK`` per rank (strided over the
    round's images), then the tiled images, one per rank and round; under torchrun the
    largest files first, so that a round's ranks get work of similar size and wait little at
    the round's exchange. Alone: the chunks and the tiled images in input order."""
    whole = [p for p in paths if p not in names]
    step = PREDICT_CHUNK * world
    rounds: list[list[Unit]] = [[tuple(whole[i:i + step][r::world]) for r in range(world)]
                                for i in range(0, len(whole), step)]
    tiled = list(names)
    if world > 1:
        tiled.sort(key=lambda p: -_file_size(p))  # stable: input order among equal sizes
    return rounds + [list(tiled[i:i + world]) for i in range(0, len(tiled), world)]


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _run_unit(job: _Job, unit: Unit) -> dict[Path, dict[str, Any]]:
    """The rows of one unit of work (nothing for an empty one); a tiled image's per-tile CSV
    and heat map are written here, by the rank that diagnosed it."""
    if isinstance(unit, tuple):
        return _whole_image_rows(job, list(unit)) if unit else {}
    assert job.plan is not None
    result = diagnose_path(job.models, unit, job.plan, tta=job.tta, batch_size=job.batch_size,
                           aggregation=job.aggregation)
    if job.tiles_dir is not None:
        name, overlays = job.names[unit], None
        if job.explain_tiles and job.tile_explainer is not None:
            job.tiles_dir.mkdir(parents=True, exist_ok=True)
            overlays = write_tile_explanations(result, job.models[0], job.tile_explainer,
                                               job.explain_tiles, job.tiles_dir, name)
        write_tile_outputs(result, job.tiles_dir, name, overlays)
    return {unit: tiled_row(result, job.rules, job.top_k)}


def _load_on_ranks(ctx: DistContext, source: Path | str | Sequence[Path | str], *,
                   backend: str, **kwargs: Any) -> list[Classifier]:
    """``load_models`` on every rank; an ONNX backend's export, made on demand into the run,
    is made by rank 0 before the others read it."""
    if backend == "torch" or not ctx.enabled:
        return ctx.agree(lambda: load_models(source, backend=backend, **kwargs))
    first = ctx.agree(lambda: load_models(source, backend=backend, **kwargs)
                      if ctx.is_main else [])
    return ctx.agree(lambda: first if ctx.is_main else
                     load_models(source, backend=backend, **kwargs))


def _rank_device(ctx: DistContext, device: str) -> str:
    """Under torchrun with NCCL, each rank's own GPU (``cuda:LOCAL_RANK``)."""
    if ctx.backend != "nccl":
        return device
    mine = f"cuda:{ctx.local_rank}"
    if device not in ("auto", "cuda", mine):
        log.warning("device %s ignored under torchrun: rank %d uses %s", device, ctx.rank,
                    mine)
    return mine


def _check_options(backend: str, abstain_below: float | None, tiling: tuple[str, str, str],
                   batch_size: int) -> None:
    """Every option checked before any model is loaded."""
    if backend not in BACKENDS:
        raise MedscopeError(f"unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
    check_abstain_below(abstain_below)
    check_tiles(*tiling)
    if batch_size < 1:
        raise MedscopeError(f"batch size {batch_size}: must be at least 1")


def _check_explain(n: int, explainer: TileExplainer | None, tiles_dir: Path | None,
                   backend: str, several: bool) -> None:
    if n < 0:
        raise MedscopeError(f"--explain-tiles {n}: must be at least 0")
    if not n:
        return
    if tiles_dir is None:
        raise MedscopeError("--explain-tiles: the overlays go with the tile outputs; give "
                            "--tiles-dir DIR")
    if backend != "torch":
        raise MedscopeError(f"--explain-tiles: Grad-CAM needs the torch model, not --backend "
                            f"{backend}")
    if several:
        raise MedscopeError("--explain-tiles: Grad-CAM explains one model, not an ensemble")
    if explainer is None:
        raise ValueError("explain_tiles needs a tile_explainer (medscope.explain.tile_overlay)")


def _write_rows(out_csv: Path, rows: list[dict[str, Any]], classes: list[str], *,
                tiled: bool) -> None:
    header = ["file", "prediction", "probability", "top_k", "refer_to_expert", "refer_reason",
              *[f"p_{c}" for c in classes], "error", *(TILE_COLUMNS if tiled else [])]
    atomic_write_csv(out_csv, header, ([_fmt(r.get(h, "")) for h in header] for r in rows))


def _whole_image_rows(job: _Job, chunk: list[Path]) -> dict[Path, dict[str, Any]]:
    """Rows of images classified whole, decoded together (at most ``PREDICT_CHUNK``); an image
    that cannot hold a specimen, or unlike the training images, is referred saying so."""
    checks = ood_checks(job.models)
    kept, bad, each, feats = outputs_per_model(
        job.models, [Sample(p, -1) for p in chunk], tta=job.tta, batch_size=job.batch_size,
        features=[c is not None for c in checks])
    flags = unusual(checks, feats)
    reasons = [file_problem(chunk[i])
               or (UNLIKE_TRAINING if flags is not None and flags[j] else None)
               for j, i in enumerate(kept)]
    return dict(zip(chunk, chunk_rows(chunk, kept, bad, np.mean(each, axis=0), job.rules,
                                      job.top_k, reasons), strict=True))


def _tile_output_names(paths: list[Path], tiled: list[Path]) -> dict[Path, str]:
    """The tiled inputs, in input order, with a file name for their tile outputs: the stem,
    prefixed by the input's index where two tiled inputs share it (each class folder of a
    dataset may hold a ``slide_0000``)."""
    counts = Counter(p.stem for p in tiled)
    index = {p: i for i, p in enumerate(paths)}
    return {p: p.stem if counts[p.stem] == 1 else f"{index[p]:05d}-{p.stem}" for p in tiled}


BACKENDS = ("torch", "onnx", "onnx-int8")


def load_models(source: Path | str | Sequence[Path | str], *, backend: str = "torch",
                precision: str = "auto", device: str = "auto", ensemble: bool = False
                ) -> list[Classifier]:
    """The predictors behind ``source`` (one, one per fold, or those of each source in a list);
    all must share classes and the kind of labels (image size and channels may differ)."""
    given = [source] if isinstance(source, (str, Path)) else list(source)
    if not given:
        raise MedscopeError("no model given: name at least one run directory or checkpoint")
    sources = [s for g in given for s in (fold_dirs(g) if ensemble else [Path(g)])]
    models = [_load_one(s, backend, precision, device) for s in sources]
    check_same_labels(sources, models)
    return models


def check_same_labels(sources: Sequence[Path], models: Sequence[Any]) -> None:
    """Models averaged together must share classes and the kind of labels: one line naming
    the first that does not (``predict``, ``evaluate``'s ensembles and ``serve`` alike)."""
    ref = models[0]
    for src, model in zip(sources[1:], models[1:], strict=True):
        for what in ("classes", "multilabel"):
            if getattr(model, what) != getattr(ref, what):
                raise MedscopeError(f"{src}: {what} {getattr(model, what)} differ from "
                                    f"{sources[0]}'s {getattr(ref, what)}; cannot ensemble")


def fold_dirs(cv_dir: Path | str) -> list[Path]:
    """``fold_1 … fold_K`` run directories of a ``medscope cv`` directory, in fold order."""
    return [run.root for run in CvDir(cv_dir).require_folds()]


def _load_one(source: Path, backend: str, precision: str, device: str) -> Classifier:
    if _is_onnx_export(source):
        return OnnxPredictor.load(source)
    if backend in ("onnx", "onnx-int8"):
        return OnnxPredictor.load(current_onnx_export(source, int8=backend == "onnx-int8"))
    return Predictor.load(source, precision=precision, device=device)


def _is_onnx_export(source: Path) -> bool:
    if source.suffix == ".onnx":
        return True
    return source.is_dir() and (source / "model.onnx").is_file() and \
        not (source / "checkpoints").is_dir()


def current_onnx_export(source: Path | str, int8: bool = False) -> Path:
    """The export folder of a run/checkpoint (its int8 one with ``int8``), (re-)exported when
    absent or made from other weights or metadata than the checkpoint's current ones."""
    folder = default_export_dir(source, int8)
    meta_path = folder / "model.json"
    digest = checkpoint_digest(checkpoint_stem(source))
    if meta_path.is_file():
        meta = read_json(meta_path)
        if isinstance(meta, dict) and meta.get("onnx", {}).get("source_checkpoint") == digest:
            return folder
    log.info("exporting %s to ONNX in %s", source, folder)
    return export_onnx(source, folder, int8=int8).parent


def chunk_rows(paths: Sequence[Path], kept: np.ndarray, unreadable: list[tuple[Path, str]],
               probs: np.ndarray, rules: Rules, top_k: int,
               reasons: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
    """Rows for one decoded chunk (``kept``: indices into ``paths`` of the rows of ``probs``),
    in the order of ``paths``; ``reasons`` (per kept image) refer an image whatever its
    confidence (``medscope.novelty``)."""
    classes = list(rules.classes)
    rows: dict[int, dict[str, Any]] = {}
    labels, refer = rules.labels(probs), rules.refer_to_expert(probs)
    for i, (row_probs, idx) in enumerate(zip(probs, kept, strict=True)):
        rows[int(idx)] = prediction_row(paths[idx], row_probs, classes, labels[i], top_k,
                                        None if refer is None else bool(refer[i]),
                                        reasons[i] if reasons else None)
    bad = {str(p): reason for p, reason in unreadable}
    for idx, path in enumerate(paths):
        if idx not in rows:
            rows[idx] = {"file": str(path), "prediction": "", "probability": "", "top_k": "",
                         "refer_to_expert": "", "refer_reason": "",
                         "error": bad.get(str(path), "unreadable"),
                         **{f"p_{c}": "" for c in classes}}
    return [rows[i] for i in range(len(paths))]


def prediction_row(path: Path, probs: np.ndarray, classes: list[str], label: str, top_k: int,
                   refer: bool | None, reason: str | None = None) -> dict[str, Any]:
    """One image's row; ``label`` and ``refer`` are the decisions (``medscope.evaluate.decisions``)
    already taken on ``probs``; a ``reason`` refers it regardless (no call for an image that
    cannot hold a specimen)."""
    order = np.argsort(-probs, kind="stable")[:top_k]
    if reason in (BLANK, DEGENERATE):
        label = ""
    return {"file": str(path), "prediction": label, "probability": float(probs.max()),
            "top_k": "|".join(f"{classes[i]}:{probs[i]:.4f}" for i in order),
            "refer_to_expert": refer_flag(True if reason else refer),
            "refer_reason": reason or (LOW_CONFIDENCE if refer else ""), "error": "",
            **{f"p_{c}": float(p) for c, p in zip(classes, probs, strict=True)}}


def _progress_bar(total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="predict", unit="img", disable=not progress)


def _fmt(value: Any) -> Any:
    return f"{value:.6f}" if isinstance(value, float) else value
