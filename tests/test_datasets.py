"""Datasets: real shared data where it exists, small layouts written by the tests for the rest."""

from __future__ import annotations

import collections
import csv
import json

import numpy as np
import pytest
from support.films import make_dicom, png_bytes, shared_path, synthetic_chest

from cxrdistill import labels
from cxrdistill.data import (
    TBX11K,
    TBX11K_SPLITS,
    CSVDataset,
    FolderDataset,
    NIHChestXray14,
    PneumoniaMNIST,
    VinDrCXR,
    classify_tbx11k_path,
)

SAMPLE_KEYS = {"id", "image", "global", "local", "local_mask", "boxes", "box_labels", "group", "source"}


def assert_valid_sample(sample: dict, dataset) -> None:
    assert set(sample) == SAMPLE_KEYS
    image = sample["image"]
    assert image.dtype == np.float32 and image.ndim == 2 and 0 <= image.min() and image.max() <= 1
    assert sample["global"].shape == (len(dataset.global_space),)
    assert sample["local"].shape == sample["local_mask"].shape == (len(dataset.local_space),)
    boxes = sample["boxes"]
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) == len(sample["box_labels"])
    if len(boxes):
        height, width = image.shape
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert boxes.min() >= -1 and (boxes[:, [0, 2]] <= width + 1).all() and (boxes[:, [1, 3]] <= height + 1).all()
        assert sample["box_labels"].max() < len(dataset.local_space)


# --------------------------------------------------------------------------------------------------- TBX11K real


@pytest.fixture(scope="module")
def tbx11k_real():
    return TBX11K(shared_path("tbx11k"), "all_train")


def test_real_tbx11k_has_888_images_and_902_boxes(tbx11k_real):
    assert len(tbx11k_real) == 888
    assert sum(len(r.boxes) for r in tbx11k_real.records) == 902
    counts = tbx11k_real.global_targets().sum(0)
    assert dict(zip(labels.TBX11K_GLOBAL.names, counts, strict=True)) == {"healthy": 151, "sick_non_tb": 0, "tb": 737}
    sources = collections.Counter(r.source for r in tbx11k_real.records)
    assert sources == {"tbx11k": 600, "shenzhen": 164, "db": 47, "da": 41, "montgomery": 36}


def test_real_tbx11k_boxes_match_the_official_json(tbx11k_real):
    coco = json.loads((shared_path("tbx11k") / "annotations" / "json" / "all_train.json").read_text())
    image = next(i for i in coco["images"] if i["file_name"] == "tb/tb0005.png")
    annotation = next(a for a in coco["annotations"] if a["image_id"] == image["id"])
    x, y, w, h = annotation["bbox"]
    sample = tbx11k_real[tbx11k_real.records.index(next(r for r in tbx11k_real.records if r.id == "tb/tb0005.png"))]
    np.testing.assert_allclose(sample["boxes"][0], [x, y, x + w, y + h], rtol=1e-6)
    assert labels.TBX11K_LOCAL.names[sample["box_labels"][0]] == "active_tb"  # category 1, ActiveTuberculosis
    assert_valid_sample(sample, tbx11k_real)


def test_real_tbx11k_local_labels_are_unknown_where_no_box_says_the_tb_type(tbx11k_real):
    by_id = {r.id: r for r in tbx11k_real.records}
    assert by_id["tb/tb1199.png"].local_mask.sum() == 0 and len(by_id["tb/tb1199.png"].boxes) == 0
    extra_tb = [r for r in tbx11k_real.records if r.source != "tbx11k" and r.global_target[2] == 1]
    extra_normal = [r for r in tbx11k_real.records if r.source != "tbx11k" and r.global_target[0] == 1]
    assert extra_tb and all(r.local_mask.sum() == 0 for r in extra_tb)
    assert extra_normal and all(r.local_mask.sum() == 3 and r.local_target.sum() == 0 for r in extra_normal)


def test_real_tbx11k_every_image_decodes_at_its_size(tbx11k_real):
    for index in range(0, len(tbx11k_real), 97):
        sample = tbx11k_real[index]
        assert sample["image"].shape == (512, 512)
        assert_valid_sample(sample, tbx11k_real)


