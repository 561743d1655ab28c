"""Every recipe in src/medscope/recipes/ passes ``medscope run RECIPE --quick`` (the CI smoke
test): a finished run (or CV) directory per experiment and the comparison files. Parametrised
over the files, so a new recipe is covered without touching this test."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from medscope.cli import main
from medscope.experiments.recipe import load_recipe, shipped_recipes
from medscope.run import RunDir
from tests.conftest import SHARED_DATA, one_torch_thread

RECIPES = shipped_recipes()


@pytest.mark.slow  # each recipe trains and reports 1-6 models (2 folds for CV ones)
@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_quick_run_of_every_shipped_recipe(path, tmp_path):
    out = tmp_path / "out"
    with one_torch_thread():
        assert main(["run", path.stem, "--quick", "-q", "--out", str(out)]) == 0
    recipe = load_recipe(path)
    for exp in recipe.experiments:
        folds = recipe.folds_of(exp, quick=True)
        if folds:
            assert (out / exp.name / "cv_summary.json").is_file()
            assert all(RunDir(out / exp.name / f"fold_{k + 1}").is_finished()
                       for k in range(folds))
        else:
            assert RunDir(out / exp.name).is_finished(), exp.name
    where = out / "comparison"
    with (where / "comparison.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == [e.name for e in recipe.experiments]
    assert all(r["accuracy"] for r in rows)
    report = (where / "recipe.md").read_text()
    assert recipe.title in report and "Quick smoke test" in report
    listed = json.loads((where / "recipe.json").read_text())["experiments"]
    for exp, row in zip(recipe.experiments, listed, strict=True):
        ref = recipe.reference_of(exp)
        if ref:
            assert row["weights"].startswith(f"fine-tuned from experiment {ref}")
        else:  # nothing can be downloaded here: every other experiment says it is from scratch
            assert row["weights"] == "from scratch (no pretrained weights given)"
    if (recipe.base.get("data") or {}).get("multilabel") is True:
        assert "| exact match | Hamming loss |" in report
    if "training_error" in recipe.plots:
        assert (where / "training_error.png").stat().st_size > 1000
    if recipe.ensemble:  # the shipped ensembles' members share one split
        members = json.loads((out / "ensemble" / "metrics.json").read_text())["ensemble"]
        assert len(members["runs"]) == len(recipe.experiments)
        assert "**ensemble of" in report


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
def test_default_data_paths_exist_from_the_project_root(monkeypatch):
    """Every recipe's default data (relative: to the current directory) is found when run
    from the project root, as docs/recipes.md says."""
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    for path in RECIPES:
        recipe = load_recipe(path)
        for source in {recipe.data, *(e.data for e in recipe.experiments)} - {None}:
            assert os.path.isdir(source), f"{path.name}: {source}"
