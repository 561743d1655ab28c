"""NT-Xent as the SimCLR paper writes it, the partner accuracy, and the engine's two views."""

from __future__ import annotations

import math

import pytest
import torch

from medscope.core.runtime import select_runtime
from medscope.data.transforms import Normalize
from medscope.train.contrastive import NTXentLoss, partner_hits
from medscope.train.engine import BatchOps


def _paper_nt_xent(z: torch.Tensor, tau: float) -> float:
    """l(i, j) = -log exp(sim(i, j)/tau) / sum_{k != i} exp(sim(i, k)/tau), averaged over all
    2N ordered positive pairs; views i and N + i are one image's."""
    z = torch.nn.functional.normalize(z, dim=1)
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        sims = [float(z[i] @ z[k]) / tau for k in range(n2) if k != i]
        total += -(float(z[i] @ z[j]) / tau - math.log(sum(math.exp(s) for s in sims)))
    return total / n2


def test_nt_xent_is_the_papers_formula():
    z = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    assert NTXentLoss(0.3)(z, None).item() == pytest.approx(_paper_nt_xent(z, 0.3), rel=1e-5)


def test_partner_accuracy_counts_views_whose_nearest_is_their_partner():
    base = torch.eye(4)
    assert partner_hits(torch.cat([base, base + 0.01])) == 8
    # Each view's partner is a copy of another image: none finds its own.
    assert partner_hits(torch.cat([base, base.roll(1, 0)])) == 0
    with pytest.raises(ValueError, match="two views"):
        NTXentLoss()(torch.randn(5, 3))


def test_views_stack_the_batch_and_each_copy_draws_its_own_augmentation():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    labels = torch.tensor([0, 1])
    seen = []

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        seen.append(x.clone())
        return x.flip(-1) if len(x) else x

    ops = BatchOps(augment, torch.Generator(), views=2)
    out, targets = ops(images, labels, Normalize([0, 0, 0], [1, 1, 1]),
                       select_runtime("cpu", "fp32", False))
    assert out.shape == (4, 3, 4, 4) and targets.tolist() == [0, 1, 0, 1]
    assert torch.equal(seen[0][:2], images) and torch.equal(seen[0][2:], images)
