"""CPU inference, side by side: ``medscope predict`` on a folder vs the bare model, and the
backends PyTorch fp32, PyTorch bf16, ONNX Runtime fp32 and ONNX Runtime int8.

    python benchmarks/predict_throughput.py --run RUN [--limit-images N] [--batch-sizes 1,32]
        [--backends torch-fp32,torch-bf16,onnx-fp32,onnx-int8] [--latency-images 200]
        [--threads T] [--out FILE]

RUN: a finished run trained on real data (the issue's figures: resnet18 at 224 px); its test
split (validation split when there is none) supplies the images, and its training split the
int8 calibration images (``medscope export --int8``, written to RUN/onnx-int8 unless there).

- overhead: ``medscope predict`` (``predict_files``: file listing, decode, batching,
  softmax, rows) on the test images, run twice and the second timed (warm OS file cache), vs
  the bare model's forward on the same images already decoded and in memory, same precision
  and batch size: overhead = predict time / bare time - 1.
- backends: images/s of each backend on the preloaded test images at each batch size (model
  and session calls only; the same uint8 -> float input each backend takes), the speed-up over
  PyTorch fp32 eager, single-image latency p50/p95 through each predictor's
  ``probs_from_pixels`` (what the server calls per image), and test accuracy.

Run it on a quiet machine: compare only figures taken in one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import Report, describe_machine, peak_rss_mib, positive_int  # noqa: E402

BACKENDS = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from medscope.data.prepare import run_split
    from medscope.predictor import Predictor
    from medscope.run import RunDir

    if args.threads:
        torch.set_num_threads(args.threads)
    report = Report(args.out)
    report("# predict_throughput: medscope predict vs bare model; PyTorch vs ONNX Runtime")
    report(describe_machine())
    fp32 = Predictor.load(args.run, precision="fp32", device="cpu")
    samples, split, _ = run_split(RunDir(args.run), fp32.classes)
    if args.limit_images:
        pick = np.random.default_rng(0).permutation(len(samples))[:args.limit_images]
        samples = [samples[i] for i in sorted(pick)]
    decoded = fp32.decode(samples, progress=False)
    pixels = np.asarray(decoded.pixels)
    labels = np.array([samples[i].label for i in decoded.kept])
    report(f"run {args.run}: {fp32.meta['model']} at {fp32.img_size} px, {len(fp32.classes)} "
           f"classes; {len(pixels)} {split} images; batch sizes {args.batch_sizes}")

    overhead(args, fp32, [samples[i].path for i in decoded.kept], pixels, report)
    rows = [backend_row(name, args, pixels, labels) for name in args.backends]
    base = next((r for r in rows if r["backend"] == "torch-fp32"), rows[0])
    report()
    head = " | ".join(f"bs{b} img/s | bs{b} speed-up" for b in args.batch_sizes)
    report(f"| backend | {head} | p50 ms | p95 ms | accuracy | vs {base['backend']} |")
    report("|---|" + "---|" * (2 * len(args.batch_sizes) + 4))
    for r in rows:
        rates = " | ".join(f"{r['rate'][b]:.1f} | {r['rate'][b] / base['rate'][b]:.2f}x"
                           for b in args.batch_sizes)
        report(f"| {r['backend']} | {rates} | {r['p50']:.2f} | {r['p95']:.2f} | "
               f"{r['accuracy']:.4f} | {100 * (r['accuracy'] - base['accuracy']):+.2f} pt |")
    report(f"peak RSS {peak_rss_mib():.0f} MiB")
    report.save()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished run directory")
    ap.add_argument("--limit-images", type=positive_int, default=None,
                    help="a seeded random subset of the test images")
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--latency-images", type=positive_int, default=200,
                    help="single-image calls timed one by one for p50/p95")
    ap.add_argument("--repeats", type=positive_int, default=3,
                    help="passes per throughput figure (best)")
    ap.add_argument("--threads", type=positive_int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.backends = [b for b in args.backends.split(",") if b]
    bad = [b for b in args.backends if b not in BACKENDS]
    if bad:
        ap.error(f"unknown backend(s) {bad}; choose from {', '.join(BACKENDS)}")
    if not (args.run / "checkpoints").is_dir():
        ap.error(f"{args.run}: not a run directory")
    return args


def overhead(args, fp32, paths: list[Path], pixels: np.ndarray, report: Report) -> None:
    """``medscope predict`` on the files vs the bare forward on the decoded tensors."""
    from medscope.predict import predict_files
    from medscope.predictor import Predictor

    bs = max(args.batch_sizes)
    # bf16 only when asked for: emulated without AVX512-BF16, it costs minutes and says little.
    for precision in [b.split("-")[1] for b in args.backends if b.startswith("torch-")]:
        predictor = fp32 if precision == "fp32" else Predictor.load(
            args.run, precision=precision, device="cpu")
        with tempfile.TemporaryDirectory() as tmp:
            csv = Path(tmp) / "p.csv"
            times = []
            for _ in range(2):  # the first warms the OS file cache and the allocator
                start = time.perf_counter()
                predict_files(args.run, paths, csv, precision=precision, device="cpu",
                              progress=False, batch_size=bs, abstain_below=0)
                times.append(time.perf_counter() - start)
        bare = best_of(args.repeats, lambda p=predictor: torch_logits(p, pixels, bs))
        start = time.perf_counter()
        Predictor.load(args.run, precision=precision, device="cpu")
        load = time.perf_counter() - start
        report(f"overhead, torch {precision}, batch {bs}: medscope predict {times[1]:.2f} s "
               f"(of which loading the model {load:.2f} s; {len(paths) / times[1]:.1f} img/s) "
               f"vs bare forward {bare:.2f} s "
               f"({len(pixels) / bare:.1f} img/s): overhead {100 * (times[1] / bare - 1):+.1f} %")


def backend_row(name: str, args, pixels: np.ndarray, labels: np.ndarray) -> dict:
    predictor, run_batch = load_backend(name, args.run)
    rate = {b: len(pixels) / best_of(args.repeats, lambda b=b: run_batch(pixels, b))
            for b in args.batch_sizes}
    logits = run_batch(pixels, max(args.batch_sizes))
    accuracy = float((logits.argmax(1) == labels).mean()) if len(labels) else float("nan")
    latencies = []
    for i in range(min(args.latency_images, len(pixels))):
        start = time.perf_counter()
        predictor.probs_from_pixels(pixels[i:i + 1], batch_size=1)
        latencies.append(1000 * (time.perf_counter() - start))
    p50, p95 = np.percentile(latencies, [50, 95]) if latencies else (float("nan"),) * 2
    return {"backend": name, "rate": rate, "p50": p50, "p95": p95, "accuracy": accuracy}


def load_backend(name: str, run: Path):
    """(predictor, fn(pixels, batch) -> logits) for a backend name."""
    from medscope.export import OnnxPredictor
    from medscope.predict import current_onnx_export
    from medscope.predictor import Predictor

    if name.startswith("torch"):
        predictor = Predictor.load(run, precision=name.split("-")[1], device="cpu")
        return predictor, lambda px, b: torch_logits(predictor, px, b)
    predictor = OnnxPredictor.load(current_onnx_export(run, int8=name == "onnx-int8"))
    return predictor, lambda px, b: onnx_logits(predictor, px, b)


def torch_logits(predictor, pixels: np.ndarray, batch: int) -> np.ndarray:
    """The bare model: uint8 NHWC in memory -> normalised input -> forward, per batch."""
    import torch

    rt, outs = predictor.runtime, []
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            x = torch.from_numpy(pixels[i:i + batch]).permute(0, 3, 1, 2)
            with rt.autocast():
                outs.append(predictor.model(predictor.normalize(rt.to_input(x))).float())
    return torch.cat(outs).numpy()


def onnx_logits(predictor, pixels: np.ndarray, batch: int) -> np.ndarray:
    from medscope.export.onnx import INPUT, OUTPUT, _nchw

    step = batch if predictor.dynamic_batch else 1
    return np.concatenate([predictor.session.run([OUTPUT], {INPUT: _nchw(pixels[i:i + step])})[0]
                           for i in range(0, len(pixels), step)])


def best_of(repeats: int, fn) -> float:
    fn()  # warm-up: allocator, oneDNN primitive cache, ORT arena
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


if __name__ == "__main__":
    main()
