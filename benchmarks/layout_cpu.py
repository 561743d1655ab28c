"""Memory layout on CPU, side by side in one run: NCHW vs channels_last (NHWC), fp32.

    python benchmarks/layout_cpu.py [--models simple_cnn,resnet18,efficientnet_b0,densenet121]
        [--img-size 112] [--batch-size 64] [--steps 6] [--rounds 3] [--out FILE]

For each model, training steps (``machine.train_step``: the step of medscope's loop, AdamW) and
inference steps on one random batch already in memory, in both layouts (``select_runtime``'s
fp32 runtime with channels_last off and on), alternated over ``--rounds`` rounds so that the
machine's drift hits both alike; the best round of each is compared. This is the measurement
behind ``select_runtime``'s default of channels_last on every CPU (docs/speed.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import Report, describe_machine, positive_int, train_step  # noqa: E402

from medscope.train.engine import flush_denormals  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="simple_cnn,resnet18,efficientnet_b0,densenet121")
    ap.add_argument("--img-size", type=positive_int, default=112)
    ap.add_argument("--batch-size", type=positive_int, default=64)
    ap.add_argument("--steps", type=positive_int, default=6)
    ap.add_argument("--rounds", type=positive_int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    flush_denormals()
    report = Report(args.out)
    report("# layout_cpu: NCHW vs channels_last, fp32, images/s")
    report(describe_machine())
    report(f"{args.img_size} px, batch {args.batch_size}, {args.steps} timed steps, best of "
           f"{args.rounds} alternated rounds")
    report("| model | phase | NCHW img/s | channels_last img/s | channels_last / NCHW |")
    report("|---|---|---|---|---|")
    for name in [m for m in args.models.split(",") if m]:
        for train in (True, False):
            rates: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.rounds):  # alternated: drift hits both layouts alike
                for cl in (False, True):
                    rates[cl].append(rate(name, cl, train, args))
            best = {cl: max(r) for cl, r in rates.items()}
            report(f"| {name} | {'train' if train else 'infer'} | {best[False]:.1f} | "
                   f"{best[True]:.1f} | {best[True] / best[False]:.2f}x |")
    report.save()


def rate(name: str, channels_last: bool, train: bool, args: argparse.Namespace) -> float:
    import torch

    from medscope.core.runtime import select_runtime
    from medscope.models import create_model

    torch.manual_seed(0)
    runtime = select_runtime("cpu", "fp32", channels_last)
    model = runtime.prepare(create_model(name, num_classes=5, img_size=args.img_size))
    x = runtime.to_input(torch.randn(args.batch_size, 3, args.img_size, args.img_size))
    y = torch.randint(0, 5, (args.batch_size,))
    optimizer = torch.optim.AdamW(model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train(train)

    def step() -> None:
        if train:
            train_step(model, x, y, loss_fn, optimizer, runtime)
        else:
            with torch.inference_mode():
                model(x)

    for _ in range(2):  # oneDNN primitive cache, allocator
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    return args.batch_size * args.steps / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
