"""medscope audit on a tiny synthetic set with planted problems, and on a clean one."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medscope.data.audit import (
    near_components,
    robust_z,
    summary,
    write_audit_files,
    write_exclude,
)
from medscope.data.exclude import drop_excluded, read_exclude
from medscope.data.io import read_image
from medscope.data.sources import load_source
from medscope.errors import MedscopeError
from medscope.workflows.audit import audit_data

CLASSES = ("amber", "azure", "olive", "plum")
COLOURS = np.array([(200, 120, 40), (40, 120, 200), (110, 130, 30), (130, 40, 120)])
SIZE = 48


def make_colour_set(root: Path, per_class: int = 50, seed: int = 0) -> Path:
    """Pre-split (train/test) folder: each class a colour over a random smooth texture, so
    every image is distinct to pHash and the class is learnable from colour statistics."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            split = "test" if i % 5 == 0 else "train"
            texture = rng.random((6, 6))
            texture = np.asarray(Image.fromarray((texture * 255).astype(np.uint8)).resize(
                (SIZE, SIZE), Image.BICUBIC), dtype=np.float64)[..., None] / 255.0
            colour = COLOURS[label] + rng.normal(0, 12, 3)
            img = np.clip(colour * (0.6 + 0.8 * texture) + rng.normal(0, 4, (SIZE, SIZE, 3)),
                          0, 255).astype(np.uint8)
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{name}_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict]:
    return plant_problems(make_colour_set(tmp_path_factory.mktemp("audit") / "colours"))


def plant_problems(root: Path) -> tuple[Path, dict]:
    """An exact copy and a resized JPEG copy in test of train images, an all-black image and
    5 images moved to the wrong class folder (200 images in all)."""
    plants = {"exact": "test/amber/copy_of_amber_001.png", "near": "test/azure/near_azure_002.jpg",
              "black": "train/olive/black.png", "flipped": []}
    shutil.copy(root / "train/amber/amber_001.png", root / plants["exact"])
    with Image.open(root / "train/azure/azure_002.png") as img:
        img.resize((40, 40), Image.LANCZOS).save(root / plants["near"], quality=85)
    Image.new("RGB", (SIZE, SIZE)).save(root / plants["black"])
    rng = np.random.default_rng(1)
    for k, name in enumerate(CLASSES + ("amber",)):  # 5 images moved to the next class
        i = int(rng.choice([j for j in range(10, 50) if j % 5]))
        wrong = CLASSES[(CLASSES.index(name) + 1) % 4]
        dst = f"train/{wrong}/moved_{k}_{name}_{i:03d}.png"
        shutil.move(root / f"train/{name}/{name}_{i:03d}.png", root / dst)
        plants["flipped"].append(dst)
    return root, plants


