"""Small classic CNNs defined exactly as the seed studies describe them."""

from __future__ import annotations

import torch
import torch.nn as nn

from medscope.models.registry import register_model


class SimpleCNN(nn.Module):
    """The fungi study's custom CNN: 3 x [Conv3x3 pad 1 -> BN -> ReLU -> MaxPool 2], 32/64/128
    filters, Flatten, FC 256 -> ReLU -> Dropout 0.5, FC num_classes.

    The flatten size depends on the input: 128 x (S/8)^2, i.e. 100,352 at 224 px.
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
        super().__init__()
        layers: list[nn.Module] = []
        chans = in_chans
        for width in widths:
            layers += [
                nn.Conv2d(chans, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            chans = width
        self.features = nn.Sequential(*layers)
        side = img_size // 2 ** len(widths)
        self.flatten_dim = chans * side * side
        self.num_classes = num_classes
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.flatten_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("simple_cnn", default_size=224, min_size=8,
                description="fungi study 3-block CNN (32/64/128, FC 256, dropout 0.5)")
def simple_cnn(num_classes: int, in_chans: int = 3, img_size: int = 224, **kw) -> SimpleCNN:
    return SimpleCNN(num_classes, in_chans=in_chans, img_size=img_size, **kw)
