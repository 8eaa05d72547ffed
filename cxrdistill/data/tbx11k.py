"""TBX11K (Liu et al., CVPR 2020) in its official layout.

::

    root/
      imgs/health/*.png  imgs/sick/*.png  imgs/tb/*.png  imgs/test/*.png
      imgs/extra/da+db/{train,val,test}/*   imgs/extra/mc+shenzhen/{train,val,test}/*
      lists/{TBX11K_train,TBX11K_val,TBX11K_trainval,all_train,all_val,all_trainval,all_test}.txt
      annotations/json/<split>.json         (COCO style; boxes [x, y, w, h] on the 512-px images)

Image-level labels come from the folder (``health`` / ``sick`` / ``tb``) or, for the extra sets, the file-name
convention: Montgomery / Shenzhen ``*_1`` is TB and ``*_0`` normal; DA (``p*`` / ``n*``) and DB (``px*`` / ``nx*``)
likewise TB / normal. TBX11K's own test images have no public labels (their targets are NaN).

Local labels (active / latent / uncertain TB) come from the categories of an image's boxes. They are *known* for
non-TB images (all zero) and for TB images with boxes; for a TB image without boxes (the extra sets, and
``tb/tb1199.png``) the type of TB is unknown, so its ``local_mask`` is 0.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from cxrdistill.data.base import EMPTY_BOX_LABELS, EMPTY_BOXES, Record, XRayDataset
from cxrdistill.io import ReadLimits
from cxrdistill.labels import (
    TB_BINARY,
    TBX11K_GLOBAL,
    TBX11K_JSON_CATEGORIES,
    TBX11K_LOCAL,
    TBX11K_TO_TB_BINARY,
    LabelSpace,
)

TBX11K_SPLITS = ("TBX11K_train", "TBX11K_val", "TBX11K_trainval", "all_train", "all_val", "all_trainval", "all_test")

_FOLDER_CLASSES = {"health": "healthy", "sick": "sick_non_tb", "tb": "tb"}
_EXTRA_PATTERNS = (
    # (regex on the file stem, source, class)
    (re.compile(r"^MCUCXR_(\d+)_([01])$"), "montgomery"),
    (re.compile(r"^CHNCXR_(\d+)_([01])$"), "shenzhen"),
    (re.compile(r"^(px|nx)(\d+)$"), "db"),
    (re.compile(r"^(p|n)(\d+)$"), "da"),
)


def classify_tbx11k_path(relative_path: str) -> tuple[str | None, str]:
    """Return ``(class, source)`` for a path from a TBX11K list, e.g. ``"tb/tb0005.png"`` -> ``("tb", "tbx11k")``.

    ``class`` is a name in :data:`~cxrdistill.labels.TBX11K_GLOBAL`, or ``None`` for the unlabelled test images.
    """
    parts = relative_path.replace("\\", "/").split("/")
    if parts[0] in _FOLDER_CLASSES:
        return _FOLDER_CLASSES[parts[0]], "tbx11k"
    if parts[0] == "test":
        return None, "tbx11k"
    if parts[0] == "extra":
        stem = Path(parts[-1]).stem
        for pattern, source in _EXTRA_PATTERNS:
            match = pattern.match(stem)
            if match:
                positive = (
                    match.group(2) == "1" if source in ("montgomery", "shenzhen") else match.group(1).startswith("p")
                )
                return ("tb" if positive else "healthy"), source
    raise ValueError(
        f"cannot tell the label of TBX11K image {relative_path!r}: expected imgs/health|sick|tb|test/... or an "
        "extra-set name like MCUCXR_0001_1, CHNCXR_0001_0, p12, n12, px3, nx3"
    )


class TBX11K(XRayDataset):
    """TBX11K over the official folder layout.

    Args:
        root: the dataset folder (holding ``imgs/``, ``lists/``, ``annotations/``).
        split: one of :data:`TBX11K_SPLITS` (the list file ``lists/<split>.txt``).
        global_space: ``TBX11K_GLOBAL`` (healthy / sick-non-TB / TB, the default) or ``TB_BINARY`` (not-TB / TB).
        read_limits: passed to :func:`cxrdistill.io.load_xray`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "all_train",
        global_space: LabelSpace = TBX11K_GLOBAL,
        read_limits: ReadLimits | None = None,
    ) -> None:
        root = Path(root)
        if split not in TBX11K_SPLITS:
            raise ValueError(f"unknown TBX11K split {split!r}; the official release has {list(TBX11K_SPLITS)}")
        if global_space not in (TBX11K_GLOBAL, TB_BINARY):
            raise ValueError(f"TBX11K global_space must be TBX11K_GLOBAL or TB_BINARY, got {global_space.name!r}")
        list_file = root / "lists" / f"{split}.txt"
        if not list_file.is_file():
            available = sorted(p.stem for p in (root / "lists").glob("*.txt")) if (root / "lists").is_dir() else []
            raise FileNotFoundError(f"TBX11K list {list_file} not found; lists present under {root}: {available}")
        relative_paths = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        missing = [p for p in relative_paths if not (root / "imgs" / p).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(relative_paths)} images of {split} are missing under {root / 'imgs'}, "
                f"e.g. {missing[0]}"
            )
        annotations = _read_coco_boxes(root / "annotations" / "json" / f"{split}.json")

        records = []
        for relative_path in relative_paths:
            tbx_class, source = classify_tbx11k_path(relative_path)
            boxes, box_labels, frame = annotations.get(relative_path, (EMPTY_BOXES, EMPTY_BOX_LABELS, None))
            records.append(
                Record(
                    id=relative_path,
                    path=str(root / "imgs" / relative_path),
                    global_target=_global_target(tbx_class, global_space),
                    local_target=_local_target(box_labels),
                    local_mask=_local_mask(tbx_class, has_boxes=len(boxes) > 0),
                    boxes=boxes,
                    box_labels=box_labels,
                    box_frame=frame,
                    group=_patient_group(relative_path, source),
                    source=source,
                )
            )
        super().__init__(records, global_space, TBX11K_LOCAL, read_limits)
        self.root = root
        self.split = split


