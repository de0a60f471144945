"""``fastinst train``: train a config on a COCO-format dataset into a run folder."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from fastinst.data.spec import DatasetError, DataSpec


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model (resumes from RUN_DIR/last_checkpoint)",
                              description="Train CONFIG on a COCO-format dataset. Multi-GPU / multi-process: "
                                          "torchrun --nproc-per-node N -m fastinst.cli train ...")
    p.add_argument("config", help="config YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable")
    p.add_argument("--data", help="dataset folder (annotations/instances_{train,val}*.json + image folders)")
    for split in ("train", "val"):
        p.add_argument(f"--{split}-json", help=f"{split} annotation JSON (instead of --data)")
        p.add_argument(f"--{split}-images", help=f"{split} image folder")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="checkpoints, metrics.jsonl, config.yaml")
    p.add_argument("--max-iter", type=int, help="stop after N iterations (the LR schedule still follows "
                                                "solver.max_iter; resumable)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if RUN_DIR has a checkpoint")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    p.set_defaults(func=run)


def data_spec(args: argparse.Namespace) -> DataSpec:
    """Train (and optional val) split from ``--data`` or the explicit ``--{train,val}-{json,images}``."""
    explicit = [args.train_json, args.train_images, args.val_json, args.val_images]
    if args.data and any(explicit):
        raise DatasetError("give either --data or --train-json/--train-images[/--val-json/--val-images], not both")
    if args.data:
        return DataSpec.from_folder(args.data)
    if not (args.train_json and args.train_images):
        raise DatasetError("give --data DIR, or both --train-json and --train-images")
    if bool(args.val_json) != bool(args.val_images):
        raise DatasetError("--val-json and --val-images go together")
    return DataSpec(*explicit)


def run(args: argparse.Namespace) -> int:
    from fastinst import load_config
    from fastinst.engine.train import NonFiniteLossError, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    try:
        result = train(cfg, data_spec(args), args.out, resume=not args.no_resume, max_iter=args.max_iter,
                       device=args.device)
    except (DatasetError, FileNotFoundError, NonFiniteLossError) as exc:
        print(f"fastinst train: {exc}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in result.items() if k in ("checkpoint", "iterations", "finished", "seconds", "AP")}
    print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    if args.json:
        print(json.dumps(result))
    return 0
