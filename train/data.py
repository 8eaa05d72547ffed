"""Training data: which dataset and split, the tensor cache, the loaders and how they draw their films."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, WeightedRandomSampler

from cxrdistill.data import (
    AugmentConfig,
    AugmentedCopies,
    CachedDataset,
    MultiResolutionViews,
    ViewDataset,
    collate_views,
)
from cxrdistill.data.base import EMPTY_BOX_LABELS, EMPTY_BOXES, XRayDataset
from cxrdistill.evaluation import EvalData, load_train_val


@dataclass
class DataConfig:
    """Which data, how it is split and cached.

    Attributes:
        dataset: a registered dataset (cxrdistill.data.registry): "tbx11k" (TB vs not TB + TB types), "nih"
            (normal / abnormal + 14 findings), "nih1024" (normal vs pneumonia + 14 findings), "pneumoniamnist",
            "vindr", "csv", "folder".
        root: the dataset's folder (official layout).
        val_fraction: share of the training images held out for validation (patient-grouped, source-stratified).
        split_seed: seed of the train / validation split (the same split as ``cxrdistill evaluate``).
        cache_size: side in pixels of the letterboxed tensor cache every view is made from.
        cache_dir: where the tensor cache lives (default: the user cache folder).
        limit: use only N evenly spaced images of each split (smoke tests); none: all.
        num_workers: DataLoader worker processes per training process.
        lung_crop: a LungSegmenter (folder or Hub repo id): every film cropped to the box around its lungs (with a
            5% margin) before it is resized, so more of the input's pixels fall on the lungs; none: whole films.
    """

    dataset: str = "tbx11k"
    root: str = "../shared/data/tbx11k"
    val_fraction: float = 0.25
    split_seed: int = 0
    cache_size: int = 256
    cache_dir: str | None = None
    limit: int | None = None
    num_workers: int = 1
    lung_crop: str | None = None


def build_datasets(config: DataConfig, accelerator: Accelerator | None = None):
    """``(train, validation)`` datasets of records, split as ``cxrdistill evaluate`` does, with their tensor caches
    built (by the main process first; the others then open them)."""
    train, validation = load_train_val(
        EvalData(config.dataset, config.root, None, "all", config.val_fraction, config.split_seed, config.lung_crop)
    )
    if config.limit:  # evenly spaced, so a small subset still has every source and label
        train, validation = (
            d.subset(np.unique(np.linspace(0, len(d) - 1, config.limit).astype(int)).tolist())
            for d in (train, validation)
        )
    if accelerator is not None:
        with accelerator.main_process_first():
            for dataset in (train, validation):
                CachedDataset(dataset, size=config.cache_size, cache_dir=config.cache_dir)
    return train, validation


def with_transfer_films(train: XRayDataset, dataset: str, root: str, config: DataConfig) -> XRayDataset:
    """``train`` plus the training side of another dataset's split as unlabelled films (global targets NaN, no
    known local label, no boxes; ids prefixed ``transfer:``): distillation needs no labels, so a teacher can teach
    on films from elsewhere. Only path-based datasets (read from files) can be combined."""
    other, _ = load_train_val(EvalData(dataset, root, None, "all", config.val_fraction, config.split_seed))
    if config.limit:
        other = other.subset(np.unique(np.linspace(0, len(other) - 1, config.limit).astype(int)).tolist())
    if any(record.path is None for record in other.records):
        raise ValueError(f"{dataset} films are not files: they cannot be added as transfer films")
    unknown_global = np.full(len(train.global_space), np.nan, dtype=np.float32)
    no_local = np.zeros(len(train.local_space), dtype=np.float32)
    unlabelled = [
        replace(
            record,
            id=f"transfer:{dataset}:{record.id}",
            global_target=unknown_global,
            local_target=no_local,
            local_mask=no_local,
            boxes=EMPTY_BOXES,
            box_labels=EMPTY_BOX_LABELS,
            box_frame=None,
            source=f"transfer:{record.source or dataset}",
        )
        for record in other.records
    ]
    return XRayDataset([*train.records, *unlabelled], train.global_space, train.local_space, train.read_limits)


@dataclass(frozen=True)
class Sampling:
    """How a loader draws its items (the default: every image once, in order, as evaluation wants).

    Attributes:
        shuffle: a new order every epoch (training).
        weights: ``(N,)`` one per image: draw with replacement in proportion to them, as many as one epoch
            (:func:`source_balanced_weights`); shuffles.
        copies: K > 0: the items are K fixed augmented views of each image (:class:`AugmentedCopies`, seeded by
            ``copy_seed``), so one epoch is K passes over the images.
        copy_seed: the seed of those views.
    """

    shuffle: bool = False
    weights: np.ndarray | None = None
    copies: int = 0
    copy_seed: int = 0


def make_loader(
    dataset, config: DataConfig, views: MultiResolutionViews, batch_size: int, sampling: Sampling = Sampling()
) -> DataLoader:
    """A loader of ``views`` of ``dataset`` from its tensor cache, drawn as ``sampling`` says."""
    # A shuffling loader gets a generator of its own, which fit() re-seeds at every epoch: it draws the order (the
    # weighted sampler draws with the same generator) and the workers' augmentation seeds, so a resumed run replays
    # the order an uninterrupted one used, under any number of processes (Accelerate shards the batches of that
    # one order and keeps the generator in sync).
    cached = CachedDataset(dataset, size=config.cache_size, cache_dir=config.cache_dir)
    shuffle = sampling.shuffle or sampling.weights is not None
    generator = torch.Generator() if shuffle else None
    sampler = None
    if sampling.weights is not None:
        if len(sampling.weights) != len(dataset):
            raise ValueError(f"{len(sampling.weights)} sample weights for {len(dataset)} images")
        if sampling.copies:
            raise ValueError(f"sample weights and {sampling.copies} augmented copies do not combine")
        weights = torch.as_tensor(sampling.weights, dtype=torch.double)
        sampler = WeightedRandomSampler(weights, num_samples=len(dataset), replacement=True, generator=generator)
    if sampling.copies:
        items = AugmentedCopies(cached, views, sampling.copies, sampling.copy_seed)
    else:
        items = ViewDataset(cached, views)
    return DataLoader(
        items,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        drop_last=shuffle and len(items) > batch_size,
        num_workers=config.num_workers,
        collate_fn=collate_views,
        generator=generator,
    )


def source_balanced_weights(dataset) -> np.ndarray:
    """``(N,)`` sampling weights that make every (sub-source, global class) cell of ``dataset`` equally likely.

    In TBX11K the source alone predicts the label (every TBX11K-archive film is TB, every normal film comes from the
    extra sets); drawing each source's TB and normal films equally often leaves the archive's own TB films no more
    common than any hospital's, so recognising the archive pays less.
    """
    classes = dataset.global_targets().argmax(axis=1)
    cells = [(record.source, int(label)) for record, label in zip(dataset.records, classes, strict=True)]
    counts: dict[tuple[str, int], int] = {}
    for cell in cells:
        counts[cell] = counts.get(cell, 0) + 1
    weights = np.array([1.0 / counts[cell] for cell in cells])
    return weights / weights.sum()


def views_for(teacher_size: int, student_sizes, augment: bool, harmonise: bool = False) -> MultiResolutionViews:
    """Views at ``teacher_size`` and ``student_sizes``: augmented (with the harmonisation augmentations too where
    ``harmonise``) or the plain letterbox."""
    config = (AugmentConfig.harmonising() if harmonise else AugmentConfig()) if augment else None
    return MultiResolutionViews(teacher_size, tuple(student_sizes), augment=config)
