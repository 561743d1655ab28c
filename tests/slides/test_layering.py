"""The slides room stays below workflows: importing it loads no model code, no torch, no
pyplot (checked in a fresh interpreter, where sys.modules is clean)."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = ("torch", "matplotlib.pyplot", "medscope.predict", "medscope.train",
             "medscope.serve", "medscope.cli", "medscope.api", "medscope.report",
             "medscope.explain")


@pytest.mark.slow
def test_slides_and_new_evaluate_modules_import_nothing_above_them():
    code = ("import sys; import medscope.slides.diagnose, medscope.slides.outputs, "
            "medscope.evaluate.groups, medscope.evaluate.ood; "
            f"print([m for m in sys.modules if m.startswith({FORBIDDEN!r})])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
