"""Upright video frames: a video's display matrix (phones store portrait video as landscape frames plus a
rotation) applied to the decoded pixels, so frames are what a player shows.

FFmpeg's display matrix ``[[a, b, u], [c, d, v], [x, y, w]]`` maps a source pixel ``(p, q)`` (``q``
down) to the displayed ``(a·p + c·q + x, b·p + d·q + y)``. PyAV 18 hands it on each decoded frame as
side data (``VideoFrame.rotation`` alone would lose mirroring). Rotations other than multiples of 90°
are taken to the nearest one.
"""

from __future__ import annotations

from typing import cast

import av
import numpy as np
from av.sidedata.sidedata import SideDataContainer, Type

_MATRIX_BYTES = 9 * 4  # nine int32


def display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """The ``(3, 3)`` int32 display matrix of ``frame`` (16.16 fixed point), or None without one."""
    # PyAV's stub types ``Frame.side_data`` as a TypedDict; at runtime it is a SideDataContainer.
    for data in cast(SideDataContainer, frame.side_data):
        if data.type == Type.DISPLAYMATRIX and data.buffer_size == _MATRIX_BYTES:
            return np.frombuffer(bytes(data), np.int32).reshape(3, 3)
    return None


def upright(image: np.ndarray, matrix: np.ndarray | None) -> np.ndarray:
    """``image (H, W, ...)`` as displayed under ``matrix`` (None: unchanged)."""
    if matrix is None:
        return image
    a, b, c, d = int(matrix[0, 0]), int(matrix[0, 1]), int(matrix[1, 0]), int(matrix[1, 1])
    if abs(b) > abs(a):  # the displayed x follows the source's y: transpose first
        image, col_sign, row_sign = image.swapaxes(0, 1), c, b
    else:
        col_sign, row_sign = a, d
    if col_sign < 0:
        image = image[:, ::-1]
    if row_sign < 0:
        image = image[::-1]
    return np.ascontiguousarray(image)
