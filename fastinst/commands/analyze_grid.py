"""``fastinst analyze-grid``: params and GFLOPs of every row of a grid beside the paper's ratios."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastinst.commands.analyze import parse_size
from fastinst.commands.evaluate import data_spec
from fastinst.data.spec import DatasetError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze-grid", help="params and GFLOPs of every grid row, relative to the reference row and the paper",
        description="For every row of GRID: params, GFLOPs, GFLOPs / reference row, the same ratio from the "
                    "paper's reported.csv, and their deviation. Models are built on the meta device.")
    p.add_argument("grid", help="grid YAML (e.g. experiments/paper/table6a.yaml)")
    p.add_argument("--size", type=parse_size, default=(640, 853),
                   help="one image of this HxW, test-resized per row (default 640x853)")
    p.add_argument("--data", help="average over val images of this dataset folder instead of --size")
    p.add_argument("--val-json", help="val annotation JSON (instead of --data)")
    p.add_argument("--val-images", help="val image folder (with --val-json)")
    p.add_argument("--images", type=int, default=100, help="with --data: the first N val images (default 100)")
    p.add_argument("--reported", help="paper numbers CSV (default: reported.csv next to the grid, if any)")
    p.add_argument("--format", choices=("md", "csv"), default="md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fastinst.engine.grid_report import analyze_grid, format_report, load_reported, val_image_sizes
    from fastinst.grid import GridError, load_grid

    try:
        grid = load_grid(args.grid)
        if args.data or args.val_json or args.val_images:
            originals = val_image_sizes(data_spec(args), args.images)
        else:
            originals = [args.size]
    except (GridError, DatasetError) as exc:
        print(f"fastinst analyze-grid: {exc}", file=sys.stderr)
        return 2
    reported_path = Path(args.reported) if args.reported else Path(args.grid).parent / "reported.csv"
    if args.reported and not reported_path.is_file():
        print(f"fastinst analyze-grid: --reported: no such file {reported_path}", file=sys.stderr)
        return 2
    reported = load_reported(reported_path, grid.name) if reported_path.is_file() else {}
    reports = analyze_grid(grid, originals, reported)
    where = f"{len(originals)} val images" if len(originals) > 1 or args.data or args.val_json else \
        f"{originals[0][0]}x{originals[0][1]}"
    if args.format == "md":
        print(f"{grid.name} ({where}; reference row: {grid.reference or 'none'})\n")
    print(format_report(reports, args.format), end="")
    return 0
