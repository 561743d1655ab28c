"""A whole-slide image through the diagnosis path vs the bare model forward, side by side.

    python benchmarks/slide_inference.py [--quick] [--size 40960] [--tile 500] [--input 224]
        [--model resnet10t] [--batch-size 32] [--workers 2] [--threads T] [--repeats 2]
        [--precision auto|fp32|bf16] [--slide FILE] [--keep-slide] [--no-monai] [--out FILE]

1. Writes a pyramidal TIFF (``--size`` px a side, JPEG tiles of 256 px, levels every 2x,
   0.25 µm/px) with tifffile, tile by tile from a procedural "tissue" (stained blobs over
   part of the slide, textured, with nuclei) so the slide is never held in memory; in a
   child process, so its memory does not count below. ``--slide`` reuses a file instead.
2. (a) pipeline: ``medscope.slides.diagnose`` on the file: open, thumbnail, tissue finding,
   tile grid at ``--tile`` source px, streamed reads (``--workers`` threads, bounded queue)
   with the artifact filter, resize to ``--input`` px, the model in batches, aggregation.
   Peak RSS is read right after it.
   (b) bare forward: the same model, batch size and tiles (read beforehand, in memory),
   forward + softmax only.
   ratio = bare time / pipeline time (goal >= 0.85: reading and finding tissue hidden behind
   inference); peak RSS of (a) (goal < 2 GB).
   (c) MONAI, when installed: its whole-slide patch dataset on the same slide, level, patch
   size and model (see ``monai_patches``); the pipeline's speed-up over it (goal >= 2).
The model is ``medscope.models.create_model(--model)`` with random weights (speed only), run
as ``medscope predict`` runs it (``--precision``, default auto: bf16 autocast + channels_last
on a CPU with AVX512-BF16; runs before 2026-12-08 used fp32 NCHW, a slower model that hid more
of the reading).
``--quick``: a 4096 px slide, 256 px tiles, 64 px input, to check the script runs.

Results go to ``--out`` (JSON; default benchmarks/results/slide_inference.json, or
slide_inference_quick.json with --quick). Run full mode on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import describe_machine, peak_rss_mib, positive_int  # noqa: E402

TIFF_TILE = 256
RENDER_CHUNK = 512  # tiles drawn per round of the pool (~100 MB)
LEVEL_STEP = 2  # as libvips and bfconvert write pyramids; SVS files often step 4x
MPP = 0.25
GOAL_RATIO = 0.85
GOAL_RSS_MIB = 2048
# stained blobs (centre x, centre y, radius x, radius y) in slide units: ~30 % of the area
BLOBS = ((0.30, 0.35, 0.22, 0.18), (0.62, 0.55, 0.20, 0.26), (0.40, 0.75, 0.15, 0.10))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print("# slide_inference: diagnosis pipeline vs bare model forward on one slide")
    print(describe_machine())
    with tempfile.TemporaryDirectory() as tmp:
        slide = args.slide or Path(tmp) / "slide.tif"
        gen_s = 0.0
        if args.slide is None:
            gen_s = write_slide_in_child(slide, args.size)
            print(f"wrote a {args.size} x {args.size} px pyramidal TIFF "
                  f"({slide.stat().st_size / 2**20:.0f} MiB) in {gen_s:.1f} s")
        result = measure(args, slide)
        result["slide"].update(generated_s=round(gen_s, 2),
                               file_mib=round(slide.stat().st_size / 2**20, 1))
        if args.keep_slide and args.slide is None:
            kept = args.out.with_suffix(".tif")
            shutil.copyfile(slide, kept)
    report(result, args.out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small slide: check the script runs")
    ap.add_argument("--size", type=positive_int, default=None, help="slide side in px")
    ap.add_argument("--tile", type=positive_int, default=None, help="tile side in source px")
    ap.add_argument("--input", type=positive_int, default=None, help="model input side in px")
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--batch-size", type=positive_int, default=32)
    ap.add_argument("--workers", type=positive_int, default=2, help="tile reading threads")
    ap.add_argument("--threads", type=positive_int, default=None, help="torch threads")
    ap.add_argument("--repeats", type=positive_int, default=2,
                    help="passes of the pipeline and of the bare forward (best)")
    ap.add_argument("--slide", type=Path, default=None, help="use this slide, write none")
    ap.add_argument("--keep-slide", action="store_true", help="keep the written slide")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="the model's, as `medscope predict --precision` (auto: bf16 where the "
                    "CPU has it)")
    ap.add_argument("--no-monai", action="store_true", help="skip the MONAI comparison")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    args.size = args.size or (4096 if args.quick else 40960)
    args.tile = args.tile or (256 if args.quick else 500)
    args.input = args.input or (64 if args.quick else 224)
    name = "slide_inference_quick.json" if args.quick else "slide_inference.json"
    args.out = args.out or ROOT / "benchmarks" / "results" / name
    return args


def render(x0: int, y0: int, width: int, height: int, scale: float, size: int) -> np.ndarray:
    """The slide's pixels ``[y0:y0+height, x0:x0+width]`` of the level ``scale`` times
    smaller than level 0: a function of position only, so any tile of any level can be drawn
    on its own (in any process)."""
    img = np.full((height, width, 3), 238, dtype=np.uint8)
    box = (x0 * scale / size, y0 * scale / size, (x0 + width) * scale / size,
           (y0 + height) * scale / size)
    blobs = [b for b in BLOBS if _meets(box, b)]
    if not blobs:
        return img  # most of the slide: glass, no need to evaluate the shapes
    ys = (np.arange(y0, y0 + height, dtype=np.float32) + 0.5)[:, None] * scale
    xs = (np.arange(x0, x0 + width, dtype=np.float32) + 0.5)[None, :] * scale
    u, v = xs / size, ys / size
    tissue = np.zeros((height, width), dtype=bool)
    wobble = (1 + 0.08 * np.sin(37 * u) * np.cos(29 * v)) ** 2  # irregular edges, cheaply
    for cx, cy, rx, ry in blobs:
        tissue |= ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 < wobble
    if not tissue.any():
        return img
    # separable terms (outer products of 1-D waves): the slide is 1.7 gigapixels
    texture = np.sin(xs / 23.0) * np.cos(ys / 17.0) + 0.5 * (
        np.sin(xs / 41.0) * np.cos(ys / 41.0) + np.cos(xs / 41.0) * np.sin(ys / 41.0))
    # a nucleus in every 48 px cell, placed by a hash of the cell
    cx, cy = np.floor(xs / 48), np.floor(ys / 48)
    h = np.sin(cx * 12.9898 + cy * 78.233) * 43758.5453
    ox, oy = 24 + 14 * np.sin(h), 24 + 14 * np.cos(h * 1.7)
    nucleus = (xs - cx * 48 - ox) ** 2 + (ys - cy * 48 - oy) ** 2 < 81
    pink = np.stack([215 + 18 * texture, 120 + 25 * texture, 175 + 15 * texture], -1)
    pink[nucleus] = (95, 55, 150)
    img[tissue] = np.clip(pink[tissue], 0, 255).astype(np.uint8)
    return img


def _meets(box: tuple[float, float, float, float], blob: tuple[float, ...]) -> bool:
    """Whether a box (slide units) meets a blob's bounding box (with its wobble)."""
    u0, v0, u1, v1 = box
    cx, cy, rx, ry = blob
    return u0 < cx + 1.1 * rx and u1 > cx - 1.1 * rx and v0 < cy + 1.1 * ry \
        and v1 > cy - 1.1 * ry


