"""CPU benchmark of the model zoo: size, cost, latency, throughput, training step.

    python benchmarks/zoo.py [--sizes 224 64] [--models resnet18 vgg16 ...] [--quick]

For every model and size: parameters, GMACs, checkpoint size (fp32 safetensors), batch-1
latency (median of N), batch-32 throughput and one SGD training step. Runs in bf16 autocast with
channels_last when the CPU has AVX512-BF16/AMX (the fast path of oneDNN), plus fp32 rows for a few
key models so the ratio can be read. Writes benchmarks/results/zoo.csv and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from machine import positive_int  # noqa: E402

from medscope.core.runtime import cpu_has_bf16  # noqa: E402
from medscope.models import count_params, create_model, gmacs, min_size  # noqa: E402
from medscope.models.profile import state_dict_mb  # noqa: E402
from medscope.models.zoo import zoo_names  # noqa: E402

FP32_MODELS = ("resnet18", "resnet50", "vgg16")
RESULTS = Path(__file__).resolve().parent / "results" / "zoo.csv"
COLUMNS = ["model", "source", "img_size", "precision", "threads", "params_m", "gmacs",
           "ckpt_mb", "latency_bs1_ms", "batch32_ms", "throughput_bs32_img_s",
           "train_step_ms", "train_batch", "note"]


def _timed(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):  # oneDNN builds its kernels for each new shape on the first call
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def bench_one(name: str, source: str, size: int, bf16: bool, args) -> dict:
    row = {"model": name, "source": source, "img_size": size,
           "precision": "bf16" if bf16 else "fp32", "threads": torch.get_num_threads(),
           "train_batch": args.train_batch, "note": ""}
    if size < min_size(name):
        row["note"] = f"below min size {min_size(name)}"
        return row
    torch.manual_seed(0)
    model = create_model(name, 1000, img_size=size)
    row["params_m"] = round(count_params(model) / 1e6, 3)
    row["gmacs"] = round(gmacs(model, size), 3)
    row["ckpt_mb"] = round(state_dict_mb(model), 1)
    model = model.to(memory_format=torch.channels_last)

    def batch(n: int) -> torch.Tensor:
        return torch.randn(n, 3, size, size).to(memory_format=torch.channels_last)

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    model.eval()
    x1, x32 = batch(1), batch(32)
    with torch.inference_mode(), autocast:
        row["latency_bs1_ms"] = round(statistics.median(
            _timed(lambda: model(x1), args.latency_reps)), 2)
        batch_ms = statistics.median(_timed(lambda: model(x32), args.batch_reps))
    row["batch32_ms"] = round(batch_ms, 1)
    row["throughput_bs32_img_s"] = round(32 / batch_ms * 1000, 1)

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    xt, yt = batch(args.train_batch), torch.randint(0, 1000, (args.train_batch,))

    def step() -> None:
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(xt), yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    row["train_step_ms"] = round(statistics.median(_timed(step, args.train_reps)), 1)
    return row


def print_table(rows: list[dict]) -> None:
    show = ["model", "img_size", "precision", "params_m", "gmacs", "ckpt_mb", "latency_bs1_ms",
            "batch32_ms", "throughput_bs32_img_s", "train_step_ms", "note"]
    heads = ["model", "size", "prec", "params M", "GMACs", "ckpt MB", "bs1 ms", "bs32 ms",
             "img/s", f"train ms (bs{rows[0]['train_batch'] if rows else ''})", "note"]
    table = [heads] + [[str(r.get(c, "")) for c in show] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(heads))]
    for i, line in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[224, 64])
    parser.add_argument("--models", nargs="+", help="default: every zoo model")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine, 2 OpenMP "
                             "threads spin-wait on each other and run slower)")
    parser.add_argument("--train-batch", type=positive_int, default=8)
    parser.add_argument("--no-fp32", action="store_true", help="skip the fp32 reference rows")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.latency_reps, args.batch_reps, args.train_reps = (5, 1, 1) if args.quick else (10, 2, 2)
    torch.set_num_threads(args.threads)

    sources = dict(zoo_names())
    names = args.models or list(sources)
    bf16 = cpu_has_bf16()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), bf16 autocast: {bf16}", flush=True)
    rows = []
    for size in args.sizes:
        for name in names:
            precisions = [bf16] + ([False] if bf16 and name in FP32_MODELS
                                   and not args.no_fp32 else [])
            for use_bf16 in precisions:
                start = time.perf_counter()
                row = bench_one(name, sources.get(name, "timm"), size, use_bf16, args)
                rows.append(row)
                print(f"  {name} {size} {row['precision']}: {time.perf_counter() - start:.0f} s",
                      file=sys.stderr, flush=True)
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
