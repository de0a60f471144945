"""Prediction over files: images and videos in, overlays (``<stem>.png``, ``<stem>.mp4``) and COCO
results (``images.json``, ``results.json``) out. A file that cannot be read is reported and skipped;
the others are still processed."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from fastinst.engine.visualize import draw_predictions
from fastinst.predict.media import MediaError, VideoReader, VideoWriter, is_video, read_image
from fastinst.predict.predictor import Prediction, Predictor
from fastinst.predict.results import CocoResults

T = TypeVar("T")


@dataclass
class PredictReport:
    """What a run wrote and which files failed (one line each)."""

    images: int = 0
    frames: int = 0
    instances: int = 0
    written: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


class _Names:
    """Distinct output file names: a stem already taken (or naming an input) gets ``-2``, ``-3``, …"""

    def __init__(self, out_dir: Path, inputs: list[Path]) -> None:
        self.out_dir, self.taken = out_dir, {p.resolve() for p in inputs}

    def __call__(self, stem: str, suffix: str) -> Path:
        for n in itertools.count(1):
            path = self.out_dir / f"{stem}{'' if n == 1 else f'-{n}'}{suffix}"
            if path.resolve() not in self.taken:
                self.taken.add(path.resolve())
                return path
        raise AssertionError("unreachable")


def _total_units(paths: list[Path]) -> int | None:
    """Images plus video frames, or ``None`` when a video does not tell its frame count."""
    total = 0
    for path in paths:
        if not is_video(path):
            total += 1
            continue
        try:
            with VideoReader(path) as video:
                if not video.num_frames:
                    return None
                total += video.num_frames
        except MediaError:
            pass  # reported when it is processed
    return total


def predict_files(predictor: Predictor, paths: list[Path], out_dir: str | Path, score_threshold: float = 0.5,
                  progress: bool = True, on_error: Callable[[str], None] | None = None) -> PredictReport:
    """Predict every file of ``paths`` (images batched ``predictor.batch_size`` at a time, videos frame
    by frame in batches), drawing instances scoring at least ``score_threshold`` into ``out_dir``;
    ``results.json`` holds all predictions. ``on_error`` is told each failure as it happens."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(predictor, CocoResults(predictor.categories), _Names(out, paths), score_threshold, on_error,
               tqdm(total=_total_units(paths), desc="predict", unit="img", disable=not progress))
    try:
        for video, group in itertools.groupby(paths, key=is_video):
            if video:
                for path in group:
                    run.video(path)
            else:
                run.images(list(group))
    finally:
        run.bar.close()
        run.report.written += run.coco.write(out)
    return run.report


@dataclass
class _Run:
    predictor: Predictor
    coco: CocoResults
    names: _Names
    score_threshold: float
    on_error: Callable[[str], None] | None
    bar: tqdm
    report: PredictReport = field(default_factory=PredictReport)

    def fail(self, message: str) -> None:
        self.report.failures.append(message)
        if self.on_error is not None:
            self.on_error(message)

    def predict(self, images: list[np.ndarray], what: str) -> list[Prediction]:
        """The predictions of a batch; a model error becomes a :class:`MediaError` naming ``what``."""
        try:
            return self.predictor.predict_batch(images)
        except (ValueError, RuntimeError) as exc:  # e.g. an image too small for the queries, out of memory
            raise MediaError(f"{what}: prediction failed ({str(exc).splitlines()[0] if str(exc) else exc!r})") from None

    def overlay(self, image: np.ndarray, pred: Prediction) -> np.ndarray:
        self.report.instances += int((pred.scores >= self.score_threshold).sum())
        return np.asarray(draw_predictions(image, pred.masks.numpy(), pred.names, pred.scores.tolist(),
                                           self.score_threshold))

    def _readable(self, paths: list[Path]) -> Iterator[tuple[Path, np.ndarray]]:
        for path in paths:
            try:
                yield path, read_image(path)
            except MediaError as exc:
                self.fail(str(exc))
                self.bar.update(1)

    def images(self, paths: list[Path]) -> None:
        """Overlay PNGs and results of image files, ``batch_size`` at a time."""
        for batch in _batches(self._readable(paths), self.predictor.batch_size):
            self._predict_images(batch)

    def _predict_images(self, batch: list[tuple[Path, np.ndarray]]) -> None:
        try:
            preds = self.predict([im for _, im in batch], ", ".join(str(p) for p, _ in batch))
        except MediaError as exc:
            if len(batch) > 1:  # one by one, so that only the images the model fails on are lost
                for one in batch:
                    self._predict_images([one])
            else:
                self.fail(str(exc))
                self.bar.update(1)
            return
        self._write_images(batch, preds)

    def _write_images(self, batch: list[tuple[Path, np.ndarray]], preds: list[Prediction]) -> None:
        for (path, image), pred in zip(batch, preds, strict=True):
            self.coco.add(pred, str(path))
            out_path = self.names(path.stem, ".png")
            Image.fromarray(self.overlay(image, pred)).save(out_path)
            self.report.written.append(out_path)
            self.report.images += 1
        self.bar.update(len(batch))

    def video(self, path: Path) -> None:
        """Predict every frame of the video ``path``; encode the overlays at its frame rate to ``<stem>.mp4``."""
        out_path, index = self.names(path.stem, ".mp4"), 0
        try:
            with VideoReader(path) as video, VideoWriter(out_path, video.fps) as writer:
                for frames in _batches(iter(video), self.predictor.batch_size):
                    preds = self.predict(frames, f"{path} frames {index}-{index + len(frames) - 1}")
                    for frame, pred in zip(frames, preds, strict=True):
                        self.coco.add(pred, str(path), frame_index=index)
                        writer.write(self.overlay(frame, pred))
                        index += 1
                    self.report.frames += len(frames)
                    self.bar.update(len(frames))
            if index == 0:
                raise MediaError(f"{path}: no frames could be decoded")
            self.report.written.append(out_path)
        except MediaError as exc:
            self.fail(str(exc))
            if index == 0:
                out_path.unlink(missing_ok=True)
