"""Transfer learning: pretrained weights, grayscale input, freezing, discriminative LRs.

What the training engine calls::

    model = create_model(name, num_classes, in_chans, pretrained=source, img_size=size)
    apply_freeze(model, spec)                      # spec: "none" | "backbone" | "stages:N"
    optimizer = AdamW(param_groups(model, base_lr, head_lr_mult, weight_decay))
    for epoch in ...:
        if epoch == unfreeze_at:
            unfreeze(model)                        # same optimizer: see param_groups
        model.train()
        set_frozen_bn_eval(model)                  # after *every* model.train()

Signatures:

- ``load_pretrained(model, source, in_chans=3, architecture=None) -> LoadReport``: ``source`` is
  a medscope run directory or checkpoint (its ``best``; a self-supervised run's backbone
  without its projection head; another architecture than ``architecture`` is refused), a
  local file (``.safetensors``, or a ``.pth/.pt/.bin`` state dict read with
  ``weights_only=True``) or a hub
  id (``timm/resnet18.a1_in1k``, ``hf-hub:org/repo[@revision]``, ``resnet18.a1_in1k``, or
  ``imagenet`` for the model's default timm weights). Hub ids are served from the Hugging Face
  cache when it holds them (also with ``HF_HUB_OFFLINE=1``), else downloaded into it; the
  repo's ``config.json`` sets the file name and the mean/std the trainer normalises with.
  Offline and not cached, they fail with a MedscopeError naming the local-file alternative.
- ``apply_freeze(model, spec) -> FreezeReport``; ``unfreeze(model) -> None``.
- ``set_frozen_bn_eval(model) -> int`` (number of BatchNorm layers put in eval mode).
- ``param_groups(model, lr, head_lr_mult=1.0, weight_decay=None) -> list[dict]`` ("backbone"
  and "head" groups, each split into decay / no-decay when ``weight_decay`` is given).
- ``adapt_first_conv(weight, in_chans) -> Tensor`` (RGB kernels summed for 1 channel).
- ``head_param_names(model)``, ``stage_param_names(model)``: what the freeze specs act on.

"Frozen" is just ``requires_grad=False``, so the state lives in the model itself: no registry of
frozen modules to keep in sync, and ``unfreeze`` is trivially complete.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from medscope.core.checkpoint import CheckpointMeta, read_meta
from medscope.errors import MedscopeError

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "module")
_STRIP_PREFIXES = ("module.", "_orig_mod.", "model.")
_SHOW = 5  # how many offending keys an error message lists


@dataclass
class LoadReport:
    source: str
    loaded: int = 0
    dropped: list[str] = field(default_factory=list)  # 'key (shape) -> (model shape)'
    adapted: list[str] = field(default_factory=list)  # first-conv keys adapted to in_chans


@dataclass
class FreezeReport:
    spec: str
    frozen: int  # parameter tensors with requires_grad=False
    trainable: int


# --------------------------------------------------------------------------- loading


def load_pretrained(model: nn.Module, source: str | os.PathLike, in_chans: int = 3,
                    architecture: str | None = None) -> LoadReport:
    """Load ``source`` into ``model`` in place (see module docstring for accepted sources).

    Classifier weights whose shape does not fit (other num_classes, head_pool) are dropped and
    the model keeps its freshly initialised head; a 3-channel first conv is adapted to
    ``in_chans``. Any other missing, unexpected or mis-shaped key is a MedscopeError.

    Why not ``timm.create_model(..., pretrained_cfg_overlay=dict(file=path))``: it only serves
    timm's registered models (not simple_cnn, lenet5, vit_seed or the plain ResNets), drops the
    head only when the *config's* class count differs (not when head_pool changes its shape),
    cannot read a medscope checkpoint's ``model.``/``module.`` prefixes, and reports a mismatch
    as a many-line RuntimeError. The pieces timm does well are used here: its per-model
    ``checkpoint_filter_fn`` (``_apply_timm_filter``) and ``adapt_input_conv``; file reading is
    safetensors or ``torch.load(weights_only=True)``, as in timm's own ``load_state_dict``.
    """
    path = _resolve_source(str(source), model, architecture)
    state = read_state_dict(path)
    state = _strip_prefixes(state, model)
    state = _apply_timm_filter(state, model)
    state = _backbone_of_pretraining(state, model, source)
    report = LoadReport(source=str(source))
    target = model.state_dict()

    first = _first_conv_weight_key(model)
    if first and first in state and first in target:
        have, want = state[first], target[first]
        if have.ndim == 4 and have.shape[1] != want.shape[1]:
            state[first] = adapt_first_conv(have, want.shape[1])
            report.adapted.append(first)
            log.info("adapted %s from %d to %d input channels", first, have.shape[1],
                     want.shape[1])

    head = tuple(head_module_names(model))
    for key in list(state):
        if _under(key, head) and (key not in target or state[key].shape != target[key].shape):
            want = tuple(target[key].shape) if key in target else "none"
            report.dropped.append(f"{key} {tuple(state.pop(key).shape)} -> {want}")
    if report.dropped:
        log.warning("classifier weights do not fit the model (%s): dropped, the new head is "
                    "freshly initialised", ", ".join(report.dropped))

    missing = [k for k in target if k not in state
               and not _under(k, head) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in state if k in target and state[k].shape != target[k].shape]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected),
                       ("wrong shape", mismatched)):
        if keys:
            more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
            problems.append(f"{len(keys)} {what}: {', '.join(keys[:_SHOW])}{more}")
    if problems:
        arch = _architecture(model)
        raise MedscopeError(f"weights {source} do not fit {arch}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    report.loaded = len(state)
    return report


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a .safetensors or a (weights_only) torch file."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MedscopeError(f"cannot read weights {path}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}") from e
    # Training checkpoints wrap the weights: {"state_dict": ...}, {"model": ...}, ...
    for _ in range(3):
        if isinstance(obj, dict) and not _is_flat(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not _is_flat(obj):
        raise MedscopeError(f"{path} is not a state dict of tensors (a whole pickled model "
                            "cannot be loaded safely; save model.state_dict() instead)")
    return dict(obj)


def _is_flat(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefixes(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    # DataParallel ("module."), torch.compile ("_orig_mod.") and Lightning ("model.") wrappers.
    own = set(model.state_dict())
    for prefix in _STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in state) and not all(k.startswith(prefix) for k in own):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _apply_timm_filter(state: dict[str, torch.Tensor], model: nn.Module) -> dict:
    """Let timm convert foreign layouts (torchvision VGG/DenseNet, ViT position embeddings at
    another size...) with the filter its model module defines, when the keys do not fit as-is.

    torchvision and timm ResNets need nothing here: both use conv1/bn1/layer1..4/fc with the
    same shapes, so their checkpoints load directly.
    """
    target = model.state_dict()
    fits = set(state) <= set(target) and all(
        state[k].shape == target[k].shape for k in state)
    if fits:
        return state
    module = sys.modules.get(type(model).__module__)
    for fn_name in ("checkpoint_filter_fn", "_filter_fn", "_filter_torchvision_pretrained"):
        fn = getattr(module, fn_name, None)
        if fn is None:
            continue
        try:
            takes_model = len(inspect.signature(fn).parameters) >= 2
            out = fn(state, model) if takes_model else fn(state)
        except Exception as e:  # noqa: BLE001 - fall back to reporting the raw mismatch
            log.debug("timm filter %s failed: %s", fn_name, e)
            return state
        return dict(out)
    return state


def check_weights_source(source: str, architecture: str | None = None) -> Path | None:
    """The local weights file ``source`` names (a run directory: its best checkpoint), None for
    a hub id; an error when it names a file that is not there, a medscope checkpoint of another
    architecture than ``architecture``, or (offline) a hub repo the Hugging Face cache does not
    hold, so that a training fails before its data is prepared. Cheap: nothing is read or
    downloaded but a checkpoint's JSON."""
    found = medscope_checkpoint(source)
    if found is not None:
        weights, meta = found
        if architecture is not None and meta.model != architecture:
            what = "pretrained (self-supervised)" if is_pretraining(meta) else "trained"
            raise MedscopeError(f"--pretrained {source}: {what} as {meta.model}, but this run's "
                                f"model is {architecture}; use --model {meta.model}, or "
                                f"pretrain {architecture}")
        return weights
    path = Path(source).expanduser()
    if path.is_file():
        return path
    looks_local = (path.suffix in WEIGHT_SUFFIXES or source.startswith((".", "/", "~"))
                   or os.sep in source.rstrip(os.sep) and source.count("/") > 1)
    if looks_local and not source.startswith("hf-hub:"):
        raise MedscopeError(f"weights file not found: {source}")
    if _hub_offline() and source not in _DEFAULT_SOURCES:
        repo, _ = _hub_repo(source, None)
        cache = hub_cache_dir()
        if not (cache / f"models--{repo.replace('/', '--')}" / "snapshots").is_dir():
            raise MedscopeError(_not_cached(source, cache, "HF_HUB_OFFLINE is set"))
    return None


