"""The house rules of docs/architecture.md that a test can hold: the layer contract, short
functions, and no matplotlib backend switched by importing medscope."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "medscope"
MAX_LINES = 60
# Functions allowed over MAX_LINES, each named with its reason in docs/architecture.md.
LONG_ALLOWED: set[str] = set()


def long_functions(root: Path, limit: int) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                name = f"{path.relative_to(root.parent).as_posix()}::{node.name}"
                if length > limit and name not in LONG_ALLOWED:
                    found.append(f"{name} ({length} lines)")
    return found


def test_no_function_over_60_lines():
    assert long_functions(SRC, MAX_LINES) == []


def test_long_function_finder_finds_one(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(f"def big():\n{body}\n\ndef small():\n    pass\n")
    assert long_functions(tmp_path / "pkg", MAX_LINES) == ["pkg/m.py::big (61 lines)"]


def test_layer_contract_kept():
    pytest.importorskip("importlinter")
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("lint-imports is not installed beside this Python")
    done = subprocess.run([str(lint), str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 kept, 0 broken" in done.stdout


@pytest.mark.slow
def test_importing_medscope_leaves_matplotlib_alone():
    code = ("import sys, medscope.api, medscope.report.plots, medscope.report.compare, "
            "medscope.report.curves, medscope.report.recipe; "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
