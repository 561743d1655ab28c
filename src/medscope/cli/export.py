"""``medscope export``: a run's model as ONNX + JSON metadata."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medscope.cli._common import add_command


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "export", "export a run's model (ONNX + JSON metadata)")
    p.add_argument("run", type=Path, help="run directory or checkpoint")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default: the exporter's, 18)")
    p.add_argument("--dynamic-batch", dest="dynamic_batch", action="store_true", default=True,
                   help="any batch size (default)")
    p.add_argument("--static-batch", dest="dynamic_batch", action="store_false",
                   help="batch size fixed to 1")
    p.add_argument("--int8", action="store_true",
                   help="static int8 quantization (onnxruntime), calibrated on the run's "
                        "training images")
    p.add_argument("--calibration-images", type=int, default=None, metavar="N",
                   help="--int8: training images that calibrate activation ranges "
                        "(default: the exporter's, 256)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder (default: RUN/onnx, or RUN/onnx-int8 with --int8)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope import api

    path = api.export(args.run, args.out, opset=args.opset, dynamic_batch=args.dynamic_batch,
                      int8=args.int8, calibration_images=args.calibration_images)
    print(f"wrote {path} and {path.with_name('model.json')}")
