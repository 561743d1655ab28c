"""From tile probabilities to the image's call, and the image-level refer-to-expert rule.

One implementation for every consumer: the slide path (one image's tiles), group-level
evaluation (a micrograph's patches, a patient's slides) and whatever serves results, so that
what is measured is what is served.

Aggregations (each maps N x K tile probabilities to K image probabilities summing to 1):
- ``mean`` (default): the mean of the calibrated tile probabilities. Every usable tile counts
  alike; well calibrated when the tiles are.
- ``topk``: the mean over the k most decisive tiles (largest maximum probability), for findings
  that occupy a small part of the image; with ``per_class=True`` each class averages its own
  k highest probabilities instead (then renormalised). ``k`` defaults to a quarter of the
  tiles, at least one.
- ``vote``: the share of tiles whose most probable class is each class (a majority vote; ties
  go to the class with the larger mean probability). Robust to a few over-confident tiles, but
  the result is a vote share, not a calibrated probability.

Refer rules, checked in this order; the first that holds is the reason given:
1. ``no usable field``: no tile survived the artifact filter; the image gets no call at all.
2. ``unlike the training images``: at least ``max_unusual`` of the classified tiles were
   flagged by the out-of-distribution check (``evaluate.ood``). Flagged tiles never enter
   the aggregation; when every tile is flagged the image gets no call.
3. ``too few usable tiles``: fewer than ``min_tiles`` usable tiles; a call is made but referred.
4. ``tiles disagree``: the share of tiles whose own most probable class is the image's call is
   below ``min_agreement`` (a mixed or ambiguous image).
5. ``low confidence``: the aggregated probability of the call is below ``min_confidence``.
Pure numpy, no state: a rule is a small frozen dataclass stored with a run if tuned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medscope.errors import MedscopeError
from medscope.options import AGGREGATIONS

NO_USABLE_FIELD = "no usable field"
UNLIKE_TRAINING = "unlike the training images"
TOO_FEW_TILES = "too few usable tiles"
TILES_DISAGREE = "tiles disagree"
LOW_CONFIDENCE = "low confidence"


@dataclass(frozen=True)
class ReferRule:
    """Thresholds of the image-level refer rule (see the module docstring)."""

    min_tiles: int = 2
    min_agreement: float = 0.5
    min_confidence: float = 0.5
    max_unusual: float = 0.5  # share of classified tiles flagged out-of-distribution


@dataclass(frozen=True)
class Decision:
    """The image-level call: ``label`` is None only when there was no usable tile."""

    label: int | None
    probability: float | None
    probs: np.ndarray | None  # K aggregated probabilities (None without tiles)
    refer: bool
    reason: str | None
    n_tiles: int
    agreement: float | None  # share of tiles whose argmax is ``label``


def check_aggregation(method: str) -> str:
    if method not in AGGREGATIONS:
        raise MedscopeError(f"unknown aggregation {method!r}; choose from "
                            f"{', '.join(AGGREGATIONS)}")
    return method


def topk_count(n_tiles: int, k: int | None) -> int:
    """``k`` tiles, or a quarter of ``n_tiles`` (at least 1) when ``k`` is None; never more
    than there are."""
    if k is None:
        k = math.ceil(n_tiles / 4)
    return max(1, min(int(k), n_tiles))


def aggregate_mean(probs: np.ndarray) -> np.ndarray:
    return _as_probs(probs).mean(0)


def aggregate_topk(probs: np.ndarray, k: int | None = None, *,
                   per_class: bool = False) -> np.ndarray:
    probs = _as_probs(probs)
    k = topk_count(len(probs), k)
    if per_class:
        # each class's own k strongest tiles: a class present in few tiles still shows
        top = -np.sort(-probs, axis=0)[:k].mean(0)
        return top / top.sum()
    order = np.argsort(-probs.max(1), kind="stable")[:k]
    return probs[order].mean(0)


def aggregate_vote(probs: np.ndarray) -> np.ndarray:
    probs = _as_probs(probs)
    votes = np.bincount(probs.argmax(1), minlength=probs.shape[1]).astype(np.float64)
    # tie-break by mean probability, scaled far below one vote so it never outweighs one
    share = votes + 1e-6 * probs.mean(0)
    return share / share.sum()


def aggregate(probs: np.ndarray, method: str = "mean", k: int | None = None, *,
              per_class: bool = False) -> np.ndarray:
    """K image probabilities from N x K tile probabilities (N >= 1) by ``method``."""
    check_aggregation(method)
    if method == "topk":
        return aggregate_topk(probs, k, per_class=per_class)
    if method == "vote":
        return aggregate_vote(probs)
    return aggregate_mean(probs)


def agreement(probs: np.ndarray, label: int) -> float:
    """Share of tiles whose most probable class is ``label``."""
    return float((_as_probs(probs).argmax(1) == label).mean())


def decide(probs: np.ndarray, method: str = "mean", rule: ReferRule | None = None,
           k: int | None = None, *, per_class: bool = False, n_unusual: int = 0) -> Decision:
    """The image's call from its usable tiles' probabilities (N x K, N may be 0), with the
    refer decision and its reason. ``n_unusual``: tiles classified but flagged
    out-of-distribution (left out of ``probs``)."""
    rule = rule or ReferRule()
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs) if probs.ndim == 2 else 0
    unusual = n_unusual / (n + n_unusual) if n + n_unusual else 0.0
    if n == 0:
        reason = UNLIKE_TRAINING if n_unusual else NO_USABLE_FIELD
        return Decision(None, None, None, True, reason, 0, None)
    image = aggregate(probs, method, k, per_class=per_class)
    label = int(image.argmax())
    agree = agreement(probs, label)
    reason = refer_reason(n, agree, float(image[label]), rule, unusual)
    return Decision(label, float(image[label]), image, reason is not None, reason, n, agree)


def refer_reason(n_tiles: int, agree: float, confidence: float, rule: ReferRule,
                 unusual: float = 0.0) -> str | None:
    """The first refer rule that holds, or None (see the module docstring for the order).
    ``unusual``: share of the classified tiles flagged out-of-distribution."""
    if n_tiles == 0:
        return NO_USABLE_FIELD
    if unusual > 0 and unusual >= rule.max_unusual:
        return UNLIKE_TRAINING
    if n_tiles < rule.min_tiles:
        return TOO_FEW_TILES
    if agree < rule.min_agreement:
        return TILES_DISAGREE
    if confidence < rule.min_confidence:
        return LOW_CONFIDENCE
    return None


def _as_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or not len(probs):
        raise ValueError(f"tile probabilities must be N x K with N >= 1, got {probs.shape}")
    return probs
