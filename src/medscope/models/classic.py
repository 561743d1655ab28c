"""Small classic CNNs defined exactly as the seed studies describe them.

Each model exposes the bits of timm's model interface that medscope relies on for transfer
learning: ``get_classifier()`` (the final Linear), ``pretrained_cfg`` (``classifier`` and
``first_conv`` module names) and ``feature_info`` (the stages that ``--freeze stages:N`` counts).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from medscope.models.registry import register_model


class _OwnModel(nn.Module):
    """timm-compatible surface for our own definitions (see module docstring)."""

    classifier_name = "head.4"
    first_conv_name = "features.0"

    def __init__(self, name: str, num_classes: int, in_chans: int, img_size: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.pretrained_cfg: dict[str, Any] = {
            "architecture": name,
            "classifier": self.classifier_name,
            "first_conv": self.first_conv_name,
            "input_size": (in_chans, img_size, img_size),
        }
        self.feature_info: list[dict[str, Any]] = []

    @property
    def default_cfg(self) -> dict[str, Any]:
        return self.pretrained_cfg

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)


class SimpleCNN(_OwnModel):
    """The fungi study's custom CNN: 3 x [Conv3x3 pad 1 -> BN -> ReLU -> MaxPool 2], 32/64/128
    filters, Flatten, FC 256 -> ReLU -> Dropout 0.5, FC num_classes.

    The flatten size depends on the input: 128 x (S/8)^2, i.e. 100,352 at 224 px.
    Stages for freezing: the three conv blocks.
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        img_size: int = 224,
        widths: tuple[int, ...] = (32, 64, 128),
        hidden: int = 256,
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__("simple_cnn", num_classes, in_chans, img_size)
        layers: list[nn.Module] = []
        chans = in_chans
        for i, width in enumerate(widths):
            layers += [
                nn.Conv2d(chans, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            chans = width
            self.feature_info.append(
                {"module": f"features.{4 * i + 3}", "num_chs": width, "reduction": 2 ** (i + 1)}
            )
        self.features = nn.Sequential(*layers)
        side = img_size // 2 ** len(widths)
        self.flatten_dim = chans * side * side
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.flatten_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class LeNet5(_OwnModel):
    """LeCun et al. 1998: C1 6@5x5 -> avg-pool 2 -> C3 16@5x5 -> avg-pool 2 -> C5 120@5x5 ->
    F6 84 -> out, tanh activations, 32x32 input (61,706 parameters for 1 channel, 10 classes).

    C3 is fully connected to S2 (the modern convention; the paper's sparse C3 table saves ~1k
    weights). For inputs larger than 32 px an adaptive average pool brings S4 to the 5x5 that C5
    expects, so at 32 px the network is exactly LeNet-5. Stages: C1+S2, C3+S4, C5.
    """

    classifier_name = "classifier.3"

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int = 32) -> None:
        super().__init__("lenet5", num_classes, in_chans, img_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5),  # C1
            nn.Tanh(),
            nn.AvgPool2d(2),  # S2
            nn.Conv2d(6, 16, 5),  # C3
            nn.Tanh(),
            nn.AvgPool2d(2),  # S4
            nn.AdaptiveAvgPool2d(5),  # identity at 32 px
            nn.Conv2d(16, 120, 5),  # C5
            nn.Tanh(),
        )
        self.feature_info = [
            {"module": "features.2", "num_chs": 6, "reduction": 2},
            {"module": "features.6", "num_chs": 16, "reduction": 4},
            {"module": "features.8", "num_chs": 120, "reduction": 32},
        ]
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, num_classes)  # F6, out
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class AlexNet(_OwnModel):
    """Krizhevsky et al. 2012 (single-tower, no LRN): 96@11x11/4 -> max-pool 3/2 -> 256@5x5 ->
    max-pool -> 384@3x3 -> 384@3x3 -> 256@3x3 -> max-pool -> FC 4096 -> FC 4096 -> out, ReLU,
    dropout 0.5 before the two hidden FCs; 227 px input (62,378,344 parameters for 1000 classes).

    An adaptive average pool to 6x6 (identity at 227 px) lets it take other sizes >= 67 px.
    Stages: the three max-pooled blocks.
    """

    classifier_name = "classifier.7"

    def __init__(
        self, num_classes: int, in_chans: int = 3, img_size: int = 227, drop_rate: float = 0.5
    ) -> None:
        super().__init__("alexnet", num_classes, in_chans, img_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 96, 11, stride=4),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(96, 256, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.AdaptiveAvgPool2d(6),
        )
        self.feature_info = [
            {"module": "features.2", "num_chs": 96, "reduction": 8},
            {"module": "features.5", "num_chs": 256, "reduction": 16},
            {"module": "features.13", "num_chs": 256, "reduction": 32},
        ]
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(drop_rate),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("simple_cnn", default_size=224, min_size=8,
                description="fungi study 3-block CNN (32/64/128, FC 256, dropout 0.5)")
def simple_cnn(num_classes: int, in_chans: int = 3, img_size: int = 224, **kw) -> SimpleCNN:
    return SimpleCNN(num_classes, in_chans=in_chans, img_size=img_size, **kw)


@register_model("lenet5", default_size=32, min_size=32,
                description="LeNet-5: C1 6@5x5, C3 16@5x5, C5 120, F6 84, tanh, avg-pool")
def lenet5(num_classes: int, in_chans: int = 3, img_size: int = 32, **kw) -> LeNet5:
    return LeNet5(num_classes, in_chans=in_chans, img_size=img_size, **kw)


@register_model("alexnet", default_size=227, min_size=67,
                description="AlexNet (single tower, no LRN): 5 conv + FC 4096-4096")
def alexnet(num_classes: int, in_chans: int = 3, img_size: int = 227, **kw) -> AlexNet:
    return AlexNet(num_classes, in_chans=in_chans, img_size=img_size, **kw)
