"""The dataset registry: every dataset reachable by name from the CLI, the scripts, evaluation and cards."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from support.films import png_bytes, shared_path, synthetic_chest

from cxrdistill.data import train_val_split
from cxrdistill.data.registry import DATASETS, DatasetEntry, dataset_entry, load_registered, register_dataset


def _film(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(np.round(synthetic_chest(64, 64) * 255).astype(np.uint8)))


def test_every_entry_names_its_display_name_licence_and_root():
    assert {"tbx11k", "nih", "nih1024", "pneumoniamnist", "vindr", "csv", "folder"} <= set(DATASETS)
    for name, entry in DATASETS.items():
        assert entry.name == name and entry.display_name and entry.licence and entry.root_hint
    with pytest.raises(ValueError, match="unknown dataset 'chexpert'; registered: \\['csv'"):
        dataset_entry("chexpert")
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(DatasetEntry("tbx11k", "x", "x", lambda root, split: None, "x"))


@pytest.mark.parametrize(
    ("name", "folder", "images", "classes"),
    [
        ("tbx11k", "tbx11k", 888, ("not_tb", "tb")),
        ("nih", "nih1000", 800, ("normal", "abnormal")),
        ("nih1024", "nih1024", 830, ("normal", "pneumonia")),
        ("pneumoniamnist", "pneumoniamnist/pneumoniamnist_28_trainval.npz", 270, ("normal", "pneumonia")),
    ],
)
def test_the_shared_datasets_load_by_name(name, folder, images, classes):
    root = shared_path(*folder.split("/"))
    dataset = load_registered(name, root)
    assert len(dataset) == images and dataset.global_space.names == classes


def test_nih1024_is_no_finding_vs_pneumonia_split_by_patient():
    dataset = load_registered("nih1024", shared_path("nih1024"))
    counts = dataset.global_targets().sum(axis=0)
    assert counts.tolist() == [426.0, 404.0]  # the shared README's 426 No Finding, 404 Pneumonia films
    pneumonia = dataset.global_space.index("pneumonia")
    findings = dataset.local_space.names.index("Pneumonia")
    for record in dataset.records:  # the global class agrees with the NIH finding labels
        assert record.global_target[pneumonia] == record.local_target[findings]
    train, validation = train_val_split(dataset, 0.25, seed=0)
    assert not {r.group for r in train.records} & {r.group for r in validation.records}
    assert len({r.group for r in dataset.records}) == 564  # patients
    with pytest.raises(ValueError, match="no official split"):
        load_registered("nih1024", shared_path("nih1024"), split="train")
    with pytest.raises(ValueError, match="not in the nih1024 layout"):
        load_registered("nih1024", shared_path("nih1000"))


def test_folder_and_csv_datasets_load_by_name(tmp_path):
    for cls in ("normal", "pneumonia"):
        for k in range(2):
            _film(tmp_path / "films" / cls / f"{cls}{k}.png")
    folder = load_registered("folder", tmp_path / "films")
    assert len(folder) == 4 and folder.global_space.names == ("normal", "pneumonia")
    table = tmp_path / "films.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "class", "findings", "patient"])
        writer.writerow(["films/normal/normal0.png", "normal", "", "p1"])
        writer.writerow(["films/pneumonia/pneumonia0.png", "pneumonia", "Consolidation|Effusion", "p2"])
    from_csv = load_registered("csv", table)
    assert len(from_csv) == 2 and from_csv.local_space.names == ("Consolidation", "Effusion")
    assert [r.group for r in from_csv.records] == ["p1", "p2"]
    with pytest.raises(FileNotFoundError, match=r"vinbigdata-train\.csv"):
        load_registered("vindr", tmp_path / "films")


def test_the_cli_offers_every_registered_dataset():
    from cxrdistill.cli import build_parser

    evaluate = build_parser()._subparsers._group_actions[0].choices["evaluate"]
    dataset = next(action for action in evaluate._actions if action.dest == "dataset")
    assert set(dataset.choices) == set(DATASETS)
