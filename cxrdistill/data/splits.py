"""Deterministic, patient-aware, source-stratified train/validation splits.

Every image of a patient (a record's ``group``) lands on the same side, so no patient is both trained and
validated on. Within each stratum (sub-source x global label) groups are ordered by a keyed hash of their id and
the first ``round(val_fraction * n)`` go to validation. The result depends only on the seed and the ids, not on the
order records are listed in or on the machine, and each source keeps its label mix on both sides: important for
TBX11K, where the image's source alone predicts much of the label.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from cxrdistill.data.base import Record, XRayDataset


def _rank(seed: int, group: str) -> bytes:
    return hashlib.sha256(f"{seed}:{group}".encode()).digest()


def _stratum(record: Record) -> tuple:
    target = record.global_target
    label = "unlabelled" if np.isnan(target).any() else tuple(np.flatnonzero(target > 0.5).tolist())
    return record.source, label


def split_indices(records: Sequence[Record], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split record positions into ``(train, validation)`` lists, both sorted.

    Args:
        records: the records to split (a dataset's ``records``).
        val_fraction: share of each stratum's groups that goes to validation, in ``(0, 1)``.
        seed: changes which groups are chosen; the same seed always gives the same split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    members: dict[str, list[int]] = defaultdict(list)
    for position, record in enumerate(records):
        members[record.group].append(position)
    # A patient's stratum is that of its first image, so a patient is never split between strata.
    groups_by_stratum: dict[tuple, list[str]] = defaultdict(list)
    for group, positions in members.items():
        groups_by_stratum[_stratum(records[positions[0]])].append(group)

    validation: list[int] = []
    for groups in groups_by_stratum.values():
        ordered = sorted(groups, key=lambda g: _rank(seed, g))
        for group in ordered[: round(val_fraction * len(ordered))]:
            validation.extend(members[group])
    validation_set = set(validation)
    train = [i for i in range(len(records)) if i not in validation_set]
    return train, sorted(validation)


def train_val_split(dataset: XRayDataset, val_fraction: float = 0.2, seed: int = 0) -> tuple[XRayDataset, XRayDataset]:
    """``(train, validation)`` subsets of ``dataset``; see :func:`split_indices`."""
    train, validation = split_indices(dataset.records, val_fraction, seed)
    return dataset.subset(train), dataset.subset(validation)
