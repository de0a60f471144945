"""Training loop: the official FastInst recipe on a COCO-format dataset (docs/official_architecture.md#training-recipe).

Optimizer and LR schedule: ``fastinst.engine.solver``; optional gradient clipping; AMP (autocast +
GradScaler) on CUDA, bf16 autocast where ``solver.amp_dtype`` asks and the CPU has native kernels;
seeded; resumable checkpoints and RNG states: ``fastinst.engine.train_state``; periodic COCO
evaluation; JSONL records (``fastinst.engine.records``). Under ``torchrun`` (env ``WORLD_SIZE`` > 1) it
runs DistributedDataParallel (``fastinst.engine.distributed``), each rank on its own shard of the
data; only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from fastinst.config import Config, ConfigError
from fastinst.data.coco import CocoInstanceDataset
from fastinst.data.spec import DataSpec
from fastinst.data.transforms import EvalTransform, TrainTransform, build_train_loader
from fastinst.engine.distributed import (
    Dist,
    all_gather_object,
    all_reduce_mean,
    barrier,
    setup_distributed,
    shutdown_distributed,
)
from fastinst.engine.evaluate import check_num_classes, coco_evaluate, run_inference
from fastinst.engine.precision import cpu_has_bf16
from fastinst.engine.records import EvalRecord, StepRecord
from fastinst.engine.solver import build_optimizer, build_scheduler
from fastinst.engine.train_state import (
    TrainState,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)

logger = logging.getLogger(__name__)

Record = dict[str, Any]  # a record's flat JSON object (fastinst.engine.records)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; names the iteration and the offending loss terms."""

    def __init__(self, iteration: int, terms: dict[str, float]) -> None:
        self.iteration, self.terms = iteration, terms
        listed = ", ".join(f"{k}={v}" for k, v in terms.items())
        super().__init__(f"non-finite loss at iteration {iteration}: {listed}")


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The dtype training autocasts to on ``device``, or None for fp32 (``solver.amp``/``amp_dtype``).

    float16 only on CUDA (it needs loss scaling and is slow on CPUs); bfloat16 on CUDA and on CPUs
    whose oneDNN has native bf16 kernels (elsewhere it is emulated and slower than fp32: fp32 is used).
    """
    s = cfg.solver
    if not s.amp:
        return None
    if s.amp_dtype == "bfloat16":
        if device.type == "cpu" and not cpu_has_bf16():
            logger.warning("solver.amp_dtype=bfloat16 but this CPU has no native bf16 kernels: training in fp32")
            return None
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None


# --------------------------------------------------------------------------- records


class RecordWriter:
    """Appends records to ``metrics.jsonl`` (rank 0) and passes their JSON objects to ``on_record``."""

    def __init__(self, path: Path | None, on_record: Callable[[Record], None] | None) -> None:
        self.path, self.on_record = path, on_record

    def __call__(self, record: StepRecord | EvalRecord) -> None:
        data = record.to_dict()
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(data) + "\n")
        if self.on_record is not None:
            self.on_record(data)


@dataclass
class Window:
    """Sums of per-step values since the last record (losses, times)."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {k: v / self.steps for k, v in self.sums.items()}


# --------------------------------------------------------------------------- the loop


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _to_device(batch: list[dict[str, Any]], device: torch.device) -> tuple[list[torch.Tensor], list[dict]]:
    """Images ``(3, H, W)`` and targets ``labels (M,)``, ``masks (M, H, W)`` on ``device``."""
    images = [item["image"].to(device, non_blocking=True) for item in batch]
    targets = [{"labels": item["labels"].to(device), "masks": item["masks"].to(device)} for item in batch]
    return images, targets


def train_step(model: nn.Module, state: TrainState, batch: list[dict[str, Any]], cfg: Config, d: Dist,
               amp: torch.dtype | None) -> tuple[dict[str, float], float]:
    """One optimisation step; returns the rank-averaged loss terms (raises on a non-finite one) and
    the lr it used (the largest group's)."""
    images, targets = _to_device(batch, d.device)
    with torch.autocast(d.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        losses = model(images, targets)
    names = sorted(losses)
    values = all_reduce_mean(torch.stack([losses[k].detach().float() for k in names]), d).tolist()
    terms = dict(zip(names, values))
    bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteLossError(state.iteration + 1, bad)
    total = sum(losses[k] for k in names)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(total).backward()
    if cfg.solver.clip_grad_norm > 0:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.solver.clip_grad_norm)
    lr = max(g["lr"] for g in state.optimizer.param_groups)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    state.iteration += 1
    return terms, lr


