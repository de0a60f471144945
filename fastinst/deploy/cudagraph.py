"""CUDA graphs: the single-image inference path captured once per (input size, output size), then replayed.

Capture removes the per-kernel launch cost of the many small decoder ops at batch 1; it pays off
for a fixed test size (e.g. the paper's 640-short-edge inputs padded to 640x864). A new size is
captured on first sight (after a warm-up call on a side stream, as CUDA graphs require); results
are copied out of the graph's static outputs before the next replay.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GraphCache:
    """``cache(image (1, 3, h, w) on CUDA, (H, W))`` → ``(scores, labels, masks)`` via captured graphs of ``module``."""

    def __init__(self, module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.module, self.device, self.dtype = module, device, dtype
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, tuple[Tensor, ...]]] = {}

    def _capture(self, image: Tensor, size: tuple[int, int]) -> tuple[torch.cuda.CUDAGraph, Tensor, tuple[Tensor, ...]]:
        static = image.clone()
        autocast = torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype != torch.float32)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), autocast:
            self.module(static, size)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), autocast:
            outputs = self.module(static, size)
        return graph, static, outputs

    def __call__(self, image: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        key = (tuple(image.shape), image.stride(), size)
        if key not in self.graphs:
            self.graphs[key] = self._capture(image, size)
        graph, static, outputs = self.graphs[key]
        static.copy_(image)
        graph.replay()
        scores, labels, masks = (t.clone() for t in outputs)
        return scores, labels, masks
