"""The options of the commands that do not train, one pydantic schema per command; training's
options are the run config (``medscope.config``). Each option's type, range, choices, default and
help text is written once, here: the CLI derives its flags from these schemas
(``medscope.config.describe_field``), and ``medscope.api`` validates its arguments with them, so
a Python caller gets the same checks and the same one-line messages as a CLI user.

Kept at the config level (pydantic and ``medscope.config`` only): the CLI builds its parser
from these schemas on every start, so nothing heavy may be imported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from medscope.config import (
    DataFormat,
    InChans,
    Precision,
    TargetAccuracy,
    check_group_pattern,
)
from medscope.errors import MedscopeError

__all__ = ["AuditOptions", "CompareOptions", "DataInfoOptions", "DemoOptions",
           "EvaluateOptions", "ExplainOptions", "ModelsOptions", "OptionError", "PredictOptions",
           "ServeOptions", "SynthOptions"]

GroupPattern = Annotated[str, AfterValidator(check_group_pattern)]
Probability = Annotated[float, Field(ge=0, le=1)]
PerClass = Annotated[int, Field(ge=1)]
TileMode = Literal["auto", "on", "off"]
TissueMode = Literal["auto", "on", "off"]
Aggregation = Literal["mean", "topk", "vote"]
# The choices as tuples for the layers below the API that check them again (diagnosis,
# slides): written once, here.
TILE_MODES: tuple[str, ...] = get_args(TileMode)
TISSUE_MODES: tuple[str, ...] = get_args(TissueMode)
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)

PRECISION_HELP = "auto: bf16 where the CPU/GPU supports it, else fp32; fp16: CUDA only"
DEVICE_HELP = "auto, cpu, cuda, cuda:N"
EXPLAIN_TILES_HELP = ("Grad-CAM overlays of the N tiles most supporting the call of each "
                      "tiled image (highest probability of the called class), at the tile's "
                      "size")


class OptionError(MedscopeError):
    """An option value outside its schema. Its message names the Python parameter
    (``target_accuracy 1.5: …``); the CLI prints the same message with the flag instead
    (``--target-accuracy 1.5: …``), see :meth:`message`."""

    def __init__(self, name: str, value: Any, reason: str) -> None:
        self.name, self.value, self.reason = name, value, reason
        super().__init__(self.message(name))

    def message(self, label: str) -> str:
        return f"{label} {_shown(self.value)}: {self.reason}"


class _Options(BaseModel):
    # As the run config: a misspelt option is an error, and inf/NaN is never a setting.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False,
                              frozen=True)

    @classmethod
    def check(cls, **values: Any) -> Self:
        """The validated options, or an :class:`OptionError` naming the first bad one."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = ".".join(str(p) for p in err["loc"]) or cls.__name__
            raise OptionError(name, err.get("input"), _reason(err)) from None


class EvaluateOptions(_Options):
    """``medscope evaluate`` / :func:`medscope.api.evaluate` and ``evaluate_ensemble``."""

    precision: Precision = Field("auto", description=PRECISION_HELP)
    device: str = Field("auto", description=DEVICE_HELP)
    target_accuracy: TargetAccuracy | None = Field(
        None, description="refer-to-expert target (0-1): its threshold is fitted again on the "
        "run's validation split (default: the one training fitted)")
    tta: bool = Field(False, description="test-time augmentation: logits averaged over the 8 "
                      "flips/rotations (8x the time); written to RUN/eval-tta/ unless --out")


class PredictOptions(_Options):
    """``medscope predict`` / :func:`medscope.api.predict`."""

    precision: Precision = Field("auto", description=PRECISION_HELP)
    device: str = Field("auto", description=DEVICE_HELP)
    tta: bool = Field(False, description="average over the 8 flips/rotations of each image")
    top_k: int = Field(3, ge=1, description="classes in the top_k column")
    abstain_below: Probability | None = Field(
        None, description="refer_to_expert when the confidence is below P (default: the "
        "checkpoint's selective threshold if any; 0 = off)")
    batch_size: int = Field(64, ge=1, description="images per forward pass")
    backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        "torch", description="onnx: onnxruntime on RUN/onnx (exported on the fly if missing); "
        "onnx-int8: on RUN/onnx-int8 (statically quantized, calibrated on the run's training "
        "images)")
    ensemble: bool = Field(False, description="RUN (and each --with) is a `medscope cv` "
                           "directory: average its fold models")
    # The tiling of large images (medscope.diagnosis; it and medscope.slides check the
    # same TILE_MODES, TISSUE_MODES and AGGREGATIONS below the API).
    tiles: TileMode = Field("auto", description="large images (whole micrographs, slides) cut "
                            "into tiles at the training scale: auto = when an image is much "
                            "larger than the model's input")
    tile_size: int | None = Field(None, ge=8, description="source pixels per tile (default: "
                                  "from the checkpoint's training scale)")
    aggregation: Aggregation = Field("mean", description="how tile probabilities make the "
                                     "image's")
    tissue: TissueMode = Field("auto", description="tiles read only where the tissue finder "
                               "(Otsu on saturation of a thumbnail) sees specimen: auto = for "
                               "whole-slide files and images over 100 Mpx; off = every tile of "
                               "the field")
    tiles_dir: Path | None = Field(None, description="folder for each tiled image's per-tile "
                                   "CSV and heat map")
    explain_tiles: int = Field(0, ge=0, description=EXPLAIN_TILES_HELP + "; written in "
                               "--tiles-dir and named in the per-tile CSV's gradcam column")