def tiles_of(level_size: int, scale: float, size: int, pool):
    """Row-major TIFF tiles of one level (edge tiles full size, as TIFF stores them), drawn
    by ``pool`` a chunk at a time: memory holds one chunk, not the level."""
    coords = [(tx, ty) for ty in range(0, level_size, TIFF_TILE)
              for tx in range(0, level_size, TIFF_TILE)]
    for i in range(0, len(coords), RENDER_CHUNK):
        yield from pool.starmap(render, [(tx, ty, TIFF_TILE, TIFF_TILE, scale, size)
                                         for tx, ty in coords[i:i + RENDER_CHUNK]])


def write_slide(path: Path, size: int) -> None:
    import tifffile

    res = (1e4 / MPP, 1e4 / MPP)
    with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool, \
            tifffile.TiffWriter(path, bigtiff=True) as tw:
        scale = 1
        while True:
            level_size = -(-size // scale)
            tw.write(tiles_of(level_size, scale, size, pool),
                     shape=(level_size, level_size, 3), dtype=np.uint8,
                     tile=(TIFF_TILE, TIFF_TILE), compression="jpeg",
                     compressionargs={"level": 85}, photometric="rgb",
                     subfiletype=0 if scale == 1 else 1,
                     resolution=(res[0] / scale, res[1] / scale), resolutionunit="CENTIMETER")
            if level_size <= 1024:
                break
            scale *= LEVEL_STEP


def write_slide_in_child(path: Path, size: int) -> float:
    start = time.perf_counter()
    proc = multiprocessing.get_context("spawn").Process(target=write_slide, args=(path, size))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"writing the slide failed (exit {proc.exitcode})")
    return time.perf_counter() - start


