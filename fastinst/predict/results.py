"""COCO-format output of ``fastinst predict``: ``images.json`` (images and categories, a COCO dataset
without annotations) and ``results.json`` (a COCO results list with RLE masks), so that
``COCO("images.json").loadRes("results.json")`` works in pycocotools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

from fastinst.engine.evaluate import predictions_from_outputs
from fastinst.predict.predictor import Prediction


class Category(TypedDict):
    id: int
    name: str


class CocoResults:
    """Collects images (``id``, ``file_name``, ``height``, ``width``, and ``frame_index`` for a video
    frame) and their predictions, with the ``categories`` (``[{"id", "name"}]`` in class-index order)."""

    def __init__(self, categories: list[dict[str, Any]]) -> None:
        self.categories: list[Category] = [{"id": int(c["id"]), "name": str(c["name"])} for c in categories]
        self.images: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []

    def add(self, prediction: Prediction, file_name: str, frame_index: int | None = None) -> int:
        """Record one image and its instances; returns its image id (1, 2, …)."""
        image_id = len(self.images) + 1
        info: dict[str, Any] = {"id": image_id, "file_name": file_name, "height": prediction.height,
                                "width": prediction.width}
        if frame_index is not None:
            info["frame_index"] = frame_index
        self.images.append(info)
        out = {"scores": prediction.scores, "labels": prediction.labels, "masks": prediction.masks}
        self.results += predictions_from_outputs([out], [image_id], [c["id"] for c in self.categories])
        return image_id

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``images.json`` and ``results.json`` in ``out_dir``; returns their paths."""
        out = Path(out_dir)
        images_path, results_path = out / "images.json", out / "results.json"
        images_path.write_text(json.dumps({"images": self.images, "categories": self.categories,
                                           "annotations": []}))
        results_path.write_text(json.dumps(self.results))
        return images_path, results_path