def test_real_tbx11k_binary_space(tbx11k_real):
    binary = TBX11K(shared_path("tbx11k"), "all_train", global_space=labels.TB_BINARY)
    np.testing.assert_array_equal(binary.global_targets()[:, 1], tbx11k_real.global_targets()[:, 2])


@pytest.mark.parametrize(
    "path, expected",
    [
        ("health/h0001.png", ("healthy", "tbx11k")),
        ("sick/s0001.png", ("sick_non_tb", "tbx11k")),
        ("tb/tb0001.png", ("tb", "tbx11k")),
        ("test/t0001.png", (None, "tbx11k")),
        ("extra/mc+shenzhen/train/MCUCXR_0001_0.png", ("healthy", "montgomery")),
        ("extra/mc+shenzhen/val/CHNCXR_0327_1.png", ("tb", "shenzhen")),
        ("extra/da+db/train/p12.png", ("tb", "da")),
        ("extra/da+db/train/n12.png", ("healthy", "da")),
        ("extra/da+db/test/px3.jpg", ("tb", "db")),
        ("extra/da+db/train/nx3.jpg", ("healthy", "db")),
    ],
)
def test_tbx11k_naming_conventions(path, expected):
    assert classify_tbx11k_path(path) == expected


def test_tbx11k_unknown_name_is_an_error():
    with pytest.raises(ValueError, match="cannot tell the label"):
        classify_tbx11k_path("extra/da+db/train/scan7.png")


# ----------------------------------------------------------------------------------------- TBX11K, full layout


@pytest.fixture
def tbx11k_layout(tmp_path):
    """Every category of the official release, 64-px images, boxes drawn on the 512-px originals."""
    names = {
        "health": ["h1.png", "h2.png"],
        "sick": ["s1.png"],
        "tb": ["tb1.png", "tb2.png"],
        "test": ["t1.png"],
        "extra/mc+shenzhen/train": ["CHNCXR_0001_1.png", "MCUCXR_0002_0.png"],
        "extra/da+db/val": ["p1.png", "nx2.jpg"],
    }
    image = png_bytes(np.round(synthetic_chest(64, 64) * 255).astype(np.uint8))
    all_paths = []
    for folder, files in names.items():
        (tmp_path / "imgs" / folder).mkdir(parents=True)
        for name in files:
            (tmp_path / "imgs" / folder / name).write_bytes(image)
            all_paths.append(f"{folder}/{name}")
    (tmp_path / "lists").mkdir()
    labelled = [p for p in all_paths if not p.startswith("test/")]
    (tmp_path / "lists" / "all_trainval.txt").write_text("\n".join(labelled) + "\n")
    (tmp_path / "lists" / "all_test.txt").write_text("test/t1.png\n")
    (tmp_path / "lists" / "TBX11K_train.txt").write_text("health/h1.png\nsick/s1.png\ntb/tb1.png\n")
    coco = {
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(labels.TBX11K_JSON_CATEGORIES)],
        "images": [
            {"id": 1, "file_name": "tb/tb1.png", "width": 512, "height": 512},
            {"id": 2, "file_name": "tb/tb2.png", "width": 512, "height": 512},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [256, 128, 64, 32]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 512, 512]},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [8, 8, 16, 16]},
        ],
    }
    (tmp_path / "annotations" / "json").mkdir(parents=True)
    (tmp_path / "annotations" / "json" / "all_trainval.json").write_text(json.dumps(coco))
    return tmp_path


def test_tbx11k_all_categories_and_box_rescaling(tbx11k_layout):
    dataset = TBX11K(tbx11k_layout, "all_trainval")
    assert len(dataset) == 9
    by_id = {r.id: i for i, r in enumerate(dataset.records)}
    classes = {r.id: labels.TBX11K_GLOBAL.decode(r.global_target)[0] for r in dataset.records}
    assert classes["health/h1.png"] == "healthy" and classes["sick/s1.png"] == "sick_non_tb"
    assert classes["extra/mc+shenzhen/train/CHNCXR_0001_1.png"] == "tb"
    assert classes["extra/da+db/val/nx2.jpg"] == "healthy"
    sample = dataset[by_id["tb/tb1.png"]]
    # boxes were drawn on 512-px images; the file is 64 px, so they shrink by 8
    np.testing.assert_allclose(sample["boxes"], [[32, 16, 40, 20], [0, 0, 64, 64]])
    np.testing.assert_array_equal(sample["local"], [1, 1, 0])
    np.testing.assert_array_equal(dataset[by_id["tb/tb2.png"]]["local"], [0, 0, 1])
    assert_valid_sample(sample, dataset)


