"""NIH ChestX-ray14 (Wang et al., CVPR 2017), in two layouts.

* **Official**: PNGs anywhere under ``root`` (``images_001/images/...`` as released), the label file
  ``Data_Entry_2017*.csv[.gz]``, optionally ``BBox_List_2017.csv[.gz]`` (boxes on the released 1024-px images)
  and the split lists ``train_val_list.txt`` / ``test_list.txt`` in ``root``.
* **nih1000** (``../shared/data/nih1000``): ``root/labels.csv`` with ``path, split, nih_finding_labels, view,
  image_index`` columns; splits ``train`` and ``valid``.
* **nih1024** (``../shared/data/nih1024``): ``root/labels.csv`` with ``path, image_index, patient_id,
  source_folder, nih_finding_labels, view, original_size``: "No Finding" films and films with Pneumonia (often with
  co-findings), 512 px, one hospital; no official split (split by patient with :func:`train_val_split`).

Global label: normal ("No Finding") vs abnormal, or for nih1024 normal vs pneumonia; local labels: the 14
findings. Images of one patient share a group (the number before ``_`` in the file name), so a split never puts a
patient on both sides.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from cxrdistill.data.base import EMPTY_BOX_LABELS, EMPTY_BOXES, Record, XRayDataset, index_image_files, resolve_missing
from cxrdistill.io import ReadLimits
from cxrdistill.labels import NIH14, NIH_NO_FINDING, NORMAL_ABNORMAL, PNEUMONIA_BINARY, LabelSpace

NIH_BOX_FRAME = (1024, 1024)  # BBox_List_2017 coordinates refer to the released 1024 x 1024 PNGs
NIH_OFFICIAL_SPLITS = {"train_val": "train_val_list.txt", "test": "test_list.txt"}


class NIHChestXray14(XRayDataset):
    """NIH ChestX-ray14.

    Args:
        root: image folder (official layout), or the nih1000 / nih1024 folder with ``labels.csv``.
        csv_path: ``Data_Entry_2017*.csv[.gz]`` for the official layout; ignored for nih1000 / nih1024.
        split: official: ``"train_val"``, ``"test"`` or ``None`` (all); nih1000: ``"train"``, ``"valid"`` or ``None``;
            nih1024: ``None`` (it has no official split).
        bbox_csv: optional ``BBox_List_2017.csv[.gz]``; its boxes are rescaled to each image's size on load.
        missing: ``"error"`` or ``"skip"`` for csv rows without an image file (official layout).
        read_limits: passed to :func:`cxrdistill.io.load_xray`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        csv_path: str | os.PathLike | None = None,
        split: str | None = None,
        bbox_csv: str | os.PathLike | None = None,
        missing: str = "error",
        read_limits: ReadLimits | None = None,
    ) -> None:
        root = Path(root)
        boxes = _read_boxes(Path(bbox_csv)) if bbox_csv else {}
        if (root / "labels.csv").is_file() and csv_path is None:
            global_space, rows = _labels_csv_rows(root, split)
        elif csv_path is not None:
            global_space, rows = NORMAL_ABNORMAL, _official_rows(root, Path(csv_path), split, missing)
        else:
            raise FileNotFoundError(
                f"{root} has no labels.csv (nih1000 layout); for the official layout pass csv_path="
                "'Data_Entry_2017_v2020.csv'"
            )
        records = []
        for image_index, path, findings in rows:
            if global_space is PNEUMONIA_BINARY:
                global_target = PNEUMONIA_BINARY.encode(["pneumonia" if "Pneumonia" in findings else "normal"])
            else:
                global_target = NORMAL_ABNORMAL.encode(["normal" if not findings else "abnormal"])
            image_boxes, box_labels = boxes.get(image_index, (EMPTY_BOXES, EMPTY_BOX_LABELS))
            records.append(
                Record(
                    id=image_index,
                    path=path,
                    global_target=global_target,
                    local_target=NIH14.encode(findings),
                    local_mask=np.ones(len(NIH14), dtype=np.float32),
                    boxes=image_boxes,
                    box_labels=box_labels,
                    box_frame=NIH_BOX_FRAME if len(image_boxes) else None,
                    group="nih:" + image_index.split("_")[0],
                    source="nih",
                )
            )
        super().__init__(records, global_space, NIH14, read_limits)
        self.root = root
        self.split = split


