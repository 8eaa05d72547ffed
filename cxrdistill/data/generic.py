"""A user's own X-rays: one folder per class, or a CSV.

* :class:`FolderDataset`: ``root/<class name>/**/<image>``; the class folders, sorted, are the global labels.
* :class:`CSVDataset`: one row per image with a path column, and any of a global-class column, a findings column
  (names joined by ``|``) and a patient column for leakage-free splits.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from cxrdistill.data.base import Record, XRayDataset
from cxrdistill.io import ReadLimits
from cxrdistill.labels import NO_LOCAL_LABELS, LabelSpace

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom")


class FolderDataset(XRayDataset):
    """Images sorted into one sub-folder per class (searched recursively inside each class folder).

    Args:
        root: folder whose sub-folders are the classes (at least two).
        read_limits: passed to :func:`cxrdistill.io.load_xray`.
    """

    def __init__(self, root: str | os.PathLike, read_limits: ReadLimits | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        space = LabelSpace(f"folder:{root.name}", tuple(classes), one_of_k=True)  # raises for < 2 classes
        records = []
        for class_name in classes:
            for path in sorted((root / class_name).rglob("*")):
                if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                    relative = path.relative_to(root).as_posix()
                    records.append(
                        Record(
                            id=relative,
                            path=str(path),
                            global_target=space.encode([class_name]),
                            local_target=np.zeros(0, dtype=np.float32),
                            local_mask=np.zeros(0, dtype=np.float32),
                            source=root.name,
                        )
                    )
        if not records:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {root}")
        super().__init__(records, space, NO_LOCAL_LABELS, read_limits)


class CSVDataset(XRayDataset):
    """Images listed in a CSV.

    Args:
        csv_path: the CSV file (with a header row).
        root: folder that relative paths are resolved against (default: the CSV's folder).
        path_column: column with the image path.
        global_column: column with one class name per image (optional).
        local_column: column with finding names joined by ``separator``; empty means no finding (optional).
        group_column: column with a patient id; images of one patient never straddle a split (optional).
        global_names, local_names: fix the label order (default: sorted names found in the CSV).
        separator: separator of ``local_column``.
        read_limits: passed to :func:`cxrdistill.io.load_xray`.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike,
        root: str | os.PathLike | None = None,
        path_column: str = "path",
        global_column: str | None = None,
        local_column: str | None = None,
        group_column: str | None = None,
        global_names: tuple[str, ...] | None = None,
        local_names: tuple[str, ...] | None = None,
        separator: str = "|",
        read_limits: ReadLimits | None = None,
    ) -> None:
        csv_path = Path(csv_path)
        root = Path(root) if root is not None else csv_path.parent
        if global_column is None and local_column is None:
            raise ValueError("give global_column, local_column or both: a dataset without labels cannot train")
        with open(csv_path, newline="") as handle:
            reader = csv.DictReader(handle)
            columns = [c for c in (path_column, global_column, local_column, group_column) if c]
            absent = [c for c in columns if c not in (reader.fieldnames or [])]
            if absent:
                raise ValueError(f"{csv_path} has no column(s) {absent}; it has {reader.fieldnames}")
            rows = list(reader)
        if not rows:
            raise ValueError(f"{csv_path} has no rows")

        def findings(row: dict) -> list[str]:
            return [n.strip() for n in row[local_column].split(separator) if n.strip()] if local_column else []

        if global_column:
            names = global_names or tuple(sorted({row[global_column] for row in rows}))
            global_space = LabelSpace(f"csv:{csv_path.stem}:{global_column}", tuple(names), one_of_k=True)
        else:
            global_space = LabelSpace(f"csv:{csv_path.stem}:any-finding", ("no_finding", "finding"), one_of_k=True)
        if local_column:
            names = local_names or tuple(sorted({n for row in rows for n in findings(row)}))
            local_space = LabelSpace(f"csv:{csv_path.stem}:{local_column}", tuple(names), one_of_k=False)
        else:
            local_space = NO_LOCAL_LABELS

        records = []
        for row in rows:
            path = Path(row[path_column])
            path = path if path.is_absolute() else root / path
            found = findings(row)
            global_name = row[global_column] if global_column else ("finding" if found else "no_finding")
            records.append(
                Record(
                    id=row[path_column],
                    path=str(path),
                    global_target=global_space.encode([global_name]),
                    local_target=local_space.encode(found),
                    local_mask=np.ones(len(local_space), dtype=np.float32),
                    group=row[group_column] if group_column else "",
                    source=csv_path.stem,
                )
            )
        super().__init__(records, global_space, local_space, read_limits)
