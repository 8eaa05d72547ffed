"""Lung outlines: chest X-rays with right and left lung polygons, for training a lung segmentation model.

The shared data's ``lung_outlines/tbx11k_shenzhen_train.json`` holds outlines for 140 of the Shenzhen images in
TBX11K's ``imgs/extra/mc+shenzhen/train/`` (107 hand-checked, 33 from multi-atlas registration), as ``(x, y)``
polygons in the pixels of the 512 x 512 image. :class:`LungOutlines` reads the image with :func:`cxrdistill.io.
load_xray` and rasterises both lungs into one mask of the image's size.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cxrdistill.io import load_xray

LUNGS = ("right_lung", "left_lung")


@dataclass(frozen=True)
class OutlineRecord:
    """One image and its lung polygons (``(x, y)`` in the image's pixels)."""

    id: str
    path: Path
    polygons: tuple[tuple[tuple[float, float], ...], ...]
    outline: str  # how the outline was made ("hand-checked" or "multi-atlas registration" in the shared file)


class LungOutlines:
    """Images with lung masks. Items: ``{"image": (H, W) float32 in [0, 1], "mask": (H, W) float32 in {0, 1},
    "id": str, "outline": str}``.

    Args:
        tbx11k_root: the TBX11K folder (official layout) the outlines' paths are relative to.
        outlines: the outlines JSON (default: ``lung_outlines/tbx11k_shenzhen_train.json`` beside ``tbx11k_root``).
    """

    def __init__(self, tbx11k_root: str | os.PathLike, outlines: str | os.PathLike | None = None) -> None:
        root = Path(tbx11k_root)
        outlines = Path(outlines) if outlines else root.parent / "lung_outlines" / "tbx11k_shenzhen_train.json"
        try:
            data = json.loads(outlines.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read the lung outlines {outlines}: {error}") from error
        records = []
        for relative, entry in sorted(data["images"].items()):
            missing = [lung for lung in LUNGS if len(entry.get(lung) or ()) < 3]
            if missing:
                raise ValueError(f"{outlines}: {relative} has no polygon for {missing}")
            polygons = tuple(tuple((float(x), float(y)) for x, y in entry[lung]) for lung in LUNGS)
            records.append(OutlineRecord(Path(relative).stem, root / relative, polygons, str(entry.get("outline", ""))))
        if not records:
            raise ValueError(f"{outlines} holds no outlines")
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, indices) -> LungOutlines:
        other = object.__new__(LungOutlines)
        other.records = [self.records[i] for i in indices]
        return other

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image = load_xray(record.path).pixels
        return {
            "image": image,
            "mask": polygon_mask(record.polygons, image.shape),
            "id": record.id,
            "outline": record.outline,
        }


def polygon_mask(polygons, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` float32 mask, 1 inside any of the ``(x, y)`` polygons (pixel centres, as PIL fills them)."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        draw.polygon([tuple(point) for point in polygon], fill=1)
    return np.asarray(canvas, dtype=np.float32)
