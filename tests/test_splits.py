"""Train/validation splits: deterministic, patient-aware, stratified by source and label."""

from __future__ import annotations

import collections
import random

import numpy as np
import pytest
from support.films import shared_path

from cxrdistill.data import TBX11K, NIHChestXray14, Record, split_indices, train_val_split
from cxrdistill.labels import NORMAL_ABNORMAL


def _records(groups: list[str], sources: list[str], labels: list[str]) -> list[Record]:
    return [
        Record(
            id=f"img{i}",
            path=None,
            global_target=NORMAL_ABNORMAL.encode([label]),
            local_target=np.zeros(0, np.float32),
            local_mask=np.zeros(0, np.float32),
            group=group,
            source=source,
        )
        for i, (group, source, label) in enumerate(zip(groups, sources, labels, strict=True))
    ]


def test_patients_never_straddle_the_split():
    rng = random.Random(0)
    groups = [f"patient{rng.randrange(60)}" for _ in range(300)]
    records = _records(groups, ["a"] * 300, [rng.choice(["normal", "abnormal"]) for _ in range(300)])
    train, validation = split_indices(records, 0.25, seed=3)
    assert sorted(train + validation) == list(range(300))
    assert {groups[i] for i in train}.isdisjoint({groups[i] for i in validation})


def test_split_is_deterministic_and_independent_of_record_order():
    rng = random.Random(1)
    records = _records(
        [f"p{i}" for i in range(200)],
        [rng.choice("xyz") for _ in range(200)],
        [rng.choice(["normal", "abnormal"]) for _ in range(200)],
    )
    _, validation = split_indices(records, 0.2, seed=7)
    shuffled = records[:]
    rng.shuffle(shuffled)
    _, validation_shuffled = split_indices(shuffled, 0.2, seed=7)
    assert {records[i].id for i in validation} == {shuffled[i].id for i in validation_shuffled}
    assert split_indices(records, 0.2, seed=7) == split_indices(records, 0.2, seed=7)
    assert split_indices(records, 0.2, seed=8)[1] != validation


def test_every_source_and_label_keeps_its_share():
    sources = ["big"] * 400 + ["small"] * 40
    labels = (["normal", "abnormal"] * 200) + (["normal"] * 30 + ["abnormal"] * 10)
    records = _records([f"p{i}" for i in range(440)], sources, labels)
    _, validation = split_indices(records, 0.2, seed=0)
    counts = collections.Counter((records[i].source, labels[i]) for i in validation)
    assert counts == {("big", "normal"): 40, ("big", "abnormal"): 40, ("small", "normal"): 6, ("small", "abnormal"): 2}


def test_bad_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        split_indices([], 1.0)


def test_real_tbx11k_split_keeps_every_source_on_both_sides():
    train, validation = train_val_split(TBX11K(shared_path("tbx11k"), "all_train"), 0.2, seed=0)
    assert len(train) + len(validation) == 888
    train_sources = collections.Counter(r.source for r in train.records)
    validation_sources = collections.Counter(r.source for r in validation.records)
    assert set(train_sources) == set(validation_sources) == {"tbx11k", "shenzhen", "montgomery", "da", "db"}
    assert {r.group for r in train.records}.isdisjoint({r.group for r in validation.records})


def test_real_nih_split_by_patient():
    dataset = NIHChestXray14(shared_path("nih1000"))
    train, validation = train_val_split(dataset, 0.2, seed=0)
    assert {r.group for r in train.records}.isdisjoint({r.group for r in validation.records})
    groups = {r.group for r in dataset.records}
    assert 0.15 < len({r.group for r in validation.records}) / len(groups) < 0.25
