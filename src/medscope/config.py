"""The run configuration: one validated object, loaded from YAML, overridable from the CLI,
saved as ``config.yaml`` in every run directory so that any run can be reproduced.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medscope.errors import MedscopeError, first_line

# Value sets and ranges shared by the run config and the other commands' options
# (``medscope.options``) and the model registry: each written once, here.
Precision = Literal["auto", "fp32", "bf16", "fp16"]
DataFormat = Literal["auto", "folder", "csv", "npz"]
InChans = Literal[1, 3]
IN_CHANS: tuple[int, ...] = get_args(InChans)
TargetAccuracy = Annotated[float, Field(gt=0, le=1)]
AugmentPreset = Literal["none", "flips", "microscopy", "keras-classic", "randaugment", "stain",
                        "ssl"]


def check_group_pattern(pattern: str) -> str:
    """``pattern`` if it is a usable group pattern, else ValueError saying why (pydantic turns
    it into a one-line error naming the option)."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a regular expression ({exc})") from None
    if not pattern:
        raise ValueError("empty pattern (leave it unset for no groups)")
    return pattern


class _Section(BaseModel):
    # A misspelt key in a recipe must be an error, not a silently ignored setting; an infinite
    # or NaN number (YAML .inf, 1e400) is never a sensible setting either.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class DataConfig(_Section):
    path: Path | None = Field(None, description="image folder (one sub-folder per class, or "
                              "train/val/test/<class>), CSV file or MedMNIST .npz")
    format: DataFormat = Field(
        "auto", description="data kind (auto: detected from the path)")
    img_size: int = Field(224, ge=8, le=4096, description="training resolution (square)")
    in_chans: InChans = Field(3, description="1 = grayscale, 3 = RGB")
    mpp: float | None = Field(None, gt=0, description="microns per pixel of the source images "
                              "(recorded in the checkpoint, so large images are tiled at it)")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    split_file: Path | None = Field(None, description="re-use this splits.csv instead of splitting")
    resplit: bool = Field(False, description="pool the data's own train/val/test folders (or "
                          "CSV split column) and split them anew, stratified and group-aware, "
                          "as unsplit data is")
    split_seed: int | None = Field(
        None, ge=-(2**63), lt=2**63, description="seed of the train/val/test split; default "
        "train.seed (set it to vary initialisation on a fixed test set)")
    multilabel: bool | Literal["auto"] = Field(
        "auto", description="CSV labels: auto = multi-label when some label holds '|'")
    augment: AugmentPreset = Field("flips", description="augmentation preset (ssl: the strong "
                                   "views of self-supervised pretraining)")
    stain_norm: Literal["none", "reinhard"] = Field(
        "none", description="colour normalisation of every model input (after the training "
        "augmentation, before Normalize): reinhard = each image's L*a*b* means and stds mapped "
        "onto the training images'; kept in the checkpoint (medscope.data.stain)")
    mixup: float = Field(0.0, ge=0, description="MixUp alpha; 0 = off")
    cutmix: float = Field(0.0, ge=0, description="CutMix alpha; 0 = off")
    balance: Literal["none", "weights", "sampler"] = Field(
        "none", description="class imbalance: inverse-frequency loss weights or a weighted sampler")
    cache: bool = Field(True, description="keep decoded images in a memory-mapped disk cache")
    cache_dir: Path | None = Field(None, description="default $MEDSCOPE_CACHE or ~/.cache/medscope")
    folds: int | None = Field(None, ge=2, description="k for k-fold cross-validation")
    exclude: Path | None = Field(None, description="file listing images to leave out (one "
                                 "path per line, as written by `medscope audit --write-exclude`)")
    group_pattern: str | None = Field(
        None, description="regular expression searched in each image's path relative to the "
        "data root: images with the same match (its first capture group when it has one) form "
        "a group, kept in one split and one fold, e.g. '([^/]+)_\\d+\\.jpg$' for the "
        "micrograph H1_100a of DeFungi's patch train/TSH/H1_100a_3.jpg")
    duplicates: Literal["group", "drop", "keep"] = Field(
        "group", description="byte-identical images: group = one group in every split and fold, "
        "drop = keep one copy (train-side first), keep = leave as they are; copies with "
        "different labels are dropped unless keep")
    strict: bool = Field(False, description="stop at the first unreadable image instead of "
                         "skipping it")
    max_bad_fraction: float = Field(0.05, ge=0.0, le=1.0)
    num_workers: int = Field(0, ge=0, description="data loader worker processes")

    @field_validator("group_pattern")
    @classmethod
    def _pattern_compiles(cls, v: str | None) -> str | None:
        return v if v is None else check_group_pattern(v)

    @field_validator("stain_norm")
    @classmethod
    def _stain_needs_rgb(cls, v: str, info) -> str:
        if v != "none" and info.data.get("in_chans") != 3:
            raise ValueError(f"{v} needs RGB images (data.in_chans 3)")
        return v

    @field_validator("test_fraction")
    @classmethod
    def _fractions_leave_training_data(cls, v: float, info) -> float:
        if v + info.data.get("val_fraction", 0.0) >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        return v