def evaluate_model(model: nn.Module, cfg: Config, data: DataSpec, device: torch.device,
                   progress: bool = False) -> dict[str, Any]:
    """COCO mask metrics of ``model`` (left in train mode afterwards) on ``data``'s val split."""
    json_path, image_dir = data.split("val")
    dataset = CocoInstanceDataset(json_path, image_dir, transform=EvalTransform(cfg))
    model.eval()
    try:
        predictions = run_inference(model, dataset, cfg, device, progress=progress)
    finally:
        model.train()
    metrics: dict[str, Any] = coco_evaluate(dataset.coco, predictions)
    metrics.update(num_images=len(dataset), num_predictions=len(predictions))
    return metrics


def _check_data(cfg: Config, dataset: CocoInstanceDataset, d: Dist) -> int:
    """Per-rank batch size; checks classes and that the batch splits over the ranks."""
    check_num_classes(cfg, dataset)
    if cfg.solver.batch_size % d.world_size:
        raise ConfigError(f"solver.batch_size={cfg.solver.batch_size} is not divisible by the "
                          f"{d.world_size} processes")
    return cfg.solver.batch_size // d.world_size


def _batches(it: Iterator[list[dict[str, Any]]]) -> Iterator[tuple[list[dict[str, Any]], float]]:
    """Endless ``(batch, seconds spent waiting for it)`` from a loader iterator."""
    while True:
        start = time.perf_counter()
        batch = next(it)
        yield batch, time.perf_counter() - start


def _setup_state(cfg: Config, d: Dist, amp: torch.dtype | None) -> TrainState:
    from fastinst import build_model

    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg).to(d.device).train()
    optimizer = build_optimizer(cfg, model)
    return TrainState(model, optimizer, build_scheduler(cfg, optimizer), torch.amp.GradScaler(enabled=amp == torch.float16))


