"""Backends side by side: speed on the same images in one process, and each one's deviation from eager float32.

Timing alternates: each round calls every backend once per image, in turn, so load that comes and
goes on a shared machine hits all of them alike; a backend's figure is the median over rounds of
its per-pass time. With a ``baseline`` callable (e.g. torchvision's ResNet-50 classifier) each
backend's pass is preceded by one baseline pass and its ratio is the median of the per-round
quotients; ``ratio_of_best`` divides the two fastest passes (the least disturbed by other load).

Parity is measured as sets, since top-k order may swap between near-tied instances: ``score_dev``
is the largest difference of the sorted score lists, ``label_agree`` the fraction of instances
whose (label, best-IoU partner) pair matches, ``mask_iou_mean``/``mask_iou_min`` the IoU of each
reference instance's mask with the same-label instance that overlaps it most.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastinst.config import Config
from fastinst.deploy.backends import BACKENDS, build_backend
from fastinst.deploy.backends.base import Backend, Result, backend_label
from fastinst.deploy.backends.onnx_runtimes import RUNTIMES
from fastinst.engine.device import Timer
from fastinst.engine.precision import cpu_has_bf16

Sample = tuple[Tensor, tuple[int, int]]


@dataclass
class Variant:
    """One backend configuration: ``backend`` name, ``dtype``, ``channels_last``."""

    backend: str
    dtype: str = "float32"
    channels_last: bool = False

    @property
    def label(self) -> str:
        return backend_label(self.backend, self.dtype, self.channels_last)


@dataclass
class Row:
    """A variant's results: seconds per pass per round, ratios to the baseline, parity, or why it did not run."""

    variant: Variant
    pass_seconds: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    baseline_seconds: list[float] = field(default_factory=list)
    parity: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def summary(self, num_images: int) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.variant.backend, "dtype": self.variant.dtype,
                               "channels_last": self.variant.channels_last, "error": self.error}
        if self.pass_seconds:
            med = statistics.median(self.pass_seconds)
            out.update(ms_per_image=1000 * med / num_images, fps=num_images / med,
                       ms_min=1000 * min(self.pass_seconds) / num_images,
                       ms_max=1000 * max(self.pass_seconds) / num_images)
        if self.ratios:
            out.update(ratio=statistics.median(self.ratios), ratio_min=min(self.ratios), ratio_max=max(self.ratios),
                       ratio_of_best=min(self.pass_seconds) / min(self.baseline_seconds))
        return {**out, **self.parity}


def default_variants(device: torch.device, backends: list[str] | None = None) -> list[Variant]:
    """Every backend/dtype this device can run (eager float32 first: the parity reference), or only
    those of ``backends`` (plus eager float32)."""
    variants = [Variant("eager"), Variant("eager", channels_last=True), Variant("compile"),
                Variant("onnxruntime")]
    if _importable("openvino"):
        variants.append(Variant("openvino"))
    if device.type == "cuda":
        variants += [Variant("eager", "float16"), Variant("eager", "bfloat16"), Variant("cudagraph"),
                     Variant("cudagraph", "float16")]
    elif cpu_has_bf16():
        variants.append(Variant("eager", "bfloat16", channels_last=True))
        if _importable("openvino"):
            variants.append(Variant("openvino", "bfloat16"))
    if backends is not None:
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown backend {unknown[0]!r}; known: {', '.join(BACKENDS)}")
        variants = variants[:1] + [v for v in variants[1:] if v.backend in backends]
    return variants


