"""The slide benchmark runs end to end at toy scale and writes well-formed JSON (its figures
mean nothing here)."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks.test_scripts import run_script

pytestmark = pytest.mark.slow


def test_slide_inference_quick_writes_its_results(tmp_path):
    out = tmp_path / "slide_inference.json"
    stdout = run_script("slide_inference.py", "--quick", "--size", "2048", "--input", "32",
                        "--batch-size", "8", "--threads", "1", "--repeats", "1", "--out", str(out))
    assert "ratio b/a" in stdout
    result = json.loads(out.read_text())
    assert result["mode"] == "quick" and result["slide"]["size_px"] == 2048
    assert len(result["slide"]["levels"]) >= 2  # a pyramid
    assert 0 < result["tiles"]["kept"] <= result["tiles"]["read"] < result["tiles"]["grid"]
    assert result["pipeline_s"] > 0 and result["bare_forward_s"] > 0
    assert result["ratio_bare_over_pipeline"] > 0
    assert result["peak_rss_mib_pipeline"] > 0
    monai = result["monai"]
    assert isinstance(monai, str) or monai["tiles"] == result["tiles"]["grid"]
