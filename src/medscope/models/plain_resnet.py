"""Plain (no-shortcut) ResNets.

``plain18``/``plain34`` are timm's ResNet-18/34 with every skip connection removed, the
"plain vs residual" comparison of He et al. 2016: same stem, same stage layout ([2,2,2,2] /
[3,4,6,3] basic blocks), same stride-2 first conv per stage, but no identity shortcut and no
1x1 projection shortcut (so 173,824 fewer parameters than resnet18/34).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models.resnet import BasicBlock, ResNet

from medscope.models.registry import register_model


class PlainBasicBlock(BasicBlock):
    """BasicBlock without its shortcut: x -> conv-bn-relu -> conv-bn -> relu."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, **kwargs: Any) -> None:
        # timm's stage builder makes a projection for every stage change; a plain net has none.
        super().__init__(inplanes, planes, stride, downsample=None, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.aa(self.drop_block(self.bn1(self.conv1(x)))))
        x = self.bn2(self.conv2(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        return self.act2(x)


def _plain_resnet(name: str, layers: tuple[int, ...], num_classes: int, in_chans: int,
                  img_size: int, **kwargs: Any) -> ResNet:
    # zero_init_last would zero every block's output: without a shortcut nothing flows through.
    model = ResNet(PlainBasicBlock, layers, num_classes=num_classes, in_chans=in_chans,
                   zero_init_last=False, **kwargs)
    model.pretrained_cfg = {"architecture": name, "classifier": "fc", "first_conv": "conv1",
                            "input_size": (in_chans, img_size, img_size)}
    model.default_cfg = model.pretrained_cfg
    return model


@register_model("plain18", default_size=224, min_size=32,
                description="ResNet-18 layout without skip connections (He et al. plain net)")
def plain18(num_classes: int, in_chans: int = 3, img_size: int = 224, **kw: Any) -> ResNet:
    return _plain_resnet("plain18", (2, 2, 2, 2), num_classes, in_chans, img_size, **kw)


@register_model("plain34", default_size=224, min_size=32,
                description="ResNet-34 layout without skip connections (He et al. plain net)")
def plain34(num_classes: int, in_chans: int = 3, img_size: int = 224, **kw: Any) -> ResNet:
    return _plain_resnet("plain34", (3, 4, 6, 3), num_classes, in_chans, img_size, **kw)
