"""The lung segmentation model, its outlines dataset and training script, and lung-aware localisation scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support.films import REPO_ROOT, png_bytes, shared_path, synthetic_chest

from cxrdistill.data import LungOutlines, polygon_mask
from cxrdistill.models import LungSegmenter, LungSegmenterConfig, preset_config


def write_outlines(root, count: int = 12, size: int = 128):
    """A TBX11K-like folder of synthetic chests and an outlines JSON of their two lung ellipses."""
    folder = root / "imgs" / "extra" / "mc+shenzhen" / "train"
    folder.mkdir(parents=True)
    images = {}
    for i in range(count):
        relative = f"imgs/extra/mc+shenzhen/train/CHNCXR_{i:04d}_0.png"
        (root / relative).write_bytes(png_bytes((synthetic_chest(size, size) * 255).astype(np.uint8)))
        angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        lungs = [
            [[cx * size + 0.16 * size * np.cos(a), 0.45 * size + 0.3 * size * np.sin(a)] for a in angles]
            for cx in (0.3, 0.7)
        ]
        images[relative] = {"right_lung": lungs[0], "left_lung": lungs[1], "outline": "synthetic"}
    outlines = root / "outlines.json"
    outlines.write_text(json.dumps({"frame": "pixels", "images": images}))
    return root, outlines


def test_polygon_mask_fills_the_inside():
    mask = polygon_mask([[(2, 2), (7, 2), (7, 7), (2, 7)]], (10, 12))
    assert mask.shape == (10, 12) and mask.dtype == np.float32
    assert mask[4, 4] == 1 and mask[0, 0] == 0 and mask[9, 11] == 0 and mask.sum() == 36


def test_the_shared_lung_outlines_give_two_lungs_inside_each_film():
    root = shared_path("tbx11k")
    shared_path("lung_outlines", "tbx11k_shenzhen_train.json")
    outlines = LungOutlines(root)
    assert len(outlines) == 140
    item = outlines[0]
    assert item["image"].shape == item["mask"].shape == (512, 512)
    share = item["mask"].mean()
    assert 0.1 < share < 0.5, share  # lungs cover a good part of a chest film, not all of it
    assert item["mask"][:, :256].sum() > 0 and item["mask"][:, 256:].sum() > 0  # one lung on each side


def test_a_bad_outlines_file_is_a_clear_error(tmp_path):
    (tmp_path / "o.json").write_text(json.dumps({"images": {"a.png": {"right_lung": [[0, 0], [1, 1]]}}}))
    with pytest.raises(ValueError, match="no polygon for"):
        LungOutlines(tmp_path, tmp_path / "o.json")
    with pytest.raises(ValueError, match="cannot read the lung outlines"):
        LungOutlines(tmp_path, tmp_path / "missing.json")


def test_lung_segmenter_round_trips_with_its_preset_and_card(tmp_path):
    config = preset_config(LungSegmenterConfig, "lung-unet-mobilenetv3s", image_size=64)
    torch.manual_seed(0)
    model = LungSegmenter(config).eval()
    images = torch.rand(2, 1, 64, 64)
    probability = model.lung_probability(images)
    assert probability.shape == (2, 64, 64) and 0 <= probability.min() and probability.max() <= 1
    metrics = {
        "dataset": {"name": "outlines", "type": "tbx11k-lung-outlines", "split": "held out"},
        "results": [{"type": "dice", "name": "Dice, lungs", "value": 0.9}],
        "training": {"command": "python train/train_lungs.py"},
    }
    model.save_pretrained(tmp_path / "lungs", metrics=metrics)
    loaded = LungSegmenter.from_pretrained(tmp_path / "lungs")
    assert loaded.config.preset == "lung-unet-mobilenetv3s" and loaded.config.decoder_channels == (64, 32, 16, 16, 8)
    torch.testing.assert_close(loaded.lung_probability(images), probability, atol=0, rtol=0)
    card = (tmp_path / "lungs" / "README.md").read_text()
    assert "lung segmentation" in card and "image-segmentation" in card and "lung_probability" in card
    with pytest.raises(ValueError, match="takes 64 x 64"):
        model(torch.rand(1, 1, 32, 32))


def test_lung_training_script_learns_synthetic_lungs_and_saves_a_measured_card(tmp_path):
    from cxrdistill_train import train_lungs

    root, outlines = write_outlines(tmp_path / "data")
    result = train_lungs.main(
        [
            *("--root", str(root), "--outlines", str(outlines), "--output-dir", str(tmp_path / "run")),
            *("--image-size", "64", "--held-out", "4", "--epochs", "12", "--batch-size", "4", "--bootstrap", "20"),
            "--no-augment",
        ]
    )
    dice = result["results"][0]
    assert dice["type"] == "dice" and dice["ci95"][0] <= dice["value"] <= dice["ci95"][1]
    assert dice["value"] > 0.7, dice  # two ellipses are easy: a run that learns nothing stays near 0.4
    assert LungSegmenter.from_pretrained(tmp_path / "run" / "best").config.image_size == 64
    assert "4 held-out" in result["dataset"]["split"]


def test_evaluate_scores_the_lung_mask_and_keeps_maps_inside_it(tmp_path, tiny_tbx11k):
    from cxrdistill.evaluation import EvalData, load_dataset, load_train_val, predict_dataset
    from cxrdistill.localisation import LUNGS, PRIOR_LUNGS, MapKey, localisation_metrics, location_prior
    from cxrdistill.models import CNNTeacher, CNNTeacherConfig

    torch.manual_seed(0)
    model = CNNTeacher(CNNTeacherConfig(timm_name="resnet10t", image_size=64, local_labels=())).eval()
    lungs = LungSegmenter(preset_config(LungSegmenterConfig, "lung-unet-mobilenetv3s", image_size=64)).eval()
    data = EvalData("tbx11k", str(tiny_tbx11k), None, "val", 0.3, 0)
    prior = location_prior(load_train_val(data)[0], frame=(64, 64))
    predictions = predict_dataset(
        model, load_dataset(data), cache_dir=str(tmp_path), localise=True, prior=prior, lung_model=lungs
    )
    rows = localisation_metrics(predictions["localisation"], bootstrap=10)
    cam = MapKey("CAM (tb)")
    assert {cam, cam.with_(lungs=True), cam.with_(prior=True, lungs=True), LUNGS, PRIOR_LUNGS} <= set(rows)
    assert LUNGS.label == "lung mask (no model)" and cam.with_(prior=True, lungs=True).label == (
        "CAM (tb) x location prior x lung mask"
    )
    assert all(0 <= row["miou"] <= 1 for row in rows.values())
    assert all(row["ap50"] is None or 0 <= row["ap50"] <= 1 for row in rows.values())


def test_evaluate_contrasts_maps_with_the_mean_normal_map_and_checks_their_constancy(tmp_path, tiny_tbx11k):
    from cxrdistill.evaluation import EvalData, load_dataset, load_train_val, mean_negative_maps, predict_dataset
    from cxrdistill.localisation import MapKey, localisation_metrics, map_sanity
    from cxrdistill.models import CNNTeacher, CNNTeacherConfig

    torch.manual_seed(0)
    model = CNNTeacher(CNNTeacherConfig(timm_name="resnet10t", image_size=64, local_labels=())).eval()
    data = EvalData("tbx11k", str(tiny_tbx11k), None, "val", 0.3, 0)
    train = load_train_val(data)[0]
    normal = mean_negative_maps(model, train, cache_dir=str(tmp_path))
    cam = MapKey("CAM (tb)")
    assert set(normal) == {cam} and normal[cam].shape == (2, 2)
    # by hand: the mean CAM of the training split's normal films
    everything = predict_dataset(model, train, cache_dir=str(tmp_path), localise=True)
    negatives = everything["global_targets"][:, 1] < 0.5
    torch.testing.assert_close(normal[cam], torch.from_numpy(everything["map_grids"][cam][negatives].mean(0)))
    predictions = predict_dataset(model, load_dataset(data), cache_dir=str(tmp_path), localise=True, normal_maps=normal)
    grids = predictions["map_grids"]
    contrasted = cam.with_(minus_normal=True)
    np.testing.assert_allclose(grids[contrasted], np.clip(grids[cam] - normal[cam].numpy(), 0, None), atol=1e-5)
    assert contrasted in localisation_metrics(predictions["localisation"], bootstrap=5)
    sanity = map_sanity(predictions, 1)
    films = sanity[cam]["positive films"]["films"] + sanity[cam]["negative films"]["films"]
    assert films == len(predictions["id"]) and 0 < sanity[cam]["positive films"]["peak_cell_share"] <= 1


def test_two_lungs_wants_one_lung_on_each_side():
    from cxrdistill.results import two_lungs

    yy, xx = np.mgrid[0:200, 0:200]
    lungs = np.zeros((200, 200), bool)
    for centre in (60, 140):
        lungs |= ((xx - centre) / 30) ** 2 + ((yy - 90) / 60) ** 2 < 1
    assert two_lungs(lungs)
    assert not two_lungs(lungs & (xx < 100))  # one lung
    assert not two_lungs(np.ones((200, 200), bool))  # the whole image
    assert not two_lungs(np.random.default_rng(0).random((200, 200)) > 0.4)  # noise: one huge region
    assert not two_lungs(lungs & (yy < 40))  # two slivers


def test_the_predictor_keeps_tb_maps_inside_the_lungs_and_says_so(tmp_path):
    from support.models import tb_model

    from cxrdistill.inference import Predictor
    from cxrdistill.pages import lung_sentence, tb_pictures

    torch.manual_seed(0)
    lungs = LungSegmenter(preset_config(LungSegmenterConfig, "lung-unet-mobilenetv3s", image_size=64)).eval()
    student_folder = str(REPO_ROOT / "models" / "mlcak-student-28")
    predictor = Predictor.from_sources([student_folder], lung_model=None)
    predictor.tb_model, predictor.lung_model = tb_model().eval(), lungs
    image = (synthetic_chest(300, 260) * 255).astype(np.uint8)
    prediction = predictor.predict(png_bytes(image))
    assert prediction.lungs.shape == prediction.image.shape and prediction.lungs.dtype == bool
    summary = prediction.to_dict()["lungs"]
    assert set(summary) == {"fraction_of_image", "found"} and isinstance(summary["found"], bool)
    if prediction.lungs_found:  # an untrained lung model may or may not see two lungs in a synthetic chest
        first, raw = list(prediction.tb.maps)[:2]
        assert first == f"{raw} inside the lungs" and not prediction.tb.maps[first][~prediction.lungs].any()
        for name, heatmap in list(prediction.student.maps.items())[:2]:  # the ViT's maps too
            assert name.endswith("inside the lungs") and not heatmap[~prediction.lungs].any()
        assert "Blue: the lungs" in lung_sentence(prediction)
    else:
        assert list(prediction.tb.maps) == ["CAM (tb)"] and "No lungs found" in lung_sentence(prediction)
        assert not any("inside the lungs" in name for name in prediction.student.maps)
        assert prediction.tb.boxes == [] and "box(es)" not in tb_pictures(prediction, {})[2]
    prediction.lungs = np.zeros_like(prediction.lungs)
    assert not prediction.lungs_found and "No lungs found" in lung_sentence(prediction)


def test_the_released_models_keep_every_map_inside_the_lungs_of_a_real_tb_film():
    film = shared_path("tbx11k", "imgs", "tb", "tb0005.png")
    from cxrdistill.inference import Predictor

    predictor = Predictor.from_release(REPO_ROOT / "models")
    prediction = predictor.predict(film.read_bytes())
    assert prediction.lungs_found  # the released lung model finds both lungs on a real TBX11K TB film
    for result in (prediction.student, prediction.teacher, prediction.tb):
        kept = [name for name in result.maps if name.endswith("inside the lungs")]
        assert len(kept) == len(result.maps) / 2 and list(result.maps)[: len(kept)] == kept
        for name in kept:
            assert result.maps[name][~prediction.lungs].max() == 0 and result.maps[name][prediction.lungs].max() > 0
    # every TB box lies mostly inside the lungs (boxes enclose regions of the kept map, in original pixels)
    assert prediction.tb.boxes
    for box in prediction.tb.boxes:
        x0, y0, x1, y1 = (round(v / prediction.scale) for v in box.box)
        assert prediction.lungs[y0:y1, x0:x1].mean() > 0.5, box
