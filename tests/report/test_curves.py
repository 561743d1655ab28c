import numpy as np
from scipy.special import softmax

from medscope.report.curves import (
    COVERAGE,
    RELIABILITY,
    ROC_CURVES,
    plot_roc_curves,
    write_evaluation_plots,
)

CLASSES = ["a", "b", "c"]


def _logits(n=45):
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    return 4 * (rng.normal(size=(n, 3)) + np.eye(3)[labels]), labels


def _is_png(path):
    return path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


def test_multiclass_plots(tmp_path):
    logits, labels = _logits()
    written = write_evaluation_plots(tmp_path, labels, softmax(logits / 3, axis=1), CLASSES,
                                     logits=logits, temperature=3.0, selective_threshold=0.6,
                                     target_accuracy=0.95)
    assert [p.name for p in written] == [ROC_CURVES, RELIABILITY, COVERAGE]
    assert all(_is_png(p) for p in written)


def test_without_logits_no_reliability_diagram(tmp_path):
    logits, labels = _logits()
    written = write_evaluation_plots(tmp_path, labels, softmax(logits, axis=1), CLASSES)
    assert {p.name for p in written} == {ROC_CURVES, COVERAGE}
    assert not (tmp_path / RELIABILITY).exists()


def test_multilabel_roc_skips_a_label_never_present(tmp_path):
    rng = np.random.default_rng(1)
    y = (rng.random((30, 3)) < 0.5).astype(int)
    y[:, 2] = 0
    plot_roc_curves(y, rng.random((30, 3)), CLASSES, tmp_path / "roc.png", multilabel=True)
    assert _is_png(tmp_path / "roc.png")