class ExplainOptions(_Options):
    """``medscope explain`` / :func:`medscope.api.explain` (its other flags are plain)."""

    explain_tiles: int = Field(4, ge=1, description=EXPLAIN_TILES_HELP + "; a large image is "
                               "tiled as predict tiles it, never squashed")


class ServeOptions(_Options):
    """``medscope serve`` / :func:`medscope.api.serve` and :func:`medscope.api.create_app`."""

    host: str = Field("127.0.0.1", description="address to bind (127.0.0.1 is this machine only)")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    max_upload_mb: float = Field(20.0, gt=0, description="largest upload (MB)")
    token: str | None = Field(None, description="require 'Authorization: Bearer TOKEN' "
                              "(default: $MEDSCOPE_TOKEN)")
    abstain_below: Probability | None = Field(
        None, description="refer to an expert below this confidence (default: the "
        "checkpoint's selective threshold, else no confidence referral)")
    cors_origins: list[str] = Field(
        default_factory=list, description="allow this web origin to call the API "
        "(repeatable; default none)")
    slides: Path | None = Field(None, description="folder of slides too big to upload, listed "
                                "on the page; only files inside it are ever opened")


class SynthOptions(_Options):
    """``medscope synth`` / :func:`medscope.api.synth`."""

    per_class: PerClass = Field(40, description="slides per class")
    seed: int = Field(0, ge=0, description="seed of the slides (numpy's SeedSequence takes no "
                      "negative one)")
    size: int = Field(1000, ge=1000, description="slide side in pixels (patches are cut at "
                      "500 px, the organisms are drawn for 1000 px slides)")


class DemoOptions(_Options):
    """``medscope demo`` / :func:`medscope.api.demo` (its training options are the recipe's)."""

    per_class: PerClass = Field(40, description="synthetic slides per class")
    force: bool = Field(False, description="replace an earlier demo in --out")


class AuditOptions(_Options):
    """``medscope audit`` / :func:`medscope.api.audit`."""

    phash_distance: int | None = Field(
        None, ge=0, le=32, description="max pHash Hamming distance (of 64 bits) of "
        "near-duplicates (default 6)")
    group_pattern: GroupPattern | None = Field(
        None, description="source groups from the file names, as in `medscope train "
        "--group-pattern`: lists those that span splits or folds")
    workers: int | None = Field(None, ge=1, description="processes (default: up to 4)")
    write_exclude: Path | None = Field(
        None, description="also write the suspects (test-side copies of leaks, conflicting "
        "copies, top label errors) as a commented list to edit")


class DataInfoOptions(_Options):
    """``medscope data info`` / :func:`medscope.api.data_info`."""

    format: DataFormat = Field(
        "auto", description="data kind (auto: detected from the path)")
    group_pattern: GroupPattern | None = Field(
        None, description="groups from the file names, as in `medscope train --group-pattern`: "
        "counts them and the groups that span the given splits")


class ModelsOptions(_Options):
    """``medscope models`` / :func:`medscope.api.list_models`."""

    img_size: int = Field(224, ge=8, le=4096, description="input size for GMACs")
    pattern: str = Field("*", description="glob pattern, e.g. 'resnet*'")
    in_chans: InChans = Field(3, description="1 = grayscale, 3 = RGB")


class CompareOptions(_Options):
    """``medscope compare`` / :func:`medscope.api.compare`."""

    latency_repeats: int = Field(30, ge=1, description="timed batch-1 forwards per model")
    threads: int | None = Field(None, ge=1, description="torch CPU threads while measuring "
                                "(default: torch's current count)")


_BOUNDS = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "greater than"),
           "less_than_equal": ("le", "at most"), "less_than": ("lt", "less than")}


def _reason(err: dict[str, Any]) -> str:
    """pydantic's message, in the CLI's words for the common range errors."""
    bound = _BOUNDS.get(err["type"])
    if bound is not None:
        key, words = bound
        limit = err["ctx"][key]
        return f"must be {words} {limit:g}" if isinstance(limit, float) else \
            f"must be {words} {limit}"
    if err["type"] == "value_error":  # our own validators' words, without pydantic's prefix
        return " ".join(str(err["ctx"]["error"]).split())
    if err["type"] == "extra_forbidden":
        return "not an option of this command"
    msg = " ".join(str(err["msg"]).split())  # one line whatever a validator wrote
    return msg[:1].lower() + msg[1:]


def _shown(value: Any) -> str:
    """A value as a message shows it: numbers plainly (1.5, not 1.5e0), text quoted so that a
    control character cannot break the one-line message, anything long cut short."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)
    if isinstance(value, bool | int | float) or value is None:
        return str(value)
    if isinstance(value, Path) and str(value).isprintable():
        return str(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
