"""A stand-in lung model for lung-crop tests: no training, a known mask."""

from __future__ import annotations

import torch


class RectangleLungs(torch.nn.Module):
    """A stand-in lung model: lung wherever the letterboxed input's fraction ``rows`` x ``cols`` lies."""

    def __init__(self, rows=(0.25, 0.75), cols=(0.125, 0.625), size: int = 32) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.rows, self.cols, self.calls = rows, cols, 0
        self.config = type("Config", (), {"image_size": size, "mask_threshold": 0.5})()

    def lung_probability(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        size = self.config.image_size
        out = torch.zeros(len(images), size, size)
        r0, r1 = (int(v * size) for v in self.rows)
        c0, c1 = (int(v * size) for v in self.cols)
        out[:, r0:r1, c0:c1] = 1.0
        return out
