"""The ``fastinst bench --compare`` table: one row per backend variant."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from fastinst.deploy.backends.base import backend_label


def format_table(rows: list[dict[str, Any]], ratio: bool = False) -> str:
    """Rows from :meth:`fastinst.deploy.compare.Row.summary` as a text table (ratio columns when timed
    against a baseline); parity columns compare with the first row (eager float32)."""
    table = []
    for r in rows:
        name = backend_label(r["backend"], r["dtype"], r["channels_last"])
        if r.get("error"):
            table.append([name, "not run: " + r["error"]])
            continue
        line = [name, f"{r['ms_per_image']:.0f} [{r['ms_min']:.0f}-{r['ms_max']:.0f}]", f"{r['fps']:.2f}"]
        if ratio:
            line += [f"{r['ratio']:.2f} [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}]", f"{r['ratio_of_best']:.2f}"]
        line += [f"{r['score_dev']:.1e}", f"{r['label_agree']:.3f}", f"{r['mask_iou_mean']:.4f}",
                 f"{r['mask_iou_min']:.4f}"]
        table.append(line)
    headers = ["backend", "ms/image [min-max]", "FPS"] + (["ratio to ResNet-50 [min-max]", "ratio of best"] if ratio else []) + \
        ["score dev", "label agree", "mask IoU mean", "mask IoU min"]
    return tabulate(table, headers=headers)
