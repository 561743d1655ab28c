"""Groups from file names (``data.group_pattern``): patches of one micrograph stay in one split
and one fold; a pattern that matches nothing, or only part of the data, is said."""

from __future__ import annotations

import logging
from collections import defaultdict

import pytest

from medscope.config import load_config
from medscope.data.groups import groups_across_splits, pattern_groups
from medscope.data.prepare import assign_splits, scan_source
from medscope.data.sources import load_source
from medscope.errors import MedscopeError
from tests.conftest import make_image_folder, tiny_config

MICROGRAPH = r"([^/]+)_\d+\.png$"  # 'alpha/alpha3_1.png' -> 'alpha3'


def _patches_of_micrographs(root, per_class=12, per_micrograph=3, seed=0):
    """Class folders whose files are named like DeFungi's: <micrograph>_<patch>.png."""
    make_image_folder(root, per_class=per_class, size=16, seed=seed)
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for i, f in enumerate(sorted(folder.glob("*.png"))):
            f.rename(folder / f"{folder.name}{i // per_micrograph}_{i % per_micrograph}.png")
    return root


def _sides(samples, assign) -> dict[str, set[str]]:
    """group -> the splits its members landed in."""
    sides = defaultdict(set)
    for s, a in zip(samples, assign, strict=True):
        sides[s.group].add(a)
    return sides


def test_the_capture_group_names_the_group_and_whole_matches_work_too(tmp_path):
    source = load_source(_patches_of_micrographs(tmp_path / "d"))
    by_capture = pattern_groups(source, MICROGRAPH)
    groups = {by_capture.sample_id(s): s.group for s in by_capture.samples}
    assert groups["alpha/alpha0_0.png"] == groups["alpha/alpha0_2.png"] == "alpha0"
    assert groups["alpha/alpha1_0.png"] == "alpha1"
    assert len(set(groups.values())) == 12  # 3 classes x 4 micrographs
    whole = pattern_groups(source, r"[a-z]+\d+(?=_)")
    assert [s.group for s in whole.samples] == [s.group for s in by_capture.samples]


def test_no_micrograph_lands_on_two_sides_of_a_split_or_fold(tmp_path):
    data = _patches_of_micrographs(tmp_path / "d", per_class=30)
    for seed in range(4):
        config = tiny_config(data, tmp_path / "r", **{"data.group_pattern": MICROGRAPH,
                                                       "data.split_seed": seed})
        source, _ = scan_source(config)
        sides = _sides(source.samples, assign_splits(source, config))
        assert all(len(s) == 1 for s in sides.values()), sides
        assert set().union(*sides.values()) == {"train", "val", "test"}
    # Without the pattern, patches of one micrograph are split apart.
    plain, _ = scan_source(tiny_config(data, tmp_path / "r"))
    assign = assign_splits(plain, tiny_config(data, tmp_path / "r"))
    by_micrograph = defaultdict(set)
    for s, a in zip(plain.samples, assign, strict=True):
        by_micrograph[s.path.stem.split("_")[0]].add(a)
    assert any(len(s) > 1 for s in by_micrograph.values())


