"""DistributedDataParallel scaling: training images/s with 1 and 2 (or more) processes.

    python benchmarks/ddp_scaling.py [--model resnet18] [--img-size 112] [--batch 32]
                                     [--procs 1 2] [--steps 20] [--warmup 5]

Each process runs medscope's own distributed pieces (``init_distributed``, ``wrap_ddp``) on
synthetic uint8 batches: forward, backward (gradients all-reduced by DDP), AdamW step. The
per-rank batch is fixed, so the global batch grows with the processes (weak scaling, as
torchrun training does). CPU: gloo, every process shares this machine's cores, so expect no
speed-up on a small machine. CUDA: NCCL, one GPU per process; process counts above the GPU
count are skipped. Prints one line per process count and the ratio to 1 process.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from machine import non_negative_int, positive_int  # noqa: E402

from medscope.models import create_model  # noqa: E402
from medscope.train.distributed import init_distributed  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    cuda = torch.cuda.is_available()
    if not cuda:  # the processes share the cores instead of each taking all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    ctx = init_distributed("cuda" if cuda else "cpu", timeout_s=300)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    torch.backends.cudnn.benchmark = cuda
    model = create_model(args.model, num_classes=4, in_chans=3, img_size=args.img_size)
    model = ctx.wrap_ddp(model.to(device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randint(0, 256, (args.batch, 3, args.img_size, args.img_size),
                           dtype=torch.uint8, device=device)
    labels = torch.randint(0, 4, (args.batch,), device=device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(images.float() / 255), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    ctx.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    ctx.barrier()
    elapsed = time.perf_counter() - start
    if ctx.is_main:
        Path(result).write_text(str(args.steps * args.batch * world / elapsed))
    ctx.destroy()


def measure(world: int, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = str(Path(tmp) / "images_per_s")
        mp.spawn(_worker, args=(world, _free_port(), args, result), nprocs=world, join=True)
        return float(Path(result).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--img-size", type=positive_int, default=112)
    parser.add_argument("--batch", type=positive_int, default=32,
                        help="images per process and step")
    parser.add_argument("--procs", type=positive_int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=positive_int, default=20)
    parser.add_argument("--warmup", type=non_negative_int, default=5)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    where = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, NCCL" if cuda
             else f"CPU, {os.cpu_count()} cores shared by all processes, gloo")
    print(f"DDP training throughput: {args.model} at {args.img_size} px, fp32, batch "
          f"{args.batch} per process, {args.steps} timed steps after {args.warmup} warm-up; "
          f"{where}; torch {torch.__version__}")
    base = None
    for world in args.procs:
        if cuda and world > torch.cuda.device_count():
            print(f"{world} processes: skipped (only {torch.cuda.device_count()} GPU(s))")
            continue
        rate = measure(world, args)
        base = base or (rate if world == 1 else None)
        ratio = f", {rate / base:.2f}x 1 process" if base else ""
        print(f"{world} process(es): global batch {args.batch * world}, "
              f"{rate:,.1f} images/s{ratio}")


if __name__ == "__main__":
    main()
