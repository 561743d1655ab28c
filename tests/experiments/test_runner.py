"""medscope run on small recipes: a re-run retrains nothing, an interrupted recipe continues
where it stopped, and ``@experiment`` weights seed a later experiment with another class count
(its head dropped, its backbone loaded)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

import medscope.train.engine as engine
from medscope.cli import main
from medscope.core.checkpoint import load_checkpoint, model_state
from medscope.run import RunDir
from tests.conftest import one_torch_thread

TINY = """
title: tiny
base:
  model: {name: simple_cnn}
  train: {lr: 0.001}
quick:
  per_class: 4
  image_size: 32
experiments:
  - name: first
    quick_data: {classes: 3}
  - name: second
    overrides: {model.pretrained: "@first", train.freeze: backbone, train.epochs: 2}
    quick: {train.epochs: 2}
"""


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def _run(tmp_path: Path, *extra: str) -> int:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(textwrap.dedent(TINY))
    return main(["run", str(recipe), "--quick", "-q", "--out", str(tmp_path / "out"), *extra])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return model_state(load_checkpoint(RunDir(run).best)[0])


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in out.glob("*/checkpoints/*.safetensors")}


@pytest.mark.slow
def test_reference_seeds_weights_and_rerun_retrains_nothing(tmp_path):
    assert _run(tmp_path) == 0
    out = tmp_path / "out"
    first, second = _weights(out / "first"), _weights(out / "second")
    # Frozen backbone loaded from 'first': identical; the 5-class head is new (first had 3).
    assert torch.equal(second["features.0.weight"], first["features.0.weight"])
    assert first["head.4.weight"].shape[0] == 3 and second["head.4.weight"].shape[0] == 5
    config = (out / "second" / "config.yaml").read_text()
    assert str((out / "first" / "checkpoints" / "best.safetensors").resolve()) in config
    recipe = json.loads((out / "comparison" / "recipe.json").read_text())
    assert [e["status"] for e in recipe["experiments"]] == ["trained", "trained"]
    assert "fine-tuned from experiment first" in (out / "comparison" / "recipe.md").read_text()
    before = _mtimes(out)
    assert len(before) == 4  # best + last of each

    assert _run(tmp_path) == 0
    assert _mtimes(out) == before  # nothing retrained
    recipe = json.loads((out / "comparison" / "recipe.json").read_text())
    assert {e["status"] for e in recipe["experiments"]} == {"finished earlier (skipped)"}
    for name in ("comparison.csv", "comparison.md", "comparison.html", "recipe.md"):
        assert (out / "comparison" / name).is_file()


@pytest.mark.slow
def test_interrupted_recipe_continues_where_it_stopped(tmp_path, monkeypatch):
    real_write = engine.RunWriter.__call__

    def interrupt_in_second(self, model, optimizer, state, row, improved):
        real_write(self, model, optimizer, state, row, improved)
        if self.run.root.name == "second" and state.epoch == 1:
            raise KeyboardInterrupt  # Ctrl-C after epoch 1 of 2 of the second experiment

    monkeypatch.setattr(engine.RunWriter, "__call__", interrupt_in_second)
    assert _run(tmp_path) == 130
    monkeypatch.setattr(engine.RunWriter, "__call__", real_write)
    out = tmp_path / "out"
    assert RunDir(out / "first").is_finished() and RunDir(out / "second").has_partial_run()
    first_mtime = (out / "first" / "checkpoints" / "best.safetensors").stat().st_mtime_ns

    assert _run(tmp_path) == 0
    assert RunDir(out / "second").is_finished()
    assert (out / "first" / "checkpoints" / "best.safetensors").stat().st_mtime_ns == first_mtime
    history = (out / "second" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2"]  # epoch 2 resumed, once
    statuses = [e["status"] for e in
                json.loads((out / "comparison" / "recipe.json").read_text())["experiments"]]
    assert statuses == ["finished earlier (skipped)", "resumed"]


@pytest.mark.slow
def test_only_runs_the_named_experiment_and_what_it_starts_from(tmp_path):
    assert _run(tmp_path, "--only", "second") == 0
    out = tmp_path / "out"
    assert RunDir(out / "first").is_finished() and RunDir(out / "second").is_finished()
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(textwrap.dedent(TINY) + "  - name: third\n")
    assert main(["run", str(recipe), "--quick", "-q", "--out", str(out), "--only", "third"]) == 0
    rows = json.loads((out / "comparison" / "recipe.json").read_text())["experiments"]
    assert [r["name"] for r in rows] == ["third"]


@pytest.mark.slow
def test_tta_recipe_evaluates_each_run_once_and_tabulates_both(tmp_path):
    recipe = tmp_path / "tta.yaml"
    recipe.write_text(textwrap.dedent("""
        title: tta
        tta: true
        base:
          model: {name: simple_cnn}
        quick: {per_class: 4, image_size: 32}
        experiments:
          - name: only
            quick_data: {classes: 3}
        """))
    args = ["run", str(recipe), "--quick", "-q", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    run = tmp_path / "out" / "only"
    plain = json.loads((run / "metrics.json").read_text())
    tta = json.loads((run / "eval-tta" / "metrics.json").read_text())
    assert tta["tta"] is True and tta["n"] == plain["n"]
    report = (tmp_path / "out" / "comparison" / "recipe.md").read_text()
    section = report.split("Test-time augmentation", 1)[1]
    row = next(line for line in section.splitlines() if line.startswith("| only |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1]) == pytest.approx(plain["accuracy"], abs=1e-4)
    assert float(cells[2]) == pytest.approx(tta["accuracy"], abs=1e-4)
    stamp = (run / "eval-tta" / "metrics.json").stat().st_mtime_ns
    assert main(args) == 0  # a re-run keeps the TTA evaluation as it keeps the run
    assert (run / "eval-tta" / "metrics.json").stat().st_mtime_ns == stamp


ENSEMBLE = """
    title: ensemble
    tta: true
    ensemble: true
    base:
      model: {name: simple_cnn}
    quick: {per_class: 4, image_size: 40}
    experiments:
      - name: small
        quick_data: {classes: 3}
      - name: lenet
        overrides: {model.name: lenet5}
        quick: {data.img_size: 40}
        quick_data: {classes: 3}
    """


@pytest.mark.slow
def test_ensemble_recipe_scores_the_experiments_averaged_once(tmp_path):
    recipe = tmp_path / "ens.yaml"
    recipe.write_text(textwrap.dedent(ENSEMBLE))
    out = tmp_path / "out"
    args = ["run", str(recipe), "--quick", "-q", "--out", str(out)]
    assert main(args) == 0
    for folder, tta in (("ensemble", False), ("ensemble-tta", True)):
        m = json.loads((out / folder / "metrics.json").read_text())
        assert m["tta"] is tta
        assert m["ensemble"]["runs"] == [str(out / "small"), str(out / "lenet")]
        own = json.loads((out / ("small/eval-tta" if tta else "small") / "metrics.json")
                         .read_text())
        assert m["n"] == own["n"]
        assert m["ensemble"]["members"][0]["accuracy"] == pytest.approx(own["accuracy"])
    section = (out / "comparison" / "recipe.md").read_text().split("## Ensemble", 1)[1]
    assert section.count("**ensemble of 2**") == 2 and "| lenet (TTA) |" in section
    page = (out / "comparison" / "recipe.html").read_text()
    assert page.count("<strong>ensemble of 2</strong>") == 2 and "<th>95 % CI</th>" in page
    stamp = (out / "ensemble" / "metrics.json").stat().st_mtime_ns
    assert main(args) == 0  # the same members: not evaluated again
    assert (out / "ensemble" / "metrics.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_ensemble_of_runs_on_different_splits_is_reported_not_fatal(tmp_path):
    recipe = tmp_path / "ens.yaml"
    recipe.write_text(textwrap.dedent(ENSEMBLE).replace("tta: true\n", "")
                      .replace("{model.name: lenet5}", "{model.name: lenet5, train.seed: 3}"))
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--quick", "-q", "--out", str(out)]) == 0
    assert not (out / "ensemble" / "metrics.json").exists()
    assert "split" in (out / "ensemble" / "skipped.txt").read_text()
    section = (out / "comparison" / "recipe.md").read_text().split("## Ensemble", 1)[1]
    assert "Not evaluated: " in section and "--data" in section


def test_recipe_page_shows_user_text_as_text(tmp_path):
    from medscope.report.recipe import write_recipe_markdown

    write_recipe_markdown(tmp_path / "recipe.md", title="<b>x</b>", header=[],
                          experiments=[["a<script>", "m", "w", "e", "0.9", "d", "trained"]],
                          comparison="| a |\n|---|\n| 1 |", sections=[("Notes", "A & B")])
    page = (tmp_path / "recipe.html").read_text()
    assert "<script>" not in page and "a&lt;script&gt;" in page and "&lt;b&gt;x" in page
    assert page.count("<table>") == 2 and "A &amp; B" in page