def test_the_validation_part_of_given_folders_is_carved_by_group_and_test_leaks_are_said(
        tmp_path, caplog):
    root = tmp_path / "split"
    _patches_of_micrographs(root / "train", per_class=24)
    _patches_of_micrographs(root / "test", per_class=6, seed=1)  # alpha0..1: as in train
    config = tiny_config(root, tmp_path / "r", **{"data.group_pattern": MICROGRAPH})
    with caplog.at_level(logging.WARNING, logger="medscope"):
        source, _ = scan_source(config)
    crossing = groups_across_splits(source.samples)
    assert sorted(crossing) == [f"{c}{i}" for c in ("alpha", "beta", "gamma") for i in (0, 1)]
    warned = [r.getMessage() for r in caplog.records if "span the data's own splits" in
              r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("6 group(s)") and "18 test" in warned[0]
    assign = assign_splits(source, config)
    train = [i for i, s in enumerate(source.samples) if s.split == "train"]
    train_side = _sides([source.samples[i] for i in train], assign[train])
    assert all(len(s) == 1 for s in train_side.values())
    assert {"train", "val"} <= set(assign[train])
    # In CV the given folders are not used: nothing to warn about.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medscope"):
        scan_source(config, given_splits=False)
    assert not any("span" in r.getMessage() for r in caplog.records)


def test_a_pattern_that_matches_nothing_stops_with_one_line(tmp_path):
    source = load_source(_patches_of_micrographs(tmp_path / "d"))
    with pytest.raises(MedscopeError, match=r"matches none of the 36 image paths \(e\.g\. "
                       r"'alpha/alpha0_0\.png'\)") as err:
        pattern_groups(source, r"H\d_\w+")
    assert "\n" not in str(err.value)


def test_partial_and_useless_patterns_are_warned_about(tmp_path, caplog):
    root = _patches_of_micrographs(tmp_path / "d")
    (root / "beta" / "beta0_0.png").rename(root / "beta" / "odd.png")
    source = load_source(root)
    with caplog.at_level(logging.WARNING, logger="medscope"):
        grouped = pattern_groups(source, MICROGRAPH)
    odd = next(s for s in grouped.samples if s.path.name == "odd.png")
    assert odd.group is None
    assert any("does not match 1 of 36" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medscope"):
        pattern_groups(source, r"[^/]+\.png$")
    assert any("a group of its own" in r.getMessage() for r in caplog.records)


def test_groups_the_data_already_names_are_not_silently_replaced(tmp_path):
    data = _patches_of_micrographs(tmp_path / "d")
    rows = ["path,label,group"] + [f"{p.relative_to(data).as_posix()},{p.parent.name},slide"
                                   for p in sorted(data.rglob("*.png"))]
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(MedscopeError, match="already names groups"):
        pattern_groups(load_source(data / "labels.csv"), MICROGRAPH)


@pytest.mark.parametrize("pattern, message", [
    ("(unclosed", "data.group_pattern: .*not a regular expression"),
    ("", "data.group_pattern: .*empty pattern"),
])
def test_a_bad_pattern_is_a_config_error(pattern, message):
    with pytest.raises(MedscopeError, match=message) as err:
        load_config(overrides={"data.group_pattern": pattern})
    assert "\n" not in str(err.value)


def test_resplit_pools_the_given_folders_and_splits_them_by_group(tmp_path, caplog):
    root = tmp_path / "split"
    _patches_of_micrographs(root / "train", per_class=24)
    _patches_of_micrographs(root / "test", per_class=6, seed=1)
    config = tiny_config(root, tmp_path / "r", **{"data.group_pattern": MICROGRAPH,
                                                   "data.resplit": True})
    with caplog.at_level(logging.WARNING, logger="medscope"):
        source, report = scan_source(config)
    assert not any("span" in r.getMessage() for r in caplog.records)
    assert report.given_splits is False
    assign = assign_splits(source, config)
    assert all(len(s) == 1 for s in _sides(source.samples, assign).values())
    moved = {(s.split, a) for s, a in zip(source.samples, assign, strict=True)}
    assert ("train", "test") in moved and ("test", "train") in moved
    given = assign_splits(source, tiny_config(root, tmp_path / "r"))
    assert set(given[[s.split == "test" for s in source.samples]]) == {"test"}


@pytest.mark.parametrize("args, message", [
    (["data", "info"], "not a regular expression"),
    (["audit", "--workers", "1"], "not a regular expression"),
])
def test_info_and_audit_refuse_a_bad_pattern_in_one_line(tmp_path, capsys, args, message):
    from medscope.cli import main

    data = _patches_of_micrographs(tmp_path / "d")
    extra = ["--out", str(tmp_path / "a")] if args[0] == "audit" else []
    assert main([*args, str(data), *extra, "--group-pattern", "(unclosed"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("medscope: error:")