class ModelConfig(_Section):
    name: str = Field("simple_cnn", description="architecture (`medscope models` lists them)")
    pretrained: str | None = Field(None, description="local weights file or hub id")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra factory arguments")


class TrainConfig(_Section):
    epochs: int = Field(20, ge=1, description="training epochs")
    batch_size: int = Field(32, ge=1, description="images per step")
    optimizer: Literal["adamw", "adam", "sgd"] = Field(
        "adamw", description="optimizer (adam: weight_decay is an L2 penalty, as in Keras and "
        "torch.optim.Adam; adamw decouples it)")
    lr: float = Field(3e-4, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["cosine", "onecycle", "none"] = Field(
        "cosine", description="cosine: linear warm-up then cosine to 0; onecycle: cosine up "
        "from lr/25 over warmup_epochs (0: a quarter of the run) then cosine down to "
        "lr/250000 (torch's OneCycleLR); none: constant after warm-up")
    warmup_epochs: int = Field(1, ge=0, description="linear LR warm-up (onecycle: the rise); "
                               "steadies big FC heads")
    ema: float | None = Field(
        None, gt=0, lt=1, description="decay of an exponential moving average of the weights "
        "(e.g. 0.999), which is validated, saved as best and evaluated; off if None")
    ema_warmup: bool = Field(True, description="EMA decay ramps up as 1-(1+step)^-3/4 to "
                             "train.ema, so the average soon forgets the initial weights")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy against "
                                   "(1-EPS) x one-hot + EPS/classes (multi-class only)")
    progressive_from: int | None = Field(
        None, ge=8, description="progressive resizing: the first epoch trains at this side, "
        "growing linearly to data.img_size by train.progressive_until of the run (validation "
        "and test stay at data.img_size; needs a model with global pooling); off if None")
    progressive_until: float = Field(0.5, gt=0, le=1, description="share of the epochs after "
                                     "which training batches are at full data.img_size")
    clip_grad: float | None = Field(None, gt=0, description="max global gradient norm; off if None")
    freeze: str = Field("none", description="none | backbone | stages:N (transfer learning)")
    head_lr_mult: float = Field(1.0, gt=0, description="classifier LR = lr x this")
    unfreeze_at: int | None = Field(None, ge=1, description="epoch from which everything trains")
    monitor: Literal["val_loss", "val_accuracy", "val_f1_macro"] = Field(
        "val_f1_macro", description="what chooses the best checkpoint; a tie of accuracy or F1 "
        "goes to the lower validation loss")
    early_stopping: int | None = Field(None, ge=1, description="stop after this many epochs "
                                      "without improvement (patience); off if None")
    precision: Precision = Field(
        "auto", description="auto: bf16 autocast where the CPU/GPU supports it, else fp32; "
        "fp16: CUDA only, with loss scaling (torch.amp.GradScaler)"
    )
    compile: bool = Field(False, description="torch.compile the model (slow first epoch, "
                          "faster later ones; needs a C++ compiler)")
    channels_last: bool | None = Field(
        None, description="None: on for CPU, and on GPU whenever bf16/fp16 is used")
    target_accuracy: TargetAccuracy = Field(0.99, description="accuracy the refer-to-expert "
                                   "threshold must reach on the validation split")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    seed: int = Field(0, ge=-(2**63), lt=2**63,  # what torch.manual_seed accepts
                      description="seed of initialisation, shuffling and augmentation "
                      "(and of the split unless data.split_seed is set)")
    deterministic: bool = False
    checkpoint_every: float | None = Field(
        None, gt=0, description="also write the resumable 'last' checkpoint mid-epoch every "
        "this many minutes (long epochs); off if None")
    nan_policy: Literal["stop", "skip-batch"] = Field(
        "stop", description="NaN/Inf training loss: stop (keeping the last good checkpoint) or "
        "skip that batch and go on")


