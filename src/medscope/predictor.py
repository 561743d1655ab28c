"""One model's inference, whatever runs it: the ``Classifier`` protocol that ``Predictor`` (PyTorch)
and ``export.OnnxPredictor`` (onnxruntime) both satisfy, and what is computed on top of any
classifier (test-time augmentation, calibrated probabilities, several models on the same files).

Everything downstream (evaluate, predict, explain, serve, ensembles) goes through this module, so
that preprocessing, calibration and TTA are computed identically. It sits below ``export`` and
``predict``: exporting needs a ``Predictor``, and predicting may need an export."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader

from medscope.core.checkpoint import CheckpointMeta, load_checkpoint, model_state
from medscope.core.runtime import Runtime, predict_logits, select_runtime, unwrap
from medscope.data.cache import DecodedImages, decode_images
from medscope.data.dataset import PixelDataset
from medscope.data.sources import Sample
from medscope.data.transforms import input_normalisation
from medscope.errors import MedscopeError, first_line
from medscope.run import RunDir


@runtime_checkable
class Classifier(Protocol):
    """What evaluate, predict, explain and serve need of a trained model."""

    @property
    def meta(self) -> dict[str, Any]: ...
    @property
    def classes(self) -> list[str]: ...
    @property
    def img_size(self) -> int: ...
    @property
    def in_chans(self) -> int: ...
    @property
    def multilabel(self) -> bool: ...
    @property
    def temperature(self) -> float: ...
    @property
    def thresholds(self) -> list[float] | None: ...

    def logits_from_pixels(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray: ...
    def features_from_pixels(self, pixels: np.ndarray, batch_size: int = 64
                             ) -> tuple[np.ndarray | None, np.ndarray]: ...
    def probs_from_logits(self, logits: np.ndarray) -> np.ndarray: ...
    def probs_from_pixels(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray: ...
    def decode(self, samples: Sequence[Sample], **kw: Any) -> DecodedImages: ...


class MetaClassifier:
    """The part of a ``Classifier`` that only reads the checkpoint metadata (``_meta``, the JSON
    dict): its properties, the one calibration step and decoding at the model's size."""

    _meta: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        """The checkpoint metadata as the JSON dict (a shallow copy)."""
        return dict(self._meta)

    classes = property(lambda self: list(self._meta["classes"]))
    img_size = property(lambda self: int(self._meta["img_size"]))
    in_chans = property(lambda self: int(self._meta["in_chans"]))
    multilabel = property(lambda self: bool(self._meta.get("multilabel", False)))
    temperature = property(lambda self: float(self._meta.get("temperature") or 1.0))
    thresholds = property(lambda self: self._meta.get("thresholds"))

    def logits_from_pixels(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        raise NotImplementedError

    def features_from_pixels(self, pixels: np.ndarray, batch_size: int = 64
                             ) -> tuple[np.ndarray | None, np.ndarray]:
        """``(penultimate features or None, logits)``: without access to the model's layers
        (an ONNX graph) only the logits."""
        return None, self.logits_from_pixels(pixels, batch_size)

    def probs_from_pixels(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Class probabilities for an N x S x S x C uint8 array: softmax(logits / T) with the
        checkpoint's temperature, or an independent sigmoid per class for multi-label."""
        return self.probs_from_logits(self.logits_from_pixels(pixels, batch_size))

    def probs_from_logits(self, logits: np.ndarray) -> np.ndarray:
        # The temperature calibrates softmax only; multi-label has per-label thresholds.
        t = torch.from_numpy(np.asarray(logits, dtype=np.float32))
        if self.multilabel:
            return torch.sigmoid(t).numpy()
        return torch.softmax(t / self.temperature, 1).numpy()

    def decode(self, samples: Sequence[Sample], **kw: Any) -> DecodedImages:
        return decode_images(samples, self.img_size, self.in_chans, **kw)


class Predictor(MetaClassifier):
    """A trained PyTorch model plus the preprocessing recorded in its checkpoint metadata."""

    def __init__(self, model: torch.nn.Module, info: CheckpointMeta, runtime: Runtime) -> None:
        self.info = info
        self._meta = info.to_json()
        self.runtime = runtime
        self.model = runtime.prepare(model).eval()
        self.normalize = input_normalisation(info.mean, info.std,
                                             info.stain_norm).to(runtime.device)

    @classmethod
    def load(cls, source: Path | str, precision: str = "auto", device: str = "auto"
             ) -> Predictor:
        """From a run directory (its best checkpoint) or a checkpoint file pair."""
        from medscope.models import create_model

        stem = checkpoint_stem(source)
        runtime = select_runtime(device, precision)
        tensors, meta = load_checkpoint(stem)
        if not meta.classes:  # `medscope pretrain` writes a backbone and a projection head
            raise MedscopeError(f"{stem}.json: a self-supervised pretraining checkpoint (no "
                                f"classes); fine-tune it first: medscope train --pretrained "
                                f"{source} --data DIR")
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
            raise MedscopeError(f"{stem}: weights do not fit {meta.model!r} "
                                f"({first_line(exc)})") from None
        return cls(model, meta, runtime)

    def logits_from_pixels(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Raw float32 logits (before temperature) for an N x S x S x C uint8 array."""
        loader = DataLoader(PixelDataset(pixels, np.zeros(len(pixels), dtype=np.int64)),
                            batch_size=batch_size)
        logits, _ = predict_logits(self.model, loader, self.normalize, self.runtime)
        return logits.numpy()

    def features_from_pixels(self, pixels: np.ndarray, batch_size: int = 64
                             ) -> tuple[np.ndarray | None, np.ndarray]:
        """``(features, logits)`` from one forward pass: the features the out-of-distribution
        check measures are each channel's mean and standard deviation over space of the
        model's last spatial feature map (``feature_map_layer``); None for a model without one.
        (The classifier's own input, after the last ReLU, is mostly zeros in a small CNN and
        flagged 0 % of blood-cell images given to the fungi demo model, against 98 % for these
        statistics: benchmarks/ood_refer.py.)"""
        layer = self._feature_layer()
        if layer is None:
            return None, self.logits_from_pixels(pixels, batch_size)
        captured: list[torch.Tensor] = []
        handle = layer.register_forward_hook(
            lambda _m, _args, out: captured.append(map_statistics(out)))
        try:
            logits = self.logits_from_pixels(pixels, batch_size)
        finally:
            handle.remove()
        if not captured:
            return np.empty((0, 0), np.float32), logits
        return torch.cat(captured).numpy(), logits

    def _feature_layer(self) -> torch.nn.Module | None:
        if not hasattr(self, "_feature_layer_cache"):
            self._feature_layer_cache = feature_map_layer(
                self.model, self.in_chans, self.img_size, self.runtime.device)
        return self._feature_layer_cache


def map_statistics(out: Any) -> torch.Tensor:
    """N x 2C: per channel, the mean and standard deviation over space of an N x C x H x W
    feature map (in float32 whatever the autocast dtype)."""
    x = out.detach().float()
    return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1).cpu()


def feature_map_layer(model: torch.nn.Module, in_chans: int, img_size: int,
                      device: torch.device | str = "cpu") -> torch.nn.Module | None:
    """The module whose output is the model's last spatial (N x C x H x W, H x W > 1)
    activation, found by one probe forward pass on a blank image; None when there is none.
    (A vision transformer has no such map; what is found there is an attention tensor, a
    weaker check than a CNN's last feature map.)"""
    net = unwrap(model)
    order: list[torch.nn.Module] = []

    def note(module: torch.nn.Module, _args: Any, out: Any) -> None:
        # A pooled 1 x 1 map has no spatial spread to measure.
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1:
            order.append(module)

    handles = [m.register_forward_hook(note) for m in net.modules() if m is not net]
    try:
        with torch.no_grad():
            net(torch.zeros(1, in_chans, img_size, img_size, device=device))
    finally:
        for h in handles:
            h.remove()
    return order[-1] if order else None


def checkpoint_stem(source: Path | str) -> Path:
    """The checkpoint pair's path without suffix: a run directory's best one, or the file given."""
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


def probs_per_model(models: Sequence[Classifier], samples: Sequence[Sample], *, tta: bool = False,
                    batch_size: int = 64, progress: bool = False, desc: str = "decode"
                    ) -> tuple[np.ndarray, list[tuple[Path, str]], np.ndarray]:
    """``(kept, bad, probs)``: the indices of the samples every model could read, the unreadable
    files with the reason, and an M x N x K array of each model's calibrated probabilities on
    the kept ones (``tta``: see ``model_probs``). The images are decoded once per distinct
    size and channel count, so models trained at different resolutions can be averaged."""
    kept, bad, probs, _ = outputs_per_model(models, samples, tta=tta, batch_size=batch_size,
                                            progress=progress, desc=desc)
    return kept, bad, probs


def outputs_per_model(models: Sequence[Classifier], samples: Sequence[Sample], *,
                      tta: bool = False, batch_size: int = 64, progress: bool = False,
                      desc: str = "decode", features: Sequence[bool] | None = None
                      ) -> tuple[np.ndarray, list[tuple[Path, str]], np.ndarray,
                                 list[np.ndarray | None]]:
    """``probs_per_model`` plus, for each model whose ``features`` flag is set, its
    penultimate features of the kept images (from the same forward pass), else None."""
    decoded: dict[tuple[int, int], DecodedImages] = {}
    for m in models:
        key = (m.img_size, m.in_chans)
        if key not in decoded:
            decoded[key] = m.decode(samples, progress=progress, desc=desc)
    kept = functools.reduce(np.intersect1d, (d.kept for d in decoded.values()))
    bad = {str(p): (p, why) for d in decoded.values() for p, why in d.bad}
    probs = np.empty((len(models), len(kept), len(models[0].classes)), dtype=np.float32)
    feats: list[np.ndarray | None] = [None] * len(models)
    for i, m in enumerate(models):
        d = decoded[(m.img_size, m.in_chans)]
        pixels = d.pixels if len(d.kept) == len(kept) else d.pixels[np.isin(d.kept, kept)]
        if len(kept):
            probs[i], feats[i] = model_outputs(m, pixels, batch_size, tta=tta,
                                               features=bool(features and features[i]))
    return kept, list(bad.values()), probs, feats


def dihedral_views(pixels: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of the square (rot90 x 4, each also mirrored) of N x S x S x C images:
    microscopy and histology have no 'up' and no handedness."""
    rotations = [np.rot90(pixels, k, axes=(1, 2)) for k in range(4)]
    return [np.ascontiguousarray(v) for r in rotations for v in (r, r[:, :, ::-1])]


def tta_logits(model: Classifier, pixels: np.ndarray, batch_size: int = 64,
               identity: np.ndarray | None = None) -> np.ndarray:
    """Test-time augmentation: a model's logits (before temperature) averaged over the 8
    dihedral views. Averaged as logits, not probabilities, so the temperature calibrates the
    result once, and evaluation's before/after calibration figures stay defined.
    ``identity``: the untransformed view's logits when the caller already has them (the
    out-of-distribution check's forward pass), so that view is not run twice."""
    views = dihedral_views(pixels)
    first = (np.asarray(identity, np.float64) if identity is not None
             else np.asarray(model.logits_from_pixels(views[0], batch_size), np.float64))
    total = first + sum(np.asarray(model.logits_from_pixels(v, batch_size), np.float64)
                        for v in views[1:])
    return (total / len(views)).astype(np.float32)


def model_probs(model: Classifier, pixels: np.ndarray, batch_size: int = 64, *,
                tta: bool = False) -> np.ndarray:
    """One model's probabilities, calibrated by its temperature (``Predictor`` and
    ``OnnxPredictor`` both apply it); with ``tta`` from its logits averaged over the views."""
    return model_outputs(model, pixels, batch_size, tta=tta)[0]


def model_outputs(model: Classifier, pixels: np.ndarray, batch_size: int = 64, *,
                  tta: bool = False, features: bool = False
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """``(probabilities, features)``: ``model_probs``, and with ``features`` the penultimate
    features of the images as given (the identity view under ``tta``), from the same pass."""
    feats = None
    if features:
        feats, logits = model.features_from_pixels(pixels, batch_size)
    else:
        logits = model.logits_from_pixels(pixels, batch_size)
    if tta:  # as tta_logits: the identity view first, summed in float64, then the mean
        total = np.asarray(logits, np.float64)
        for view in dihedral_views(pixels)[1:]:
            total = total + np.asarray(model.logits_from_pixels(view, batch_size), np.float64)
        logits = (total / 8).astype(np.float32)
    return np.asarray(model.probs_from_logits(logits)), feats
