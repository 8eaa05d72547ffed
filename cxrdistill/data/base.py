"""What every dataset shares: a light record per image and the sample dict it decodes into.

A dataset holds a list of :class:`Record` (paths, labels, boxes: cheap, no pixels) and decodes one image on
``__getitem__``. A sample is a plain dict::

    {
        "id": str,                 # unique within the dataset
        "image": np.ndarray,       # (H, W) float32 in [0, 1], as read by cxrdistill.io.load_xray
        "global": np.ndarray,      # (K,) float32 indicator in the dataset's global label space (NaN if unknown)
        "local": np.ndarray,       # (L,) float32 multi-hot in the local label space
        "local_mask": np.ndarray,  # (L,) float32: 1 where the local label is known, 0 where it is not
        "boxes": np.ndarray,       # (M, 4) float32, xyxy in pixels of "image"
        "box_labels": np.ndarray,  # (M,) int64 index into the local label space
        "group": str,              # patient (or image) id: what must never straddle a train/val split
        "source": str,             # sub-source (hospital / sub-dataset)
    }
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from cxrdistill.io import ReadLimits, XRayReadError, load_xray
from cxrdistill.labels import LabelSpace

logger = logging.getLogger(__name__)

EMPTY_BOXES = np.zeros((0, 4), dtype=np.float32)
EMPTY_BOX_LABELS = np.zeros((0,), dtype=np.int64)


@dataclass(frozen=True)
class Record:
    """Everything known about one image before decoding it.

    Attributes:
        id: unique id within the dataset.
        path: file to read (``None`` for in-memory datasets).
        global_target: ``(K,)`` indicator vector in the global space; all-NaN when the label is unknown.
        local_target: ``(L,)`` multi-hot vector in the local space.
        local_mask: ``(L,)``, 1 where ``local_target`` is known.
        boxes: ``(M, 4)`` xyxy boxes in the pixel frame of ``box_frame``.
        box_labels: ``(M,)`` local-label index of each box.
        box_frame: ``(height, width)`` of the image the boxes were drawn on; when the file on disk has another size
            the boxes are rescaled on load. ``None`` means the boxes are in the pixels of the file as stored.
        group: patient or image id for leakage-free splitting.
        source: sub-source name (hospital, sub-dataset).
    """

    id: str
    path: str | None
    global_target: np.ndarray
    local_target: np.ndarray
    local_mask: np.ndarray
    boxes: np.ndarray = field(default_factory=lambda: EMPTY_BOXES)
    box_labels: np.ndarray = field(default_factory=lambda: EMPTY_BOX_LABELS)
    box_frame: tuple[int, int] | None = None
    group: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.boxes.shape[1:] != (4,) or len(self.boxes) != len(self.box_labels):
            raise ValueError(
                f"record {self.id!r}: boxes must be (M, 4) with M box labels, got {self.boxes.shape} "
                f"and {self.box_labels.shape}"
            )
        if not self.group:
            object.__setattr__(self, "group", self.id)

    @property
    def labelled(self) -> bool:
        return not np.isnan(self.global_target).any()


def scale_boxes(boxes: np.ndarray, from_frame: tuple[int, int], to_frame: tuple[int, int]) -> np.ndarray:
    """Rescale xyxy ``boxes`` from an image of ``(height, width)`` ``from_frame`` to ``to_frame``."""
    if len(boxes) == 0 or tuple(from_frame) == tuple(to_frame):
        return boxes.astype(np.float32, copy=True)
    sy = to_frame[0] / from_frame[0]
    sx = to_frame[1] / from_frame[1]
    return (boxes * np.array([sx, sy, sx, sy], dtype=np.float64)).astype(np.float32)


class XRayDataset(Dataset):
    """Base class: a list of :class:`Record` plus the label spaces they are encoded in.

    Subclasses build ``records`` in ``__init__``; in-memory datasets override :meth:`read_image`.
    """

    global_space: LabelSpace
    local_space: LabelSpace

    def __init__(
        self,
        records: Sequence[Record],
        global_space: LabelSpace,
        local_space: LabelSpace,
        read_limits: ReadLimits | None = None,
    ) -> None:
        self.records = list(records)
        self.global_space = global_space
        self.local_space = local_space
        # Curated datasets are chest films by construction, and their BodyPartExamined tags are often wrong or
        # local-language: only the public upload path needs the body-part check.
        self.read_limits = read_limits or ReadLimits(chest_only=False)
        ids = [record.id for record in self.records]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{type(self).__name__}: duplicate ids, e.g. {_first_duplicate(ids)!r}")
        for record in self.records:
            if record.global_target.shape != (len(global_space),) or record.local_target.shape != (len(local_space),):
                raise ValueError(
                    f"record {record.id!r}: targets of shape {record.global_target.shape} / "
                    f"{record.local_target.shape} do not fit the spaces {global_space.name!r} ({len(global_space)}) "
                    f"/ {local_space.name!r} ({len(local_space)})"
                )

    def __len__(self) -> int:
        return len(self.records)

    def read_image(self, index: int) -> np.ndarray:
        """Decode image ``index`` to ``(H, W)`` float32 in ``[0, 1]``; a bad file's error names the image."""
        record = self.records[index]
        try:
            return load_xray(record.path, limits=self.read_limits).pixels
        except XRayReadError as error:
            raise XRayReadError(f"{type(self).__name__} image {record.id!r} ({record.path}): {error}") from error

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image = self.read_image(index)
        boxes = record.boxes
        if len(boxes) and record.box_frame is not None:
            boxes = scale_boxes(boxes, record.box_frame, image.shape)
        return {
            "id": record.id,
            "image": image,
            "global": record.global_target.copy(),
            "local": record.local_target.copy(),
            "local_mask": record.local_mask.copy(),
            "boxes": boxes.astype(np.float32, copy=True),
            "box_labels": record.box_labels.copy(),
            "group": record.group,
            "source": record.source,
        }

    def subset(self, indices: Sequence[int]) -> XRayDataset:
        """A dataset of the same kind over ``records[i] for i in indices`` (images are not decoded)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.records = [self.records[i] for i in indices]
        return clone

    def global_targets(self) -> np.ndarray:
        """``(N, K)`` matrix of the global targets, without decoding any image."""
        return (
            np.stack([r.global_target for r in self.records]) if self.records else np.zeros((0, len(self.global_space)))
        )

    def local_targets(self) -> np.ndarray:
        """``(N, L)`` matrix of the local targets, without decoding any image."""
        return (
            np.stack([r.local_target for r in self.records]) if self.records else np.zeros((0, len(self.local_space)))
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} images, global={self.global_space.name}, "
            f"local={self.local_space.name}, boxes={sum(len(r.boxes) for r in self.records)})"
        )


def index_image_files(root: Path, extensions: Sequence[str]) -> dict[str, Path]:
    """Map file stem -> path for every file under ``root`` (recursively) with one of ``extensions``.

    One directory walk instead of one ``stat`` per expected image keeps 100k-image datasets quick to open.
    """
    extensions = {e.lower() for e in extensions}
    index: dict[str, Path] = {}
    for directory, _, files in os.walk(root):
        for name in files:
            stem, extension = os.path.splitext(name)
            if extension.lower() in extensions:
                index.setdefault(stem, Path(directory) / name)
    return index


def resolve_missing(wanted: Sequence[str], found: dict[str, Path], missing: str, what: str) -> list[str]:
    """Ids of ``wanted`` that have a file in ``found``; raise, or drop with a warning, the rest (``missing``)."""
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
    absent = [key for key in wanted if key not in found]
    if absent and missing == "error":
        raise FileNotFoundError(
            f"{len(absent)} of {len(wanted)} images of {what} have no file, e.g. {absent[0]!r}; "
            "pass missing='skip' to use only the images present"
        )
    if absent:
        logger.warning("%s: %d of %d images have no file and are skipped", what, len(absent), len(wanted))
    return [key for key in wanted if key in found]


def _first_duplicate(values: Sequence[str]) -> str:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return ""
