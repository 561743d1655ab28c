import numpy as np

from medscope.report.plots import example_indices, plot_examples


def _probs(pred: list[int], conf: list[float], k: int = 3) -> np.ndarray:
    probs = np.full((len(pred), k), 0.0)
    for i, (p, c) in enumerate(zip(pred, conf, strict=True)):
        probs[i] = (1 - c) / (k - 1)
        probs[i, p] = c
    return probs


def test_examples_show_the_most_confident_mistakes_and_a_spread_of_the_rest():
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, 0])
    pred = [0, 1, 1, 2, 2, 0, 0, 1, 2, 2]  # wrong at 1, 3, 5, 9
    conf = [0.9, 0.5, 0.9, 0.95, 0.9, 0.6, 0.9, 0.9, 0.9, 0.8]
    pick = example_indices(labels, _probs(pred, conf), n=4)
    assert len(pick) == 4 and len(set(pick.tolist())) == 4
    assert pick[-2:].tolist() == [3, 9]  # the two most confident of the four mistakes
    assert not set(pick[:2].tolist()) & {1, 3, 5, 9}


def test_examples_when_everything_is_wrong_or_right():
    labels = np.array([0, 1, 2])
    assert sorted(example_indices(labels, _probs([1, 2, 0], [0.7, 0.8, 0.9]), 16)) == [0, 1, 2]
    assert sorted(example_indices(labels, _probs([0, 1, 2], [0.7, 0.8, 0.9]), 16)) == [0, 1, 2]


def test_plot_examples_writes_a_png(tmp_path):
    pixels = np.zeros((3, 8, 8, 1), dtype=np.uint8)
    plot_examples(pixels, ["a", "b", "c"], tmp_path / "ex.png", wrong=[False, True, False])
    assert (tmp_path / "ex.png").read_bytes()[:4] == b"\x89PNG"