class RunConfig(_Section):
    out: Path = Field(Path("runs/run"), description="run directory to create")
    track: str | None = Field(None, description="mirror the run to mlflow, mlflow:URI or "
                              "tensorboard (the run directory stays the source of truth)")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @property
    def split_seed(self) -> int:
        return self.train.seed if self.data.split_seed is None else self.data.split_seed

    @property
    def multilabel(self) -> bool | None:
        """None: detect from the data."""
        return None if self.data.multilabel == "auto" else self.data.multilabel


# ---------------------------------------------------------------- self-supervised pretraining


class PretrainSection(_Section):
    objective: Literal["simclr"] = Field(
        "simclr", description="self-supervised objective: simclr = two augmented views of each "
        "image pulled together, the batch's other images pushed apart (NT-Xent)")
    temperature: float = Field(0.2, gt=0, le=10, description="NT-Xent temperature")
    proj_dim: int = Field(128, ge=2, description="output size of the projection head")
    proj_hidden: int = Field(512, ge=2, description="hidden size of the projection head")


class PretrainDataConfig(_Section):
    paths: list[Path] = Field(default_factory=list, description="folder of images without "
                              "labels, at any depth (class folders are ignored); repeatable")
    img_size: int = Field(64, ge=8, le=4096, description="pretraining resolution (square); "
                          "fine-tune at the same side")
    in_chans: InChans = Field(3, description="1 = grayscale, 3 = RGB")
    augment: AugmentPreset = Field("ssl", description="augmentation preset of the two views")
    cache: bool = Field(True, description="keep decoded images in a memory-mapped disk cache")
    cache_dir: Path | None = Field(None, description="default $MEDSCOPE_CACHE or ~/.cache/medscope")
    strict: bool = Field(False, description="stop at the first unreadable image instead of "
                         "skipping it")
    max_bad_fraction: float = Field(0.05, ge=0.0, le=1.0)
    num_workers: int = Field(0, ge=0, description="data loader worker processes")