def _resolve_source(source: str, model: nn.Module, architecture: str | None) -> Path:
    return check_weights_source(source, architecture) or _hub_weights(source, model)


def medscope_checkpoint(source: str | os.PathLike) -> tuple[Path, CheckpointMeta] | None:
    """(weights file, metadata) when ``source`` is a medscope run directory (its best
    checkpoint) or one half of a checkpoint pair; None for any other source."""
    path = Path(source).expanduser()
    if path.is_dir():
        best = path / "checkpoints" / "best.safetensors"
        if not best.is_file():
            raise MedscopeError(f"{path}: a folder without checkpoints/best.safetensors; "
                                "--pretrained takes a run directory, a checkpoint or a "
                                "weights file")
        path = best
    if path.suffix not in (".safetensors", ".json"):
        return None
    weights, meta_file = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not (weights.is_file() and meta_file.is_file()):
        return None
    try:
        return weights, read_meta(meta_file)
    except MedscopeError:  # a JSON beside that is not a medscope checkpoint's
        return None


def is_pretraining(meta: CheckpointMeta) -> bool:
    """Whether a checkpoint holds a self-supervised backbone (``medscope pretrain``)."""
    return isinstance(getattr(meta, "pretraining", None), dict)


def _backbone_of_pretraining(state: dict[str, torch.Tensor], model: nn.Module,
                             source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A self-supervised run's weights without its projection head (the classifier starts
    new), its input statistics adopted as the model's (the trainer normalises with them);
    any other source's ``state`` unchanged."""
    found = medscope_checkpoint(source)
    if found is None or not is_pretraining(found[1]):
        return state
    meta, head = found[1], tuple(head_module_names(model))
    chans = model.state_dict()[_first_conv_weight_key(model)].shape[1]
    mean, std = meta.mean, meta.std
    if len(mean) != chans:  # grey fine-tuning of a colour backbone, or the reverse
        mean, std = [sum(mean) / len(mean)] * chans, [sum(std) / len(std)] * chans
    model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}),
                            "mean": tuple(mean), "std": tuple(std)}
    info = meta.pretraining
    log.info("self-supervised backbone from %s (%s, %s epochs on %s images of %s px); the "
             "projection head is left out, the classifier starts new", source,
             info.get("objective"), info.get("epochs"), info.get("images"), meta.img_size)
    return {k: v for k, v in state.items() if not _under(k, head)}


