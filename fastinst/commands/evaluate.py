"""``fastinst eval``: mask AP of a checkpoint on a COCO-format val set."""

from __future__ import annotations

import argparse
import json
import sys

from fastinst.data.spec import DatasetError, DataSpec


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint (COCO mask AP)",
                              description="Evaluate CONFIG with WEIGHTS on a COCO-format val set.")
    p.add_argument("config", help="config YAML")
    p.add_argument("--weights", required=True, help="checkpoint (ours or the official layout)")
    p.add_argument("--data", help="dataset folder (annotations/instances_val*.json + val*/ images)")
    p.add_argument("--val-json", help="val annotation JSON (instead of --data)")
    p.add_argument("--val-images", help="val image folder (with --val-json)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable")
    p.add_argument("--images", type=int, help="evaluate only the first N images")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--vis-dir", help="also draw ground truth beside predictions for the first images, as PNGs here")
    p.add_argument("--vis-images", type=int, default=8, help="how many images --vis-dir draws (default 8)")
    p.add_argument("--vis-score", type=float, default=0.5, help="score threshold of drawn predictions (default 0.5)")
    p.add_argument("--bootstrap", type=int, default=0, metavar="B",
                   help="add 95%% intervals of AP .. AP_L over B image resamples (e.g. 1000; default 0: none)")
    p.add_argument("--matching", metavar="PATH", help="keep the per-image matching (.npz) here, for later comparisons")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object on the last line")
    p.set_defaults(func=run)


def data_spec(args: argparse.Namespace) -> DataSpec:
    """The val split from ``--data`` or ``--val-json``/``--val-images``."""
    if args.data and (args.val_json or args.val_images):
        raise DatasetError("give either --data or --val-json/--val-images, not both")
    if args.data:
        return DataSpec.from_folder(args.data)
    if not (args.val_json and args.val_images):
        raise DatasetError("give --data DIR, or both --val-json and --val-images")
    return DataSpec(val_json=args.val_json, val_images=args.val_images)


def run(args: argparse.Namespace) -> int:
    from fastinst import load_config
    from fastinst.engine.evaluate import evaluate

    cfg = load_config(args.config, args.overrides)
    try:
        metrics = evaluate(cfg, args.weights, data_spec(args), max_images=args.images, device=args.device,
                           vis_dir=args.vis_dir, vis_images=args.vis_images, vis_score=args.vis_score,
                           matching_path=args.matching, bootstrap=args.bootstrap)
    except (ValueError, OSError) as exc:  # DatasetError, ConfigError, a checkpoint that does not fit
        print(f"fastinst eval: {exc}", file=sys.stderr)
        return 2
    for key, value in metrics.items():
        if key.endswith("_ci") and key[:-3] in metrics:
            continue
        line = f"{key:>16}  {value:.4f}" if isinstance(value, float) else f"{key:>16}  {value}"
        print(line + _interval_text(metrics.get(f"{key}_ci"), args.bootstrap))
    if args.json:
        print(json.dumps(metrics))
    return 0


def _interval_text(interval: list[float | None] | None, resamples: int) -> str:
    """``  [low, high] (95% CI, B image resamples)`` after a metric's value; empty without an interval."""
    if interval is None:
        return ""
    low, high = interval
    bounds = "[undefined]" if low is None or high is None else f"[{low:.4f}, {high:.4f}]"
    return f"  {bounds} (95% CI, {resamples} image resamples)"
