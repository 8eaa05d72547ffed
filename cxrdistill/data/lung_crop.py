"""More pixels on the lungs: each film cropped to the box around the lungs its lung model finds, before resizing.

A 512-px film letterboxed to 224 px spends a third of its pixels on the shoulders, the neck, the abdomen and the
letterbox. :func:`lung_crop_boxes` runs a lung model (any module with ``lung_probability`` and a ``config`` holding
``image_size`` and ``mask_threshold``, such as :class:`cxrdistill.models.LungSegmenter`; this package never imports
the models) over every film and returns the box around its lung mask, widened by a margin, in the film's pixels.
:class:`LungCropped` is the dataset of those crops: its images are the crops, its boxes are moved into the crops'
frames, so the tensor cache, the views, training and evaluation use it like any other dataset.

The boxes are cached on disk (a JSON file keyed by the films and the lung model's weights), so a training run and
its evaluation crop alike without running the lung model twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cxrdistill.data.base import XRayDataset, scale_boxes
from cxrdistill.data.cache import CachedDataset, dataset_fingerprint, default_cache_dir

logger = logging.getLogger(__name__)

MIN_LUNG_SHARE = 0.05  # a lung mask over less of the film than this is no lung: the crop is the whole film
CROP_MARGIN = 0.05  # the crop reaches this share of the lungs' width and height beyond them on every side


@dataclass(frozen=True)
class CropBox:
    """Where a film's crop lies: ``box`` ``(x0, y0, x1, y1)`` in integer film pixels, the film's ``(height,
    width)``, and whether the lung model found lungs (``False``: the crop is the whole film)."""

    box: tuple[int, int, int, int]
    film: tuple[int, int]
    lungs_found: bool

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the crop."""
        x0, y0, x1, y1 = self.box
        return y1 - y0, x1 - x0


def mask_crop_box(mask: np.ndarray, film: tuple[int, int], margin: float) -> CropBox:
    """The crop around the ``True`` pixels of ``mask`` (a lung mask over the whole film, any resolution), widened
    by ``margin`` x its width and height on every side and kept inside the film of ``(height, width)`` ``film``."""
    height, width = film
    if mask.mean() < MIN_LUNG_SHARE:
        return CropBox((0, 0, width, height), (height, width), False)
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    scale_y, scale_x = height / mask.shape[0], width / mask.shape[1]
    y0, y1 = rows[0] * scale_y, (rows[-1] + 1) * scale_y
    x0, x1 = cols[0] * scale_x, (cols[-1] + 1) * scale_x
    pad_x, pad_y = margin * (x1 - x0), margin * (y1 - y0)
    box = (
        max(0, int(np.floor(x0 - pad_x))),
        max(0, int(np.floor(y0 - pad_y))),
        min(width, int(np.ceil(x1 + pad_x))),
        min(height, int(np.ceil(y1 + pad_y))),
    )
    return CropBox(box, (height, width), True)


def film_lung_masks(lung_model, images: torch.Tensor, to_image: np.ndarray, films: list[tuple[int, int]]):
    """Each film's lung mask on a grid with the film's aspect: ``lung_model`` over ``images`` ``(B, 1, S, S)``
    (films letterboxed to ``S`` by the matrices ``to_image`` ``(B, 3, 3)``), the letterbox cut away."""
    probability = lung_model.lung_probability(images).float().numpy()
    size = probability.shape[-1]
    scale_to_grid = size / images.shape[-1]
    masks = []
    for grid, matrix, (height, width) in zip(probability, to_image, films, strict=True):
        x0, y0 = matrix[0, 2] * scale_to_grid, matrix[1, 2] * scale_to_grid
        x1, y1 = x0 + width * matrix[0, 0] * scale_to_grid, y0 + height * matrix[1, 1] * scale_to_grid
        top, left = round(float(y0)), round(float(x0))
        rows = slice(top, max(top + 1, round(float(y1))))
        cols = slice(left, max(left + 1, round(float(x1))))
        masks.append(grid[rows, cols] > lung_model.config.mask_threshold)
    return masks


