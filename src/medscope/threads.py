"""How torch's OpenMP threads wait, for processes that share the machine.

PyTorch's CPU wheels use GNU OpenMP, whose threads spin at every barrier before sleeping. That
is the fastest choice for a job alone on its cores, and the slowest when another process wants
them: a descheduled thread leaves its partner spinning away a time slice at every operator.
Measured on a 2-core machine (``benchmarks/omp_wait.py``, results/omp_wait.txt): with a
training run beside it, resnet18 batch-1 inference at 224 px took 150-637 ms at p50 with the
default and 63 ms with passive waiting (quiet machine: 41 and 49 ms); two training runs side by
side made 12 img/s each with the default and 19-20 with passive, but passive cost a quiet
training run about 8 % (36.3 against 33.3 img/s). So only ``medscope serve``, a long-lived
process that waits for requests beside whatever else the lab machine runs, asks for it; a user
running jobs side by side sets ``OMP_WAIT_POLICY=PASSIVE`` for them.

This module must not import torch: libgomp reads its environment once, when torch is loaded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def prefer_passive_wait(environ: MutableMapping[str, str] = os.environ,
                        modules: Mapping[str, object] = sys.modules) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a wait policy or torch is already
    loaded (then the setting could no longer take effect). Returns whether it was set; child
    processes (DataLoader workers, torchrun) inherit it."""
    if "torch" in modules or any(name in environ for name in USER_SETTINGS):
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
