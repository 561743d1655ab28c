"""Aggregations and the image-level refer rule, each reason in its order."""

from __future__ import annotations

import numpy as np
import pytest

from medscope.errors import MedscopeError
from medscope.slides.aggregate import (
    LOW_CONFIDENCE,
    NO_USABLE_FIELD,
    TILES_DISAGREE,
    TOO_FEW_TILES,
    ReferRule,
    aggregate,
    decide,
    topk_count,
)

P = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])


def test_mean():
    assert aggregate(P, "mean") == pytest.approx([0.5625, 0.4375])


def test_topk_by_max_probability_and_per_class():
    # the two most decisive tiles are 0.9 (class 0) and 0.8 (class 1)
    assert aggregate(P, "topk", k=2) == pytest.approx([0.55, 0.45])
    per_class = aggregate(P, "topk", k=1, per_class=True)
    assert per_class == pytest.approx(np.array([0.9, 0.8]) / 1.7)
    assert topk_count(10, None) == 3 and topk_count(2, 5) == 2 and topk_count(1, None) == 1


def test_vote_counts_argmax_and_breaks_ties_by_mean():
    assert aggregate(P, "vote") == pytest.approx([0.75, 0.25], abs=1e-5)
    tie = np.array([[0.9, 0.1], [0.4, 0.6]])
    assert aggregate(tie, "vote").argmax() == 0  # mean 0.65 vs 0.35
    assert aggregate(tie, "vote").sum() == pytest.approx(1.0)


def test_unknown_aggregation_is_a_user_error():
    with pytest.raises(MedscopeError, match="unknown aggregation"):
        aggregate(P, "median")


def test_no_tiles_is_never_a_guess():
    d = decide(np.zeros((0, 2)))
    assert d.label is None and d.probs is None and d.refer and d.reason == NO_USABLE_FIELD


@pytest.mark.parametrize("probs, rule, reason", [
    ([[0.9, 0.1]], ReferRule(min_tiles=2), TOO_FEW_TILES),
    ([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.2, 0.8], [0.3, 0.7]],
     ReferRule(min_agreement=0.5), TILES_DISAGREE),
    ([[0.55, 0.45], [0.52, 0.48]], ReferRule(min_confidence=0.6), LOW_CONFIDENCE),
    ([[0.9, 0.1], [0.8, 0.2]], ReferRule(), None),
])
def test_refer_reasons(probs, rule, reason):
    d = decide(np.array(probs), rule=rule)
    assert d.reason == reason and d.refer == (reason is not None)
    assert d.label is not None and d.n_tiles == len(probs)


def test_reasons_are_checked_in_order():
    # one tile, low confidence: "too few" comes first
    d = decide(np.array([[0.5, 0.5]]), rule=ReferRule(min_tiles=2, min_confidence=0.9))
    assert d.reason == TOO_FEW_TILES


def test_agreement_is_share_of_tiles_with_the_call():
    d = decide(P)
    assert d.label == 0 and d.agreement == pytest.approx(0.75)


def test_unusual_tiles_refer_and_never_give_a_call_alone():
    from medscope.slides.aggregate import UNLIKE_TRAINING

    d = decide(np.zeros((0, 2)), n_unusual=4)
    assert d.label is None and d.reason == UNLIKE_TRAINING
    d = decide(np.array([[0.9, 0.1], [0.8, 0.2]]), n_unusual=2)  # half the tiles unusual
    assert d.label == 0 and d.reason == UNLIKE_TRAINING
    d = decide(np.array([[0.9, 0.1], [0.8, 0.2], [0.9, 0.1]]), n_unusual=1)
    assert not d.refer  # a quarter: below max_unusual