def lung_crop_boxes(
    lung_model,
    dataset: XRayDataset,
    margin: float = CROP_MARGIN,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
) -> dict[str, CropBox]:
    """``{film id: CropBox}``: the box around each film's lungs as ``lung_model`` finds them, widened by
    ``margin``; a film with less than :data:`MIN_LUNG_SHARE` of lung keeps its whole frame. Cached on disk."""
    size = lung_model.config.image_size
    weights = hashlib.sha256()
    for name, tensor in sorted(lung_model.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().float().numpy().tobytes())
    key = hashlib.sha256(
        json.dumps([dataset_fingerprint(dataset, size), weights.hexdigest(), margin, MIN_LUNG_SHARE]).encode()
    ).hexdigest()[:20]
    folder = default_cache_dir() if cache_dir is None else Path(cache_dir)
    path = folder / f"lung-crops-{key}.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        return {film: CropBox(tuple(v["box"]), tuple(v["film"]), v["lungs_found"]) for film, v in stored.items()}
    cached = CachedDataset(dataset, size=size, cache_dir=cache_dir)
    lung_model.eval()
    crops: dict[str, CropBox] = {}
    for start in tqdm(range(0, len(cached), batch_size), desc="finding the lungs", unit="batch"):
        items = [cached[i] for i in range(start, min(start + batch_size, len(cached)))]
        images = torch.from_numpy(np.stack([item["image"] for item in items]))[:, None]
        films = [tuple(item["source_size"]) for item in items]
        masks = film_lung_masks(lung_model, images, np.stack([item["to_image"] for item in items]), films)
        for item, mask, film in zip(items, masks, films, strict=True):
            crops[item["id"]] = mask_crop_box(mask, film, margin)
    folder.mkdir(parents=True, exist_ok=True)
    stored = {id_: {"box": list(c.box), "film": list(c.film), "lungs_found": c.lungs_found} for id_, c in crops.items()}
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(stored))
    os.replace(tmp, path)
    missing = sum(not c.lungs_found for c in crops.values())
    if missing:
        logger.warning("no lungs found on %d of %d films: they keep their whole frame", missing, len(crops))
    return crops


class LungCropped(XRayDataset):
    """``dataset`` with every film cropped to its :class:`CropBox` (:func:`lung_crop_boxes`) and its boxes moved
    into the crop (clipped to it; :attr:`box_area_outside` is the share of the boxes' area the crops cut off).
    A map computed on a crop covers the crop's frame (the Predictor draws it back onto the film).
    """

    def __init__(self, dataset: XRayDataset, crops: dict[str, CropBox]) -> None:
        missing = [record.id for record in dataset.records if record.id not in crops]
        if missing:
            raise ValueError(f"{len(missing)} films have no crop box, e.g. {missing[0]!r}")
        self.base = dataset
        self.crops = {record.id: crops[record.id] for record in dataset.records}
        records, total, kept = [], 0.0, 0.0
        for record in dataset.records:
            crop = self.crops[record.id]
            boxes, labels = record.boxes, record.box_labels
            if len(boxes) and record.box_frame is not None:
                boxes = scale_boxes(boxes, record.box_frame, crop.film)
            x0, y0, x1, y1 = crop.box
            moved = boxes - np.array([x0, y0, x0, y0], dtype=np.float32)
            clipped = np.clip(moved, 0, [x1 - x0, y1 - y0, x1 - x0, y1 - y0]).astype(np.float32)
            area = np.prod(np.maximum(moved[:, 2:] - moved[:, :2], 0), axis=1)
            clipped_area = np.prod(np.maximum(clipped[:, 2:] - clipped[:, :2], 0), axis=1)
            total, kept = total + float(area.sum()), kept + float(clipped_area.sum())
            keep = clipped_area > 0
            records.append(replace(record, boxes=clipped[keep], box_labels=labels[keep], box_frame=crop.size))
        self.box_area_outside = 1.0 - kept / total if total else 0.0
        super().__init__(records, dataset.global_space, dataset.local_space, dataset.read_limits)

    def read_image(self, index: int) -> np.ndarray:
        film_id = self.records[index].id
        image, crop = self.base.read_image(index), self.crops[film_id]
        if image.shape != crop.film:
            raise ValueError(f"film {film_id!r} is {image.shape}, its crop box was found on a {crop.film} film")
        return crop_film(image, crop)

    def subset(self, indices) -> LungCropped:
        return LungCropped(self.base.subset(indices), self.crops)

    def fingerprint_extra(self) -> list:
        """What the tensor cache's key adds for a cropped dataset: every crop box."""
        return [list(self.crops[record.id].box) for record in self.records]


def crop_film(image: np.ndarray, crop: CropBox) -> np.ndarray:
    """The crop of a film ``image`` ``(H, W)``."""
    x0, y0, x1, y1 = crop.box
    return np.ascontiguousarray(image[y0:y1, x0:x1])
