"""Recipes: a study as one YAML file — a base run config, a list of experiments that override
it, and what ``--quick`` scales down — validated here, turned into one ``RunConfig`` per
experiment by :func:`experiment_config`.

    title: ...                       # what the comparison report is called
    data: ../shared/data/defungi     # default data (relative: to the current directory)
    base: {data: {...}, model: {...}, train: {...}}   # a RunConfig without out / data.path
    cv: {folds: 10}                  # optional: every experiment cross-validated
    quick: {overrides: {...}, folds: 2, per_class: 6}
    plots: [training_error]          # optional recipe-level plots
    tta: true                        # optional: also evaluate with test-time augmentation
    ensemble: true                   # optional: also score the experiments averaged
    experiments:
      - name: resnet18
        overrides: {model.name: resnet18, train.lr: 1.0e-3}
      - name: finetune
        data: other/folder           # this experiment's own data
        overrides: {model.pretrained: "@resnet18"}   # that experiment's best checkpoint
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from medscope.config import RECIPES, RunConfig, _set_dotted, read_yaml, resolve_recipe
from medscope.errors import MedscopeError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
REFERENCE = "@"  # model.pretrained: "@name" = the best checkpoint of experiment ``name``

# What --quick sets on every experiment before the recipe's own quick overrides: a smoke test
# of every setting that matters (model, loss, freeze, optimizer, schedule) on tiny data.
QUICK_DEFAULTS: dict[str, Any] = {
    "data.img_size": 32, "train.epochs": 1, "train.batch_size": 4, "train.warmup_epochs": 0,
    "train.early_stopping": None, "train.compile": False, "data.num_workers": 0,
    "data.val_fraction": 0.2, "data.test_fraction": 0.25, "data.mixup": 0.0,
    "data.cutmix": 0.0, "data.folds": None,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class CV(_Strict):
    folds: int = Field(ge=2, description="k of k-fold cross-validation")


class QuickData(_Strict):
    """The synthetic stand-in for an experiment's data under --quick."""
    classes: int = Field(5, ge=2, le=5, description="classes of the synthetic micrographs")
    per_class: int | None = Field(None, ge=3, description="images per class (default: quick's)")


class Quick(_Strict):
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="dotted keys set on every experiment")
    folds: int = Field(2, ge=2, description="folds of cross-validated experiments")
    per_class: int = Field(6, ge=3, description="synthetic images per class")
    image_size: int = Field(64, ge=16, le=512, description="side of the synthetic images")
    latency_repeats: int = Field(2, ge=1, description="timed forwards per model in the report")


class Experiment(_Strict):
    name: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    data: str | None = Field(None, description="this experiment's data (else the recipe's)")
    cv: CV | Literal[False] | None = Field(None, description="None: the recipe's; false: none")
    quick: dict[str, Any] = Field(default_factory=dict,
                                  description="more overrides under --quick")
    quick_data: QuickData = Field(default_factory=QuickData)
    note: str = ""


class Recipe(_Strict):
    title: str
    reproduces: str = ""
    compare_with: str = ""
    data: str | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    cv: CV | None = None
    quick: Quick = Field(default_factory=Quick)
    plots: list[Literal["training_error"]] = Field(default_factory=list)
    tta: bool = Field(False, description="also evaluate every train + evaluate experiment with "
                      "test-time augmentation (8 flips/rotations) into its eval-tta/; the "
                      "report gets a table of both")
    ensemble: bool = Field(False, description="also evaluate the train + evaluate "
                           "experiments as one model, their calibrated probabilities averaged "
                           "on the test split they share, into OUT/ensemble/ (and "
                           "OUT/ensemble-tta/ with tta); the report gets a table")
    experiments: list[Experiment] = Field(min_length=1)

    _path: Path | None = PrivateAttr(None)  # the file it was read from

    @property
    def path(self) -> Path | None:
        return self._path

    def experiment(self, name: str) -> Experiment:
        for exp in self.experiments:
            if exp.name == name:
                return exp
        raise MedscopeError(f"{self.path}: no experiment {name!r} (experiments: "
                            f"{', '.join(e.name for e in self.experiments)})")

    def folds_of(self, exp: Experiment, quick: bool = False) -> int | None:
        """k for a cross-validated experiment, None for plain train + evaluate."""
        cv = self.cv if exp.cv is None else exp.cv
        if not cv:
            return None
        return min(cv.folds, self.quick.folds) if quick else cv.folds

    def reference_of(self, exp: Experiment) -> str | None:
        """The experiment whose best checkpoint ``exp`` starts from (``"@name"``), if any."""
        value = exp.overrides.get("model.pretrained",
                                  (self.base.get("model") or {}).get("pretrained"))
        if isinstance(value, str) and value.startswith(REFERENCE):
            return value[len(REFERENCE):]
        return None


