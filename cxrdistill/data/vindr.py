"""VinDr-CXR (Nguyen et al., Sci. Data 2022) from the Kaggle ``vinbigdata-train.csv``.

The csv has one row per (image, reader, finding): ``image_id, class_name, class_id, rad_id, x_min, y_min, x_max,
y_max``; class id 14 is "No finding" and has no box. Each training image was read by three radiologists.

Merging rule (documented, configurable): a finding is positive when at least ``min_readers`` distinct readers
marked it (default 2: the majority of three); the image is *abnormal* when at least ``min_readers`` readers
reported any finding. ``min_readers`` is capped at the number of readers an image has, so single-reader
(consensus) label files work unchanged. The boxes kept are every reader's boxes of the positive findings, in the
pixel coordinates of the original DICOM (``box_frame`` from ``width``/``height`` columns where the csv has them).
"""

from __future__ import annotations

import csv
import gzip
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from cxrdistill.data.base import Record, XRayDataset, index_image_files, resolve_missing
from cxrdistill.io import ReadLimits
from cxrdistill.labels import NORMAL_ABNORMAL, VINBIG_LOCAL, VINBIG_NO_FINDING_ID

VINDR_IMAGE_EXTENSIONS = (".dicom", ".dcm", ".png", ".jpg", ".jpeg")
_REQUIRED_COLUMNS = ("image_id", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")


class VinDrCXR(XRayDataset):
    """VinDr-CXR images (DICOM or PNG named ``<image_id>.<ext>`` anywhere under ``root``) with merged labels.

    Args:
        root: folder holding the images.
        csv_path: the label file (``vinbigdata-train.csv`` or ``.csv.gz``).
        min_readers: readers that must agree for a finding (and for "abnormal"); see the module docstring.
        missing: ``"error"`` (default) if an image of the csv has no file, or ``"skip"`` to use those present.
        read_limits: passed to :func:`cxrdistill.io.load_xray`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        csv_path: str | os.PathLike,
        min_readers: int = 2,
        missing: str = "error",
        read_limits: ReadLimits | None = None,
    ) -> None:
        if min_readers < 1:
            raise ValueError(f"min_readers must be >= 1, got {min_readers}")
        rows_by_image = _read_rows(Path(csv_path))
        files = index_image_files(Path(root), VINDR_IMAGE_EXTENSIONS)
        image_ids = resolve_missing(sorted(rows_by_image), files, missing, f"VinDr-CXR {csv_path}")
        records = [
            _merge(image_id, rows_by_image[image_id], str(files[image_id]), min_readers) for image_id in image_ids
        ]
        super().__init__(records, NORMAL_ABNORMAL, VINBIG_LOCAL, read_limits)
        self.min_readers = min_readers


def _read_rows(csv_path: Path) -> dict[str, list[dict]]:
    opener = gzip.open if csv_path.suffix == ".gz" else open
    with opener(csv_path, "rt", newline="") as handle:
        reader = csv.DictReader(handle)
        absent = [c for c in _REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            raise ValueError(f"{csv_path} lacks the VinDr-CXR columns {absent}; it has {reader.fieldnames}")
        rows_by_image: dict[str, list[dict]] = defaultdict(list)
        for row in reader:
            rows_by_image[row["image_id"]].append(row)
    return rows_by_image


def _merge(image_id: str, rows: list[dict], path: str, min_readers: int) -> Record:
    readers = {row["rad_id"] for row in rows}
    needed = min(min_readers, len(readers))
    readers_per_finding: dict[int, set[str]] = defaultdict(set)
    for row in rows:
        class_id = int(row["class_id"])
        if class_id != VINBIG_NO_FINDING_ID:
            readers_per_finding[class_id].add(row["rad_id"])
    positive = {class_id for class_id, who in readers_per_finding.items() if len(who) >= needed}
    readers_with_findings = set().union(*readers_per_finding.values()) if readers_per_finding else set()
    abnormal = len(readers_with_findings) >= needed

    box_rows = [row for row in rows if int(row["class_id"]) in positive and row["x_min"] not in ("", None)]
    boxes = np.array(
        [[float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")] for row in box_rows], dtype=np.float32
    ).reshape(-1, 4)
    box_labels = np.array([int(row["class_id"]) for row in box_rows], dtype=np.int64)
    local_target = np.zeros(len(VINBIG_LOCAL), dtype=np.float32)
    local_target[sorted(positive)] = 1.0
    frame = None
    if rows[0].get("height") and rows[0].get("width"):
        frame = (int(float(rows[0]["height"])), int(float(rows[0]["width"])))
    return Record(
        id=image_id,
        path=path,
        global_target=NORMAL_ABNORMAL.encode(["abnormal" if abnormal else "normal"]),
        local_target=local_target,
        local_mask=np.ones(len(VINBIG_LOCAL), dtype=np.float32),
        boxes=boxes,
        box_labels=box_labels,
        box_frame=frame,
        group=image_id,
        source="vindr",
    )
