"""``fastinst analyze``: parameters and FLOPs of a config at a fixed input size."""

from __future__ import annotations

import argparse
import json

from fastinst.config import load_config


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must be HxW (e.g. 640x853), got {text!r}") from exc
    return h, w


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="parameters and GFLOPs (fvcore convention) at one input size")
    p.add_argument("config", nargs="?", default=None, help="config YAML (default: FastInst-D3 R50)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--size", type=parse_size, default=(640, 853), help="input HxW after test resize")
    p.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fastinst.engine.analyze import analyze

    cfg = load_config(args.config, args.overrides)
    result = analyze(cfg, args.size)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"params  {result['params']:,}")
    print(f"GFLOPs  {result['gflops']:.2f} at {args.size[0]}x{args.size[1]}")
    for name, value in result["gflops_by_module"].items():
        print(f"  {name:<14}{value:8.2f}")
    return 0