# --------------------------------------------------------------------------- hub weights

HUB_SAFE_WEIGHTS = "model.safetensors"
HUB_WEIGHTS = "pytorch_model.bin"
# What a hub config.json may set for training (the rest: architecture, classifier, first_conv
# describe timm's model, and medscope's own model keeps its own).
_ADOPTED = ("mean", "std", "input_size", "interpolation", "crop_pct", "hf_hub_filename")
_DEFAULT_SOURCES = ("imagenet", "default", "timm")  # the model's own default hub weights


def _hub_weights(source: str, model: nn.Module) -> Path:
    """The weights file of a hub id, as timm's ``load_pretrained`` finds it: the repo's
    ``config.json`` (its ``pretrained_cfg``) names the file (``hf_hub_filename``) and the
    input statistics, which replace the model's defaults in ``model.pretrained_cfg`` (the
    trainer normalises with them). Files already in the Hugging Face cache are used without
    asking the hub, so cached weights work offline (``HF_HUB_OFFLINE=1``)."""
    repo, revision = _hub_repo(source, model)
    hub_cfg = _hub_config(repo, revision, source)
    filename = hub_cfg.get("hf_hub_filename") or (
        (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_filename")
        if source in _DEFAULT_SOURCES else None)
    path = _hub_file(repo, revision, _weight_candidates(filename), source)
    if hub_cfg:
        adopted = {k: hub_cfg[k] for k in _ADOPTED if k in hub_cfg}
        model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **adopted}
        log.info("pretrained config of %s: mean %s, std %s, input size %s", source,
                 adopted.get("mean"), adopted.get("std"), adopted.get("input_size"))
    return path


