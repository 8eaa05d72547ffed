"""One registry of datasets: name -> how to load it, its display name and licence.

The CLI (``cxrdistill evaluate --dataset``), the training scripts (``--dataset``), evaluation and the model cards all
reach a dataset through :func:`load_registered` and :func:`dataset_entry`, so a dataset added here is usable
everywhere at once (as timm's model registry serves ``create_model``)::

    from cxrdistill.data.registry import load_registered
    films = load_registered("nih1024", "../shared/data/nih1024")

Each entry's loader takes the dataset's ``root`` (a folder, or a file for datasets that are one file) and an
optional official ``split``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxrdistill.data.base import XRayDataset
from cxrdistill.data.generic import CSVDataset, FolderDataset
from cxrdistill.data.medmnist import PneumoniaMNIST
from cxrdistill.data.nih import NIHChestXray14
from cxrdistill.data.tbx11k import TBX11K
from cxrdistill.data.vindr import VinDrCXR
from cxrdistill.labels import TB_BINARY


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset.

    Attributes:
        name: the registry key (``--dataset NAME``).
        display_name: how cards and reports name it.
        licence: its terms of use, as cards state them.
        load: ``(root, split) -> XRayDataset``.
        root_hint: what ``root`` is, for help texts and errors.
    """

    name: str
    display_name: str
    licence: str
    load: Callable[[Path, str | None], XRayDataset]
    root_hint: str


DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(entry: DatasetEntry) -> DatasetEntry:
    """Add ``entry`` to :data:`DATASETS` (a name can be registered once)."""
    if entry.name in DATASETS:
        raise ValueError(f"a dataset named {entry.name!r} is already registered")
    DATASETS[entry.name] = entry
    return entry


def dataset_entry(name: str) -> DatasetEntry:
    """The registered dataset ``name``; ``ValueError`` naming the registered ones otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; registered: {sorted(DATASETS)}") from None


def load_registered(name: str, root: str | os.PathLike, split: str | None = None) -> XRayDataset:
    """Load the registered dataset ``name`` from ``root`` (records only; nothing is decoded)."""
    return dataset_entry(name).load(Path(root), split)


def _nih(root: Path, split: str | None) -> NIHChestXray14:
    """nih1000 / nih1024 (``labels.csv``) or the official layout (``Data_Entry_2017*.csv[.gz]`` in ``root``)."""
    if (root / "labels.csv").is_file():
        return NIHChestXray14(root, split=split)
    label_files = sorted(root.glob("Data_Entry_2017*.csv*"))
    if not label_files:
        raise FileNotFoundError(f"{root} has neither labels.csv nor Data_Entry_2017*.csv[.gz]")
    boxes = sorted(root.glob("BBox_List_2017.csv*"))
    return NIHChestXray14(root, label_files[0], split=split, bbox_csv=boxes[0] if boxes else None, missing="skip")


def _nih1024(root: Path, split: str | None) -> NIHChestXray14:
    """The nih1024 layout only: another NIH folder under this name would load as something else."""
    dataset = _nih(root, split)
    if dataset.global_space.names != ("normal", "pneumonia"):
        raise ValueError(f"{root} is not in the nih1024 layout (labels.csv with a source_folder column); use 'nih'")
    return dataset


def _vindr(root: Path, split: str | None) -> VinDrCXR:
    if split not in (None, "train"):
        raise ValueError(f"VinDr-CXR's labelled images are its train split; got {split!r}")
    label_files = sorted(root.glob("vinbigdata-train.csv*")) or sorted(root.glob("train.csv*"))
    if not label_files:
        raise FileNotFoundError(f"{root} has no vinbigdata-train.csv[.gz] beside the images")
    return VinDrCXR(root, label_files[0])


def _csv(root: Path, split: str | None) -> CSVDataset:
    if split is not None:
        raise ValueError("a CSV dataset has no official split (it is split by patient for training)")
    return CSVDataset(root, global_column="class", local_column="findings", group_column="patient")


def _folder(root: Path, split: str | None) -> FolderDataset:
    return FolderDataset(root / split if split else root)


for _entry in (
    DatasetEntry(
        "tbx11k",
        "TBX11K",
        "research use (Liu et al., CVPR 2020; extra sets: Chauhan et al. 2014, Jaeger et al. 2014)",
        lambda root, split: TBX11K(root, split or "all_train", global_space=TB_BINARY),
        "the TBX11K folder in its official layout (imgs/, lists/, annotations/)",
    ),
    DatasetEntry(
        "nih",
        "NIH ChestX-ray14",
        "public, citation requested (NIH Clinical Center; Wang et al., CVPR 2017)",
        _nih,
        "the official layout (Data_Entry_2017*.csv beside the images) or nih1000 (labels.csv)",
    ),
    DatasetEntry(
        "nih1024",
        "NIH ChestX-ray14, No Finding vs Pneumonia (512 px)",
        "public, citation requested (NIH Clinical Center; Wang et al., CVPR 2017)",
        _nih1024,
        "the nih1024 folder (labels.csv with path, patient_id, source_folder, nih_finding_labels)",
    ),
    DatasetEntry(
        "pneumoniamnist",
        "PneumoniaMNIST",
        "CC BY 4.0 (Yang et al., Sci. Data 2023)",
        lambda root, split: PneumoniaMNIST(root, split or "val"),
        "the MedMNIST pneumoniamnist .npz file",
    ),
    DatasetEntry(
        "vindr",
        "VinDr-CXR",
        "PhysioNet credentialed access (Nguyen et al., Sci. Data 2022)",
        _vindr,
        "the folder of <image_id>.dicom/.png files with vinbigdata-train.csv[.gz]",
    ),
    DatasetEntry(
        "csv",
        "CSV dataset",
        "as its owner states",
        _csv,
        "a CSV file with path, class, findings (joined by |) and patient columns",
    ),
    DatasetEntry(
        "folder",
        "Folder dataset",
        "as its owner states",
        _folder,
        "a folder with one sub-folder of images per class (split: a sub-folder holding such folders)",
    ),
):
    register_dataset(_entry)
