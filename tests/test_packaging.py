"""The wheel is what users install: it must carry the recipes, templates and served page, and
an installed copy must find its recipes without the source tree (``make wheel-smoke`` runs the
CLI from such an install)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "medscope"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # A copy of the sources, so that the build's egg-info and build/ stay out of the tree.
    work = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT / "src", work / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, work / name)
    # No build isolation: the venv's setuptools builds it, so the test needs no package index.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(work / "dist"), str(work)], check=True, timeout=300)
    (built,) = (work / "dist").glob("medscope-*.whl")
    return built


@pytest.mark.slow
def test_wheel_holds_every_shipped_recipe_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(PACKAGE.glob("recipes/*.yaml"))
    assert len(recipes) >= 10
    missing = [p.name for p in recipes if f"medscope/recipes/{p.name}" not in names]
    assert not missing
    for pattern in ("report/templates/*", "serve/static/*"):
        for path in PACKAGE.glob(pattern):
            assert f"medscope/{path.relative_to(PACKAGE).as_posix()}" in names
    assert not any(n.startswith(("recipes/", "tests/")) for n in names)


@pytest.mark.slow
def test_installed_wheel_finds_its_recipes_outside_the_source_tree(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    "--target", str(target), str(wheel)], check=True, timeout=300)
    code = ("import medscope, medscope.config as c; print(medscope.__file__); "
            "print(c.resolve_recipe('six-architectures')); print(c.resolve_recipe('demo'))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.splitlines()
    assert all(line.startswith(str(target)) for line in out), out
    assert all(Path(line).is_file() for line in out[1:])


def test_every_imported_third_party_package_is_declared():
    """An import that works only because another package pulled its distribution in breaks
    when that package stops doing so (scipy and huggingface_hub did)."""
    import ast
    import re
    import tomllib
    from importlib.metadata import packages_distributions

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_dist_name(d) for d in project["dependencies"]}
    optional = {_dist_name(d) for deps in project["optional-dependencies"].values()
                for d in deps}
    modules = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    providers = packages_distributions()
    third_party = {m for m in modules
                   if m not in sys.stdlib_module_names and m != "medscope"}
    assert {"numpy", "scipy", "huggingface_hub", "pydicom"} <= third_party
    undeclared = {}
    for module in sorted(third_party):
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(module, [module])}
        if not dists & (declared | optional):
            undeclared[module] = sorted(dists)
    assert not undeclared


def _dist_name(requirement: str) -> str:
    import re

    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()
