"""Prediction on files: collect the images, load the model(s) behind a source (a run, a
checkpoint, an ONNX export made on demand, a CV directory's folds), predict in bounded chunks and
write one CSV row per image. One model's inference lives in ``medscope.predictor``."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medscope.data.io import is_image_file
from medscope.data.sources import Sample
from medscope.diagnosis import (
    TILE_COLUMNS,
    check_tiles,
    diagnose_path,
    tile_plan,
    tiled_row,
    wants_tiles,
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

log = logging.getLogger(__name__)


def collect_images(inputs: Sequence[Path | str]) -> list[Path]:
    """Files as given, folders searched recursively for images; sorted, no duplicates."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and is_image_file(p))
        elif item.is_file():
            found.append(item)
        else:
            raise MedscopeError(f"{item}: no such file or directory")
    if not found:
        raise MedscopeError(f"no images found in {', '.join(map(str, inputs))}")
    return list(dict.fromkeys(found))


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
    tiles_dir: Path | None = None,
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
    ``tiles``/``tile_size``/``aggregation``: large images are tiled at the training scale
    (``medscope.diagnosis``); their rows add ``tiled``, tile counts and ``refer_reason``, and
    ``tiles_dir`` gets each one's per-tile CSV and heat map.
    """
    _check_options(backend, abstain_below, tiles, aggregation, batch_size)
    models = load_models(source, backend=backend, precision=precision, device=device,
                         ensemble=ensemble)
    top_k = max(1, min(int(top_k), len(models[0].classes)))
    rules = rules_for([m.meta for m in models], abstain_below)
    paths = collect_images(inputs)
    plan = tile_plan(models, tiles, tile_size)
    names = _tile_output_names(paths, [p for p in paths if wants_tiles(p, plan, tiles)])
    bar = _progress_bar(len(paths), progress)
    by_path = _whole_image_rows(models, [p for p in paths if p not in names], rules,
                                top_k, tta, batch_size, bar)
    for path, name in names.items():
        result = diagnose_path(models, path, plan, tta=tta, batch_size=batch_size,
                               aggregation=aggregation)
        by_path[path] = tiled_row(result, rules, top_k)
        if tiles_dir is not None:
            write_tile_outputs(result, Path(tiles_dir), name)
        bar.update(1)
    bar.close()
    rows = [by_path[p] for p in paths]
    if out_csv is not None:
        _write_rows(out_csv, rows, models[0].classes, tiled=bool(names))
    return rows


def _check_options(backend: str, abstain_below: float | None, tiles: str, aggregation: str,
                   batch_size: int) -> None:
    """Every option checked before any model is loaded."""
    if backend not in BACKENDS:
        raise MedscopeError(f"unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
    check_abstain_below(abstain_below)
    check_tiles(tiles, aggregation)
    if batch_size < 1:
        raise MedscopeError(f"batch size {batch_size}: must be at least 1")


def _write_rows(out_csv: Path, rows: list[dict[str, Any]], classes: list[str], *,
                tiled: bool) -> None:
    header = ["file", "prediction", "probability", "top_k", "refer_to_expert", "refer_reason",
              *[f"p_{c}" for c in classes], "error", *(TILE_COLUMNS if tiled else [])]
    atomic_write_csv(out_csv, header, ([_fmt(r.get(h, "")) for h in header] for r in rows))


def _whole_image_rows(models: list[Classifier], paths: list[Path], rules: Rules, top_k: int,
                      tta: bool, batch_size: int, bar: Any) -> dict[Path, dict[str, Any]]:
    """Rows of the images classified whole, decoded ``PREDICT_CHUNK`` at a time; an image that
    cannot hold a specimen, or unlike the training images, is referred saying so."""
    rows: dict[Path, dict[str, Any]] = {}
    checks = ood_checks(models)
    for start in range(0, len(paths), PREDICT_CHUNK):
        chunk = paths[start:start + PREDICT_CHUNK]
        kept, bad, each, feats = outputs_per_model(
            models, [Sample(p, -1) for p in chunk], tta=tta, batch_size=batch_size,
            features=[c is not None for c in checks])
        flags = unusual(checks, feats)
        reasons = [file_problem(chunk[i])
                   or (UNLIKE_TRAINING if flags is not None and flags[j] else None)
                   for j, i in enumerate(kept)]
        rows.update(zip(chunk, chunk_rows(chunk, kept, bad, np.mean(each, axis=0), rules,
                                          top_k, reasons), strict=True))
        bar.update(len(chunk))
    return rows


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
    ref = models[0]
    for src, model in zip(sources[1:], models[1:], strict=True):
        for what in ("classes", "multilabel"):
            if getattr(model, what) != getattr(ref, what):
                raise MedscopeError(f"{src}: {what} {getattr(model, what)} differ from "
                                    f"{sources[0]}'s {getattr(ref, what)}; cannot ensemble")
    return models


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
