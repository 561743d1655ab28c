"""``vit_seed``: the medical-ViT study's small Vision Transformer, built with timm's class.

Patch 8x8, embedding 128, depth 6, 16 heads (head dim 8), MLP ratio 4, dropout 0.3 (after the
position embedding, in the attention/MLP projections and before the head), attention dropout
0.3. Any image size divisible by 8 works; the position embedding is sized for it at creation.
"""

from __future__ import annotations

from typing import Any

from timm.models.vision_transformer import VisionTransformer

from medscope.errors import MedscopeError
from medscope.models.registry import register_model

PATCH = 8


@register_model("vit_seed", default_size=224, min_size=PATCH,
                description="medical-ViT study: patch 8, dim 128, depth 6, 16 heads, dropout 0.3")
def vit_seed(num_classes: int, in_chans: int = 3, img_size: int = 224,
             **kw: Any) -> VisionTransformer:
    if img_size % PATCH:
        raise MedscopeError(f"vit_seed needs an image size divisible by {PATCH}, got {img_size}")
    args: dict[str, Any] = dict(
        embed_dim=128, depth=6, num_heads=16, mlp_ratio=4.0,
        drop_rate=0.3, pos_drop_rate=0.3, proj_drop_rate=0.3, attn_drop_rate=0.3,
    )
    args.update(kw)
    model = VisionTransformer(img_size=img_size, patch_size=PATCH, in_chans=in_chans,
                              num_classes=num_classes, **args)
    model.pretrained_cfg = {"architecture": "vit_seed", "classifier": "head",
                            "first_conv": "patch_embed.proj",
                            "input_size": (in_chans, img_size, img_size)}
    model.default_cfg = model.pretrained_cfg
    return model
