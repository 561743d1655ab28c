"""The decision rules: which labels an image gets, and when it is referred to an expert.

One implementation, used by ``predict``, ``serve``, evaluation (its predictions.csv) and
ensembles alike, so that the same image gets the same answer whichever way it is scored.
Pure functions over probabilities (N x K arrays, already calibrated) and checkpoint metadata
(the JSON dict ``Classifier.meta``).

- **Labels.** Single-label: the top class. Multi-label: every label whose probability is at or
  above its threshold ('|'-joined, possibly none); the thresholds are the per-label ones tuned
  on the validation split and stored in the checkpoint when one model decides, else 0.5 each
  (an ensemble's average was tuned by no one).
- **Refer to an expert** when the image's *confidence* is below the refer threshold.
  Confidence, single-label: the top probability. Multi-label: the least certain of the
  per-label yes/no calls, min over labels of max(p, 1 - p); the top probability would refer
  every confidently negative image (all labels near 0).
- **The refer threshold**, first that applies: the operator's ``--abstain-below`` (0 switches
  referral off); one model: its checkpoint's ``selective_threshold`` (fitted on validation);
  an ensemble served from its evaluation folder: the threshold that evaluation fitted on the
  members' shared validation split; otherwise off: no threshold, no referral (an unvalidated
  default would put yes/no flags on every prediction that mean nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medscope.errors import MedscopeError

DEFAULT_LABEL_THRESHOLD = 0.5


@dataclass(frozen=True)
class ReferRule:
    """The refer-to-expert threshold (None: referral off) and, in words, what set it."""

    threshold: float | None
    source: str


@dataclass(frozen=True)
class Rules:
    """Every decision for one model or ensemble: label thresholds and the refer rule."""

    classes: tuple[str, ...]
    multilabel: bool
    thresholds: tuple[float, ...] | None  # multi-label only
    refer: ReferRule

    def labels(self, probs: np.ndarray) -> list[str]:
        return predicted_labels(probs, self.classes, self.thresholds)

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        return confidence(probs, self.multilabel)

    def refer_to_expert(self, probs: np.ndarray) -> np.ndarray | None:
        return refer_to_expert(probs, self.multilabel, self.refer.threshold)


def rules_for(metas: Sequence[Mapping[str, Any]], abstain_below: float | None = None,
              ensemble_metrics: Mapping[str, Any] | None = None) -> Rules:
    """The rules of the model(s) whose checkpoint metadata is ``metas`` (several: an ensemble,
    whose evaluation's metrics.json, when given, may hold its validated refer threshold)."""
    if not metas:
        raise MedscopeError("no model given: decision rules need at least one checkpoint")
    thresholds = label_thresholds(metas)
    return Rules(tuple(metas[0]["classes"]), bool(metas[0].get("multilabel", False)),
                 None if thresholds is None else tuple(thresholds),
                 refer_rule(metas, abstain_below, ensemble_metrics))


def label_thresholds(metas: Sequence[Mapping[str, Any]]) -> list[float] | None:
    """Multi-label decision thresholds: one model's tuned ``thresholds``, else 0.5 per label;
    None for single-label models."""
    first = metas[0]
    if not first.get("multilabel", False):
        return None
    tuned = first.get("thresholds") if len(metas) == 1 else None
    if tuned:
        if len(tuned) != len(first["classes"]):
            raise MedscopeError(f"checkpoint has {len(tuned)} label thresholds for "
                                f"{len(first['classes'])} classes")
        return [float(t) for t in tuned]
    return [DEFAULT_LABEL_THRESHOLD] * len(first["classes"])


def check_abstain_below(abstain_below: float | None) -> None:
    """An operator's refer threshold must be a probability."""
    if abstain_below is not None and not 0.0 <= abstain_below <= 1.0:
        raise MedscopeError(f"--abstain-below {abstain_below}: must be between 0 and 1")


def refer_rule(metas: Sequence[Mapping[str, Any]], abstain_below: float | None = None,
               ensemble_metrics: Mapping[str, Any] | None = None) -> ReferRule:
    """The refer threshold and what set it (precedence in the module docstring)."""
    check_abstain_below(abstain_below)
    if abstain_below is not None:
        if abstain_below == 0:
            return ReferRule(None, "off (--abstain-below 0)")
        return ReferRule(float(abstain_below), "set by the operator (--abstain-below)")
    if len(metas) == 1:
        stored = metas[0].get("selective_threshold")
        if stored is not None:
            return ReferRule(float(stored), "validated selective threshold "
                                            "(checkpoint selective_threshold)")
        return ReferRule(None, "off: no validated threshold in the checkpoint "
                               "(--abstain-below P sets one)")
    selective = (ensemble_metrics or {}).get("selective") or {}
    if selective.get("fitted_on") == "validation" and selective.get("threshold") is not None:
        return ReferRule(float(selective["threshold"]), "validated selective threshold of the "
                                                        "ensemble (metrics.json selective)")
    return ReferRule(None, "off: no threshold validated for the ensemble "
                           "(--abstain-below P sets one)")


def predicted_labels(probs: np.ndarray, classes: Sequence[str],
                     thresholds: Sequence[float] | None) -> list[str]:
    """One label string per row: the top class (``thresholds`` None), else every class at or
    above its threshold, '|'-joined (empty when none is)."""
    probs = _rows(probs, classes)
    if thresholds is None:
        return [classes[i] for i in probs.argmax(axis=1)]
    on = probs >= np.asarray(thresholds, dtype=np.float64)
    return ["|".join(c for c, yes in zip(classes, row, strict=True) if yes) for row in on]


def confidence(probs: np.ndarray, multilabel: bool) -> np.ndarray:
    """Per row: the top probability; multi-label: min over labels of max(p, 1 - p)."""
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    return np.maximum(probs, 1 - probs).min(axis=1) if multilabel else probs.max(axis=1)


def refer_to_expert(probs: np.ndarray, multilabel: bool, threshold: float | None
                    ) -> np.ndarray | None:
    """Per row, whether to refer (confidence below ``threshold``); None when referral is off."""
    if threshold is None:
        return None
    return confidence(probs, multilabel) < threshold


def refer_flag(refer: bool | np.bool_ | None) -> str:
    """The CSV spelling: "yes" / "no", empty when referral is off."""
    return "" if refer is None else ("yes" if refer else "no")


def _rows(probs: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if probs.shape[1] != len(classes):
        raise MedscopeError(f"probabilities for {probs.shape[1]} classes, model has "
                            f"{len(classes)}")
    return probs
