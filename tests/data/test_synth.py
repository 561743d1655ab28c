import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medscope.data.synth import CLASSES, make_dataset, make_slide


@pytest.mark.slow
def test_same_seed_same_slide_other_seed_other_slide():
    a = make_slide(0, np.random.default_rng([7, 0, 0]))
    b = make_slide(0, np.random.default_rng([7, 0, 0]))
    c = make_slide(0, np.random.default_rng([8, 0, 0]))
    assert a.shape == (1000, 1000, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.slow
def test_dataset_has_five_class_folders(tmp_path):
    out = make_dataset(tmp_path / "s", per_class=1, seed=1, progress=False)
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == sorted(CLASSES) and len(folders) == 5
    assert all(len(list((out / c).glob("*.jpg"))) == 1 for c in CLASSES)


@pytest.mark.slow
def test_not_separable_by_colour_means():
    """A linear model on per-channel means and stds must not solve the task."""
    feats, labels = [], []
    for label in range(len(CLASSES)):
        for i in range(10):
            slide = make_slide(label, np.random.default_rng([0, label, i]))[::4, ::4]
            px = slide.reshape(-1, 3).astype(np.float64)
            feats.append(np.concatenate([px.mean(0), px.std(0)]))
            labels.append(label)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    accuracy = cross_val_score(model, np.array(feats), labels, cv=5).mean()
    print(f"linear model on colour statistics: {accuracy:.3f}")
    # docs/measured.md (figures table) states 0.32 for exactly this set-up; chance is 0.20.
    assert accuracy == pytest.approx(0.32, abs=0.03)
