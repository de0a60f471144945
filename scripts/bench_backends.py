"""CPU speed of every backend as a ratio to torchvision's ResNet-50 classifier, with parity to eager float32.

FastInst-D3 R50 (official head weights from the shared reference data on a seed-0 backbone; random
init without them) on synthetic 640x853 images, batch 1; torchvision ResNet-50 on a 640x864 input,
called once before every FastInst pass in the same process (see ``fastinst.deploy.compare``).
Prints one table (ratio = FastInst time / ResNet-50 time, median over rounds, [min-max]) and,
with ``--json``, the rows as JSON. Usage::

    python scripts/bench_backends.py --threads 2 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastinst import load_config  # noqa: E402
from fastinst.data.synthetic import SHAPES, render  # noqa: E402
from fastinst.deploy.compare import compare, default_variants, variant_builder  # noqa: E402
from fastinst.deploy.reference import REFERENCE_NAME, reference_checkpoint  # noqa: E402
from fastinst.deploy.report import format_table  # noqa: E402


def synthetic_images(count: int, height: int, width: int) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """``count`` synthetic scenes (the project's shape renderer), ``(3, height, width)`` float 0..255."""
    images = []
    for i in range(count):
        pixels, _ = render(np.random.default_rng(i), max(height, width), len(SHAPES))
        image = torch.from_numpy(np.ascontiguousarray(pixels[:height, :width])).permute(2, 0, 1).float()
        images.append((image, (height, width)))
    return images


def profile_torch(backend, samples: list, top: int) -> str:
    """Self CPU time per aten op over one pass of ``backend`` (a torch backend)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for image, size in samples:
            backend([image], [size])
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def profile_onnxruntime(path: Path, samples: list, top: int) -> str:
    """Time per ONNX op type over one pass through an ONNX Runtime session with profiling on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.enable_profiling = True
    options.profile_file_prefix = str(path.parent / "ort_profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for image, size in samples:
        session.run(None, {"image": image[None].numpy(), "output_size": np.asarray(size, dtype=np.int64)})
    totals: dict[str, float] = {}
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"].get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + event["dur"] / 1000
    return _op_table(totals, top)


def profile_openvino(path: Path, samples: list, top: int, precision: str) -> str:
    """Time per OpenVINO layer type over one pass with PERF_COUNT on."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": precision,
                                                          "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    request = compiled.create_infer_request()
    totals: dict[str, float] = {}
    for image, size in samples:
        request.infer({"image": image[None].numpy(), "output_size": np.asarray(size, dtype=np.int64)})
        for info in request.profiling_info:
            key = f"{info.node_type} ({info.exec_type})"
            totals[key] = totals.get(key, 0.0) + info.real_time.total_seconds() * 1000
    return _op_table(totals, top)


def _op_table(totals: dict[str, float], top: int) -> str:
    whole = sum(totals.values()) or 1.0
    rows = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return "\n".join(f"{name:<48} {ms:9.1f} ms {100 * ms / whole:5.1f}%" for name, ms in rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--size", type=int, nargs=2, default=[640, 853], metavar=("H", "W"))
    p.add_argument("--reference", type=Path, default=REPO.parent / "shared" / "reference" / REFERENCE_NAME)
    p.add_argument("--only", nargs="*", help="variant labels to run, e.g. 'eager float32' 'openvino bfloat16'")
    p.add_argument("--onnx", type=Path, help="reuse this export of the same weights (default: export afresh)")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing: one profiled pass per backend, top ops by time")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="fastinst_bench_"))
    cfg = load_config(None, [])
    weights = reference_checkpoint(args.reference, tmp / "weights.pt") if args.reference.is_file() else None
    print(f"weights: {'reference head + seed-0 backbone' if weights else 'random init (no reference file)'}; "
          f"threads {args.threads}; torch {torch.__version__}", flush=True)
    samples = synthetic_images(args.images, *args.size)
    resnet = torchvision.models.resnet50().eval()
    resnet_input = torch.rand(1, 3, 640, 864)

    def baseline() -> None:
        with torch.inference_mode():
            resnet(resnet_input)

    onnx_file = args.onnx or tmp / "model.onnx"
    build = variant_builder(cfg, weights, torch.device("cpu"), onnx_file, tmp, log=lambda line: print(line, flush=True))

    variants = default_variants(torch.device("cpu"))
    if args.only:
        variants = [v for v in variants if v.label in args.only or v.backend == "eager" and v.dtype == "float32"
                    and not v.channels_last]
    if args.profile:
        for variant in variants:
            print(f"\n== {variant.label}", flush=True)
            backend = build(variant)
            backend([image for image, _ in samples], [size for _, size in samples])  # warm-up
            if variant.backend == "onnxruntime":
                print(profile_onnxruntime(onnx_file, samples, 15))
            elif variant.backend == "openvino":
                print(profile_openvino(onnx_file, samples, 15, "bf16" if variant.dtype == "bfloat16" else "f32"))
            else:
                print(profile_torch(backend, samples, 15))
        return 0
    start = time.perf_counter()
    rows = compare(build, variants, samples, rounds=args.rounds, warmup=1, baseline=baseline,
                   log=lambda line: print(f"[{time.perf_counter() - start:5.0f} s] {line}", flush=True))
    summaries = [row.summary(len(samples)) for row in rows]
    print(format_table(summaries, ratio=True))
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "size": args.size, "rounds": args.rounds,
                                         "torch": torch.__version__, "torchvision": torchvision.__version__,
                                         "rows": summaries}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