def write_oof(data: Path, out: Path, folds: int = 5) -> Path:
    """An honest out-of-fold run in the agreed CV layout: 10-nearest neighbours on colour
    statistics (a few wrong labels barely move a neighbour vote), each image scored by the
    fold model that did not see it."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    source = load_source(data)
    x = np.array([_colour_features(s.path) for s in source.samples])
    y = source.targets()
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    probs = cross_val_predict(make_pipeline(StandardScaler(), KNeighborsClassifier(10)), x, y,
                              cv=cv, method="predict_proba")
    fold = np.zeros(len(y), dtype=int)
    for k, (_, test) in enumerate(cv.split(x, y), 1):
        fold[test] = k
    out.mkdir(parents=True, exist_ok=True)
    with (out / "oof_predictions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "group", "fold", *[f"p_{c}" for c in source.classes]])
        for s, f, p in zip(source.samples, fold, probs, strict=True):
            w.writerow([source.sample_id(s), source.label_name(s), "", f, *p])
    return out


def _colour_features(path: Path) -> np.ndarray:
    px = read_image(path, 32, 3).reshape(-1, 3).astype(np.float64) / 255.0
    chroma = px.mean(0) / max(px.mean(), 1e-3)  # colour without the brightness of the texture
    return np.concatenate([px.mean(0), px.std(0), chroma])


@pytest.fixture(scope="module")
def planted_audit(planted, tmp_path_factory):
    root, _ = planted
    cv_dir = write_oof(root, tmp_path_factory.mktemp("cv") / "cv")
    return audit_data(root, cv_dir, workers=1)


def test_exact_copy_across_splits_is_a_leak_listed_first(planted, planted_audit):
    _, plants = planted
    ids = planted_audit.ids()
    first = planted_audit.duplicates[0]
    names = {ids[i] for i in first.members}
    leaks = [g for g in planted_audit.duplicates if g.leak]
    assert {g.kind for g in leaks} == {"exact", "near"}
    assert first.leak and plants["exact"] in names or plants["near"] in names
    exact = next(g for g in planted_audit.duplicates if g.kind == "exact")
    assert {ids[i] for i in exact.members} == {"train/amber/amber_001.png", plants["exact"]}


def test_resized_reencoded_copy_is_a_near_duplicate(planted, planted_audit):
    _, plants = planted
    ids = planted_audit.ids()
    near = [g for g in planted_audit.duplicates if g.kind == "near"]
    assert len(near) == 1
    assert {ids[i] for i in near[0].members} == {"train/azure/azure_002.png", plants["near"]}
    assert 0 <= near[0].max_distance <= planted_audit.phash_distance


def test_planted_label_errors_found_in_top_20(planted, planted_audit):
    _, plants = planted
    ids = planted_audit.ids()
    top = [ids[x.index] for x in planted_audit.label_issues[:20]]
    recall = len(set(top) & set(plants["flipped"])) / len(plants["flipped"])
    assert recall >= 0.8
    first = planted_audit.label_issues[0]
    assert first.suggested != first.given
    assert "out-of-fold" in planted_audit.label_origin


def test_black_image_is_an_outlier(planted, planted_audit):
    _, plants = planted
    ids = planted_audit.ids()
    flagged = {ids[o.index]: o.reasons for o in planted_audit.outliers}
    assert plants["black"] in flagged
    assert any(r.startswith("brightness low") for r in flagged[plants["black"]])
    assert ids[planted_audit.outliers[0].index] == plants["black"]


def test_clean_set_reports_no_duplicates_and_few_outliers(tmp_path):
    """The documented false-positive rate: no duplicate group and at most 1% outliers among
    200 distinct images."""
    audit = audit_data(make_colour_set(tmp_path / "clean", seed=3), workers=1)
    counts = summary(audit)
    assert counts["exact_groups"] == counts["near_groups"] == 0
    assert counts["outliers"] <= 2
    assert audit.splits.count("test") == 40


def test_files_and_exclude_list_round_trip(planted, planted_audit, tmp_path):
    root, plants = planted
    write_audit_files(planted_audit, tmp_path)
    with (tmp_path / "audit_duplicates.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["path"] for r in rows if r["leak"] == "1"} >= {plants["exact"], plants["near"]}
    counts = (tmp_path / "audit_counts.csv").read_text().splitlines()
    assert counts[0] == "class,test,train,total"
    n = write_exclude(planted_audit, tmp_path / "exclude.txt")
    ids = read_exclude(tmp_path / "exclude.txt")
    assert len(ids) == n
    # test-side copies of leaks go; their train originals stay
    assert {plants["exact"], plants["near"]} <= ids
    assert "train/amber/amber_001.png" not in ids
    assert len(ids & set(plants["flipped"])) >= 4
    with pytest.raises(MedscopeError, match="already exists"):
        write_exclude(planted_audit, tmp_path / "exclude.txt")
    source, dropped = drop_excluded(load_source(root), ids)
    assert dropped == n
    assert len(source.samples) == len(planted_audit.ids()) - n


def test_read_exclude_comments_and_unknown_ids(tmp_path, caplog, image_folder):
    f = tmp_path / "ex.txt"
    f.write_text("# header\n\nalpha/alpha_000.png   # leak\nbeta/beta_001.png\nnope.png\n")
    ids = read_exclude(f)
    assert ids == {"alpha/alpha_000.png", "beta/beta_001.png", "nope.png"}
    source, dropped = drop_excluded(load_source(image_folder), ids)
    assert dropped == 2 and len(source.samples) == 34
    assert "nope.png" in caplog.text
    with pytest.raises(MedscopeError, match="not found"):
        read_exclude(tmp_path / "missing.txt")


def test_near_components_links_transitively():
    h = np.array([0, 0b111, 0b111111, (1 << 64) - 1], dtype=np.uint64)
    assert near_components(h, 3) == [[0, 1, 2]]
    assert near_components(h, 2) == []
    # a pair is near when either hash is close
    also = np.array([5, 1 << 40, 5, 7 << 61], dtype=np.uint64)
    assert near_components(h, 2, also) == [[0, 2]]


def test_black_rotation_corners_do_not_make_unrelated_images_near(tmp_path):
    """Rotated augmentations (blood-cells-4) share black corners that dominate a whole-image
    pHash; unrelated images rotated alike must stay apart, while a resized JPEG copy of a
    rotated image is still found."""
    root = make_colour_set(tmp_path / "rot", per_class=10, seed=5)
    for k, path in enumerate(sorted(root.glob("train/*/*.png"))):
        with Image.open(path) as img:
            big = img.resize((160, 160), Image.BICUBIC)
        big.rotate(30).save(path)
        if k == 0:
            big.rotate(30).resize((120, 120)).save(path.with_name("rotated_copy.jpg"),
                                                   quality=85)
    audit = audit_data(root, workers=1)
    near = [g for g in audit.duplicates if g.kind == "near"]
    assert [sorted(Path(audit.ids()[i]).name for i in g.members) for g in near] == [
        ["amber_001.png", "rotated_copy.jpg"]]


def test_robust_z_is_not_masked_by_the_outlier():
    z = robust_z(np.array([10.0, 11, 9, 10.5, 9.5, 10, 0.0]))
    assert abs(z[-1]) > 5 and np.all(np.abs(z[:-1]) < 2)


def test_plain_run_uses_its_test_split(trained_run, image_folder):
    audit = audit_data(image_folder, trained_run.root, workers=1)
    assert "test-split" in audit.label_origin
    test = {r.split(",")[0] for r in trained_run.splits.read_text().splitlines()
            if r.endswith(",test")}
    assert {audit.ids()[x.index] for x in audit.label_issues} <= test
    assert set(audit.splits) == {"train", "val", "test"}


def test_bad_inputs_are_one_line_errors(image_folder, tmp_path):
    with pytest.raises(MedscopeError, match="run or CV directory not found"):
        audit_data(image_folder, tmp_path / "nothing")
    with pytest.raises(MedscopeError, match="neither oof_predictions.csv"):
        audit_data(image_folder, tmp_path)
    with pytest.raises(MedscopeError, match="phash-distance"):
        audit_data(image_folder, phash_distance=70)


def test_source_groups_spanning_splits_or_mixing_labels_are_listed(planted, tmp_path, capsys):
    """Groups from the file names: 'amber_01' holds amber_010 … amber_019, whose i % 5 == 0
    members lie in test; a moved file keeps its name, so its group mixes two labels."""
    import re

    from medscope.cli import main
    from medscope.report.audit import write_audit

    root, plants = planted
    pattern = r"[a-z]+_\d\d(?=\d)"
    audit = audit_data(root, workers=1, group_pattern=pattern)
    counts = summary(audit)
    assert counts["source_groups"] == counts["source_leak_groups"] == 4 * 5
    expected_test = sum(1 for s in audit.source.samples
                        if s.split == "test" and re.search(pattern, audit.source.sample_id(s)))
    assert counts["source_leak_test_images"] == expected_test >= 40
    moved_groups = {re.search(pattern, p).group(0) for p in plants["flipped"]}
    assert counts["source_conflict_groups"] == len(moved_groups) >= 4
    page = write_audit(audit, tmp_path / "audit")
    with (tmp_path / "audit" / "audit_source_groups.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["group"] for r in rows if r["conflict"] == "1"} == moved_groups
    text = page.read_text()
    assert "Source groups spanning splits" in text and "20 of 20" in text
    assert main(["audit", str(root), "--out", str(tmp_path / "cli"), "--workers", "1",
                 "--group-pattern", pattern]) == 0
    assert f"source groups: 20 of 20 span splits ({expected_test} test image(s))" in \
        capsys.readouterr().out
    assert summary(audit_data(root, workers=1))["source_groups"] == 0
