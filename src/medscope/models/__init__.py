"""Model zoo: ``create_model`` builds any registered or timm architecture.

Transfer learning (pretrained weights, freezing, discriminative LRs) lives in
:mod:`medscope.models.transfer`; its engine-facing functions are re-exported here.
"""

from medscope.models.profile import count_params, gmacs
from medscope.models.registry import (
    create_model,
    default_size,
    is_known_model,
    list_models,
    min_size,
    register_model,
)
from medscope.models.transfer import (
    apply_freeze,
    load_pretrained,
    param_groups,
    set_frozen_bn_eval,
    unfreeze,
)
from medscope.models.zoo import CLASSIC_TIMM, zoo_table

# The definition modules register their architectures (timm's @register_model pattern).
from medscope.models import classic, plain_resnet, vit  # noqa: E402, F401  isort: skip

__all__ = [
    "CLASSIC_TIMM",
    "apply_freeze",
    "count_params",
    "create_model",
    "default_size",
    "gmacs",
    "is_known_model",
    "list_models",
    "load_pretrained",
    "min_size",
    "param_groups",
    "register_model",
    "set_frozen_bn_eval",
    "unfreeze",
    "zoo_table",
]
