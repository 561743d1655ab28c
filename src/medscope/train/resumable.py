"""What lets training stop at any step and continue bit-identically: the position in the epoch,
every random number generator's state, a clock for mid-epoch checkpoints, and SIGINT/SIGTERM
turned into "finish this step, save, stop"."""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

log = logging.getLogger("medscope")


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived; the step in progress finished and ``last`` was written."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


@dataclass
class EpochPosition:
    """Where an epoch stands: ``epoch`` (0-based) has run ``step`` batches of its sample order
    (``skipped`` of them dropped for a NaN loss), with these running training totals."""

    epoch: int
    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    skipped: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> EpochPosition | None:
        return None if not raw else cls(**raw)

    def add(self, loss: float, correct: int, seen: int) -> None:
        self.loss_sum += loss * seen
        self.correct += correct
        self.seen += seen

    def metrics(self) -> dict[str, float]:
        return {"loss": self.loss_sum / max(self.seen, 1),
                "accuracy": self.correct / max(self.seen, 1)}


# ---------------------------------------------------------------- random number generators


def capture_rng(generators: Sequence[torch.Generator | None] = ()) -> dict[str, torch.Tensor]:
    """Every RNG training draws from, as tensors (a checkpoint stores them beside the weights):
    Python's, NumPy's global, torch's (CPU and CUDA) and the loader's and sampler's generators."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "rng.python": torch.tensor([version, *mt], dtype=torch.int64),
        "rng.python_gauss": torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64),
        "rng.numpy": torch.from_numpy(keys.astype(np.int64)),
        "rng.numpy_pos": torch.tensor([pos, has_gauss, cached], dtype=torch.float64),
        "rng.torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["rng.cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    for i, gen in enumerate(generators):
        if gen is not None:
            state[f"rng.generator{i}"] = gen.get_state()
    return state


def restore_rng(state: dict[str, torch.Tensor] | None,
                generators: Sequence[torch.Generator | None] = ()) -> None:
    """Put back what ``capture_rng`` took (the generators in the same order); None: nothing."""
    if not state:
        return
    if "rng.python" in state:
        py = state["rng.python"].tolist()
        has_gauss, gauss = state["rng.python_gauss"].tolist()
        random.setstate((int(py[0]), tuple(int(x) for x in py[1:]),
                         gauss if has_gauss else None))
    if "rng.numpy" in state:
        pos, has_gauss, cached = state["rng.numpy_pos"].tolist()
        np.random.set_state(("MT19937", state["rng.numpy"].numpy().astype(np.uint32), int(pos),
                             int(has_gauss), float(cached)))
    if "rng.torch" in state:
        torch.set_rng_state(state["rng.torch"].to(torch.uint8))
    if "rng.cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["rng.cuda"].to(torch.uint8)))
    for i, gen in enumerate(generators):
        if gen is not None and f"rng.generator{i}" in state:
            gen.set_state(state[f"rng.generator{i}"].to(torch.uint8))


# ---------------------------------------------------------------- when to checkpoint, when to stop


class CheckpointClock:
    """Due every ``minutes`` (None: never) since the last checkpoint."""

    def __init__(self, minutes: float | None) -> None:
        self.seconds = None if minutes is None else minutes * 60.0
        self.reset()

    def reset(self) -> None:
        self.since = time.monotonic()

    def due(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.since >= self.seconds


class StopRequest:
    """Set by SIGINT/SIGTERM while training; the loop checks it after every step. A second
    signal stops at once (KeyboardInterrupt), for a user who does not want to wait."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: finishing the current step and writing the last checkpoint "
                    "(send it again to stop at once)", signal.Signals(signum).name)

    def describe(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "signal"


@contextmanager
def stop_on_signals(enabled: bool = True) -> Iterator[StopRequest]:
    """SIGINT and SIGTERM set the yielded ``StopRequest`` instead of killing the process; the
    previous handlers come back afterwards. Only in the main thread (where Python delivers
    signals) and when ``enabled``; otherwise the request never fires."""
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request._handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
