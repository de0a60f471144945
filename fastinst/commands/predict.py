"""``fastinst predict``: instance masks for images, folders, globs and videos; overlays and COCO results."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from fastinst.deploy.backends import BACKENDS
from fastinst.engine.precision import DTYPES
from fastinst.predict.media import IMAGE_EXTS, VIDEO_EXTS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="predict instances on images and videos",
        description="Predict with MODEL (a config YAML with --weights, or an exported .onnx file) on INPUTs: "
                    f"images ({' '.join(IMAGE_EXTS)}), videos ({' '.join(VIDEO_EXTS)}), folders of them, or "
                    "glob patterns. Writes <out>/<stem>.png overlays, <out>/<stem>.mp4 for videos, and "
                    "<out>/images.json + <out>/results.json (COCO format). Exit code 1 when some files failed.")
    p.add_argument("model", metavar="MODEL", help="config YAML, or an exported .onnx file (config and categories from its metadata)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image, video, folder or glob pattern")
    p.add_argument("--weights", help="checkpoint (ours or the official layout; a path or an http(s) URL, downloaded "
                                      "once into $FASTINST_CACHE/weights, checked against a #sha256=HEX fragment), "
                                      "or an .onnx export of the config (without: the random initialisation, "
                                      "for smoke tests)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--score", type=float, default=0.5, help="score threshold of drawn instances (default 0.5)")
    p.add_argument("--backend", choices=list(BACKENDS),
                   help="inference backend (default: onnxruntime for an .onnx file, else eager)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES),
                   help="inference precision (default float32)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory layout (torch backends)")
    p.add_argument("--batch", type=int, default=1, help="images (or video frames) per model call (default 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable (with a config YAML)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fastinst.predict.media import collect_inputs
    from fastinst.predict.pipeline import predict_files
    from fastinst.predict.predictor import Predictor

    try:
        paths = collect_inputs(args.inputs)
        predictor = Predictor(args.model, args.weights, backend=args.backend, device=args.device, dtype=args.dtype,
                              batch_size=args.batch, channels_last=args.channels_last, overrides=args.overrides)
    except (ValueError, OSError) as exc:  # MediaError, CheckpointError, OnnxModelError, ConfigError
        print(f"fastinst predict: {exc}", file=sys.stderr)
        return 2
    report = predict_files(predictor, paths, args.out, args.score, progress=not args.no_progress,
                           on_error=lambda message: tqdm.write(f"fastinst predict: {message}", file=sys.stderr))
    print(f"{report.images} images, {report.frames} video frames, {report.instances} instances scoring "
          f">= {args.score}; wrote {len(report.written)} files to {args.out}")
    if report.failures:
        print(f"fastinst predict: {len(report.failures)} of {len(paths)} inputs failed:", file=sys.stderr)
        for message in report.failures:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0