def variant_builder(cfg: Config, weights: str | Path | None, device: torch.device, onnx_path: str | Path | None,
                    workdir: Path, log: Callable[[str], None] | None = None) -> Callable[[Variant], Backend]:
    """``build(variant)`` for :func:`compare`: the ONNX backends share ``onnx_path``, or one export of
    ``cfg`` with ``weights`` into ``workdir`` made on first need. Without ``weights``, one random
    initialisation (saved in ``workdir``) serves every variant, so that parity compares like with like."""
    exported = Path(onnx_path) if onnx_path is not None else workdir / "model.onnx"
    if weights is None:
        from fastinst import build_model

        weights = workdir / "random_init.pt"
        torch.save(build_model(cfg).state_dict(), weights)

    def build(variant: Variant) -> Backend:
        onnx = variant.backend in RUNTIMES
        if onnx and not exported.exists():
            from fastinst.deploy.onnx_export import export_onnx

            start = time.perf_counter()
            export_onnx(cfg, weights, exported)
            if log:
                log(f"exported ONNX in {time.perf_counter() - start:.0f} s")
        return build_backend(variant.backend, cfg, weights, device=device, dtype=variant.dtype,
                             channels_last=variant.channels_last, onnx_path=exported if onnx else None)

    return build


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """``a (N, H, W)``, ``b (M, H, W)`` bool → ``(N, M)`` IoU (empty ∪ empty counts as 1)."""
    fa, fb = a.flatten(1).float(), b.flatten(1).float()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def parity(reference: list[Result], results: list[Result]) -> dict[str, float]:
    """Deviation of ``results`` from ``reference`` over all images (see the module docstring)."""
    dev, agree, ious, total = 0.0, 0, [], 0
    for ref, out in zip(reference, results):
        if len(ref["scores"]) and len(out["scores"]):
            n = min(len(ref["scores"]), len(out["scores"]))
            dev = max(dev, (ref["scores"].sort(descending=True).values[:n]
                            - out["scores"].sort(descending=True).values[:n]).abs().max().item())
        iou = mask_iou(ref["masks"], out["masks"])
        same = ref["labels"][:, None] == out["labels"][None, :]
        best = torch.where(same, iou, torch.full_like(iou, -1.0)).max(1).values if iou.numel() else torch.zeros(0)
        agree += int((best >= 0).sum())
        ious.append(best.clamp(min=0))
        total += len(ref["scores"])
    ious_all = torch.cat(ious) if ious else torch.zeros(0)
    return {"score_dev": dev, "label_agree": agree / max(total, 1),
            "mask_iou_mean": ious_all.mean().item() if ious_all.numel() else 1.0,
            "mask_iou_min": ious_all.min().item() if ious_all.numel() else 1.0}


def run_pass(backend: Backend, samples: list[Sample]) -> tuple[float, list[list[Result]]]:
    """Seconds for one call per sample (``backend.device`` synchronised around them), and the outputs."""
    outputs = []
    with Timer(backend.device) as timer:
        for image, size in samples:
            outputs.append(backend([image], output_sizes=[size]))
    return timer.seconds, outputs


def compare(build: Callable[[Variant], Backend], variants: list[Variant], samples: list[Sample],
            rounds: int = 3, warmup: int = 1, baseline: Callable[[], None] | None = None,
            log: Callable[[str], None] | None = None) -> list[Row]:
    """Build every variant (one that fails to build or run gets ``error``), warm each up, then time
    ``rounds`` alternating rounds; parity against the first variant's outputs (eager float32)."""
    rows, built = [], []
    reference: list[Result] | None = None
    for variant in variants:
        row = Row(variant)
        rows.append(row)
        try:
            backend = build(variant)
            for _ in range(warmup):
                _, outs = run_pass(backend, samples)
        except (ValueError, RuntimeError, ImportError, OSError) as exc:
            row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            if log:
                log(f"{variant.label}: not run ({row.error})")
            continue
        results = [o[0] for o in outs]
        reference = reference if reference is not None else results
        row.parity = parity(reference, results)
        built.append((row, backend))
        if log:
            log(f"{variant.label}: built and warmed up")
    with torch.inference_mode():
        for r in range(rounds):
            for row, backend in built:
                base = _timed(baseline, backend.device) if baseline is not None else None
                seconds, _ = run_pass(backend, samples)
                row.pass_seconds.append(seconds)
                if base is not None:
                    row.ratios.append(seconds / base)
                    row.baseline_seconds.append(base)
            if log:
                log(f"round {r + 1}/{rounds} done")
    return rows


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds of one ``fn()`` call, ``device`` synchronised around it."""
    with Timer(device) as timer:
        fn()
    return timer.seconds