class PretrainRunConfig(_Section):
    """``medscope pretrain``: a backbone trained without labels, saved as a run directory
    whose checkpoint ``train --pretrained`` takes. ``train`` is the classifier's schema (one
    engine); where pretraining wants other defaults, ``PRETRAIN_TRAIN_DEFAULTS`` sets them."""

    out: Path = Field(Path("runs/pretrain"), description="run directory to create")
    track: str | None = Field(None, description="mirror the run to mlflow, mlflow:URI or "
                              "tensorboard")
    data: PretrainDataConfig = Field(default_factory=PretrainDataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    pretrain: PretrainSection = Field(default_factory=PretrainSection)


# A contrastive objective learns from the other images of its batch (its negatives): batches
# far larger than a classifier's, and more epochs; warm-up steadies the start at that batch.
PRETRAIN_TRAIN_DEFAULTS: dict[str, Any] = {"epochs": 100, "batch_size": 256, "lr": 1e-3,
                                           "warmup_epochs": 5}


def load_pretrain_config(path: Path | None = None, overrides: dict[str, Any] | None = None
                         ) -> PretrainRunConfig:
    """Defaults (``PRETRAIN_TRAIN_DEFAULTS`` under the schema's), then the YAML file, then
    ``overrides`` (dotted keys such as ``pretrain.temperature``)."""
    raw: dict[str, Any] = {"train": dict(PRETRAIN_TRAIN_DEFAULTS)}
    if path is not None:
        path = resolve_recipe(path)
        for section, values in read_yaml(path).items():
            if isinstance(values, dict) and isinstance(raw.get(section), dict):
                raw[section].update(values)
            else:
                raw[section] = values
    return _validated(PretrainRunConfig, raw, overrides, path, "pretraining config")


def pretrain_default(dotted: str) -> Any:
    """The default of a pretraining config key, as ``load_pretrain_config`` applies it."""
    section, _, leaf = dotted.partition(".")
    if section == "train" and leaf in PRETRAIN_TRAIN_DEFAULTS:
        return PRETRAIN_TRAIN_DEFAULTS[leaf]
    return describe_field(dotted, PretrainRunConfig).default


def _shipped_recipes_dir() -> Path:
    # Package data, so that an installed wheel finds the recipes as an editable install does.
    # Wheels are installed unpacked (never imported from a zip), so the resource folder is a
    # real directory; a Path, because runs record and re-read the recipe file they came from.
    return Path(str(resources.files("medscope") / "recipes"))


RECIPES = _shipped_recipes_dir()


def resolve_recipe(path: Path | str) -> Path:
    """A YAML file as given, or the name of a recipe shipped in ``medscope/recipes/``
    (``demo``)."""
    path = Path(path)
    if path.is_file() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    shipped = RECIPES / f"{path}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml"))) or "none"
    raise MedscopeError(f"{path}: no such config file or recipe (recipes: {names})")


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the YAML file (or shipped recipe name), then ``overrides`` (dotted keys
    such as ``train.lr``)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = resolve_recipe(path)
        raw = read_yaml(path)
        if "experiments" in raw:
            raise MedscopeError(f"{path}: a recipe of several experiments; run it with "
                                f"`medscope run {path}`")
    return _validated(RunConfig, raw, overrides, path, "config")


_Config = TypeVar("_Config", bound=BaseModel)


def _validated(schema: type[_Config], raw: dict[str, Any], overrides: dict[str, Any] | None,
               path: Path | None, what: str) -> _Config:
    """``raw`` with the dotted ``overrides`` applied, validated as ``schema``; one line naming
    the file for anything wrong (shared by run and pretraining configs)."""
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        raise MedscopeError(f"{where}invalid {what}: {_first_error(exc)}") from None


def read_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MedscopeError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MedscopeError(f"{path}: not valid YAML ({first_line(exc)})") from None
    if not isinstance(raw, dict):
        raise MedscopeError(f"{path}: a config must be a mapping of sections")
    return raw


def config_to_yaml(config: RunConfig | PretrainRunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def parse_override(item: str) -> tuple[str, Any]:
    """``"train.lr=0.01"`` -> ``("train.lr", 0.01)``; the value is parsed as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise MedscopeError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=0.01")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise MedscopeError(f"--set {item!r}: the value is not valid YAML "
                            f"({first_line(exc)})") from None
    if isinstance(parsed, str):
        # YAML 1.1 reads '1e-4' as a string; users mean a number.
        with contextlib.suppress(ValueError):
            parsed = float(parsed)
    return key.strip(), parsed


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise MedscopeError(f"cannot set {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    if not where.isprintable():  # a key with a newline or control character: keep one line
        where = repr(where)
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {err['msg']}{more}"


@dataclass(frozen=True)
class FieldDoc:
    help: str
    choices: tuple[Any, ...] | None
    type: type
    default: Any


def describe_field(dotted: str, root: type[BaseModel] | None = None) -> FieldDoc:
    """Help text, choices, Python type and default of a config key (or of a field of another
    schema, ``root``, e.g. ``medscope.options.PredictOptions``), from the schema itself: the
    CLI derives its options from this instead of repeating them."""
    model: type[BaseModel] = root or RunConfig
    *parents, leaf = dotted.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    info = model.model_fields[leaf]
    ann = info.annotation
    if get_origin(ann) is not Literal:  # X | None, or bool | Literal["auto"]
        members = [get_args(a)[0] if get_origin(a) is Annotated else a  # TargetAccuracy | None
                   for a in get_args(ann) if a is not type(None)] or [ann]
        ann = next((a for a in members if get_origin(a) is Literal), members[0])
    choices = get_args(ann) if get_origin(ann) is Literal else None
    base = type(choices[0]) if choices else ann
    return FieldDoc(info.description or "", choices, base, info.default)
