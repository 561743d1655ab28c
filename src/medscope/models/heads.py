"""Head surgery: replacing a built model's pooling and classifier, for any registered or timm
model of the right family. Kept beside the registry (which applies them from the ``head_pool`` and
``flatten_head`` model options), not in the model definitions.

- ``head_pool``: a ResNet's global pool + fc become ``GridPool(n)`` + Linear(C * n^2): the
  histology study's 1x1/2x2/4x4/8x8 comparison.
- ``flatten_head``: a VGG's fc6/fc7 and pooled classifier become the Keras-style Flatten + Dense
  of the transfer-learning course.
- ``add_projection_head``: the classifier becomes SimCLR's projection MLP for self-supervised
  pretraining; it sits under the classifier's name, so ``load_pretrained`` leaves it out and a
  fine-tuned model gets a new classifier on the pretrained backbone.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from medscope.errors import MedscopeError
from medscope.models.transfer import head_module_names

HEAD_POOL_SIZES = (1, 2, 4, 8)
VGG_POOLS = 5  # VGG halves the feature map five times (floor), 224 -> 7


def apply_head_options(model: nn.Module, *, head_pool: int | None, flatten_head: bool,
                       img_size: int) -> nn.Module:
    """``model`` with the requested head surgery applied (unchanged when neither is asked)."""
    if head_pool is not None:
        set_head_pool(model, int(head_pool))
    if flatten_head:
        set_flatten_head(model, img_size)
    return model


class GridPool(nn.Module):
    """Adaptive average pool to n x n, flattened: the classifier sees C * n^2 features, keeping
    coarse spatial layout (the histology study's 1x1/2x2/4x4/8x8 comparison)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.pool = nn.AdaptiveAvgPool2d(n)
        self.pool_type = f"grid{n}"

    def feat_mult(self) -> int:
        return self.n * self.n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(x), 1)


def set_head_pool(model: nn.Module, n: int) -> nn.Module:
    """Replace a ResNet's global pool + fc with GridPool(n) + Linear(C * n^2, num_classes)."""
    from timm.models.resnet import ResNet

    if not isinstance(model, ResNet):
        raise MedscopeError(f"head_pool only applies to ResNet-family models, not "
                            f"{type(model).__name__}")
    if n not in HEAD_POOL_SIZES:
        raise MedscopeError(f"head_pool must be one of {HEAD_POOL_SIZES}, got {n}")
    model.global_pool = GridPool(n)
    model.fc = nn.Linear(model.num_features * n * n, model.num_classes)
    model.head_hidden_size = model.num_features * n * n
    return model


VGG_POOLS = 5  # VGG halves the feature map five times (floor), 224 -> 7


class FlattenHead(nn.Module):
    """Keras' ``include_top=False`` + ``Flatten()`` + ``Dense(num_classes)``: the last feature
    map flattened straight into one Linear (``fc``, the classifier freezing leaves trainable)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(x)
        return x if pre_logits else self.fc(x)


def set_flatten_head(model: nn.Module, img_size: int) -> nn.Module:
    """Replace a timm VGG's fc6/fc7 (its ConvMlp ``pre_logits``) and pooled classifier with a
    ``FlattenHead`` over the 512 x (S/32)^2 features: the transfer-learning course's Keras
    recipe (VGG16 base, Flatten, Dense softmax); 25,088 inputs at 224 px."""
    from timm.models.vgg import VGG

    if not isinstance(model, VGG):
        raise MedscopeError(f"flatten_head only applies to VGG models (vgg11 ... vgg19), not "
                            f"{type(model).__name__}")
    side = img_size
    for _ in range(VGG_POOLS):
        side //= 2
    features = model.num_features * side * side
    model.pre_logits = nn.Identity()
    model.head = FlattenHead(features, model.num_classes)
    model.head_hidden_size = features
    return model


def add_projection_head(model: nn.Module, out_dim: int, hidden: int) -> nn.Module:
    """Replace ``model``'s classifier (one Linear layer) by SimCLR's projection head,
    Linear -> BatchNorm -> ReLU -> Linear (Chen et al. 2020): the loss is taken on its output,
    the backbone's features before it are what transfers."""
    names = head_module_names(model)
    clf = model.get_submodule(names[0]) if len(names) == 1 else None
    if not isinstance(clf, nn.Linear):
        arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
        raise MedscopeError(f"{arch or type(model).__name__}: cannot pretrain it (its "
                            f"classifier {', '.join(names)} is not one Linear layer)")
    projector = nn.Sequential(nn.Linear(clf.in_features, hidden), nn.BatchNorm1d(hidden),
                              nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))
    model.set_submodule(names[0], projector)
    return model