def test_tbx11k_test_split_is_unlabelled(tbx11k_layout):
    dataset = TBX11K(tbx11k_layout, "all_test")
    assert len(dataset) == 1 and np.isnan(dataset.records[0].global_target).all()
    assert not dataset.records[0].labelled


def test_tbx11k_split_without_json_has_no_boxes(tbx11k_layout):
    dataset = TBX11K(tbx11k_layout, "TBX11K_train")
    assert len(dataset) == 3 and all(len(r.boxes) == 0 for r in dataset.records)


def test_tbx11k_errors(tbx11k_layout):
    with pytest.raises(ValueError, match="unknown TBX11K split"):
        TBX11K(tbx11k_layout, "train")
    with pytest.raises(FileNotFoundError, match="lists present"):
        TBX11K(tbx11k_layout, "all_val")
    (tbx11k_layout / "imgs" / "sick" / "s1.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 3 images of TBX11K_train are missing"):
        TBX11K(tbx11k_layout, "TBX11K_train")
    assert "all_test" in TBX11K_SPLITS and len(TBX11K_SPLITS) == 7


# ---------------------------------------------------------------------------------------------------- VinDr-CXR

VINDR_NORMAL = "50a418190bc3fb1ef1633bf9678929b3"  # three readers: "No finding"
VINDR_MIXED = "9a5094b2563a1ef3ff50dc5c7ff71345"  # cardiomegaly by 3 readers; 3 other findings by R9 alone
VINDR_AGREED = "051132a778e61a86eb147c7c6f564dfe"  # aortic enlargement and cardiomegaly by 3; thickening by R9


