"""What the benchmark scripts share: the machine they ran on, memory, timing and output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def positive_int(text: str) -> int:
    """argparse type: a count or size of at least 1 (0 or less is an error line, not a
    traceback from deep in the run)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: a count that may be 0 (workers, warm-up steps, seeds)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def describe_machine() -> str:
    """CPU model, cores, load, torch and library versions: a result without it means little."""
    import torch

    from medscope.core.runtime import cpu_has_bf16

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {model}; {os.cpu_count()} logical "
            f"cores, torch threads {torch.get_num_threads()}; AVX512-BF16/AMX "
            f"{'yes' if cpu_has_bf16() else 'no'}; GPU {gpu}; load average {load} (before)\n"
            f"python {platform.python_version()}, torch {torch.__version__}, "
            f"{_versions()}, {platform.platform()}")


def _versions() -> str:
    out = []
    for name in ("torchvision", "timm", "onnxruntime"):
        try:
            module = __import__(name)
            out.append(f"{name} {module.__version__}")
        except ImportError:
            out.append(f"{name} absent")
    return ", ".join(out)


def rss_mib() -> float:
    """Resident set size of this process now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(children: bool = False) -> float:
    """Peak RSS of this process (or of its largest finished child: DataLoader workers)."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


class Report:
    """Lines printed as they come and, with ``--out``, written to a file at the end."""

    def __init__(self, out: Path | None) -> None:
        self.out, self.lines = out, []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def save(self) -> None:
        if self.out is None:
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text("\n".join(self.lines) + "\n")
        print(f"written to {self.out}", file=sys.stderr)


RESULT_PREFIX = "RESULT "


def result_line(values: dict) -> str:
    """The line a benchmark's child process prints for its parent to read back."""
    return RESULT_PREFIX + json.dumps(values)


def child_result(stdout: str) -> dict | None:
    """The values of the last result line in a child's output (None when it printed none):
    children print progress and warnings too, so the parent reads only the marked line."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    return json.loads(lines[-1][len(RESULT_PREFIX):]) if lines else None


def timed(fn, *args, **kw) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn(*args, **kw)
    return result, time.perf_counter() - start


def train_step(model, images, labels, loss_fn, optimizer, runtime) -> None:
    """One training step as medscope's loop takes it (autocast forward, fp32 loss, backward,
    step, the loss read back), so every benchmark times the same work."""
    with runtime.autocast():
        logits = model(images)
    loss = loss_fn(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    loss.item()  # the loop reads the loss every step too
