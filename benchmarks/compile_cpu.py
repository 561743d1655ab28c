"""torch.compile (inductor) vs eager on CPU, for training and inference steps: compile time and
steady images/s, and whether compiling pays for a typical run.

    python benchmarks/compile_cpu.py [--models simple_cnn,resnet18,efficientnet_b0]
        [--img-size 112] [--batch-size 64] [--steps 20] [--precision bf16] [--threads T]
        [--typical-steps 2000] [--out FILE]

Each (model, phase, mode) runs in its own process with an empty inductor cache, so the compile
time is what a user's first run pays. A step is what ``medscope train`` does per batch
(forward under autocast, cross-entropy, backward, AdamW step; ``--compile`` compiles the model
only) or what ``medscope predict`` does (forward under inference mode). The first step (compile
included) is timed on its own, then 2 warm-up steps, then ``--steps`` timed steps on one
in-memory batch (random, normalised, channels_last with bf16).

net gain for a typical run of ``--typical-steps`` steps: (eager time) / (compile time + compiled
time) - 1; the issue's rule: make compile the default where that is >= 10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import Report, child_result, describe_machine, positive_int, result_line, train_step  # noqa: E402

MODELS = ("simple_cnn", "resnet18", "efficientnet_b0")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(result_line(measure(json.loads(args.child))), flush=True)
        return
    if args.threads:  # the children set it too; here for the machine line
        import torch

        torch.set_num_threads(args.threads)
    report = Report(args.out)
    report("# compile_cpu: torch.compile (inductor) vs eager on CPU")
    report(describe_machine())
    if shutil.which("c++") is None and shutil.which("g++") is None:
        report("no C++ compiler on PATH: inductor cannot compile on CPU here; nothing measured")
        report.save()
        return
    report(f"img {args.img_size} px, batch {args.batch_size}, {args.precision}"
           f"{' + channels_last' if args.precision == 'bf16' else ''}, {args.steps} timed "
           f"steps; typical run {args.typical_steps} steps")
    rows = []
    for model in args.models:
        for phase in ("train", "infer"):
            result = {}
            for mode in ("eager", "compiled"):
                spec = {"model": model, "phase": phase, "compiled": mode == "compiled",
                        "img_size": args.img_size, "batch_size": args.batch_size,
                        "steps": args.steps, "precision": args.precision,
                        "threads": args.threads}
                result[mode] = run_child(spec)
                report(f"{model} {phase} {mode}: first step {result[mode]['first_s']:.2f} s, "
                       f"steady {result[mode]['img_s']:.1f} img/s")
            rows.append((model, phase, result))
    report()
    report("| model | phase | eager img/s | compiled img/s | steady speed-up | compile s | "
           "net gain, typical run |")
    report("|---|---|---|---|---|---|---|")
    for model, phase, r in rows:
        e, c = r["eager"], r["compiled"]
        step_e, step_c = args.batch_size / e["img_s"], args.batch_size / c["img_s"]
        compile_s = max(0.0, c["first_s"] - step_c)
        steps = args.typical_steps if phase == "train" else max(1, args.typical_steps // 3)
        net = (steps * step_e) / (compile_s + steps * step_c) - 1
        report(f"| {model} | {phase} | {e['img_s']:.1f} | {c['img_s']:.1f} | "
               f"{c['img_s'] / e['img_s']:.2f}x | {compile_s:.1f} | {100 * net:+.1f} % |")
    report("compile s = compiled first step - one steady compiled step; inference 'typical "
           "run' = a third of the training steps (prediction over a test split)")
    report.save()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--img-size", type=positive_int, default=112)
    ap.add_argument("--batch-size", type=positive_int, default=64)
    ap.add_argument("--steps", type=positive_int, default=20, help="timed steady steps")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                    help="bf16 = autocast + channels_last (eager and compiled alike)")
    ap.add_argument("--threads", type=positive_int, default=None)
    ap.add_argument("--typical-steps", type=positive_int, default=2000,
                    help="training steps of a typical run (DeFungi: ~110 per epoch x 20)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    return args


def run_child(spec: dict) -> dict:
    """One measurement in a fresh process with an empty inductor cache."""
    with tempfile.TemporaryDirectory(prefix="medscope-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache,
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                              capture_output=True, text=True, env=env)
    result = child_result(proc.stdout)
    if proc.returncode or result is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"{spec['model']} {spec['phase']} failed: {tail}")
    return result


def measure(spec: dict) -> dict:
    from medscope.train.engine import flush_denormals

    flush_denormals()
    import torch

    from medscope.config import TrainConfig
    from medscope.core.runtime import select_runtime
    from medscope.models import create_model
    from medscope.train.engine import build_optimizer

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    runtime = select_runtime("cpu", spec["precision"], spec["precision"] == "bf16")
    size, bs = spec["img_size"], spec["batch_size"]
    model = runtime.prepare(create_model(spec["model"], num_classes=5, img_size=size))
    train = spec["phase"] == "train"
    model.train(train)
    optimizer = build_optimizer(model, TrainConfig()) if train else None
    net = torch.compile(model) if spec["compiled"] else model
    images = runtime.to_input(torch.randn(bs, 3, size, size))
    labels = torch.randint(0, 5, (bs,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        if train:
            train_step(net, images, labels, loss_fn, optimizer, runtime)
        else:
            with torch.inference_mode(), runtime.autocast():
                net(images).float().sum().item()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        step()
    return {"first_s": first, "img_s": spec["steps"] * bs / (time.perf_counter() - start)}


if __name__ == "__main__":
    main()