def make_classify(model_name: str, input_size: int, precision: str = "auto"):
    """uint8 NHWC tiles -> softmax probabilities, the way a predictor runs them: the runtime
    ``medscope predict`` picks for ``precision`` (auto: bf16 autocast + channels_last on a CPU
    with AVX512-BF16, else fp32 channels_last)."""
    import torch

    from medscope.core.runtime import select_runtime
    from medscope.models import create_model

    runtime = select_runtime("cpu", precision)
    model = runtime.prepare(create_model(model_name, num_classes=5, img_size=input_size).eval())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255

    def classify(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), runtime.autocast():
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
            logits = model(runtime.to_input((x - mean) / std))
            return torch.softmax(logits.float(), 1).numpy()

    classify.runtime = runtime.describe()
    return classify


def measure(args: argparse.Namespace, slide: Path) -> dict:
    from medscope.slides.diagnose import diagnose
    from medscope.slides.readers import open_reader
    from medscope.slides.tissue import find_tissue

    classify = make_classify(args.model, args.input, args.precision)
    classify(np.zeros((args.batch_size, args.input, args.input, 3), dtype=np.uint8))  # warm-up
    start = time.perf_counter()
    with open_reader(slide) as reader:
        thumb = reader.thumbnail(1024)
        find_tissue(thumb, reader.level_dimensions[0])
        tissue_s = time.perf_counter() - start
        dims = reader.level_dimensions
    rss_before = peak_rss_mib()
    pipeline_s = float("inf")
    for _ in range(args.repeats):  # best of: the first pass also warms the OS file cache
        start = time.perf_counter()
        result = diagnose(slide, classify, args.tile, args.input, batch_size=args.batch_size,
                          workers=args.workers)
        pipeline_s = min(pipeline_s, time.perf_counter() - start)
    rss_pipeline = peak_rss_mib()
    start = time.perf_counter()
    tiles = preread_tiles(slide, args)
    read_only_s = time.perf_counter() - start
    bare_s = min(bare_forward(classify, tiles, args.batch_size) for _ in range(args.repeats))
    return {
        "benchmark": "slide_inference", "mode": "quick" if args.quick else "full",
        "machine": describe_machine(),
        "slide": {"size_px": args.size, "levels": [list(d) for d in dims], "mpp": MPP,
                  "tissue_fraction": round(result.tissue_fraction, 4)},
        "model": {"name": args.model, "input_px": args.input, "tile_source_px": args.tile,
                  "batch_size": args.batch_size, "reader_threads": args.workers,
                  "repeats_best_of": args.repeats,
                  "weights": "random", "runtime": classify.runtime},
        "tiles": {"grid": result.n_grid, "read": result.n_candidates, "kept": result.kept,
                  "dropped": result.dropped, "failed": result.failed,
                  "level_read": result.level},
        "thumbnail_and_tissue_s": round(tissue_s, 3),
        "pipeline_s": round(pipeline_s, 3), "bare_forward_s": round(bare_s, 3),
        "read_only_s": round(read_only_s, 3),  # thumbnail, tissue, stream: no model
        "pipeline_tiles_per_s": round(result.kept / pipeline_s, 1),
        "bare_tiles_per_s": round(len(tiles) / bare_s, 1) if bare_s else None,
        "ratio_bare_over_pipeline": round(bare_s / pipeline_s, 3), "goal_ratio": GOAL_RATIO,
        "peak_rss_mib_before_pipeline": round(rss_before, 1),
        "peak_rss_mib_pipeline": round(rss_pipeline, 1), "goal_rss_mib": GOAL_RSS_MIB,
        "peak_rss_mib_end": round(peak_rss_mib(), 1),
        "monai": "not run: --no-monai" if args.no_monai else
        monai_patches(slide, args, classify, result.level,
                      round(result.tile_size / result.downsample), pipeline_s),
        "omp": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")},
        "tiatoolbox": "not run: not installed",
    }


