"""benchmarks/defungi_new_slides.py --quick: the recipe's grouped CV on synthetic data, the
results file written by the script (finished experiments with their fold figures), resumed
without retraining, and --collect writing the folds of an unfinished experiment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # two tiny 2-fold CVs


def _script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "defungi_new_slides.py"),
                           *args], env=env, capture_output=True, text=True, timeout=600)


def test_quick_sweep_writes_its_results_and_resumes(tmp_path):
    out, results = tmp_path / "out", tmp_path / "r.json"
    done = _script("--quick", "--only", "baseline", "--out", str(out), "--results", str(results))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(results.read_text())
    base = result["experiments"]["baseline"]
    assert base["folds"] == 2 and len(base["per_fold"]) == 2
    assert 0 <= base["patch_accuracy_mean"] <= 1 and base["patch_accuracy_std"] is not None
    assert 0 <= base["group_accuracy_mean"] <= 1 and base["wall_s"] > 0
    assert result["command"].startswith("python benchmarks/defungi_new_slides.py --quick")
    assert result["best"]["experiment"] == "baseline"
    weights = out / "baseline" / "fold_1" / "checkpoints" / "best.safetensors"
    before = weights.stat().st_mtime_ns
    assert _script("--quick", "--only", "baseline", "--out", str(out),
                   "--results", str(results)).returncode == 0
    assert weights.stat().st_mtime_ns == before  # finished folds are not trained again
    # An experiment cut short: its finished folds in "partial", nothing in "experiments".
    shutil.copytree(out / "baseline" / "fold_1", out / "stain-aug" / "fold_1")
    assert _script("--quick", "--collect", "--out", str(out),
                   "--results", str(results)).returncode == 0
    result = json.loads(results.read_text())
    assert "stain-aug" not in result["experiments"]
    assert result["partial"]["stain-aug"]["folds_done"] == 1
