"""The audit page and the ``medscope audit`` command on the planted synthetic set."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medscope.cli import main
from medscope.data.exclude import read_exclude
from medscope.report.audit import write_audit
from medscope.workflows.audit import audit_data
from tests.workflows.test_audit import make_colour_set, plant_problems, write_oof


@pytest.fixture(scope="module")
def planted_cv(tmp_path_factory) -> tuple[Path, Path, dict]:
    base = tmp_path_factory.mktemp("page")
    root, plants = plant_problems(make_colour_set(base / "colours"))
    return root, write_oof(root, base / "cv"), plants


def test_page_is_self_contained_with_leaks_first(planted_cv, tmp_path):
    root, cv, plants = planted_cv
    page = write_audit(audit_data(root, cv, workers=1), tmp_path).read_text()
    assert not re.search(r'src="(?!data:)', page)  # every image embedded
    thumbs = re.findall(r'src="data:image/jpeg;base64,', page)
    assert len(thumbs) >= 4 + 5 + 1  # two pairs, the label errors, the black image
    dup_section = page[page.index("Duplicate and near"):page.index("Suspected label")]
    assert dup_section.index(plants["exact"]) < dup_section.index("near, max distance")
    labels = page[page.index("Suspected label"):page.index("<h2>Outliers")]
    assert sum(f in labels for f in plants["flipped"]) >= 4
    assert plants["black"] in page[page.index("<h2>Outliers"):]
    assert "out-of-fold" in labels


def test_cli_writes_files_and_exclude_list(planted_cv, tmp_path, capsys):
    root, cv, plants = planted_cv
    ex = tmp_path / "exclude.txt"
    code = main(["audit", str(root), "--run", str(cv), "--out", str(tmp_path / "a"),
                 "--write-exclude", str(ex), "--workers", "1", "-q"])
    out = capsys.readouterr().out
    assert code == 0
    assert "1 exact and 1 near-duplicate group(s), 2 leak(s)" in out
    assert (tmp_path / "a" / "audit.html").is_file()
    assert {plants["exact"], plants["near"]} <= read_exclude(ex)
    # A second run must not overwrite the list the user may be editing.
    before = ex.read_text()
    assert main(["audit", str(root), "--out", str(tmp_path / "b"), "--write-exclude",
                 str(ex), "-q"]) == 2
    assert ex.read_text() == before
    assert "already exists" in capsys.readouterr().err


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "missing"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