def _hub_repo(source: str, model: nn.Module | None) -> tuple[str, str | None]:
    """(repo id, revision or None) of a hub source; ``org/repo@rev`` names a revision."""
    if source.startswith(("hf-hub:", "hf_hub:")):
        repo = source.split(":", 1)[1]
    elif source in _DEFAULT_SOURCES:
        repo = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id")
        if not repo:
            raise MedscopeError(f"{_architecture(model)} has no default pretrained weights; "
                                "pass a local file: --pretrained path/to/weights.safetensors")
    elif "/" in source:
        repo = source  # org/repo
    else:
        repo = f"timm/{source}"  # a timm tag such as resnet18.a1_in1k
    name, _, revision = repo.partition("@")
    return name, revision or None


def _weight_candidates(filename: str | None) -> list[str]:
    # As timm's _get_safe_alternatives: a .safetensors twin before any pickle-format file.
    if not filename or filename == HUB_WEIGHTS:
        return [HUB_SAFE_WEIGHTS, HUB_WEIGHTS]
    if filename.endswith(".bin"):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def _hub_config(repo: str, revision: str | None, source: str) -> dict[str, Any]:
    """The repo's pretrained config (timm's config.json: ``pretrained_cfg``, or one flat
    dict in older repos); {} when the repo has none or it is not at hand offline."""
    try:
        path = _hub_file(repo, revision, ["config.json"], source, required=False)
    except MedscopeError:  # offline and not cached: the weights decide whether that is fatal
        return {}
    if path is None:
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MedscopeError(f"{path}: not a readable hub config.json ({exc})") from None
    cfg = raw.get("pretrained_cfg", raw) if isinstance(raw, dict) else None
    return cfg if isinstance(cfg, dict) else {}


def _hub_file(repo: str, revision: str | None, candidates: list[str], source: str,
              required: bool = True) -> Path | None:
    """The first of ``candidates`` in the repo: from the cache if it holds it, else
    downloaded. Offline (HF_HUB_OFFLINE or no route to the hub) a missing file is an error."""
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir()
    for name in candidates:
        cached = try_to_load_from_cache(repo, name, cache_dir=str(cache), revision=revision)
        if isinstance(cached, str):
            return Path(cached)
    why = ("HF_HUB_OFFLINE is set" if _hub_offline()
           else None if _online("huggingface.co") else "huggingface.co cannot be reached")
    if why:
        raise MedscopeError(_not_cached(source, cache, why))
    return _download(repo, revision, candidates, source, cache, required)


