"""The ``fastinst`` command: a thin dispatcher over ``fastinst.commands.*`` modules.

Each command module exposes ``register(subparsers)``, which adds its sub-parser and sets
``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fastinst.config import ConfigError
from fastinst.data.spec import DatasetError

COMMANDS = [
    "fastinst.commands.analyze",
    "fastinst.commands.analyze_grid",
    "fastinst.commands.evaluate",
    "fastinst.commands.make_synthetic",
    "fastinst.commands.train",
    "fastinst.commands.bench",
    "fastinst.commands.export",
    "fastinst.commands.predict",
    "fastinst.commands.model_zoo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastinst", description="FastInst: train, evaluate and measure")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"fastinst: config error: {exc}", file=sys.stderr)
    except DatasetError as exc:
        print(f"fastinst: data error: {exc}", file=sys.stderr)
    except ValueError as exc:
        from fastinst.checkpoint import CheckpointError  # imports torch: only once something failed

        if not isinstance(exc, CheckpointError):
            raise
        print(f"fastinst: weights error: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
