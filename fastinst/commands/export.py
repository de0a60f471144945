"""``fastinst export``: the whole inference path as one ONNX graph (dynamic height and width)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a model to ONNX (whole inference path, dynamic size)",
                              description="Export CONFIG with WEIGHTS to one ONNX file: normalisation, padding, "
                                          "backbone, pixel decoder, decoder, top-k instance inference and the "
                                          "mask resize are inside the graph; inputs image (1,3,h,w) float32 RGB "
                                          "0..255 and output_size (2,) int64. Checked with onnx's checker, then "
                                          "run once through ONNX Runtime against the eager model.")
    p.add_argument("config", help="config YAML")
    p.add_argument("--weights", help="checkpoint (default: random init)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default onnx)")
    p.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's stated opset, 18)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the ONNX Runtime vs eager check on one synthetic test-size image")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from fastinst import load_config
    from fastinst.deploy.onnx_export import OPSET, export_model, verify_export
    from fastinst.engine.model import load_model

    cfg = load_config(args.config, args.overrides)
    try:
        model, categories = load_model(cfg, args.weights, torch.device("cpu"))
        path = export_model(model, cfg, categories, args.out, opset=args.opset or OPSET)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, opset {args.opset or OPSET}, "
              f"checked with onnx.checker)")
        if args.verify:
            dev = verify_export(model, cfg, path)
            print(f"ONNX Runtime vs eager float32 on a {dev['size'][0]}x{dev['size'][1]} image: score deviation "
                  f"{dev['score_dev']:.1e}, label agreement {dev['label_agree']:.3f}, "
                  f"mask IoU mean {dev['mask_iou_mean']:.4f} (min {dev['mask_iou_min']:.4f})")
    except (ValueError, OSError, ImportError) as exc:  # CheckpointError, OnnxModelError, missing onnx packages
        print(f"fastinst export: {exc}", file=sys.stderr)
        return 2
    return 0