def load_recipe(path: Path | str) -> Recipe:
    """The validated recipe at ``path`` (or the shipped recipe of that name); every mistake is
    one line naming the file: unknown keys, bad values, bad experiment settings, references."""
    path = resolve_recipe(path)
    raw = read_yaml(path)
    if "experiments" not in raw:
        raise MedscopeError(f"{path}: not a recipe (no 'experiments:' list); train a single "
                            f"config with `medscope train --config {path}`")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise MedscopeError(f"{path}: {_error_line(exc, raw)}") from None
    recipe._path = path
    _check_names(recipe)
    if "out" in recipe.base or "path" in (recipe.base.get("data") or {}):
        raise MedscopeError(f"{path}: base: leave out and data.path out (set by `medscope run`: "
                            "--out, and the recipe's data: or --data)")
    _check_references(recipe)
    for exp in recipe.experiments:  # every experiment's config is valid before any training
        experiment_config(recipe, exp, out=Path("."), data=Path("."))
        experiment_config(recipe, exp, out=Path("."), data=Path("."), quick=True)
    return recipe


def experiment_config(recipe: Recipe, exp: Experiment, *, out: Path, data: Path,
                      quick: bool = False, pretrained: str | None = None,
                      extra: dict[str, Any] | None = None) -> RunConfig:
    """The run config of ``exp``: base, then its overrides, then (``quick``) the quick ones,
    then ``extra`` (``--set``); ``pretrained`` replaces an ``@reference``."""
    raw = copy.deepcopy(recipe.base)
    layers = [exp.overrides]
    if quick:
        layers += [QUICK_DEFAULTS, recipe.quick.overrides, exp.quick]
    layers.append(extra or {})
    for layer in layers:
        for dotted, value in layer.items():
            try:
                _set_dotted(raw, dotted, value)
            except MedscopeError as e:
                raise MedscopeError(f"{recipe.path}: experiment {exp.name!r}: {e}") from None
    _set_dotted(raw, "out", str(out))
    _set_dotted(raw, "data.path", str(data))
    if pretrained is not None:
        _set_dotted(raw, "model.pretrained", pretrained)
    elif recipe.reference_of(exp):
        _set_dotted(raw, "model.pretrained", None)  # resolved when the reference has run
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise MedscopeError(f"{recipe.path}: experiment {exp.name!r}: "
                            f"{_error_line(exc, raw)}") from None


def shipped_recipes() -> list[Path]:
    """The recipe files in ``recipes/`` (config files without ``experiments:`` are not)."""
    return sorted(p for p in RECIPES.glob("*.yaml")
                  if "experiments" in (yaml.safe_load(p.read_text()) or {}))


def _check_names(recipe: Recipe) -> None:
    seen: set[str] = set()
    for exp in recipe.experiments:
        if not NAME.match(exp.name) or exp.name == "comparison":
            raise MedscopeError(f"{recipe.path}: experiment name {exp.name!r}: use letters, "
                                "digits, '-', '_' and '.' (and not 'comparison'): it names "
                                "the run folder")
        if exp.name in seen:
            raise MedscopeError(f"{recipe.path}: experiment {exp.name!r} appears twice")
        seen.add(exp.name)


def _check_references(recipe: Recipe) -> None:
    earlier: set[str] = set()
    for exp in recipe.experiments:
        ref = recipe.reference_of(exp)
        if ref is not None:
            if ref not in earlier:
                raise MedscopeError(f"{recipe.path}: experiment {exp.name!r}: model.pretrained "
                                    f"'@{ref}' must name an earlier experiment")
            if recipe.folds_of(recipe.experiment(ref)) is not None:
                raise MedscopeError(f"{recipe.path}: experiment {exp.name!r}: '@{ref}' is "
                                    "cross-validated (no single best checkpoint); reference "
                                    "a plain experiment")
        earlier.add(exp.name)


def _error_line(exc: ValidationError, raw: dict[str, Any]) -> str:
    err = exc.errors()[0]
    loc = list(err["loc"])
    # experiments.2.overide -> experiments[2] ('name').overide: the name says which one.
    if len(loc) > 1 and loc[0] == "experiments" and isinstance(loc[1], int):
        try:
            name = raw["experiments"][loc[1]].get("name")
        except (IndexError, AttributeError, TypeError):
            name = None
        loc[1] = f"{loc[1]} ({name!r})" if name else loc[1]
    where = ".".join(str(p) for p in loc)
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {msg}{more}"
