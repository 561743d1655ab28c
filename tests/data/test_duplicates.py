"""Byte-identical images: grouped (merged with existing groups), dropped, or kept; copies with
different labels dropped with a warning; copies crossing given train/test folders counted."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace

import pytest

from medscope.data.duplicates import HASH_CACHE, handle_duplicates, merged_groups
from medscope.data.prepare import given_splits_of, prepare_data, scan_source
from medscope.data.sources import Sample, load_source, scan_folder
from medscope.data.splits import split_indices
from medscope.run import RunDir, atomic_write_json, read_json
from tests.conftest import make_image_folder, tiny_config


@pytest.fixture
def folder_with_copies(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=6, size=16)
    shutil.copy(root / "alpha" / "alpha_000.png", root / "alpha" / "copy_a.png")
    shutil.copy(root / "alpha" / "alpha_000.png", root / "alpha" / "copy_b.png")
    shutil.copy(root / "beta" / "beta_001.png", root / "gamma" / "mislabelled.png")
    return root


def _by_name(source):
    return {source.sample_id(s): s for s in source.samples}


def test_group_mode_joins_copies_and_drops_conflicting_labels(folder_with_copies, caplog):
    with caplog.at_level(logging.WARNING, logger="medscope"):
        source, report = handle_duplicates(scan_folder(folder_with_copies), "group")
    named = _by_name(source)
    copies = {named[n].group for n in ("alpha/alpha_000.png", "alpha/copy_a.png",
                                       "alpha/copy_b.png")}
    assert len(copies) == 1 and None not in copies
    assert named["alpha/alpha_001.png"].group is None  # unique images are left alone
    assert "beta/beta_001.png" not in named and "gamma/mislabelled.png" not in named
    assert report.conflicts == [["beta/beta_001.png", "gamma/mislabelled.png"]]
    assert (report.groups, report.copies, report.dropped) == (1, 2, 2)
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "gamma/mislabelled.png" in warning[0]


def test_grouped_copies_never_land_on_two_sides_of_a_split(folder_with_copies):
    source, _ = handle_duplicates(scan_folder(folder_with_copies), "group")
    for seed in range(5):
        assign = split_indices(source.targets(), [s.group for s in source.samples], 0.2, 0.3,
                               seed, source.classes)
        sides = {a for s, a in zip(source.samples, assign, strict=True)
                 if s.group is not None and s.group.startswith("dup:")}
        assert len(sides) == 1


def test_drop_mode_keeps_one_copy_and_keep_mode_changes_nothing(folder_with_copies):
    raw = scan_folder(folder_with_copies)
    dropped, report = handle_duplicates(raw, "drop")
    names = set(_by_name(dropped))
    assert len([n for n in names if n.startswith("alpha/") and
                n in {"alpha/alpha_000.png", "alpha/copy_a.png", "alpha/copy_b.png"}]) == 1
    assert len(dropped.samples) == len(raw.samples) - 4 and report.dropped == 4
    kept, report = handle_duplicates(raw, "keep")
    assert kept.samples == raw.samples and report.groups == 0


def test_existing_groups_are_merged_through_a_shared_copy():
    samples = [Sample(f"p{i}", 0, group=g) for i, g in enumerate(["b", "b", "a", None, None])]
    hashes = ["h1", "h2", "h2", "h3", "h3"]  # b-h2-a join; the two h3 copies join each other
    groups = [s.group for s in merged_groups(samples, hashes)]
    assert groups[:3] == ["a", "a", "a"]
    assert groups[3] == groups[4] == "dup:h3"


def test_test_side_copies_of_presplit_data_are_counted_then_dropped(tmp_path, caplog):
    root = tmp_path / "split"
    make_image_folder(root / "train", per_class=4, size=16)
    make_image_folder(root / "test", per_class=3, size=16, seed=1)
    shutil.copy(root / "train" / "beta" / "beta_002.png", root / "test" / "beta" / "leak.png")
    with caplog.at_level(logging.WARNING, logger="medscope"):
        grouped, report = handle_duplicates(load_source(root), "group")
    assert report.test_leaks == 1 and len(grouped.samples) == 22
    assert any("optimistic" in r.getMessage() and r.getMessage().startswith("1 test")
               for r in caplog.records)
    dropped, _ = handle_duplicates(load_source(root), "drop")
    names = set(_by_name(dropped))
    assert "test/beta/leak.png" not in names and "train/beta/beta_002.png" in names
    # With a split file (or in CV) the given folders are not used: no leak to report.
    _, report = handle_duplicates(load_source(root), "group", given_splits=False)
    assert report.test_leaks == 0 and report.groups == 1


def test_a_resume_drops_the_same_copies_as_the_first_scan(tmp_path):
    """A resumed run re-reads its own splits.csv; it must still prefer the train-side copy as
    its first scan did (it kept the test-side one and failed on 'has no split for')."""
    root = tmp_path / "split"
    make_image_folder(root / "train", per_class=4, size=16)
    make_image_folder(root / "test", per_class=3, size=16, seed=1)
    shutil.copy(root / "train" / "beta" / "beta_002.png", root / "test" / "beta" / "leak.png")
    config = tiny_config(root, tmp_path / "r", **{"data.duplicates": "drop"})
    run = RunDir(config.out)
    run.prepare_new()
    first = prepare_data(config, run, progress=False)
    again = config.model_copy(update={"data": config.data.model_copy(
        update={"split_file": run.splits})})
    expected = {k: [s.path for s in v] for k, v in first.samples.items()}
    assert read_json(run.duplicates)["given_splits"] is True
    assert given_splits_of(run) is True
    resumed = prepare_data(again, run, progress=False)
    assert {k: [s.path for s in v] for k, v in resumed.samples.items()} == expected
    assert resumed.duplicates.test_leaks == 1
    # Another process (a torchrun rank) reads the same split into a scratch run dir.
    rank = prepare_data(again, RunDir(tmp_path / "scratch"), progress=False,
                        given_splits=given_splits_of(run))
    assert {k: [s.path for s in v] for k, v in rank.samples.items()} == expected
    # Runs from before given_splits was recorded: inferred from the test-side copies.
    legacy = read_json(run.duplicates)
    del legacy["given_splits"]
    atomic_write_json(run.duplicates, legacy)
    assert given_splits_of(run) is True
    resumed = prepare_data(again, run, progress=False)
    assert {k: [s.path for s in v] for k, v in resumed.samples.items()} == expected


def test_hashes_are_cached_by_size_and_mtime(folder_with_copies, tmp_path, monkeypatch):
    import medscope.data.duplicates as dup

    source = scan_folder(folder_with_copies)
    first, _ = handle_duplicates(source, "group", tmp_path / "cache")
    assert (tmp_path / "cache" / HASH_CACHE).is_file()
    calls = []
    real = dup.sample_digest
    monkeypatch.setattr(dup, "sample_digest", lambda s: calls.append(s) or real(s))
    again, _ = handle_duplicates(source, "group", tmp_path / "cache")
    assert calls == [] and again.samples == first.samples
    # A file rewritten with other bytes is hashed again and leaves its old set.
    shutil.copy(folder_with_copies / "alpha" / "alpha_005.png",
                folder_with_copies / "alpha" / "copy_b.png")
    changed, _ = handle_duplicates(source, "group", tmp_path / "cache")
    assert [s.path.name for s in calls] == ["copy_b.png"]
    assert _by_name(changed)["alpha/copy_b.png"].group == \
        _by_name(changed)["alpha/alpha_005.png"].group is not None


def test_runs_scan_with_the_configured_mode(folder_with_copies, tmp_path):
    grouped, report = scan_source(tiny_config(folder_with_copies, tmp_path / "r"))
    kept, _ = scan_source(tiny_config(folder_with_copies, tmp_path / "r",
                                      **{"data.duplicates": "keep"}))
    assert report.dropped == 2 and len(report.conflicts) == 1
    assert len(kept.samples) == len(grouped.samples) + 2
    assert all(s.group is None for s in kept.samples)
    assert replace(kept, samples=[]) == replace(grouped, samples=[])
