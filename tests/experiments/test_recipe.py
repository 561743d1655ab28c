"""The recipe schema: every mistake is one line naming the file, experiment configs layer
base < overrides < quick < --set, and references must point back."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from medscope.cli import main
from medscope.config import load_config
from medscope.errors import MedscopeError
from medscope.experiments.recipe import (
    QUICK_DEFAULTS,
    experiment_config,
    load_recipe,
    shipped_recipes,
)

GOOD = """
title: t
data: somewhere
base:
  data: {img_size: 64}
  train: {epochs: 7, lr: 0.01}
quick:
  overrides: {train.lr: 0.5}
experiments:
  - name: a
    overrides: {model.name: simple_cnn, train.lr: 0.02}
  - name: b
    overrides: {model.name: simple_cnn, model.pretrained: "@a"}
    quick: {data.img_size: 40}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_layers_base_overrides_quick_and_set(tmp_path):
    recipe = load_recipe(_write(tmp_path, GOOD))
    a, b = recipe.experiments
    full = experiment_config(recipe, a, out=tmp_path / "a", data=tmp_path)
    assert (full.train.epochs, full.train.lr, full.data.img_size) == (7, 0.02, 64)
    quick = experiment_config(recipe, a, out=tmp_path / "a", data=tmp_path, quick=True,
                              extra={"train.seed": 3})
    assert quick.train.epochs == QUICK_DEFAULTS["train.epochs"]
    assert (quick.train.lr, quick.data.img_size, quick.train.seed) == (0.5, 32, 3)
    assert experiment_config(recipe, b, out=tmp_path, data=tmp_path, quick=True).data.img_size \
        == 40
    assert recipe.reference_of(b) == "a" and recipe.reference_of(a) is None


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("overrides: {model.name: simple_cnn, train.lr", "overides: {model.name: x, "
                  "train.lr"), "experiments.0 ('a').overides: unknown key"),
    (GOOD.replace("title: t", "title: t\nkind: cv"), "kind: unknown key"),
    (GOOD.replace("title: t", "title: t\npath: x"), "path: unknown key"),
    (GOOD.replace("train.lr: 0.02", "train.lrr: 0.02"),
     "experiment 'a': train.lrr: unknown key"),
    (GOOD.replace('"@a"', '"@b"'), "'@b' must name an earlier experiment"),
    (GOOD.replace("name: b", "name: a"), "experiment 'a' appears twice"),
    (GOOD.replace("name: b", "name: comparison"), "experiment name 'comparison'"),
    (GOOD.replace("data: {img_size: 64}", "data: {img_size: 64, path: x}"), "base: leave out"),
    (GOOD.replace("model.name: simple_cnn, train.lr", "model.name: simple_cnn, train.epochs: 0, "
                  "train.lr"), "experiment 'a': train.epochs: Input should be greater"),
])
def test_mistakes_are_one_line_naming_the_file(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(MedscopeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    path = _write(tmp_path, GOOD.replace("title: t", "title: t\ncolour: red"))
    assert main(["run", str(path), "--quick", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"medscope: error: {path}: colour: unknown key"
    assert not (tmp_path / "o").exists()  # nothing trained, nothing written


def test_unknown_only_name_and_missing_data_are_one_line(tmp_path, capsys):
    path = _write(tmp_path, GOOD)
    assert main(["run", str(path), "--only", "zzz", "--out", str(tmp_path / "o")]) == 2
    assert "no experiment 'zzz' (experiments: a, b)" in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "somewhere: data not found (experiment 'a'" in err and err.count("\n") == 1


def test_a_recipe_is_not_a_train_config_and_back(tmp_path):
    path = _write(tmp_path, GOOD)
    with pytest.raises(MedscopeError, match="run it with `medscope run"):
        load_config(path)
    config = tmp_path / "c.yaml"
    config.write_text("train: {epochs: 2}\n")
    with pytest.raises(MedscopeError, match="not a recipe"):
        load_recipe(config)


def test_every_shipped_recipe_is_valid():
    names = {p.stem for p in shipped_recipes()}
    assert {"fungi-cnn-vs-resnet18", "defungi-10fold-transfer", "six-architectures",
            "resnet34-head-pool", "vgg16-frozen-transfer", "plain-vs-residual",
            "cross-domain-transfer", "lenet5-digits-style", "defungi-best",
            "defungi-fast", "defungi-new-slides"} <= names
    for path in shipped_recipes():
        recipe = load_recipe(path.stem)  # by name, as `medscope run NAME` finds it
        assert recipe.title and path.read_text().startswith("#")  # the header comment
