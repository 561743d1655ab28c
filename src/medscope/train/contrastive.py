"""SimCLR's objective (Chen et al. 2020, NT-Xent): each image's two augmented views must find
each other among all 2N views of the batch, by cosine similarity over a temperature.

Why SimCLR for a CNN on a 2-core CPU: one network and one forward per view, no momentum encoder
or predictor to keep (BYOL, MoCo: a second copy of the weights, and the state a resume must
restore), no multi-crop (DINO: many crops per image, each a forward), and a CNN has no patch
tokens to mask (masked image modelling suits ViTs). Its weakness is that it wants many
negatives; at 64 px a batch of 256 (512 views) fits a CPU step comfortably.

Why not lightly's ``NTXentLoss``: installing lightly brings pytorch-lightning, hydra-core,
omegaconf and torchmetrics for a loss of ten lines; the formula below is the paper's, and
lightly's own has the same value (it also masks the diagonal and uses cross-entropy).

Under torchrun each rank's loss uses its own batch's negatives (no all-gather of the
embeddings): the global batch is then world_size batches of negatives, not one large one; DDP
averages the gradients as for any loss.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _logits_and_targets(embeddings: torch.Tensor, temperature: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities of the 2N views over ``temperature`` (a view against itself masked
    out), and the row of each view's partner: views i and N + i come from one image (the
    engine stacks the copies of a batch that way)."""
    z = F.normalize(embeddings.float(), dim=1)
    n2 = len(z)
    if n2 % 2:
        raise ValueError(f"NT-Xent needs two views per image, got {n2} embeddings")
    sim = z @ z.T / temperature
    self_mask = torch.eye(n2, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    partner = (torch.arange(n2, device=z.device) + n2 // 2) % n2
    return sim, partner


class NTXentLoss(nn.Module):
    """``loss(embeddings, _targets)``: the mean NT-Xent over the 2N views (labels unused)."""

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor, targets: torch.Tensor | None = None
                ) -> torch.Tensor:
        sim, partner = _logits_and_targets(embeddings, self.temperature)
        return F.cross_entropy(sim, partner)


def partner_hits(embeddings: torch.Tensor, targets: torch.Tensor | None = None) -> int:
    """How many views have their partner as nearest neighbour among the batch's other views:
    the pretext task's accuracy (the history's train_accuracy during pretraining)."""
    with torch.no_grad():
        sim, partner = _logits_and_targets(embeddings, 1.0)
        return int((sim.argmax(1) == partner).sum().item())
