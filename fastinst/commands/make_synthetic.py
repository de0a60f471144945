"""``fastinst make-synthetic``: write the synthetic shapes dataset (COCO format)."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("make-synthetic", help="write a synthetic COCO-format shapes dataset",
                              description="Write OUT_DIR/annotations/instances_{train,val}.json and "
                                          "OUT_DIR/{train,val}/*.png.")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--train", type=int, default=2000, help="training images (default 2000)")
    p.add_argument("--val", type=int, default=200, help="validation images (default 200)")
    p.add_argument("--size", type=int, default=320, help="image side in pixels (default 320)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, default=4, help="number of shape classes, 1-8 (default 4)")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fastinst.data.synthetic import make_synthetic

    if not 1 <= args.classes <= 8 or args.size < 32:
        print("fastinst make-synthetic: --classes must be in 1..8 and --size at least 32", file=sys.stderr)
        return 2
    with tqdm(total=args.train + args.val, desc="make-synthetic", unit="img") as bar:
        written = make_synthetic(args.out_dir, args.train, args.val, args.size, args.seed, args.classes,
                                 workers=args.workers, progress=bar.update)
    for key, path in written.items():
        print(f"{key}: {path}")
    return 0
