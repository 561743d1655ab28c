"""Inference from a checkpoint: evaluate, predict (and later explain and serve) all go through
``Predictor`` so that they preprocess and compute identically."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from medscope.data.cache import DecodedImages, decode_images
from medscope.data.dataset import PixelDataset
from medscope.data.io import is_image_file
from medscope.data.sources import Sample
from medscope.data.transforms import Normalize
from medscope.errors import MedscopeError
from medscope.run import RunDir, atomic_write_csv
from medscope.train.checkpoint import CheckpointMeta, load_checkpoint, model_state
from medscope.train.runtime import Runtime, predict_logits, select_runtime

log = logging.getLogger(__name__)


class Predictor:
    """A trained model plus the preprocessing recorded in its checkpoint metadata."""

    def __init__(self, model: torch.nn.Module, info: CheckpointMeta, runtime: Runtime) -> None:
        self.info = info
        self.runtime = runtime
        self.model = runtime.prepare(model).eval()
        self.normalize = Normalize(info.mean, info.std).to(runtime.device)

    classes = property(lambda self: list(self.info.classes))
    img_size = property(lambda self: self.info.img_size)
    in_chans = property(lambda self: self.info.in_chans)
    multilabel = property(lambda self: self.info.multilabel)
    temperature = property(lambda self: self.info.temperature)
    thresholds = property(lambda self: self.info.thresholds)

    @property
    def meta(self) -> dict[str, Any]:
        """The checkpoint metadata as the JSON dict (a copy; ``info`` is the typed view)."""
        return self.info.to_json()

    @classmethod
    def load(cls, source: Path | str, precision: str = "auto", device: str = "auto"
             ) -> Predictor:
        """From a run directory (its best checkpoint) or a checkpoint file pair."""
        from medscope.models import create_model

        stem = checkpoint_stem(source)
        runtime = select_runtime(device, precision)
        tensors, meta = load_checkpoint(stem)
        try:
            model = create_model(meta.model, num_classes=meta.num_classes,
                                 in_chans=meta.in_chans, img_size=meta.img_size,
                                 **meta.model_kwargs)
        except TypeError as exc:
            raise MedscopeError(f"{stem}.json: model_kwargs do not fit {meta.model!r} "
                                f"({exc})") from None
        try:
            model.load_state_dict(model_state(tensors))
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise MedscopeError(f"{stem}: weights do not fit {meta.model!r} ({first})") from None
        return cls(model, meta, runtime)

    def logits_from_pixels(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Raw float32 logits (before temperature) for an N x S x S x C uint8 array."""
        loader = DataLoader(PixelDataset(pixels, np.zeros(len(pixels), dtype=np.int64)),
                            batch_size=batch_size)
        logits, _ = predict_logits(self.model, loader, self.normalize, self.runtime)
        return logits.numpy()

    def probs_from_pixels(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Class probabilities for an N x S x S x C uint8 array: softmax(logits / T) with the
        checkpoint's temperature, or an independent sigmoid per class for multi-label."""
        return self.probs_from_logits(self.logits_from_pixels(pixels, batch_size))

    def probs_from_logits(self, logits: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.asarray(logits, dtype=np.float32))
        if self.multilabel:
            return torch.sigmoid(t).numpy()
        return torch.softmax(t / self.temperature, 1).numpy()

    def decode(self, samples: Sequence[Sample], **kw) -> DecodedImages:
        return decode_images(samples, self.img_size, self.in_chans, **kw)


def checkpoint_stem(source: Path | str) -> Path:
    source = Path(source)
    if source.is_dir():
        run = RunDir(source)
        run.require_finished()
        return run.best
    if source.suffix in (".safetensors", ".json"):
        return source.with_suffix("")
    if source.with_suffix(".safetensors").is_file():
        return source
    if not source.exists():
        raise MedscopeError(f"{source}: run directory not found")
    raise MedscopeError(f"{source}: neither a run directory nor a checkpoint")


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
) -> list[dict[str, Any]]:
    """One row per image, in input order: file, predicted class, its probability, the top-k
    classes, ``refer_to_expert``, every class probability, and ``error`` for unreadable files
    (listed with the reason, not fatal).

    ``source``: a run directory, a checkpoint, an ONNX export (folder or ``model.onnx``), or
    with ``ensemble`` a ``medscope cv`` directory whose ``fold_*`` models are averaged; a list
    of them averages their models (image sizes may differ: each gets the images at its own).
    ``tta``: each model's logits averaged over the 8 dihedral views (4 rotations x mirror).
    ``abstain_below``: refer the image to an expert when its top probability is below this;
    default the checkpoint's ``selective_threshold`` (single model only), 0 switches it off.
    ``backend="onnx"``: onnxruntime on the run's export (made into ``RUN/onnx`` if missing or
    stale); ``"onnx-int8"``: on its int8 export (``RUN/onnx-int8``, calibrated on the run's
    training images). Probabilities are calibrated by each model's temperature.
    """
    if backend not in BACKENDS:
        raise MedscopeError(f"unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
    if batch_size < 1:
        raise MedscopeError(f"batch size {batch_size}: must be at least 1")
    models = load_models(source, backend=backend, precision=precision, device=device,
                         ensemble=ensemble)
    classes = models[0].classes
    top_k = max(1, min(int(top_k), len(classes)))
    threshold = abstain_threshold(models, abstain_below)
    thresholds = label_thresholds(models)
    paths = collect_images(inputs)
    rows: list[dict[str, Any]] = []
    bar = _progress_bar(len(paths), progress)
    for start in range(0, len(paths), PREDICT_CHUNK):
        chunk = paths[start:start + PREDICT_CHUNK]
        kept, bad, each = probs_per_model(models, [Sample(p, -1) for p in chunk], tta=tta,
                                          batch_size=batch_size)
        rows += chunk_rows(chunk, kept, bad, np.mean(each, axis=0), classes, thresholds, top_k,
                           threshold)
        bar.update(len(chunk))
    bar.close()
    if out_csv is not None:
        header = ["file", "prediction", "probability", "top_k", "refer_to_expert",
                  *[f"p_{c}" for c in classes], "error"]
        atomic_write_csv(out_csv, header, ([_fmt(r[h]) for h in header] for r in rows))
    return rows


BACKENDS = ("torch", "onnx", "onnx-int8")


def load_models(source: Path | str | Sequence[Path | str], *, backend: str = "torch",
                precision: str = "auto", device: str = "auto", ensemble: bool = False
                ) -> list[Any]:
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
    cv_dir = Path(cv_dir)
    folds = [p for p in cv_dir.glob("fold_*") if p.is_dir() and p.name[5:].isdigit()]
    if not folds:
        raise MedscopeError(f"{cv_dir}: no fold_*/ run directories (is it a `medscope cv` "
                            "output?)")
    return sorted(folds, key=lambda p: int(p.name[5:]))


def _load_one(source: Path, backend: str, precision: str, device: str) -> Any:
    from medscope.export import OnnxPredictor

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
    from medscope.export.onnx import checkpoint_digest, default_export_dir, export_onnx
    from medscope.run import read_json

    folder = default_export_dir(source, int8)
    meta_path = folder / "model.json"
    digest = checkpoint_digest(checkpoint_stem(source))
    if meta_path.is_file():
        meta = read_json(meta_path)
        if isinstance(meta, dict) and meta.get("onnx", {}).get("source_checkpoint") == digest:
            return folder
    log.info("exporting %s to ONNX in %s", source, folder)
    return export_onnx(source, folder, int8=int8).parent


def abstain_threshold(models: Sequence[Any], given: float | None) -> float | None:
    """``given`` (0 = off), else a single model's stored ``selective_threshold``, else off."""
    if given is not None:
        if not 0.0 <= given <= 1.0:
            raise MedscopeError(f"abstain threshold {given}: must be between 0 and 1")
        return given or None
    if len(models) == 1:
        stored = models[0].meta.get("selective_threshold")
        return float(stored) if stored is not None else None
    return None


def probs_per_model(models: Sequence[Any], samples: Sequence[Sample], *, tta: bool = False,
                    batch_size: int = 64, progress: bool = False, desc: str = "decode"
                    ) -> tuple[np.ndarray, list[tuple[Path, str]], np.ndarray]:
    """``(kept, bad, probs)``: the indices of the samples every model could read, the unreadable
    files with the reason, and an M x N x K array of each model's calibrated probabilities on
    the kept ones (``tta``: see ``model_probs``). The images are decoded once per distinct
    size and channel count, so models trained at different resolutions can be averaged."""
    decoded: dict[tuple[int, int], DecodedImages] = {}
    for m in models:
        key = (m.img_size, m.in_chans)
        if key not in decoded:
            decoded[key] = m.decode(samples, progress=progress, desc=desc)
    kept = functools.reduce(np.intersect1d, (d.kept for d in decoded.values()))
    bad = {str(p): (p, why) for d in decoded.values() for p, why in d.bad}
    k = len(models[0].classes)
    probs = np.empty((len(models), len(kept), k), dtype=np.float32)
    for i, m in enumerate(models):
        d = decoded[(m.img_size, m.in_chans)]
        pixels = d.pixels if len(d.kept) == len(kept) else d.pixels[np.isin(d.kept, kept)]
        if len(kept):
            probs[i] = model_probs(m, pixels, batch_size, tta=tta)
    return kept, list(bad.values()), probs


def dihedral_views(pixels: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of the square (rot90 x 4, each also mirrored) of N x S x S x C images:
    microscopy and histology have no 'up' and no handedness."""
    rotations = [np.rot90(pixels, k, axes=(1, 2)) for k in range(4)]
    return [np.ascontiguousarray(v) for r in rotations for v in (r, r[:, :, ::-1])]


def tta_logits(model: Any, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Test-time augmentation: a model's logits (before temperature) averaged over the 8
    dihedral views. Averaged as logits, not probabilities, so the temperature calibrates the
    result once, and evaluation's before/after calibration figures stay defined."""
    views = dihedral_views(pixels)
    total = sum(np.asarray(model.logits_from_pixels(v, batch_size), np.float64) for v in views)
    return (total / len(views)).astype(np.float32)


def model_probs(model: Any, pixels: np.ndarray, batch_size: int = 64, *,
                tta: bool = False) -> np.ndarray:
    """One model's probabilities, calibrated by its temperature (``Predictor`` and
    ``OnnxPredictor`` both apply it); with ``tta`` from its logits averaged over the views."""
    logits = (tta_logits(model, pixels, batch_size) if tta
              else model.logits_from_pixels(pixels, batch_size))
    return np.asarray(model.probs_from_logits(logits))


def label_thresholds(models: Sequence[Any]) -> list[float] | None:
    """Multi-label decision thresholds (tuned ones when a single model has them, else 0.5);
    None for single-label models."""
    if not models[0].multilabel:
        return None
    tuned = getattr(models[0], "thresholds", None) if len(models) == 1 else None
    return list(tuned) if tuned else [0.5] * len(models[0].classes)


def chunk_rows(paths: Sequence[Path], kept: np.ndarray, unreadable: list[tuple[Path, str]],
               probs: np.ndarray, classes: list[str], thresholds: list[float] | None,
               top_k: int, abstain: float | None) -> list[dict[str, Any]]:
    """Rows for one decoded chunk (``kept``: indices into ``paths`` of the rows of ``probs``),
    in the order of ``paths``."""
    rows: dict[int, dict[str, Any]] = {}
    for row_probs, idx in zip(probs, kept, strict=True):
        rows[int(idx)] = prediction_row(paths[idx], row_probs, classes, thresholds, top_k,
                                        abstain)
    bad = {str(p): reason for p, reason in unreadable}
    for idx, path in enumerate(paths):
        if idx not in rows:
            rows[idx] = {"file": str(path), "prediction": "", "probability": "", "top_k": "",
                         "refer_to_expert": "", "error": bad.get(str(path), "unreadable"),
                         **{f"p_{c}": "" for c in classes}}
    return [rows[i] for i in range(len(paths))]


def prediction_row(path: Path, probs: np.ndarray, classes: list[str],
                   thresholds: list[float] | None, top_k: int,
                   abstain: float | None) -> dict[str, Any]:
    """``thresholds`` None: single-label (the top class); else multi-label: every class at or
    above its threshold, joined by '|' (may be none)."""
    best = int(probs.argmax())
    prediction = (classes[best] if thresholds is None else
                  "|".join(c for c, p, t in zip(classes, probs, thresholds, strict=True)
                           if p >= t))
    order = np.argsort(-probs, kind="stable")[:top_k]
    refer = "" if abstain is None else ("yes" if probs[best] < abstain else "no")
    return {"file": str(path), "prediction": prediction, "probability": float(probs[best]),
            "top_k": "|".join(f"{classes[i]}:{probs[i]:.4f}" for i in order),
            "refer_to_expert": refer, "error": "",
            **{f"p_{c}": float(p) for c, p in zip(classes, probs, strict=True)}}


def _progress_bar(total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="predict", unit="img", disable=not progress)


def _fmt(value: Any) -> Any:
    return f"{value:.6f}" if isinstance(value, float) else value
