"""Data-parallel training on PyTorch's own engine: ``torchrun`` starts one process per device
and sets RANK / LOCAL_RANK / WORLD_SIZE (and the rendezvous address); each process holds a
``DistContext``. Without those variables the context is a single-process no-op, so a normal run
takes exactly the code path it always did.

What is shared between ranks and how:
- training samples: ``DistributedSampler`` (or ``DistributedWeightedSampler`` for
  ``--balance sampler``), re-seeded every epoch through ``set_epoch``;
- gradients: ``DistributedDataParallel``;
- validation: each rank predicts a strided shard (``range(rank, n, world)``, no padding), the
  logits are gathered and put back in dataset order, so every image counts exactly once.

``medscope predict`` uses the same context to share its inputs out (``agree`` and
``gather_results``: small Python objects and user errors exchanged between ranks)."""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Sampler

from medscope.core.runtime import Runtime, epoch_seed
from medscope.errors import MedscopeError

log = logging.getLogger("medscope")
T = TypeVar("T")

# A rank that dies leaves the others blocked in a collective: after this long they fail too, and
# torchrun takes the job down. Generous, since rank 0 decodes the whole dataset while the others
# wait at the first barrier. $MEDSCOPE_DIST_TIMEOUT (seconds) overrides it.
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; the defaults are the single-process job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self._live():
            dist.barrier()

    def runtime_for(self, runtime: Runtime) -> Runtime:
        """One GPU per local rank: ``cuda`` (or any ``cuda:N``) becomes ``cuda:LOCAL_RANK``."""
        if not self.enabled or runtime.device.type != "cuda":
            return runtime
        device = torch.device("cuda", self.local_rank)
        if runtime.device.index not in (None, self.local_rank):
            log.warning("device %s ignored under torchrun: rank %d uses %s", runtime.device,
                        self.rank, device)
        return dataclasses.replace(runtime, device=device)

    def wrap_ddp(self, model: nn.Module) -> nn.Module:
        """``model`` (already on its device) in ``DistributedDataParallel``; unchanged alone."""
        if not self._live():
            return model
        device = next(model.parameters()).device
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def shard(self, n: int) -> range:
        """This rank's items of ``n``: strided, no padding, so the shards partition ``range(n)``."""
        return range(self.rank, n, self.world_size)

    def gather_shards(self, part: torch.Tensor) -> torch.Tensor:
        """The inverse of ``shard``: every rank's part (along dim 0) back in the original order,
        on every rank."""
        if not self._live():
            return part
        device = _collective_device(self.backend)
        sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([len(part)], device=device))
        counts = [int(s.item()) for s in sizes]
        longest = max(counts)
        padded = torch.zeros((longest, *part.shape[1:]), dtype=part.dtype, device=device)
        padded[:len(part)] = part.to(device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        out = torch.empty((sum(counts), *part.shape[1:]), dtype=part.dtype)
        for rank, (chunk, count) in enumerate(zip(parts, counts, strict=True)):
            out[rank::self.world_size] = chunk[:count].cpu()
        return out

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (every rank trains on an equal-sized shard)."""
        if not self._live():
            return values
        keys = sorted(values)
        device = _collective_device(self.backend)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist(), strict=True)}

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) everywhere: each rank updated its own
        on its own last batch, and the evaluated model must be the one rank 0 checkpoints."""
        if not self._live():
            return
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)

    def agree(self, work: Callable[[], T]) -> T:
        """``work()`` on this rank; a user error (``MedscopeError``) on any rank is raised on
        every rank once all have finished their part, so no rank waits in a later collective
        for a rank that gave up. Every rank must call it, in the same order."""
        return self._exchange(work, share=False)[self.rank]

    def gather_results(self, work: Callable[[], T]) -> list[T]:
        """``work()`` on this rank, and every rank's result (picklable, small) in rank order
        on every rank; errors as ``agree``. Alone: ``[work()]``."""
        return self._exchange(work, share=True)

    def _exchange(self, work: Callable[[], Any], share: bool) -> list[Any]:
        if not self._live():
            return [work()]
        result, error = None, None
        try:
            result = work()
        except MedscopeError as exc:
            error = exc
        parts: list[Any] = [None] * self.world_size
        mine = (result if share else None, None if error is None else str(error))
        dist.all_gather_object(parts, mine)
        failed = [message for _, message in parts if message is not None]
        if failed:
            # The first failing rank's error, raised everywhere; printed by rank 0 alone.
            raised = error if error is not None and str(error) == failed[0] \
                else MedscopeError(failed[0])
            raised.quiet = not self.is_main
            raise raised
        return [result if rank == self.rank else part
                for rank, (part, _) in enumerate(parts)]

    def limit_cpu_threads(self) -> None:
        """On CPU ranks, at most (cores / processes on this node) torch threads each, so that
        the ranks of one machine do not oversubscribe its cores (torchrun already sets
        ``OMP_NUM_THREADS=1`` unless the user chose a number)."""
        if not self.enabled or self.backend == "nccl":
            return
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        share = max(1, (os.cpu_count() or 1) // max(1, local))
        if torch.get_num_threads() > share:
            torch.set_num_threads(share)

    def destroy(self) -> None:
        if self._live():
            dist.destroy_process_group()

    def _live(self) -> bool:
        return self.enabled and dist.is_available() and dist.is_initialized()


def init_distributed(device: str = "auto", timeout_s: float | None = None) -> DistContext:
    """The context of this process: from the torchrun environment (joining the process group,
    NCCL on CUDA, gloo otherwise), or the single-process context when there is none."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise MedscopeError("WORLD_SIZE is set but RANK is missing or not a number: launch "
                            "distributed runs with torchrun") from None
    use_cuda = device != "cpu" and not device.startswith("mps") and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    timeout = timedelta(seconds=timeout_s or float(os.environ.get("MEDSCOPE_DIST_TIMEOUT",
                                                                   DEFAULT_TIMEOUT_S)))
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout)
        # Kept for the whole process (cv trains one run per fold), left cleanly at exit.
        atexit.register(_leave_group)
    return DistContext(rank, local_rank, world_size, backend)


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _collective_device(backend: str | None) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" \
        else torch.device("cpu")


class DistributedWeightedSampler(Sampler[int]):
    """``--balance sampler`` across ranks: every rank makes the same seeded weighted draw of the
    epoch (with replacement, as many samples as the training set, rounded up to a multiple of the
    world size) and keeps every ``world_size``-th draw, so the ranks' shares partition it."""

    def __init__(self, weights: Sequence[float] | np.ndarray, num_replicas: int, rank: int,
                 seed: int = 0) -> None:
        self.weights = torch.as_tensor(np.asarray(weights), dtype=torch.double)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = -(-len(self.weights) // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_draw(self) -> torch.Tensor:
        """The whole epoch's draw (all ranks)."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return torch.multinomial(self.weights, self.num_samples * self.num_replicas,
                                 replacement=True, generator=generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_draw()[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
