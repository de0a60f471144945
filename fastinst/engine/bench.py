"""Inference speed as the paper measures it.

Batch 1, eval mode, test-resized val images preloaded in memory (data loading excluded). Each
timed call is ``model([image.to(device)], output_sizes=[original size])`` between two device
synchronisations: host-to-device copy, normalise/pad, forward and post-processing up to
original-size masks. The first ``warmup`` images are run once untimed first. One repeat times every
image once and gives FPS = images / total time (the paper's protocol); ``repeats`` such passes give
the reported FPS as their median and the spread as their min and max; latency percentiles are over
every timed call of every repeat. Half precisions run under autocast (weights stay float32), as in
mixed-precision training. The model runs through a ``fastinst.deploy`` backend (``eager`` by
default: the model's own forward; ``compile``, ``cudagraph``, ``onnxruntime``, ``openvino``), each
called the same way; torch backends leave their outputs on the device, as before.
"""

from __future__ import annotations

import platform
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision

from fastinst.config import Config
from fastinst.data.coco import CocoInstanceDataset
from fastinst.data.spec import DataSpec
from fastinst.data.transforms import EvalTransform

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: oneDNN's bf16 kernels run natively (``torch.cpu`` private probes)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe is not None and probe() for probe in probes)


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model from /proc/cpuinfo (platform string as a fallback)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_images(cfg: Config, data: DataSpec, count: int) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """The first ``count`` val images, test-resized ``(3, h, w)``, with their original ``(H, W)``."""
    json_path, image_dir = data.split("val")
    dataset = CocoInstanceDataset(json_path, image_dir, transform=EvalTransform(cfg))
    return [(item["image"], tuple(item["orig_size"])) for item in (dataset[i] for i in range(min(count, len(dataset))))]


@torch.inference_mode()
def time_model(model: Callable[..., Any], images: list[tuple[torch.Tensor, tuple[int, int]]], device: torch.device,
               dtype: torch.dtype, warmup: int) -> list[float]:
    """Seconds per call of ``model`` on each image (after ``warmup`` untimed calls)."""
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    times = []
    with autocast:
        for image, size in images[:warmup]:
            model([image.to(device)], output_sizes=[size])
        for image, size in images:
            _sync(device)
            start = time.perf_counter()
            model([image.to(device)], output_sizes=[size])
            _sync(device)
            times.append(time.perf_counter() - start)
    return times


def speed_summary(repeat_times: list[list[float]]) -> dict[str, Any]:
    """FPS (median over repeats of images / total seconds), its min/max over repeats, each repeat's
    FPS, and latency percentiles (ms) over all timed calls. ``repeat_times``: seconds per call, per repeat."""
    fps_each = [len(times) / sum(times) for times in repeat_times]
    calls = sorted(t for times in repeat_times for t in times)

    def pct(q: float) -> float:
        return 1000 * calls[min(len(calls) - 1, max(0, round(q / 100 * (len(calls) - 1))))]

    return {"fps": statistics.median(fps_each), "fps_min": min(fps_each), "fps_max": max(fps_each),
            "fps_repeats": fps_each, "mean_ms": 1000 * statistics.fmean(calls), "median_ms": pct(50),
            "p90_ms": pct(90), "p99_ms": pct(99)}


def bench(cfg: Config, weights: str | Path | None, data: DataSpec, images: int = 100,
          device: str | torch.device | None = None, dtype: str = "float32", warmup: int = 5,
          repeats: int = 1, backend: str = "eager", channels_last: bool = False,
          onnx_path: str | Path | None = None) -> dict[str, Any]:
    """FPS and latency of ``cfg`` (with ``weights``; ``None``: as initialised, the speed is the same)
    over the first ``images`` val images of ``data``, ``repeats`` times (see the module docstring),
    run by the ``fastinst.deploy`` backend ``backend`` (``onnx_path``: its ONNX file)."""
    from fastinst.deploy.backends import build_backend

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    dev = torch.device(device) if device is not None else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    samples = load_images(cfg, data, images)
    if not samples:
        raise ValueError("bench needs at least one val image")
    model = build_backend(backend, cfg, weights, device=dev, dtype=dtype, channels_last=channels_last,
                          onnx_path=onnx_path, cpu_outputs=False)
    repeat_times = [time_model(model, samples, dev, DTYPES[dtype], warmup if r == 0 else 0) for r in range(repeats)]
    return {**speed_summary(repeat_times), "num_images": len(samples), "warmup": warmup, "repeats": repeats,
            "device": device_name(dev), "device_type": dev.type, "dtype": dtype, "backend": backend,
            "channels_last": channels_last,
            "threads": torch.get_num_threads(), "host": socket.gethostname(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "test_size": [cfg.input.min_size_test, cfg.input.max_size_test],
            "weights": None if weights is None else str(weights)}