def parse_findings(text: str) -> list[str]:
    """``"Effusion|Mass"`` -> ``["Effusion", "Mass"]``; ``"No Finding"`` -> ``[]``. Unknown names raise."""
    names = [name.strip() for name in text.split("|") if name.strip() and name.strip() != NIH_NO_FINDING]
    for name in names:
        NIH14.index(name)
    return names


def _labels_csv_rows(root: Path, split: str | None) -> tuple[LabelSpace, list[tuple[str, str, list[str]]]]:
    """The global label space and ``(image index, path, findings)`` rows of a ``labels.csv``: nih1000 (a split
    column; normal vs abnormal) or nih1024 (a source folder per class, no split; normal vs pneumonia)."""
    with open(root / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    nih1024 = bool(rows) and "source_folder" in rows[0]
    if nih1024 and split is not None:
        raise ValueError(f"{root} (nih1024 layout) has no official split; got {split!r}: split it by patient")
    splits = sorted({row.get("split", "") for row in rows})
    if split is not None and split not in splits:
        raise ValueError(f"unknown split {split!r} for {root}; it has {splits}")
    selected = [
        (row["image_index"], str(root / row["path"]), parse_findings(row["nih_finding_labels"]))
        for row in rows
        if split is None or row["split"] == split
    ]
    return (PNEUMONIA_BINARY if nih1024 else NORMAL_ABNORMAL), selected


def _official_rows(root: Path, csv_path: Path, split: str | None, missing: str) -> list[tuple[str, str, list[str]]]:
    opener = gzip.open if csv_path.suffix == ".gz" else open
    with opener(csv_path, "rt", newline="") as handle:
        findings = {row["Image Index"]: parse_findings(row["Finding Labels"]) for row in csv.DictReader(handle)}
    wanted = sorted(findings)
    if split is not None:
        if split not in NIH_OFFICIAL_SPLITS:
            raise ValueError(f"unknown NIH split {split!r}; expected one of {list(NIH_OFFICIAL_SPLITS)} or None")
        list_file = root / NIH_OFFICIAL_SPLITS[split]
        if not list_file.is_file():
            raise FileNotFoundError(f"split list {list_file} not found")
        in_split = {line.strip() for line in list_file.read_text().splitlines() if line.strip()}
        wanted = [name for name in wanted if name in in_split]
    files = index_image_files(root, (".png",))
    stems = resolve_missing([Path(name).stem for name in wanted], files, missing, f"NIH ChestX-ray14 {csv_path}")
    return [(stem + ".png", str(files[stem]), findings[stem + ".png"]) for stem in stems]


def _read_boxes(bbox_csv: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``Image Index -> (boxes xyxy in 1024-px frame, NIH14 indices)`` from ``BBox_List_2017.csv``."""
    opener = gzip.open if bbox_csv.suffix == ".gz" else open
    per_image: dict[str, list] = defaultdict(list)
    with opener(bbox_csv, "rt", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)  # header: "Image Index, Finding Label, Bbox [x,y,w,h], ..." spread over 6 columns
        for row in reader:
            name, label, x, y, w, h = row[:6]
            # The box list spells one finding differently from the label file.
            label = {"Infiltrate": "Infiltration"}.get(label, label)
            per_image[name].append(([float(x), float(y), float(x) + float(w), float(y) + float(h)], NIH14.index(label)))
    return {
        name: (np.array([b for b, _ in items], dtype=np.float32), np.array([i for _, i in items], dtype=np.int64))
        for name, items in per_image.items()
    }
