"""Inference from a checkpoint: evaluate, predict (and later explain and serve) all go through
``Predictor`` so that they preprocess and compute identically."""

from __future__ import annotations

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


def predict_files(
    source: Path | str,
    inputs: Sequence[Path | str],
    out_csv: Path | None = None,
    *,
    precision: str = "auto",
    device: str = "auto",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per image: file, predicted class, its probability, every class probability.
    Unreadable files get a row with an ``error`` and no prediction."""
    predictor = Predictor.load(source, precision=precision, device=device)
    paths = collect_images(inputs)
    decoded = predictor.decode([Sample(p, -1) for p in paths], progress=progress,
                               desc="predict")
    probs = predictor.probs_from_pixels(decoded.pixels) if len(decoded.kept) else np.empty(0)
    classes = predictor.classes
    thresholds = predictor.thresholds or [0.5] * len(classes)
    rows: list[dict[str, Any]] = []
    for row_probs, idx in zip(probs, decoded.kept, strict=True):
        best = int(row_probs.argmax())
        # Multi-label: every class at or above its threshold (tuned on validation when the
        # checkpoint has them, else 0.5), joined by '|' (may be none).
        prediction = ("|".join(c for c, p, t in zip(classes, row_probs, thresholds, strict=True)
                               if p >= t)
                      if predictor.multilabel else classes[best])
        rows.append({"file": str(paths[idx]), "prediction": prediction,
                     "probability": float(row_probs[best]), "error": "",
                     **{f"p_{c}": float(p) for c, p in zip(classes, row_probs, strict=True)}})
    for path, reason in decoded.bad:
        rows.append({"file": str(path), "prediction": "", "probability": "", "error": reason,
                     **{f"p_{c}": "" for c in classes}})
    if out_csv is not None:
        header = ["file", "prediction", "probability", *[f"p_{c}" for c in classes], "error"]
        atomic_write_csv(out_csv, header, ([_fmt(r[h]) for h in header] for r in rows))
    return rows


def _fmt(value: Any) -> Any:
    return f"{value:.6f}" if isinstance(value, float) else value
