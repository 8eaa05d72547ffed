"""A pre-resized tensor cache, so CPU training does not decode full-size PNGs or DICOMs every epoch.

:class:`CachedDataset` decodes every image of a dataset once, letterboxes it onto a ``size`` square with area
averaging (the same :func:`~cxrdistill.data.transforms.warp` the views use) and stores all of them in one
``uint16`` ``.npy`` file that is memory-mapped on later runs (and shared by DataLoader workers). ``uint16`` keeps
8-bit sources exact and 16-bit sources to 1/65535. Samples keep their boxes (moved into the cache's frame), the
size of the original image and the matrix from original to cache pixels, so predictions can be mapped back.

The file name is a hash of the dataset's ids, the files' sizes and modification times and the cache settings:
change any of them and a new cache is built. Files are written to a temporary name and renamed into place, so an
interrupted build never leaves a cache that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from cxrdistill.data.base import XRayDataset, scale_boxes
from cxrdistill.data.transforms import letterbox_matrix, transform_boxes, warp

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
_UINT16_MAX = 65535


def default_cache_dir() -> Path:
    """``$CXRDISTILL_CACHE`` or ``~/.cache/cxrdistill``."""
    return Path(os.environ.get("CXRDISTILL_CACHE", Path.home() / ".cache" / "cxrdistill"))


def dataset_fingerprint(dataset: XRayDataset, size: int) -> str:
    """Hash of what the cached pixels depend on: ids, files (size, mtime) and the cache settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_FORMAT_VERSION, type(dataset).__name__, size]).encode())
    for record in dataset.records:
        stat = os.stat(record.path) if record.path else None
        entry = [record.id, record.path, stat.st_size if stat else None, stat.st_mtime_ns if stat else None]
        digest.update(json.dumps(entry).encode())
    if hasattr(dataset, "images"):  # in-memory datasets: hash the pixels themselves
        digest.update(np.ascontiguousarray(dataset.images).tobytes())
    if hasattr(dataset, "fingerprint_extra"):  # derived datasets (lung crops): what they derive the pixels by
        digest.update(json.dumps(dataset.fingerprint_extra()).encode())
    return digest.hexdigest()[:20]


class CachedDataset(Dataset):
    """``dataset`` with its images letterboxed to ``size`` px and cached on disk.

    Args:
        dataset: any :class:`~cxrdistill.data.base.XRayDataset`.
        size: side of the cached square (default 256, a little above the 224 teacher view so zoom-out
            augmentation still has real pixels).
        cache_dir: where cache files live (default :func:`default_cache_dir`).
        progress: show a progress bar while building.

    Items are sample dicts like the dataset's, with ``image`` ``(size, size)``, boxes in cache pixels, and two
    extra keys: ``source_size`` (original ``(H, W)``) and ``to_image`` (3x3 original -> cache matrix).
    """

    def __init__(
        self, dataset: XRayDataset, size: int = 256, cache_dir: str | os.PathLike | None = None, progress: bool = True
    ) -> None:
        self.dataset = dataset
        self.size = size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        key = dataset_fingerprint(dataset, size)
        self.pixels_path = self.cache_dir / f"{type(dataset).__name__.lower()}-{size}px-{key}.npy"
        self.meta_path = self.pixels_path.with_suffix(".json")
        if not (self.pixels_path.is_file() and self.meta_path.is_file()):
            self._build(progress)
        meta = json.loads(self.meta_path.read_text())
        if meta["ids"] != [record.id for record in dataset.records]:
            raise RuntimeError(f"cache {self.meta_path} does not match the dataset; delete it to rebuild")
        self.source_sizes = [tuple(s) for s in meta["source_sizes"]]
        self.pixels = np.load(self.pixels_path, mmap_mode="r")  # (N, size, size) uint16

    def _build(self, progress: bool) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        suffix = f".tmp-{os.getpid()}"
        tmp_pixels = self.pixels_path.with_name(self.pixels_path.name + suffix)
        tmp_meta = self.meta_path.with_name(self.meta_path.name + suffix)
        try:
            store = np.lib.format.open_memmap(
                tmp_pixels, mode="w+", dtype=np.uint16, shape=(len(self.dataset), self.size, self.size)
            )
            source_sizes = []
            for index in tqdm(
                range(len(self.dataset)),
                desc=f"caching {type(self.dataset).__name__} at {self.size}px",
                disable=not progress,
                unit="img",
            ):
                image = self.dataset.read_image(index)
                source_sizes.append(list(image.shape))
                square = warp(torch.from_numpy(image), letterbox_matrix(*image.shape, self.size), self.size)
                store[index] = np.round(square.clamp(0, 1).numpy() * _UINT16_MAX).astype(np.uint16)
            store.flush()
            del store
            tmp_meta.write_text(json.dumps({"ids": [r.id for r in self.dataset.records], "source_sizes": source_sizes}))
            os.replace(tmp_pixels, self.pixels_path)
            os.replace(tmp_meta, self.meta_path)
        finally:
            for leftover in (tmp_pixels, tmp_meta):
                leftover.unlink(missing_ok=True)
        logger.info("built tensor cache %s", self.pixels_path)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        record = self.dataset.records[index]
        source_size = self.source_sizes[index]
        to_image = letterbox_matrix(*source_size, self.size)
        boxes = record.boxes
        if len(boxes) and record.box_frame is not None:
            boxes = scale_boxes(boxes, record.box_frame, source_size)
        boxes, keep = transform_boxes(boxes, to_image, self.size)
        return {
            "id": record.id,
            "image": self.pixels[index].astype(np.float32) / _UINT16_MAX,
            "global": record.global_target.copy(),
            "local": record.local_target.copy(),
            "local_mask": record.local_mask.copy(),
            "boxes": boxes,
            "box_labels": record.box_labels[keep],
            "group": record.group,
            "source": record.source,
            "source_size": source_size,
            "to_image": to_image,
        }
