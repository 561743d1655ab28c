"""OOD scoring on synthetic Gaussian features and logits: about 5 % of in-distribution images
flagged, nearly all shifted ones, and a state that survives JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medscope.errors import MedscopeError
from medscope.evaluate.ood import (
    check_ood_state,
    energy_score,
    fit_ood,
    ood_flags,
    ood_scores,
)

D, K = 48, 3


def _features(rng, n, shift=0.0, scale=1.0):
    centres = np.eye(K, D) * 6.0
    labels = rng.integers(0, K, n)
    x = centres[labels] + rng.normal(0, 1, (n, D)) * scale + shift
    return x, labels


@pytest.fixture
def fitted():
    rng = np.random.default_rng(0)
    train, labels = _features(rng, 1500)
    val, _ = _features(rng, 1000)
    return rng, fit_ood(train_features=train, train_labels=labels, val_features=val, dims=16)


def test_mahalanobis_flags_about_five_percent_in_and_nearly_all_out(fitted):
    rng, state = fitted
    test_in, _ = _features(rng, 2000)
    shifted, _ = _features(rng, 500, shift=np.r_[np.zeros(D - 8), np.full(8, 3.0)])
    assert 0.02 <= ood_flags(state, features=test_in).mean() <= 0.09
    assert ood_flags(state, features=shifted).mean() >= 0.95
    assert ood_scores(state, features=shifted).mean() > state["threshold"]


def test_state_is_plain_json_and_reloads_to_the_same_scores(fitted):
    rng, state = fitted
    again = check_ood_state(json.loads(json.dumps(state)))
    x, _ = _features(rng, 50)
    assert np.array_equal(ood_scores(again, features=x), ood_scores(state, features=x))
    assert len(json.dumps(state)) < 60_000  # 48 x 16 projection: small metadata
    assert state["method"] == "mahalanobis" and state["dims"] == 16


def test_energy_from_logits():
    rng = np.random.default_rng(1)
    w = np.eye(K, D).T  # a trained head: each logit reads its class's direction
    val, _ = _features(rng, 1000)
    state = fit_ood(method="energy", val_logits=val @ w)
    test_in, _ = _features(rng, 1000)
    blank = rng.normal(0, 0.1, (300, D))  # featureless images: flat logits, high energy
    assert 0.02 <= ood_flags(state, logits=test_in @ w).mean() <= 0.09
    assert ood_flags(state, logits=blank @ w).mean() >= 0.95


def test_energy_score_matches_the_formula():
    logits = np.array([[1.0, 2.0, 3.0]])
    assert energy_score(logits)[0] == pytest.approx(-np.log(np.exp(logits).sum()))
    assert energy_score(logits, 2.0)[0] == pytest.approx(-2 * np.log(np.exp(logits / 2).sum()))


def test_unlabelled_training_features_are_one_class():
    rng = np.random.default_rng(2)
    train, _ = _features(rng, 300)
    state = fit_ood(train_features=train, val_features=train[:100], dims=8)
    assert np.asarray(state["class_means"]).shape == (1, 8)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "knn"}, "unknown OOD method"),
    ({"method": "energy"}, "needs validation logits"),
    ({}, "needs training and validation features"),
    ({"method": "energy", "val_logits": np.zeros((3, 2)), "flag_rate": 1.5}, "flag rate"),
])
def test_fit_mistakes_are_one_line(kwargs, message):
    with pytest.raises(MedscopeError, match=message):
        fit_ood(**kwargs)


def test_damaged_state_is_refused(fitted):
    _, state = fitted
    with pytest.raises(MedscopeError, match="missing"):
        check_ood_state({k: v for k, v in state.items() if k != "precision"})
    with pytest.raises(MedscopeError, match="shapes"):
        check_ood_state({**state, "precision": [[1.0]]})
    with pytest.raises(MedscopeError, match="unknown method"):
        check_ood_state({"method": "pickle"})
