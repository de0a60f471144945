"""``fastinst model-zoo``: the official FastInst releases, whose names work wherever a config does."""

from __future__ import annotations

import argparse

from tabulate import tabulate

from fastinst.model_zoo import RELEASES

HEADERS = ("name", "backbone", "layers", "test size", "AP", "FPS (V100)", "params", "weights")


def register(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser(
        "model-zoo", help="list the official releases (their names work wherever a config path does)",
        description="The official FastInst releases: AP on COCO val2017 and FPS on a V100 as the official "
                    "README states them. A NAME works wherever a config path does, e.g. "
                    "fastinst predict NAME --weights model_final.pth photos/ --out preds/."
    ).set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = [(r.name, r.backbone, r.decoder_layers, f"{r.test_size[0]}/{r.test_size[1]}", f"{r.ap:.1f}",
             f"{r.fps:.1f}", f"{r.params_m}M", r.weights_url) for r in RELEASES]
    print(tabulate(rows, headers=HEADERS, disable_numparse=True))
    return 0
