"""``fastinst bench``: FPS per the paper's protocol (batch 1, warm-up, synchronised timing)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from fastinst.config import Config
from fastinst.data.spec import DatasetError
from fastinst.deploy.backends import BACKENDS
from fastinst.deploy.backends.onnx_runtimes import RUNTIMES
from fastinst.engine.precision import DTYPES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="inference speed (FPS) on val images",
                              description="Time model forward + post-processing at batch 1 on test-resized "
                                          "val images (data loading excluded).")
    p.add_argument("config", help="config YAML")
    p.add_argument("--weights", help="checkpoint (default: random init; speed does not depend on weights)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable")
    p.add_argument("--data", help="dataset folder (annotations/instances_val*.json + val*/ images)")
    p.add_argument("--val-json", help="val annotation JSON (instead of --data)")
    p.add_argument("--val-images", help="val image folder (with --val-json)")
    p.add_argument("--images", type=int, default=100, help="time the first N val images (default 100)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up images (default 5)")
    p.add_argument("--repeats", type=int, default=1, help="timed passes over the images (median FPS; default 1)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="inference precision (default float32)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--backend", choices=list(BACKENDS), default="eager",
                   help=f"inference backend (default eager; cudagraph needs CUDA); {' and '.join(RUNTIMES)} "
                        "export CONFIG first unless --onnx")
    p.add_argument("--channels-last", action="store_true", help="NHWC conv weights and activations (torch backends)")
    p.add_argument("--onnx", help=f"exported ONNX file for --backend {'/'.join(RUNTIMES)} (from fastinst export)")
    p.add_argument("--compare", action="store_true",
                   help="every available backend/dtype side by side on the same images (alternating passes, "
                        "--repeats rounds), with each one's deviation from eager float32")
    p.add_argument("--backends", help="with --compare: only these backends, comma-separated (eager float32, "
                                      "the parity reference, always runs)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fastinst import load_config
    from fastinst.commands.evaluate import data_spec
    from fastinst.deploy.bench import bench

    cfg = load_config(args.config, args.overrides)
    try:
        if args.compare:
            return _compare(cfg, args)
        result = bench(cfg, args.weights, data_spec(args), images=args.images, device=args.device,
                       dtype=args.dtype, warmup=args.warmup, repeats=args.repeats, backend=args.backend,
                       channels_last=args.channels_last, onnx_path=args.onnx)
    except (DatasetError, OSError, ValueError, ImportError) as exc:  # also CheckpointError, OnnxModelError
        print(f"fastinst bench: {exc}", file=sys.stderr)
        return 2
    print(f"{result['backend']}: {result['fps']:.2f} FPS  (mean {result['mean_ms']:.1f} ms, median {result['median_ms']:.1f} ms, "
          f"{result['num_images']} images, {result['device']}, {result['dtype']}, {result['threads']} threads)")
    if args.json:
        print(json.dumps(result))
    return 0


def _compare(cfg: Config, args: argparse.Namespace) -> int:
    """``--compare``: one table of every available backend variant on the first ``--images`` val images."""
    import torch

    from fastinst.commands.evaluate import data_spec
    from fastinst.deploy.bench import device_name, load_images
    from fastinst.deploy.compare import compare, default_variants, variant_builder
    from fastinst.deploy.report import format_table
    from fastinst.engine.device import pick_device

    device = pick_device(args.device)
    samples = load_images(cfg, data_spec(args), args.images)
    if not samples:
        raise ValueError("bench needs at least one val image")

    variants = default_variants(device, args.backends.split(",") if args.backends else None)
    with tempfile.TemporaryDirectory(prefix="fastinst_compare_") as tmp:
        build = variant_builder(cfg, args.weights, device, args.onnx, Path(tmp), _log)
        rows = compare(build, variants, samples, rounds=args.repeats, warmup=max(1, args.warmup), log=_log)
    summaries = [row.summary(len(samples)) for row in rows]
    print(f"{len(samples)} images, {args.repeats} alternating rounds, {device_name(device)}, "
          f"{torch.get_num_threads()} threads; deviations against eager float32")
    print(format_table(summaries))
    if args.json:
        print(json.dumps(summaries))
    return 0


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