def train(cfg: Config, data: DataSpec, out_dir: str | Path, on_record: Callable[[Record], None] | None = None,
          resume: bool = True, max_iter: int | None = None, device: str | torch.device | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` on ``data``'s train split into ``out_dir``.

    ``resume``: continue from ``out_dir/last_checkpoint`` if there is one. ``max_iter``: stop after
    that many iterations (the LR schedule still follows ``solver.max_iter``), writing a resumable
    checkpoint. Returns ``checkpoint`` (path), ``iterations``, ``finished`` (reached
    ``solver.max_iter``), ``seconds`` and the last evaluation's metrics (if a val split is given).
    """
    out = Path(out_dir)
    d = setup_distributed(device)
    try:
        return _train(cfg, data, out, on_record, resume, max_iter, d, progress)
    finally:
        shutdown_distributed(d)


def _train(cfg: Config, data: DataSpec, out: Path, on_record: Callable[[Record], None] | None, resume: bool,
           max_iter: int | None, d: Dist, progress: bool) -> dict[str, Any]:
    s = cfg.solver
    stop = min(max_iter, s.max_iter) if max_iter is not None else s.max_iter
    amp = autocast_dtype(cfg, d.device)
    train_json, train_images = data.split("train")
    dataset = CocoInstanceDataset(train_json, train_images, transform=TrainTransform(cfg),
                                  filter_empty=cfg.data.filter_empty)
    per_rank = _check_data(cfg, dataset, d)
    state = _setup_state(cfg, d, amp)
    state.categories = [{"id": int(cid), "name": str(name)}
                        for cid, name in zip(dataset.contiguous_to_category_id, dataset.class_names)]
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(cfg.to_yaml())
    checkpoint = latest_checkpoint(out) if resume else None
    rng = load_checkpoint(checkpoint, state, d.rank, cfg) if checkpoint is not None else None
    if checkpoint is not None:
        logger.info("resumed from %s at iteration %d", checkpoint, state.iteration)
    write = RecordWriter(out / "metrics.jsonl" if d.main else None, on_record if d.main else None)
    model: nn.Module = state.model
    if d.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    loader = build_train_loader(cfg, dataset, batch_size=per_rank, rank=d.rank, world_size=d.world_size,
                                start=state.iteration * per_rank)
    batches = _batches(iter(loader))  # starting an iterator draws from the RNG: do it before (re)seeding
    if rng is not None:
        set_rng_state(rng)
    else:
        seed_everything(cfg.seed + d.rank)
    with _log_file(out if d.main else None):
        started = time.perf_counter()
        metrics = _loop(cfg, data, model, state, batches, stop, d, amp, write, out, progress)
    final = state.iteration >= s.max_iter
    path = out / checkpoint_name(cfg, state.iteration)
    return {"checkpoint": str(path), "iterations": state.iteration, "finished": final,
            "seconds": time.perf_counter() - started, "world_size": d.world_size, **metrics}


@contextlib.contextmanager
def _log_file(out: Path | None) -> Iterator[None]:
    """Copy the ``fastinst`` loggers' INFO messages to ``out/log.txt`` (nothing if ``out`` is None)."""
    if out is None:
        yield
        return
    handler = logging.FileHandler(out / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("fastinst")
    level = package.level
    package.addHandler(handler)
    package.setLevel(min(package.getEffectiveLevel(), logging.INFO))
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
        handler.close()


def _loop(cfg: Config, data: DataSpec, model: nn.Module, state: TrainState,
          batches: Iterator[tuple[list[dict[str, Any]], float]], stop: int, d: Dist,
          amp: torch.dtype | None, write: RecordWriter, out: Path, progress: bool) -> dict[str, Any]:
    """Iterate until ``stop``; checkpoint, log and evaluate on schedule and at the end."""
    s = cfg.solver
    has_val = data.val_json is not None and data.val_images is not None
    metrics: dict[str, Any] = {}
    window = Window()
    bar = tqdm(total=stop, initial=state.iteration, desc="train", unit="it", disable=not (progress and d.main),
               dynamic_ncols=True)
    while state.iteration < stop:
        step_start = time.perf_counter()
        batch, data_time = next(batches)
        terms, lr = train_step(model, state, batch, cfg, d, amp)
        it = state.iteration
        window.add({**terms, "lr": lr, "data_time": data_time, "time": time.perf_counter() - step_start})
        bar.update(1)
        if it % s.log_period == 0 or it == stop:
            record = StepRecord.from_means(it, window.means())
            window = Window()
            bar.set_postfix(loss=f"{record.total_loss:.3f}", lr=f"{record.lr:.2e}")
            if d.main:
                write(record)
                logger.info("iter %d/%d  loss %.4f  lr %.3g  %.3fs/it (data %.3fs)", it, stop,
                            record.total_loss, record.lr, record.time, record.data_time)
        done = it == stop
        if (s.checkpoint_period > 0 and it % s.checkpoint_period == 0) or done:
            _checkpoint(out, state, cfg, d)
        if has_val and ((s.eval_period > 0 and it % s.eval_period == 0) or (done and it == s.max_iter)):
            metrics = _periodic_eval(model, cfg, data, d, write, it)
    bar.close()
    return metrics


def _checkpoint(out: Path, state: TrainState, cfg: Config, d: Dist) -> None:
    rng = all_gather_object(rng_state(), d)
    if d.main:
        save_checkpoint(out / checkpoint_name(cfg, state.iteration), state, rng, cfg)
    barrier(d)


def _periodic_eval(model: nn.Module, cfg: Config, data: DataSpec, d: Dist, write: RecordWriter,
                   iteration: int) -> dict[str, Any]:
    """Evaluate on rank 0 (the others wait); records ``{"type": "eval", "iteration", AP...}``."""
    metrics: dict[str, Any] = {}
    if d.main:
        rng = rng_state()  # the eval loader draws a seed: keep the training stream as if no eval ran
        metrics = evaluate_model(_unwrap(model), cfg, data, d.device)
        set_rng_state(rng)
        write(EvalRecord(iteration, metrics))
        logger.info("eval at iter %d: AP %.4f AP50 %.4f AP75 %.4f", iteration, metrics["AP"], metrics["AP50"],
                    metrics["AP75"])
    barrier(d)
    return metrics
