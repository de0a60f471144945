"""Params and GFLOPs of every row of a grid beside the paper's numbers (``fastinst analyze-grid``).

FLOPs depend only on tensor shapes, so each row's model is built on the ``meta`` device (no memory,
no arithmetic) and counted for every input: one fixed image size, or the first N images of a
COCO-format val set, each test-resized with the row's ``input.min_size_test``/``max_size_test`` and
post-processed back to its original size (the paper's ``analyze_model.py -n 100`` protocol).
"""

from __future__ import annotations

import copy
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tabulate import tabulate
from tqdm import tqdm

from fastinst.config import Config
from fastinst.data.spec import DataSpec
from fastinst.data.transforms import shortest_edge_size
from fastinst.engine.analyze import count_flops, count_parameters
from fastinst.grid import Grid

Size = tuple[int, int]


@dataclass
class RowReport:
    """One grid row: measured params/GFLOPs, ratio to the reference row, and the paper's."""

    name: str
    params: int
    gflops: float
    ratio: float | None = None
    paper_gflops: float | None = None
    paper_ratio: float | None = None

    @property
    def deviation(self) -> float | None:
        """``ratio / paper_ratio − 1``, or None when either is unknown."""
        if self.ratio is None or self.paper_ratio is None:
            return None
        return self.ratio / self.paper_ratio - 1.0


def meta_model(cfg: Config) -> torch.nn.Module:
    """The model of ``cfg`` on the meta device (backbone weights are not loaded: shapes only)."""
    from fastinst import build_model

    cfg = copy.deepcopy(cfg)
    cfg.model.backbone.weights = None
    with torch.device("meta"):
        return build_model(cfg)


def val_image_sizes(spec: DataSpec, num_images: int) -> list[Size]:
    """Original ``(h, w)`` of the first ``num_images`` images of the val split, in loader order."""
    from fastinst.data.coco import CocoInstanceDataset

    dataset = CocoInstanceDataset(*spec.split("val"))
    infos = [dataset.coco.imgs[i] for i in dataset.image_ids[:num_images]]
    return [(info["height"], info["width"]) for info in infos]


def row_flops(cfg: Config, originals: Sequence[Size], progress: tqdm | None = None) -> tuple[int, float]:
    """``(params, mean GFLOPs)`` of ``cfg`` over images of the ``originals`` sizes, each test-resized."""
    model = meta_model(cfg)
    cache: dict[tuple[Size, Size], float] = {}
    total = 0.0
    for size in originals:
        resized = shortest_edge_size(*size, cfg.input.min_size_test, cfg.input.max_size_test)
        if (resized, size) not in cache:
            counter = count_flops(model, [torch.empty(3, *resized, device="meta")], [size])
            cache[(resized, size)] = counter.total / 1e9
        total += cache[(resized, size)]
        if progress is not None:
            progress.update(1)
    return count_parameters(model), total / len(originals)


def load_reported(path: str | Path, grid_name: str) -> dict[str, float | None]:
    """Paper GFLOPs by row name for ``grid_name`` from a ``reported.csv`` (empty cell → None)."""
    out: dict[str, float | None] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["grid"] == grid_name:
                out[row["row_name"]] = float(row["GFLOPs"]) if row.get("GFLOPs") else None
    return out


def analyze_grid(grid: Grid, originals: Sequence[Size], reported: dict[str, float | None] | None = None,
                 show_progress: bool = True) -> list[RowReport]:
    """Measure every row of ``grid`` on images of ``originals`` sizes; ratios are to ``grid.reference``."""
    reported = reported or {}
    reports = []
    with tqdm(total=len(grid.rows) * len(originals), desc=grid.name, unit="img", disable=not show_progress) as bar:
        for row in grid.rows:
            bar.set_postfix_str(row.name)
            params, gflops = row_flops(row.config, originals, bar)
            reports.append(RowReport(row.name, params, gflops, paper_gflops=reported.get(row.name)))
    by_name = {r.name: r for r in reports}
    ref = by_name.get(grid.reference) if grid.reference else None
    for r in reports:
        if ref is not None:
            r.ratio = r.gflops / ref.gflops
            if r.paper_gflops is not None and ref.paper_gflops:
                r.paper_ratio = r.paper_gflops / ref.paper_gflops
    return reports


COLUMNS = ("row", "params (M)", "GFLOPs", "ratio", "paper GFLOPs", "paper ratio", "deviation")


def _cells(r: RowReport) -> list[str]:
    def fmt(value: float | None, spec: str) -> str:
        return "" if value is None else format(value, spec)

    return [r.name, f"{r.params / 1e6:.2f}", f"{r.gflops:.2f}", fmt(r.ratio, ".4f"), fmt(r.paper_gflops, ".1f"),
            fmt(r.paper_ratio, ".4f"), fmt(None if r.deviation is None else 100 * r.deviation, "+.2f")]


def format_report(reports: Sequence[RowReport], fmt: str = "md") -> str:
    """A markdown table (deviation in %) or CSV of the reports."""
    rows = [_cells(r) for r in reports]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
        return buf.getvalue()
    return tabulate(rows, headers=list(COLUMNS), tablefmt="pipe", disable_numparse=True,
                    colalign=["left"] + ["right"] * (len(COLUMNS) - 1)) + "\n"
