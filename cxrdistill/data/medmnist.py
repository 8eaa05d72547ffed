"""PneumoniaMNIST (Yang et al., MedMNIST v2, Sci. Data 2023): 28 x 28 chest X-rays, normal vs pneumonia.

Read from the MedMNIST ``.npz`` (arrays ``<split>_images`` of uint8 ``(N, 28, 28)`` and ``<split>_labels`` of
``(N, 1)``, 0 normal, 1 pneumonia). Images are held in memory; there are no local labels and no boxes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxrdistill.data.base import Record, XRayDataset
from cxrdistill.labels import NO_LOCAL_LABELS, PNEUMONIA_BINARY


class PneumoniaMNIST(XRayDataset):
    """PneumoniaMNIST.

    Args:
        path: the ``.npz`` file, or a folder holding exactly one ``pneumoniamnist*.npz``.
        split: ``"train"``, ``"val"`` or ``"test"`` (whichever the file has).
    """

    def __init__(self, path: str | os.PathLike, split: str = "train") -> None:
        path = Path(path)
        if path.is_dir():
            candidates = sorted(path.glob("pneumoniamnist*.npz"))
            if len(candidates) != 1:
                raise FileNotFoundError(
                    f"expected one pneumoniamnist*.npz in {path}, found {[c.name for c in candidates]}"
                )
            path = candidates[0]
        with np.load(path) as archive:
            splits = sorted(key[: -len("_images")] for key in archive.files if key.endswith("_images"))
            if split not in splits:
                raise ValueError(f"unknown PneumoniaMNIST split {split!r}; {path.name} has {splits}")
            images = archive[f"{split}_images"]
            labels = archive[f"{split}_labels"].reshape(-1)
        if images.ndim != 3 or len(images) != len(labels):
            raise ValueError(f"{path}: expected (N, H, W) images and N labels, got {images.shape} and {labels.shape}")
        self.images = images  # (N, 28, 28) uint8
        records = [
            Record(
                id=f"{split}/{i:05d}",
                path=None,
                global_target=PNEUMONIA_BINARY.encode([PNEUMONIA_BINARY.names[int(label)]]),
                local_target=np.zeros(0, dtype=np.float32),
                local_mask=np.zeros(0, dtype=np.float32),
                source="pneumoniamnist",
            )
            for i, label in enumerate(labels)
        ]
        super().__init__(records, PNEUMONIA_BINARY, NO_LOCAL_LABELS)
        self._row = {record.id: i for i, record in enumerate(records)}

    def read_image(self, index: int) -> np.ndarray:
        return self.images[self._row[self.records[index].id]].astype(np.float32) / 255.0