def _download(repo: str, revision: str | None, candidates: list[str], source: str,
              cache: Path, required: bool) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError

    for name in candidates:
        try:
            return Path(hf_hub_download(repo, name, revision=revision, cache_dir=str(cache)))
        except EntryNotFoundError:
            continue
        except Exception as e:  # noqa: BLE001 - unknown repo, no access, network: one line
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise MedscopeError(f"cannot download weights {source!r} from the Hugging Face "
                                f"hub ({type(e).__name__}: {first})") from e
    if required:
        raise MedscopeError(f"weights {source!r}: the hub repo {repo} holds none of "
                            f"{', '.join(candidates)}")
    return None


def _not_cached(source: str, cache: Path, why: str) -> str:
    return (f"weights {source!r} are not in the Hugging Face cache {cache} and {why}; download "
            "them once online, or pass a local file: --pretrained path/to/weights.safetensors")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at each call (huggingface_hub
    reads it once, at import): HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache",
                                              "huggingface")
    return Path(home).expanduser() / "hub"


def _hub_offline() -> bool:
    # huggingface_hub's own reading of the flag (constants._is_true).
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _online(host: str) -> bool:
    # Without this check huggingface_hub retries for ~25 s before giving up.
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True  # name resolution happens at the proxy
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _architecture(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


# --------------------------------------------------------------------------- grayscale


def adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB kernels -> ``in_chans`` kernels. For 1 channel the three kernels are summed, so a
    grey image gives exactly the response the RGB network gives to that image replicated
    (the fungi study's grayscale ResNet). Other counts use timm's repeat-and-rescale."""
    from timm.models import adapt_input_conv

    dtype = weight.dtype
    return adapt_input_conv(in_chans, weight).to(dtype)


def _first_conv_weight_key(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv")
    if isinstance(first, (tuple, list)):
        first = first[0]
    if first:
        return f"{first}.weight"
    for name, module in model.named_modules():  # no cfg: the first conv registered
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    return None


# --------------------------------------------------------------------------- freezing


def head_module_names(model: nn.Module) -> list[str]:
    """Names of the classifier module(s): ``pretrained_cfg['classifier']`` (timm and our own
    models), else whatever ``get_classifier()`` returns."""
    modules = dict(model.named_modules())
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    names = [names] if isinstance(names, str) else list(names)
    names = [n for n in names if n in modules]
    if not names and hasattr(model, "get_classifier"):
        clf = model.get_classifier()
        names = [n for n, m in modules.items() if m is clf and n]
    if not names:
        raise MedscopeError(f"cannot tell the classifier of {_architecture(model)}")
    return names


def head_param_names(model: nn.Module) -> list[str]:
    head = tuple(head_module_names(model))
    return [n for n, _ in model.named_parameters() if _under(n, head)]


def stage_param_names(model: nn.Module) -> list[list[str]]:
    """Parameter names per stage, in order. Stages are timm's ``feature_info`` entries (for
    ResNets: stem conv1/bn1, layer1..layer4; EfficientNet: stem+blocks.0, blocks.1, 2, 3-4,
    5-6; ViT: one per block, the patch/position embeddings with the first). Stage k holds every
    parameter registered after stage k-1's module and up to the end of stage k's module;
    what comes after the last stage (final norm, pre-logits, head) belongs to no stage.
    """
    info = getattr(model, "feature_info", None)
    if hasattr(info, "get_dicts"):
        info = info.get_dicts()
    if not info:
        raise MedscopeError(f"{_architecture(model)} does not define stages; "
                            "use --freeze backbone instead")
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    ends = []
    for entry in info:
        root = entry["module"]
        ends.append(max(i for n, i in order.items() if n == root or n.startswith(root + ".")))
    stages: list[list[str]] = [[] for _ in ends]
    for pname, _ in model.named_parameters():
        owner = pname.rsplit(".", 1)[0] if "." in pname else ""
        pos = order[owner]
        k = next((k for k, end in enumerate(ends) if pos <= end), None)
        if k is not None:
            stages[k].append(pname)
    return stages


def parse_freeze(spec: str | None) -> tuple[str, int]:
    """'none' | 'backbone' | 'stages:N' -> (kind, N)."""
    spec = (spec or "none").strip().lower()
    if spec in ("none", "backbone"):
        return spec, 0
    if spec.startswith("stages:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            n = -1
        if n >= 1:
            return "stages", n
    raise MedscopeError(f"--freeze must be none, backbone or stages:N (N >= 1), got {spec!r}")


def apply_freeze(model: nn.Module, spec: str | None) -> FreezeReport:
    """Set ``requires_grad`` per ``spec`` and put the frozen BatchNorm layers in eval mode.

    ``none``: everything trains. ``backbone``: only the classifier trains. ``stages:N``: the
    first N stages (see :func:`stage_param_names`) are frozen, the rest trains.

    Why not ``timm.utils.freeze``: to freeze BatchNorm statistics it swaps the layers for
    ``FrozenBatchNorm2d`` (new modules, parameters turned into buffers), so the optimizer built
    before ``unfreeze_at``, DDP's parameter list and the checkpoint's keys would all go stale;
    and it needs module names, while stages here come from ``feature_info``, which medscope's
    own models define too (timm's ``group_matcher`` they do not). ``requires_grad`` plus
    eval-mode BatchNorm freezes the same weights and statistics and is undone in place.
    """
    kind, n = parse_freeze(spec)
    frozen: set[str] = set()
    if kind == "backbone":
        head = set(head_param_names(model))
        frozen = {name for name, _ in model.named_parameters() if name not in head}
    elif kind == "stages":
        stages = stage_param_names(model)
        if n > len(stages):
            raise MedscopeError(f"{_architecture(model)} has {len(stages)} stages; "
                                f"cannot freeze {n}")
        frozen = {name for stage in stages[:n] for name in stage}
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    set_frozen_bn_eval(model)
    total = sum(1 for _ in model.parameters())
    return FreezeReport(spec=spec or "none", frozen=len(frozen), trainable=total - len(frozen))


def unfreeze(model: nn.Module) -> None:
    """Second phase of two-phase fine-tuning: everything trains again (call model.train()
    afterwards so the formerly frozen BatchNorm layers update their statistics again)."""
    for p in model.parameters():
        p.requires_grad_(True)


def set_frozen_bn_eval(model: nn.Module) -> int:
    """Put every BatchNorm whose affine parameters are all frozen in eval mode, so a frozen
    stage also keeps its running statistics. Call after every ``model.train()``."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
                count += 1
    return count


def param_groups(model: nn.Module, lr: float, head_lr_mult: float = 1.0,
                 weight_decay: float | None = None) -> list[dict]:
    """Optimizer groups: ``backbone`` at ``lr`` and ``head`` at ``lr * head_lr_mult``.

    With ``weight_decay``, each is split once more: biases and norm weights (1-D) go to
    ``backbone_no_decay`` / ``head_no_decay`` with no decay (the timm convention), the rest get
    ``weight_decay``. Frozen parameters are included on purpose: PyTorch optimizers skip
    parameters whose grad is None, so they stay untouched while frozen, and ``unfreeze`` needs
    no new optimizer.

    Why not ``timm.optim.param_groups_weight_decay``: it applies the same decay rule (ndim <= 1
    or bias, as here) but over the whole model, with no head/backbone split, so it cannot give
    the head its own learning rate; its layer-decay variant needs a timm ``group_matcher`` that
    medscope's own models (simple_cnn, lenet5, plain ResNets) do not have.
    """
    head = set(head_param_names(model))
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        part = "head" if name in head else "backbone"
        no_decay = weight_decay is not None and (param.ndim <= 1 or name.endswith(".bias"))
        key = f"{part}_no_decay" if no_decay else part
        if key not in groups:
            groups[key] = {"name": key, "params": [],
                           "lr": lr * (head_lr_mult if part == "head" else 1.0)}
            if weight_decay is not None:
                groups[key]["weight_decay"] = 0.0 if no_decay else weight_decay
        groups[key]["params"].append(param)
    order = ("backbone", "backbone_no_decay", "head", "head_no_decay")
    return [groups[k] for k in order if k in groups]


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)
