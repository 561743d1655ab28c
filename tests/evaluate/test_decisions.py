"""The decision rules in one place: label thresholds, the refer threshold and what set it, the
refer rule for single- and multi-label models."""

from __future__ import annotations

import numpy as np
import pytest

from medscope.errors import MedscopeError
from medscope.evaluate.decisions import (
    confidence,
    label_thresholds,
    predicted_labels,
    refer_flag,
    refer_rule,
    refer_to_expert,
    rules_for,
)

SINGLE = {"classes": ["a", "b", "c"], "multilabel": False}
MULTI = {"classes": ["A", "B"], "multilabel": True, "thresholds": [0.3, 0.8]}


def test_one_multilabel_model_uses_its_tuned_thresholds_an_ensemble_0_5():
    assert label_thresholds([MULTI]) == [0.3, 0.8]
    assert label_thresholds([MULTI, MULTI]) == [0.5, 0.5]  # nobody tuned the average's
    assert label_thresholds([{**MULTI, "thresholds": None}]) == [0.5, 0.5]
    assert label_thresholds([SINGLE]) is None


def test_thresholds_of_the_wrong_length_are_one_line():
    with pytest.raises(MedscopeError, match="3 label thresholds for 2 classes"):
        label_thresholds([{**MULTI, "thresholds": [0.1, 0.2, 0.3]}])


def test_labels_at_or_above_the_tuned_thresholds_else_the_top_class():
    probs = np.array([[0.35, 0.7], [0.2, 0.8], [0.3, 0.9]])
    assert predicted_labels(probs, ["A", "B"], [0.3, 0.8]) == ["A", "B", "A|B"]
    assert predicted_labels(probs, ["A", "B"], [0.5, 0.5]) == ["B", "B", "B"]
    assert predicted_labels(np.array([[0.1, 0.2]]), ["A", "B"], [0.3, 0.3]) == [""]
    single = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    assert predicted_labels(single, ["a", "b", "c"], None) == ["b", "a"]


def test_confidence_is_the_top_probability_or_the_least_certain_label():
    single = np.array([[0.2, 0.5, 0.3]])
    assert confidence(single, multilabel=False) == pytest.approx([0.5])
    # Multi-label: label A at 0.45 is the least certain call (max(0.45, 0.55) = 0.55).
    multi = np.array([[0.45, 0.99], [0.02, 0.01]])
    assert confidence(multi, multilabel=True) == pytest.approx([0.55, 0.98])


def test_refer_below_the_threshold_and_a_confidently_negative_image_is_not_referred():
    multi = np.array([[0.45, 0.99], [0.02, 0.01]])
    # All labels near 0 is a confident "nothing": the top-probability rule (0.02 < 0.9)
    # would refer it; the per-label rule does not.
    assert refer_to_expert(multi, True, 0.9).tolist() == [True, False]
    assert refer_to_expert(np.array([[0.2, 0.5, 0.3]]), False, 0.5).tolist() == [False]
    assert refer_to_expert(np.array([[0.2, 0.5, 0.3]]), False, 0.51).tolist() == [True]
    assert refer_to_expert(multi, True, None) is None
    assert [refer_flag(x) for x in (True, False, None, np.bool_(True))] == ["yes", "no", "",
                                                                              "yes"]


def test_refer_threshold_operator_then_checkpoint_then_off():
    stored = {**SINGLE, "selective_threshold": 0.8}
    assert refer_rule([stored], 0.6).threshold == 0.6
    assert "--abstain-below" in refer_rule([stored], 0.6).source
    rule = refer_rule([stored])
    assert rule.threshold == 0.8 and "selective_threshold" in rule.source
    assert refer_rule([stored], 0).threshold is None  # 0 switches it off
    unreachable = refer_rule([{**SINGLE, "selective_threshold": None}])
    assert unreachable.threshold is None and unreachable.source.startswith("off")
    assert refer_rule([SINGLE]).threshold is None


def test_an_ensemble_refers_only_at_a_threshold_validated_for_it():
    stored = {**SINGLE, "selective_threshold": 0.8}
    assert refer_rule([stored, stored]).threshold is None  # a member's is not the average's
    fitted = {"selective": {"threshold": 0.7, "fitted_on": "validation"}}
    rule = refer_rule([stored, stored], ensemble_metrics=fitted)
    assert rule.threshold == 0.7 and "ensemble" in rule.source
    optimistic = {"selective": {"threshold": 0.7, "fitted_on": "this data"}}
    assert refer_rule([stored, stored], ensemble_metrics=optimistic).threshold is None
    assert refer_rule([stored, stored], 0.4, ensemble_metrics=fitted).threshold == 0.4


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_abstain_below_outside_0_1_is_one_line(bad):
    with pytest.raises(MedscopeError, match=rf"--abstain-below {bad}: must be between 0 and 1"):
        refer_rule([SINGLE], bad)


def test_rules_bundle_labels_confidence_and_referral():
    rules = rules_for([{**MULTI, "selective_threshold": 0.9}])
    probs = np.array([[0.35, 0.7], [0.02, 0.01]])
    assert rules.thresholds == (0.3, 0.8) and rules.refer.threshold == 0.9
    assert rules.labels(probs) == ["A", ""]
    assert rules.refer_to_expert(probs).tolist() == [True, False]
    with pytest.raises(MedscopeError, match="probabilities for 3 classes"):
        rules.labels(np.zeros((1, 3)))
