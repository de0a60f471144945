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

**Interleaved** (``bench_interleaved``), to compare models on a machine whose speed drifts: every
model is built and warmed up first (all are resident at once), then ``repeats`` rounds follow; in
each round every model does one timed pass over the images, and the order rotates from round to
round (``rotation``: round 0 A B C, round 1 B C A, round 2 C A B, ...), so drift and position
effects fall on every model alike. Each model's FPS is the median over its rounds; its per-round
FPS (``fps_repeats``, in round order) pair with the other models' rounds, so the per-round FPS
ratio of two models cancels the drift.
"""

from __future__ import annotations

import platform
import socket
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision

from fastinst.config import Config
from fastinst.data.coco import CocoInstanceDataset
from fastinst.data.spec import DataSpec
from fastinst.data.transforms import EvalTransform
from fastinst.deploy.backends import build_backend
from fastinst.engine.device import Timer, pick_device
from fastinst.engine.precision import DTYPES


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
            with Timer(device) as timer:
                model([image.to(device)], output_sizes=[size])
            times.append(timer.seconds)
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


def _device(dtype: str, repeats: int, device: str | torch.device | None) -> torch.device:
    """The device to time on (default: CUDA if available), after checking ``dtype`` and ``repeats``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    return pick_device(device)


def _test_size(cfg: Config) -> tuple[int, int]:
    return cfg.input.min_size_test, cfg.input.max_size_test


def _result(repeat_times: list[list[float]], cfg: Config, weights: str | Path | None, dev: torch.device, dtype: str,
            backend: str, channels_last: bool, warmup: int) -> dict[str, Any]:
    """One model's result: ``speed_summary`` and what it was timed on."""
    return {**speed_summary(repeat_times), "num_images": len(repeat_times[0]), "warmup": warmup,
            "repeats": len(repeat_times), "device": device_name(dev), "device_type": dev.type, "dtype": dtype,
            "backend": backend, "channels_last": channels_last,
            "threads": torch.get_num_threads(), "host": socket.gethostname(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "test_size": list(_test_size(cfg)),
            "weights": None if weights is None else str(weights)}


def bench(cfg: Config, weights: str | Path | None, data: DataSpec, images: int = 100,
          device: str | torch.device | None = None, dtype: str = "float32", warmup: int = 5,
          repeats: int = 1, backend: str = "eager", channels_last: bool = False,
          onnx_path: str | Path | None = None) -> dict[str, Any]:
    """FPS and latency of ``cfg`` (with ``weights``; ``None``: as initialised, the speed is the same)
    over the first ``images`` val images of ``data``, ``repeats`` times (see the module docstring),
    run by the ``fastinst.deploy`` backend ``backend`` (``onnx_path``: its ONNX file)."""
    dev = _device(dtype, repeats, device)
    samples = load_images(cfg, data, images)
    if not samples:
        raise ValueError("bench needs at least one val image")
    model = build_backend(backend, cfg, weights, device=dev, dtype=dtype, channels_last=channels_last,
                          onnx_path=onnx_path, cpu_outputs=False)
    repeat_times = [time_model(model, samples, dev, DTYPES[dtype], warmup if r == 0 else 0) for r in range(repeats)]
    return _result(repeat_times, cfg, weights, dev, dtype, backend, channels_last, warmup)


@dataclass(frozen=True)
class BenchEntry:
    """One model of an interleaved measurement: its config and weights (``None``: as initialised)."""

    cfg: Config
    weights: str | Path | None = None


def rotation(count: int, round_index: int) -> list[int]:
    """The order of ``count`` models in round ``round_index``: round 0 is 0, 1, ..., count - 1, and each
    round starts one model later (0 1 2, 1 2 0, 2 0 1, ...), so over ``count`` rounds every model
    holds every position once."""
    return [(round_index + k) % count for k in range(count)]


def bench_interleaved(entries: Sequence[BenchEntry], data: DataSpec, images: int = 100,
                      device: str | torch.device | None = None, dtype: str = "float32", warmup: int = 5,
                      repeats: int = 3, backend: str = "eager", channels_last: bool = False,
                      skip: tuple[type[Exception], ...] = ()) -> list[dict[str, Any]]:
    """Time the models of ``entries`` interleaved (module docstring): ``repeats`` rounds, one timed pass
    of each model per round, on one device, dtype and backend, over the first ``images`` val images of
    ``data`` (preloaded once per distinct test size). All models are built first and stay resident at
    once (small models on the CPU; mind the memory of many large ones on a GPU).

    Returns one result per entry, in entry order: ``bench``'s dict plus ``fps_repeats`` in round order
    and ``positions`` (the model's place in each round's order, 0-based). An entry whose model fails to
    build with one of ``skip`` is left out of the rounds; its result is ``{"error": exception}``.
    """
    dev = _device(dtype, repeats, device)
    samples: dict[tuple[int, int], list[tuple[torch.Tensor, tuple[int, int]]]] = {}
    for entry in entries:
        size = _test_size(entry.cfg)
        if size not in samples:
            samples[size] = load_images(entry.cfg, data, images)
            if not samples[size]:
                raise ValueError("bench needs at least one val image")
    images_of = [samples[_test_size(entry.cfg)] for entry in entries]
    results: list[dict[str, Any]] = [{} for _ in entries]
    models: dict[int, Callable[..., Any]] = {}
    for i, entry in enumerate(entries):
        try:
            models[i] = build_backend(backend, entry.cfg, entry.weights, device=dev, dtype=dtype,
                                      channels_last=channels_last, cpu_outputs=False)
        except skip as exc:
            results[i] = {"error": exc}
    timed = list(models)
    for i in timed:  # warm-up: each model's first ``warmup`` images, untimed (the times are dropped)
        time_model(models[i], images_of[i][:warmup], dev, DTYPES[dtype], 0)
    times: dict[int, list[list[float]]] = {i: [] for i in timed}
    positions: dict[int, list[int]] = {i: [] for i in timed}
    for r in range(repeats):
        for position, k in enumerate(rotation(len(timed), r)):
            i = timed[k]
            times[i].append(time_model(models[i], images_of[i], dev, DTYPES[dtype], 0))
            positions[i].append(position)
    for i in timed:
        results[i] = {**_result(times[i], entries[i].cfg, entries[i].weights, dev, dtype, backend, channels_last,
                                warmup), "positions": positions[i]}
    return results