def _read_coco_boxes(json_path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, tuple[int, int]]]:
    """``file_name -> (boxes xyxy, local-label indices, (height, width))`` from a COCO-style TBX11K json."""
    if not json_path.is_file():
        return {}
    coco = json.loads(json_path.read_text())
    category_to_local = {}
    for category in coco["categories"]:
        if category["name"] not in TBX11K_JSON_CATEGORIES:
            raise ValueError(
                f"{json_path}: unknown category {category['name']!r}; expected {list(TBX11K_JSON_CATEGORIES)}"
            )
        category_to_local[category["id"]] = TBX11K_LOCAL.index(TBX11K_JSON_CATEGORIES[category["name"]])
    images = {image["id"]: image for image in coco["images"]}
    per_image: dict[int, list] = {}
    for annotation in coco["annotations"]:
        per_image.setdefault(annotation["image_id"], []).append(annotation)
    result = {}
    for image_id, image_annotations in per_image.items():
        image = images[image_id]
        boxes = np.array([a["bbox"] for a in image_annotations], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # COCO [x, y, w, h] -> xyxy
        labels = np.array([category_to_local[a["category_id"]] for a in image_annotations], dtype=np.int64)
        result[image["file_name"]] = (boxes, labels, (int(image["height"]), int(image["width"])))
    return result


def _global_target(tbx_class: str | None, space: LabelSpace) -> np.ndarray:
    if tbx_class is None:
        return np.full(len(space), np.nan, dtype=np.float32)
    name = tbx_class if space is TBX11K_GLOBAL else TBX11K_TO_TB_BINARY[tbx_class]
    return space.encode([name])


def _local_target(box_labels: np.ndarray) -> np.ndarray:
    target = np.zeros(len(TBX11K_LOCAL), dtype=np.float32)
    target[np.unique(box_labels)] = 1.0
    return target


def _local_mask(tbx_class: str | None, has_boxes: bool) -> np.ndarray:
    known = tbx_class in ("healthy", "sick_non_tb") or (tbx_class == "tb" and has_boxes)
    return np.full(len(TBX11K_LOCAL), 1.0 if known else 0.0, dtype=np.float32)


def _patient_group(relative_path: str, source: str) -> str:
    """Montgomery and Shenzhen name files by patient number; elsewhere one image is all we know of a patient."""
    stem = Path(relative_path).stem
    if source in ("montgomery", "shenzhen"):
        return f"{source}:{stem.rsplit('_', 1)[0]}"
    return f"{source}:{relative_path}"
