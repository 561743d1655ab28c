"""Out-of-distribution scoring: "unlike the training images", fitted at training time and
stored in the checkpoint metadata as plain JSON (floats and lists, never a pickle).

Confidence is high on images unlike any training image, so the refer rule needs a second
question: how far is this image from what the model was trained on? Two scores, higher =
more unusual:

- ``mahalanobis`` (default; penultimate-layer features): the smallest squared Mahalanobis
  distance to a class mean under one covariance shared by the classes (Lee et al., 2018). The
  features are first projected on their top ``dims`` principal components (fitted on the
  training features): the state then holds D x dims numbers instead of a D x D precision
  matrix, small enough for checkpoint metadata, and a covariance of hundreds of dimensions
  from a few thousand images is ill-conditioned anyway. What the projection drops is not
  ignored: the squared distance off the principal subspace, divided by the training
  images' mean variance per dropped dimension, is added (the covariance of probabilistic
  PCA), so a shift in any direction raises the score. A small ridge (``shrinkage``) keeps
  the inverse stable.
- ``energy`` (logits only, nothing to fit but the threshold): ``-T * logsumexp(logits / T)``
  (Liu et al., 2020).

The threshold is the ``1 - flag_rate`` quantile of the scores of validation in-distribution
images, so about ``flag_rate`` (5 %) of in-distribution images are flagged. Written by hand
in numpy (a few lines of linear algebra): the libraries that offer these scores work on torch
models and tensors, while this room stays model-agnostic and its state must be plain JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medscope.errors import MedscopeError

OOD_METHODS = ("mahalanobis", "energy")
STATE_VERSION = 1
_DIGITS = 7  # significant digits kept in the JSON state (float32 precision)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``-T * logsumexp(logits / T)`` per row: low where the model is sure of a class."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(1, keepdims=True)
    return -temperature * (top[:, 0] + np.log(np.exp(z - top).sum(1)))


def fit_ood(*, method: str = "mahalanobis", train_features: np.ndarray | None = None,
            train_labels: np.ndarray | None = None, val_features: np.ndarray | None = None,
            val_logits: np.ndarray | None = None, flag_rate: float = 0.05, dims: int = 32,
            shrinkage: float = 1e-3, temperature: float = 1.0) -> dict[str, Any]:
    """The JSON-serialisable state of an OOD check: ``mahalanobis`` needs training features
    (labels optional: one class without) and validation features; ``energy`` needs
    validation logits."""
    if method not in OOD_METHODS:
        raise MedscopeError(f"unknown OOD method {method!r}; choose from {', '.join(OOD_METHODS)}")
    if not 0 < flag_rate < 1:
        raise MedscopeError(f"OOD flag rate {flag_rate} must lie between 0 and 1")
    if method == "energy":
        if val_logits is None:
            raise MedscopeError("the energy OOD check needs validation logits")
        state: dict[str, Any] = {"method": method, "temperature": float(temperature)}
        val = {"logits": val_logits}
    else:
        if train_features is None or val_features is None:
            raise MedscopeError("the Mahalanobis OOD check needs training and validation "
                                "features")
        state = _fit_mahalanobis(np.asarray(train_features, dtype=np.float64), train_labels,
                                 dims, shrinkage)
        val = {"features": val_features}
    state.update(version=STATE_VERSION, flag_rate=float(flag_rate))
    scores = ood_scores(state, **val)  # scored with the rounded state, as it will be used
    state["threshold"] = float(np.quantile(scores, 1 - flag_rate))
    state["n_val"] = int(len(scores))
    return state


def _fit_mahalanobis(x: np.ndarray, labels, dims: int, shrinkage: float) -> dict[str, Any]:
    if x.ndim != 2 or len(x) < 3:
        raise MedscopeError(f"OOD fit needs N x D training features with N >= 3, got {x.shape}")
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = vt[:max(1, min(dims, x.shape[1], len(x) - 1))]
    z = (x - mean) @ components.T
    labels = np.zeros(len(x), dtype=int) if labels is None else np.asarray(labels).astype(int)
    if len(labels) != len(x):
        raise MedscopeError(f"{len(labels)} labels for {len(x)} training feature rows")
    present = np.unique(labels)
    class_means = np.stack([z[labels == c].mean(0) for c in present])
    resid = z - class_means[np.searchsorted(present, labels)]
    cov = resid.T @ resid / len(z)
    cov += shrinkage * max(float(np.trace(cov)) / len(cov), 1e-12) * np.eye(len(cov))
    dropped = x.shape[1] - len(components)
    off = ((x - mean) - z @ components) if dropped else np.zeros((1, 1))
    residual_var = float((off ** 2).sum(1).mean() / max(dropped, 1))
    return {"method": "mahalanobis", "mean": _round(mean), "components": _round(components),
            "class_means": _round(class_means), "precision": _round(np.linalg.inv(cov)),
            "residual_var": float(f"{max(residual_var, 1e-12):.{_DIGITS}g}") if dropped else 0.0,
            "dims": int(len(components))}


def ood_scores(state: dict[str, Any], *, features: np.ndarray | None = None,
               logits: np.ndarray | None = None) -> np.ndarray:
    """Scores (higher = more unusual) of N images under a fitted ``state``."""
    method = state.get("method")
    if method == "energy":
        if logits is None:
            raise MedscopeError("the energy OOD check scores logits; none were given")
        return energy_score(np.atleast_2d(logits), float(state.get("temperature", 1.0)))
    if method != "mahalanobis":
        raise MedscopeError(f"OOD state: unknown method {method!r}")
    if features is None:
        raise MedscopeError("the Mahalanobis OOD check scores features; none were given")
    mean, comps = np.asarray(state["mean"]), np.asarray(state["components"])
    means, prec = np.asarray(state["class_means"]), np.asarray(state["precision"])
    centred = np.atleast_2d(np.asarray(features, dtype=np.float64)) - mean
    z = centred @ comps.T
    diff = z[:, None, :] - means[None, :, :]  # N x C x r
    dist = np.einsum("ncr,rs,ncs->nc", diff, prec, diff).min(1)
    residual_var = float(state.get("residual_var", 0.0))
    if residual_var > 0:  # distance off the principal subspace, in its own units
        dist += ((centred - z @ comps) ** 2).sum(1) / residual_var
    return dist


def ood_flags(state: dict[str, Any], *, features: np.ndarray | None = None,
              logits: np.ndarray | None = None) -> np.ndarray:
    """True where an image is unlike the training images (score above the threshold)."""
    return ood_scores(state, features=features, logits=logits) > float(state["threshold"])


def check_ood_state(state: Any) -> dict[str, Any]:
    """``state`` as read back from checkpoint JSON, checked; MedscopeError if damaged."""
    if not isinstance(state, dict) or state.get("method") not in OOD_METHODS:
        raise MedscopeError("checkpoint OOD state: missing or of an unknown method")
    need = ["threshold", "flag_rate"] + (["mean", "components", "class_means", "precision"]
                                         if state["method"] == "mahalanobis" else [])
    missing = [k for k in need if k not in state]
    if missing:
        raise MedscopeError(f"checkpoint OOD state: missing {', '.join(missing)}")
    if state["method"] == "mahalanobis":
        comps, means = np.asarray(state["components"]), np.asarray(state["class_means"])
        prec, mean = np.asarray(state["precision"]), np.asarray(state["mean"])
        r = comps.shape[0] if comps.ndim == 2 else -1
        if comps.ndim != 2 or comps.shape[1] != len(mean) or means.shape[-1] != r \
                or prec.shape != (r, r):
            raise MedscopeError("checkpoint OOD state: array shapes do not fit together")
    return state


def _round(a: np.ndarray) -> list:
    """Nested lists of floats at float32 precision: a compact, exact-to-reload JSON form."""
    return np.vectorize(lambda v: float(f"{v:.{_DIGITS}g}"), otypes=[float])(a).tolist()