def monai_patches(slide: Path, args: argparse.Namespace, classify, level: int, read_size: int,
                  pipeline_s: float) -> dict | str:
    """MONAI's whole-slide patch pipeline on the same slide, level, patch size and model:
    ``SlidingPatchWSIDataset`` (OpenSlide backend) through MONAI's DataLoader with
    ``--workers`` processes, each batch resized to the model input and classified. Its
    ``sliding_window_inference`` is not usable here: it takes the whole image as one tensor
    (4.8 GB of uint8 at 40,000 px a side). It reads every tile of the grid: it has no tissue
    finder in this dataset and no artifact filter."""
    try:
        import torch
        from monai.data import DataLoader, SlidingPatchWSIDataset
    except ImportError:
        return "not run: monai not installed"
    import warnings

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MONAI's non-writable array warning
        dataset = SlidingPatchWSIDataset(data=[{"image": str(slide)}], patch_size=read_size,
                                         patch_level=level, reader="OpenSlide")
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
        n = 0
        for batch in loader:
            x = torch.as_tensor(batch["image"]).float()
            if x.shape[-1] != args.input:
                x = torch.nn.functional.interpolate(x, size=(args.input, args.input),
                                                    mode="bilinear", antialias=True)
            classify(x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
            n += len(x)
    seconds = time.perf_counter() - start
    import monai

    return {"version": monai.__version__, "tiles": n, "seconds": round(seconds, 3),
            "tiles_per_s": round(n / seconds, 1),
            "speedup_of_pipeline": round(seconds / pipeline_s, 3), "goal_speedup": 2.0}


def preread_tiles(slide: Path, args: argparse.Namespace) -> np.ndarray:
    """The kept tiles of the pipeline, read into memory beforehand (not timed)."""
    from medscope.data.patches import PatchFilter, background_colour
    from medscope.slides.readers import open_reader
    from medscope.slides.tiling import iter_tile_batches, plan_grid
    from medscope.slides.tissue import find_tissue

    with open_reader(slide) as reader:
        thumb = reader.thumbnail(1024)
        tissue = find_tissue(thumb, reader.level_dimensions[0])
        grid = plan_grid(reader, args.tile, args.input, tissue=tissue)
        background = background_colour(thumb, PatchFilter().dark_level)
        batches = [b.pixels for b in iter_tile_batches(reader, grid, args.input,
                                                        background=background,
                                                        batch_size=args.batch_size)]
    return np.concatenate(batches) if batches else np.zeros((0, args.input, args.input, 3),
                                                           dtype=np.uint8)


def bare_forward(classify, tiles: np.ndarray, batch_size: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(tiles), batch_size):
        classify(tiles[i:i + batch_size])
    return time.perf_counter() - start


def report(result: dict, out: Path) -> None:
    t = result["tiles"]
    print(f"tiles: {t['grid']} in the grid, {t['read']} on tissue read at level "
          f"{t['level_read']}, {t['kept']} kept, dropped {t['dropped']}, failed {t['failed']}")
    print(f"thumbnail + tissue finding {result['thumbnail_and_tissue_s']:.2f} s")
    print(f"(a) pipeline {result['pipeline_s']:.2f} s ({result['pipeline_tiles_per_s']} "
          f"tiles/s); (b) bare forward {result['bare_forward_s']:.2f} s "
          f"({result['bare_tiles_per_s']} tiles/s)")
    print(f"reading alone (thumbnail, tissue, streamed tiles, filter, resize; no model) "
          f"{result['read_only_s']:.2f} s")
    print(f"ratio b/a {result['ratio_bare_over_pipeline']:.3f} (goal >= {GOAL_RATIO}); "
          f"peak RSS after the pipeline {result['peak_rss_mib_pipeline']:.0f} MiB "
          f"(goal < {GOAL_RSS_MIB})")
    m = result["monai"]
    if isinstance(m, dict):
        print(f"MONAI {m['version']} SlidingPatchWSIDataset: {m['tiles']} tiles in "
              f"{m['seconds']:.2f} s ({m['tiles_per_s']} tiles/s); the pipeline is "
              f"{m['speedup_of_pipeline']:.2f}x faster on this slide (goal >= 2)")
    else:
        print(f"MONAI: {m}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
