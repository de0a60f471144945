"""The device a stage runs on, and timing on it: the default choice (CUDA when available) and
sections timed between two device synchronisations."""

from __future__ import annotations

import time

import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    """Wait until the work queued on ``device`` is done (CUDA runs asynchronously; the CPU does not)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall seconds of a ``with`` block, ``device`` synchronised on entry and exit:
    ``with Timer(device) as timer: ...`` then ``timer.seconds``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Timer:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start