@pytest.fixture
def vindr_root(tmp_path):
    """Tiny images under real VinDr ids: two DICOMs and a PNG (the real images are credentialed)."""
    stored = np.round(synthetic_chest(300, 256) * 4095).astype(np.uint16)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / f"{VINDR_NORMAL}.dicom").write_bytes(make_dicom(stored, "MONOCHROME1"))
    (tmp_path / "train" / f"{VINDR_MIXED}.dicom").write_bytes(make_dicom(stored))
    (tmp_path / "train" / f"{VINDR_AGREED}.png").write_bytes(png_bytes((stored // 16).astype(np.uint8)))
    return tmp_path


def test_vindr_majority_merge_on_the_real_csv(vindr_root):
    csv_path = shared_path("labels_torchxrayvision", "vinbigdata-train.csv.gz")
    dataset = VinDrCXR(vindr_root, csv_path, missing="skip")
    assert len(dataset) == 3
    by_id = {r.id: r for r in dataset.records}
    space = labels.VINBIG_LOCAL
    assert labels.NORMAL_ABNORMAL.decode(by_id[VINDR_NORMAL].global_target) == ["normal"]
    assert len(by_id[VINDR_NORMAL].boxes) == 0 and by_id[VINDR_NORMAL].local_target.sum() == 0
    mixed = by_id[VINDR_MIXED]
    assert labels.NORMAL_ABNORMAL.decode(mixed.global_target) == ["abnormal"]
    assert space.decode(mixed.local_target) == ["Cardiomegaly"]
    assert len(mixed.boxes) == 3 and set(mixed.box_labels) == {space.index("Cardiomegaly")}
    np.testing.assert_allclose(mixed.boxes[0], [691, 1375, 1653, 1831])  # R10's box, original DICOM pixels
    agreed = by_id[VINDR_AGREED]
    assert space.decode(agreed.local_target) == ["Aortic enlargement", "Cardiomegaly"]
    assert len(agreed.boxes) == 6


def test_vindr_any_reader_rule_and_samples(vindr_root):
    csv_path = shared_path("labels_torchxrayvision", "vinbigdata-train.csv.gz")
    dataset = VinDrCXR(vindr_root, csv_path, min_readers=1, missing="skip")
    mixed = next(i for i, r in enumerate(dataset.records) if r.id == VINDR_MIXED)
    decoded = labels.VINBIG_LOCAL.decode(dataset.records[mixed].local_target)
    assert decoded == ["Aortic enlargement", "Cardiomegaly", "Pleural effusion", "Pleural thickening"]
    assert len(dataset.records[mixed].boxes) == 6
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["image"].shape == (300, 256)
        assert set(sample) == SAMPLE_KEYS


def test_vindr_missing_images_are_an_error_by_default(vindr_root):
    csv_path = shared_path("labels_torchxrayvision", "vinbigdata-train.csv.gz")
    with pytest.raises(FileNotFoundError, match="14997 of 15000 images"):
        VinDrCXR(vindr_root, csv_path)


def test_vindr_csv_with_frame_sizes_rescales_boxes(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(np.round(synthetic_chest(100, 80) * 255).astype(np.uint8)))
    rows = [
        ["a", "Nodule/Mass", "8", "R1", "100", "200", "300", "400", "1000", "800"],
        ["a", "Nodule/Mass", "8", "R2", "110", "210", "310", "410", "1000", "800"],
    ]
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max", "height", "width"]
        )
        writer.writerows(rows)
    sample = VinDrCXR(tmp_path, tmp_path / "labels.csv")[0]
    np.testing.assert_allclose(sample["boxes"][0], [10, 20, 30, 40])  # 800 x 1000 frame -> 80 x 100 image


def test_vindr_csv_without_the_columns(tmp_path):
    (tmp_path / "bad.csv").write_text("image,label\nx,y\n")
    with pytest.raises(ValueError, match="lacks the VinDr-CXR columns"):
        VinDrCXR(tmp_path, tmp_path / "bad.csv")


# ----------------------------------------------------------------------------------------------------------- NIH


def test_nih1000_real_layout_with_boxes():
    root = shared_path("nih1000")
    boxes_csv = shared_path("labels_torchxrayvision", "BBox_List_2017.csv.gz")
    train = NIHChestXray14(root, split="train", bbox_csv=boxes_csv)
    valid = NIHChestXray14(root, split="valid")
    assert (len(train), len(valid)) == (600, 200)
    assert train.global_targets().sum(0).tolist() == [300, 300]
    assert {r.group for r in train.records if r.id.startswith("00000005_")} == {"nih:00000005"}
    with_boxes = [i for i, r in enumerate(train.records) if len(r.boxes)]
    assert with_boxes
    sample = train[with_boxes[0]]
    assert sample["image"].shape == (64, 64)
    assert_valid_sample(sample, train)
    record = train.records[with_boxes[0]]
    np.testing.assert_allclose(sample["boxes"], record.boxes / 16, rtol=1e-5)  # 1024-px frame -> 64-px image


def test_nih_official_layout(tmp_path):
    image = png_bytes(np.round(synthetic_chest(64, 64) * 255).astype(np.uint8))
    (tmp_path / "images_001" / "images").mkdir(parents=True)
    for name in ("00000001_000.png", "00000001_001.png", "00000002_000.png"):
        (tmp_path / "images_001" / "images" / name).write_bytes(image)
    (tmp_path / "Data_Entry.csv").write_text(
        "Image Index,Finding Labels,Patient ID\n00000001_000.png,Mass|Effusion,1\n00000001_001.png,No Finding,1\n"
        "00000002_000.png,Hernia,2\n00000003_000.png,Edema,3\n"
    )
    (tmp_path / "test_list.txt").write_text("00000002_000.png\n")
    with pytest.raises(FileNotFoundError, match="missing='skip'"):
        NIHChestXray14(tmp_path, csv_path=tmp_path / "Data_Entry.csv")
    dataset = NIHChestXray14(tmp_path, csv_path=tmp_path / "Data_Entry.csv", missing="skip")
    assert [r.id for r in dataset.records] == ["00000001_000.png", "00000001_001.png", "00000002_000.png"]
    assert labels.NIH14.decode(dataset.records[0].local_target) == ["Effusion", "Mass"]
    assert dataset.records[0].group == dataset.records[1].group != dataset.records[2].group
    test = NIHChestXray14(tmp_path, csv_path=tmp_path / "Data_Entry.csv", split="test", missing="skip")
    assert [r.id for r in test.records] == ["00000002_000.png"]
    with pytest.raises(KeyError, match="'Flu' is not a label"):
        (tmp_path / "bad.csv").write_text("Image Index,Finding Labels\n00000001_000.png,Flu\n")
        NIHChestXray14(tmp_path, csv_path=tmp_path / "bad.csv", missing="skip")


# -------------------------------------------------------------------------------------------- PneumoniaMNIST


def test_pneumoniamnist_real():
    path = shared_path("pneumoniamnist")
    train, val = PneumoniaMNIST(path, "train"), PneumoniaMNIST(path, "val")
    assert (len(train), len(val)) == (2428, 270)
    sample = val[0]
    assert sample["image"].shape == (28, 28) and sample["local"].shape == (0,)
    assert_valid_sample(sample, val)
    with pytest.raises(ValueError, match="has \\['train', 'val'\\]"):
        PneumoniaMNIST(path, "test")


# ------------------------------------------------------------------------------------------------- user's own


def test_folder_dataset(tmp_path):
    image = png_bytes(np.round(synthetic_chest(64, 64) * 255).astype(np.uint8))
    for relative in ("normal/a.png", "normal/more/b.png", "pneumonia/c.png", "pneumonia/notes.txt"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(image)
    dataset = FolderDataset(tmp_path)
    assert dataset.global_space.names == ("normal", "pneumonia") and len(dataset) == 3
    assert dataset.global_targets().tolist() == [[1, 0], [1, 0], [0, 1]]
    assert_valid_sample(dataset[2], dataset)


def test_csv_dataset(tmp_path):
    image = png_bytes(np.round(synthetic_chest(64, 64) * 255).astype(np.uint8))
    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / "img" / name).write_bytes(image)
    (tmp_path / "labels.csv").write_text(
        "file,diagnosis,findings,patient\nimg/a.png,tb,Cavity|Nodule,p1\nimg/b.png,normal,,p1\nimg/c.png,tb,Nodule,p2\n"
    )
    dataset = CSVDataset(
        tmp_path / "labels.csv",
        path_column="file",
        global_column="diagnosis",
        local_column="findings",
        group_column="patient",
    )
    assert dataset.global_space.names == ("normal", "tb") and dataset.local_space.names == ("Cavity", "Nodule")
    assert dataset.local_targets().tolist() == [[1, 1], [0, 0], [0, 1]]
    assert [r.group for r in dataset.records] == ["p1", "p1", "p2"]
    assert_valid_sample(dataset[0], dataset)
    findings_only = CSVDataset(tmp_path / "labels.csv", path_column="file", local_column="findings")
    assert findings_only.global_targets().tolist() == [[0, 1], [1, 0], [0, 1]]
    with pytest.raises(ValueError, match="no column"):
        CSVDataset(tmp_path / "labels.csv", global_column="diagnosis")


def test_a_corrupt_file_in_a_dataset_names_the_image(tmp_path):
    from cxrdistill.io import XRayReadError

    image = png_bytes(np.round(synthetic_chest(64, 64) * 255).astype(np.uint8))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "good.png").write_bytes(image)
    (tmp_path / "b" / "broken.png").write_bytes(image[:100])
    dataset = FolderDataset(tmp_path)
    with pytest.raises(XRayReadError, match=r"image 'b/broken\.png'.*corrupt or truncated"):
        dataset[1]


def test_curated_datasets_do_not_check_the_body_part(tmp_path):
    stored = np.round(synthetic_chest(64, 64) * 4095).astype(np.uint16)
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    (tmp_path / "x" / "a.dcm").write_bytes(make_dicom(stored, BodyPartExamined="PECHO"))  # Spanish for chest
    (tmp_path / "y" / "b.dcm").write_bytes(make_dicom(stored))
    assert FolderDataset(tmp_path)[0]["image"].shape == (64, 64)
