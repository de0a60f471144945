"""Reading weights files: one place that turns any checkpoint the project accepts into a state dict.

Accepted: a state dict, a training checkpoint (a dict whose ``"model"`` is the state dict, as
``fastinst train`` writes), in this project's key layout or the official implementation's
(recognised and converted). A weights path may be an ``http(s)://`` URL, downloaded once into a cache
(:mod:`fastinst.weights_cache`). Everything loads with ``torch.load(weights_only=True)``; numpy arrays,
which detectron2's checkpoints may hold, are allowed (only numpy's array and dtype reconstructors) and
become tensors. A file that is missing, truncated, of another format, or whose tensors do not fit the
model raises :class:`CheckpointError` with one line naming the file and what is wrong.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]  # numpy 1's name, same function

# What unpickling a numpy array of a numeric dtype needs: the reconstructor (under numpy 2's and numpy 1's
# module names), the array and dtype classes, and the dtype instances' own classes (their state is set).
_NUMERIC = (np.bool_, np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64)
_NUMPY_GLOBALS: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
    (_reconstruct, "numpy._core.multiarray._reconstruct"), (_reconstruct, "numpy.core.multiarray._reconstruct"),
    np.ndarray, np.dtype, *(type(np.dtype(t)) for t in _NUMERIC)]


class CheckpointError(ValueError):
    """A weights file cannot be used; the message names the file and the problem in one line."""


@dataclass
class Checkpoint:
    """A weights file's model state dict and, when the trainer stored it, its dataset's categories
    (``[{"id": int, "name": str}, ...]`` in class-index order)."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    categories: list[dict[str, Any]] | None = None


def read_checkpoint(path: str | Path, sha256: str | None = None) -> Checkpoint:
    """The model state dict (official layout converted) and metadata of the weights file ``path`` (or
    URL, fetched into the cache); ``sha256`` (hex, or a prefix of 8+ digits) is checked when given."""
    from fastinst.weights_cache import DownloadError, resolve_weights

    try:
        path = resolve_weights(path, sha256)
    except DownloadError as exc:
        raise CheckpointError(str(exc)) from None
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_why_unreadable(path, exc)})") from None
    categories = None
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        categories = payload.get("categories")
        payload = payload["model"]
    if not isinstance(payload, dict) or not payload:
        raise CheckpointError(f"{path}: holds a {type(payload).__name__}, not a model state dict")
    payload = {k: _as_tensor(v) for k, v in payload.items()}
    bad = [k for k, v in payload.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: not a model state dict ({len(bad)} entries are not tensors, "
                              f"e.g. {bad[0]!r})")
    from fastinst import convert

    if convert.is_official_state_dict(payload):
        payload = convert.convert_official_state_dict(payload)
    return Checkpoint(path, payload, categories if isinstance(categories, list) else None)


def _as_tensor(value: Any) -> Any:
    """A numeric numpy array as a tensor; anything else as it is."""
    return torch.from_numpy(value) if isinstance(value, np.ndarray) and value.dtype.kind in "biufc" else value


def _why_unreadable(path: Path, exc: BaseException) -> str:
    """What is wrong with a file ``torch.load`` refused, in words (torch's own message suggests
    unsafe loading, so it is not repeated)."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        head = f.read(4)
    if isinstance(exc, pickle.UnpicklingError) and (head[:1] == b"\x80" or head.startswith(b"PK")):
        return ("a pickle holding objects other than tensors, numpy arrays and plain values, "
                "which are not loaded for safety")
    if head.startswith(b"PK"):
        return f"a truncated or corrupt archive of {size} bytes"
    return f"{size} bytes of another format"


def check_fits(own: Mapping[str, torch.Tensor], state: Mapping[str, Any], path: str | Path) -> None:
    """A one-line error (counts and first examples) when ``state`` does not fit the model's keys/shapes."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = [f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("keys of another shape", reshaped)) if keys]
    if problems:
        raise CheckpointError(f"{path}: checkpoint does not fit the model built from the config: "
                              + "; ".join(problems))


def load_weights(model: torch.nn.Module, path: str | Path, sha256: str | None = None) -> Checkpoint:
    """Load the weights file or URL ``path`` into ``model`` (which must fit it exactly); returns the
    checkpoint. ``sha256`` as in :func:`read_checkpoint`."""
    ckpt = read_checkpoint(path, sha256)
    check_fits(model.state_dict(), ckpt.state_dict, path)
    model.load_state_dict(ckpt.state_dict)
    return ckpt
