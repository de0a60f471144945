"""Prediction over files: images and videos in, overlays (``<stem>.png``, ``<stem>.mp4``) and COCO
results (``images.json``, ``results.json``) out. A file that cannot be read is reported and skipped;
the others are still processed."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from fastinst.engine.visualize import draw_predictions
from fastinst.predict.media import MediaError, VideoReader, VideoWriter, is_video, read_image
from fastinst.predict.predictor import Prediction, Predictor
from fastinst.predict.results import CocoResults


@dataclass
class PredictReport:
    """What a run wrote and which files failed (one line each)."""

    images: int = 0
    frames: int = 0
    instances: int = 0
    written: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _batches(items: Iterable[tuple[str, np.ndarray]], size: int) -> Iterator[list[tuple[str, np.ndarray]]]:
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
    report, coco, names = PredictReport(), CocoResults(predictor.categories), _Names(out, paths)
    bar = tqdm(total=_total_units(paths), desc="predict", unit="img", disable=not progress)

    def fail(message: str) -> None:
        report.failures.append(message)
        if on_error is not None:
            on_error(message)

    def overlay(image: np.ndarray, pred: Prediction) -> np.ndarray:
        report.instances += int((pred.scores >= score_threshold).sum())
        return np.asarray(draw_predictions(image, pred.masks.numpy(), pred.names, pred.scores.tolist(),
                                           score_threshold))

    def readable_images(group: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
        for path in group:
            try:
                yield str(path), read_image(path)
            except MediaError as exc:
                fail(str(exc))
                bar.update(1)

    for video, group in itertools.groupby(paths, key=is_video):
        if video:
            for path in group:
                _predict_video(predictor, path, names(path.stem, ".mp4"), coco, report, bar, overlay, fail)
            continue
        for batch in _batches(readable_images(list(group)), predictor.batch_size):
            for (name, image), pred in zip(batch, predictor.predict_batch([im for _, im in batch])):
                coco.add(pred, name)
                path = names(Path(name).stem, ".png")
                Image.fromarray(overlay(image, pred)).save(path)
                report.written.append(path)
                report.images += 1
            bar.update(len(batch))
    bar.close()
    report.written += coco.write(out)
    return report


def _predict_video(predictor: Predictor, path: Path, out_path: Path, coco: CocoResults, report: PredictReport,
                   bar: tqdm, overlay: Callable[[np.ndarray, Prediction], np.ndarray],
                   fail: Callable[[str], None]) -> None:
    """Predict every frame of the video ``path`` and encode the overlays at its frame rate to ``out_path``."""
    try:
        with VideoReader(path) as video, VideoWriter(out_path, video.fps) as writer:
            index = 0
            for batch in _batches(((str(path), frame) for frame in video), predictor.batch_size):
                for (_, frame), pred in zip(batch, predictor.predict_batch([f for _, f in batch])):
                    coco.add(pred, str(path), frame_index=index)
                    writer.write(overlay(frame, pred))
                    index += 1
                report.frames += len(batch)
                bar.update(len(batch))
        if index == 0:
            out_path.unlink(missing_ok=True)
            fail(f"{path}: no frames could be decoded")
            return
        report.written.append(out_path)
    except MediaError as exc:
        fail(str(exc))
