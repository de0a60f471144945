"""``fastinst bench``: FPS per the paper's protocol (batch 1, warm-up, synchronised timing)."""

from __future__ import annotations

import argparse
import json
import sys

from fastinst.data.spec import DatasetError


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
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fastinst import load_config
    from fastinst.commands.evaluate import data_spec
    from fastinst.engine.bench import bench

    cfg = load_config(args.config, args.overrides)
    try:
        result = bench(cfg, args.weights, data_spec(args), images=args.images, device=args.device,
                       dtype=args.dtype, warmup=args.warmup)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"fastinst bench: {exc}", file=sys.stderr)
        return 2
    print(f"{result['fps']:.2f} FPS  (mean {result['mean_ms']:.1f} ms, median {result['median_ms']:.1f} ms, "
          f"{result['num_images']} images, {result['device']}, {result['dtype']}, {result['threads']} threads)")
    if args.json:
        print(json.dumps(result))
    return 0
