"""Inputs and outputs of ``fastinst predict``: finding images and videos, decoding them, encoding a video.

Images decode with Pillow, videos with PyAV (FFmpeg bundled in its wheels, so nothing is needed from
the system). Both come upright, as a viewer shows them: an image's EXIF orientation and a video's
display matrix (rotation metadata) are applied. Every failure is a :class:`MediaError` whose one-line
message names the file.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fastinst.predict.orientation import display_matrix, upright

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


class MediaError(ValueError):
    """An input that cannot be used; the message names the file (or pattern) in one line."""


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS


def collect_inputs(specs: list[str]) -> list[Path]:
    """Files named by ``specs``: files as given, folders' supported files (sorted, not recursive),
    glob patterns' supported matches; each file once, in order. Raises for a missing path, a file of
    an unsupported extension, or when nothing is found."""
    supported = IMAGE_EXTS + VIDEO_EXTS
    found: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in supported)
        elif path.is_file():
            if path.suffix.lower() not in supported:
                raise MediaError(f"{path}: unsupported extension {path.suffix or '(none)'!r} "
                                 f"(images: {' '.join(IMAGE_EXTS)}; videos: {' '.join(VIDEO_EXTS)})")
            found.append(path)
        elif glob.has_magic(spec):
            found += sorted(p for p in map(Path, glob.glob(spec, recursive=True))
                            if p.is_file() and p.suffix.lower() in supported)
        else:
            raise MediaError(f"{path}: no such file or folder")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise MediaError(f"no images or videos found in {' '.join(specs)}")
    return unique


def read_image(path: str | Path) -> np.ndarray:
    """``(H, W, 3) uint8`` RGB of the image file ``path``, EXIF orientation applied."""
    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except UnidentifiedImageError:
        raise MediaError(f"{path}: not a readable image (not in a format Pillow can decode)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's decoders raise all three on corrupt files
        raise MediaError(f"{path}: not a readable image ({exc})") from None


class VideoReader:
    """Frames of a video file as ``(H, W, 3) uint8`` RGB arrays, upright (its display matrix applied);
    ``fps`` and ``num_frames`` (0 when unknown)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._container = av.open(str(path))
        except av.FFmpegError as exc:
            raise MediaError(f"{path}: not a readable video ({exc.strerror})") from None
        except OSError as exc:
            raise MediaError(f"{path}: not a readable video ({exc})") from None
        if not self._container.streams.video:
            self._container.close()
            raise MediaError(f"{path}: has no video stream")
        self._stream = self._container.streams.video[0]
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps: Fraction = Fraction(rate) if rate else Fraction(25)
        self.num_frames = int(self._stream.frames or 0)

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            for frame in self._container.decode(self._stream):
                yield upright(frame.to_ndarray(format="rgb24"), display_matrix(frame))
        except av.FFmpegError as exc:
            raise MediaError(f"{self.path}: video decoding failed ({exc.strerror})") from None

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoWriter:
    """H.264 MP4 (yuv420p, playable everywhere) at ``fps``; frames of one size, odd sides padded by a
    black row/column (the 4:2:0 chroma needs even sides)."""

    def __init__(self, path: str | Path, fps: Fraction | float) -> None:
        self.path = Path(path)
        self._container = av.open(str(path), mode="w")
        self._fps = Fraction(fps).limit_denominator(100000)
        self._stream: av.VideoStream | None = None

    def write(self, frame: np.ndarray) -> None:
        """Append ``frame (H, W, 3) uint8`` RGB."""
        h, w = frame.shape[:2]
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=self._fps)
            self._stream.width, self._stream.height = w + w % 2, h + h % 2
            self._stream.pix_fmt = "yuv420p"
        if (h + h % 2, w + w % 2) != (self._stream.height, self._stream.width):
            raise MediaError(f"{self.path}: frame of {w}x{h} in a video of "
                             f"{self._stream.width}x{self._stream.height}")
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
