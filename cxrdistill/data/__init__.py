"""Datasets (one class per source), leakage-free splits, multi-resolution views and the tensor cache.

This package never imports :mod:`cxrdistill.models`: data knows nothing of the networks it feeds.
"""

from cxrdistill.data.base import Record, XRayDataset, scale_boxes
from cxrdistill.data.cache import CachedDataset, default_cache_dir
from cxrdistill.data.generic import CSVDataset, FolderDataset
from cxrdistill.data.lungs import LungOutlines, polygon_mask
from cxrdistill.data.medmnist import PneumoniaMNIST
from cxrdistill.data.nih import NIHChestXray14
from cxrdistill.data.splits import split_indices, train_val_split
from cxrdistill.data.tbx11k import TBX11K, TBX11K_SPLITS, classify_tbx11k_path
from cxrdistill.data.transforms import (
    AugmentConfig,
    AugmentedCopies,
    MultiResolutionViews,
    ViewDataset,
    area_resize,
    collate_views,
    letterbox_matrix,
    model_input,
    transform_boxes,
    warp,
)
from cxrdistill.data.vindr import VinDrCXR

__all__ = [
    "TBX11K",
    "TBX11K_SPLITS",
    "AugmentConfig",
    "AugmentedCopies",
    "CSVDataset",
    "CachedDataset",
    "FolderDataset",
    "LungOutlines",
    "MultiResolutionViews",
    "NIHChestXray14",
    "PneumoniaMNIST",
    "Record",
    "ViewDataset",
    "VinDrCXR",
    "XRayDataset",
    "area_resize",
    "classify_tbx11k_path",
    "collate_views",
    "default_cache_dir",
    "letterbox_matrix",
    "model_input",
    "polygon_mask",
    "scale_boxes",
    "split_indices",
    "train_val_split",
    "transform_boxes",
    "warp",
]
