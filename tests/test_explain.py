"""Heatmaps, boxes and localisation metrics, with hand-computed expected values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrdistill.data import MultiResolutionViews
from cxrdistill.explain import attention_rollout, cls_attention_map, heatmap_mask, heatmap_to_boxes, to_source_frame
from cxrdistill.metrics import box_iou, boxes_mask, mask_iou, pointing_game


def test_box_iou_and_mask_iou_hand_computed():
    # 10x10 and a 10x10 shifted by 5: intersection 50, union 150.
    np.testing.assert_allclose(box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10], [20, 20, 30, 30]]), [[1 / 3, 0.0]])
    mask = boxes_mask([[0, 0, 10, 10]], (20, 20))
    assert mask.sum() == 100 and mask[9, 9] and not mask[10, 10]
    assert mask_iou(mask, boxes_mask([[5, 0, 15, 10]], (20, 20))) == 50 / 150
    assert mask_iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 0.0


def test_pointing_game():
    heatmap = np.zeros((20, 20))
    heatmap[3, 14] = 1.0
    assert pointing_game(heatmap, [[10, 0, 20, 5]]) and not pointing_game(heatmap, [[0, 0, 10, 10]])


def test_boxes_land_on_a_planted_lesion():
    heatmap = np.random.default_rng(0).random((64, 64)) * 0.2
    heatmap[10:20, 30:50] = 1.0
    heatmap[50, 5] = 0.9  # a single hot pixel: too small to be a box
    boxes = heatmap_to_boxes(heatmap, relative_threshold=0.5, min_area_fraction=0.01)
    assert [b.box for b in boxes] == [(30.0, 10.0, 50.0, 20.0)]
    assert heatmap_mask(heatmap, 0.5).sum() == 201


def test_cls_attention_and_rollout_shapes_and_mass():
    attentions = [torch.rand(2, 3, 1 + 16, 1 + 16).softmax(-1) for _ in range(4)]
    cls_map = cls_attention_map(attentions)
    assert cls_map.shape == (2, 4, 4) and torch.all(cls_map.sum((1, 2)) <= 1)
    rollout = attention_rollout(attentions)
    assert rollout.shape == (2, 4, 4) and torch.all(rollout >= 0)


def _two_layer_attentions():
    """Two layers of one head over a class token and a 2 x 2 grid (5 tokens), rows summing to 1. Layer 1's class
    token looks at patch 0; layer 2's class token looks at patch 3, and patch 3 looks at patch 1."""
    first = torch.full((5, 5), 0.05)
    first[0] = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0])
    first[1:] = torch.eye(5)[1:] * 0.8 + 0.04
    second = torch.eye(5)
    second[0] = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])
    second[4] = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])
    return [first[None, None], second[None, None]]  # each (B=1, heads=1, 5, 5)


def test_attention_rollout_matches_a_hand_computed_two_layer_case():
    first, second = (a[0, 0] for a in _two_layer_attentions())
    # rollout (Abnar & Zuidema 2020): R = A2' @ A1' with A' = (I + A) / 2 (rows still sum to 1): the class token
    # reaches layer 1's inputs through layer 2, so R[0] = sum_j A2'[0, j] * A1'[j].
    half = lambda a: (torch.eye(5) + a) / 2  # noqa: E731
    a1, a2 = half(first), half(second)
    expected_row = torch.zeros(5)
    for j in range(5):
        expected_row += a2[0, j] * a1[j]
    # by hand: A2'[0] = (0.5, 0, 0, 0, 0.5), so R[0] = 0.5 * A1'[0] + 0.5 * A1'[4]
    #   A1'[0] = (0.5, 0.5, 0, 0, 0); A1'[4] = (0.02, 0.02, 0.02, 0.02, 0.92)
    torch.testing.assert_close(expected_row, torch.tensor([0.26, 0.26, 0.01, 0.01, 0.46]))
    rollout = attention_rollout(_two_layer_attentions())
    torch.testing.assert_close(rollout[0], expected_row[1:].reshape(2, 2))
    reversed_product = (a1 @ a2)[0, 1:].reshape(2, 2)  # the wrong order gives another map
    assert not torch.allclose(rollout[0], reversed_product, atol=1e-3)


def test_cls_attention_map_reads_the_layer_it_is_asked_for():
    attentions = _two_layer_attentions()
    torch.testing.assert_close(cls_attention_map(attentions)[0], torch.tensor([[0.0, 0.0], [0.0, 1.0]]))  # last
    torch.testing.assert_close(cls_attention_map(attentions, layer=0)[0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    # several heads are averaged
    two_heads = [torch.cat([a, a.roll(1, dims=-1)], dim=1) for a in attentions]
    torch.testing.assert_close(cls_attention_map(two_heads)[0], torch.tensor([[0.0, 0.0], [0.0, 0.5]]))


def test_heatmap_maps_back_onto_the_source_image():
    image = np.zeros((300, 200), np.float32)
    sample = {
        "id": "x",
        "group": "x",
        "source": "s",
        "image": image,
        "global": np.zeros(2, np.float32),
        "local": np.zeros(0, np.float32),
        "local_mask": np.zeros(0, np.float32),
        "boxes": np.zeros((0, 4), np.float32),
        "box_labels": np.zeros(0, np.int64),
    }
    views = MultiResolutionViews(112, (28,))(sample)
    heatmap = torch.zeros(14, 14)
    heatmap[2:5, 6:9] = 1.0  # view pixels 16..40 x 48..72 of 112
    back = to_source_frame(heatmap, views["to_view"].numpy(), 112, (300, 200))
    assert back.shape == (300, 200)
    (box,) = heatmap_to_boxes(back.numpy(), 0.5)
    # letterbox: scale 112 / 300, x padding (112 - 200 * 112 / 300) / 2 = 18.67; so x = (u - 18.67) * 300 / 112
    np.testing.assert_allclose(box.box, [78.6, 42.9, 142.9, 107.1], atol=1.5)


def test_location_prior_is_the_mean_box_mask():
    from cxrdistill.data import Record
    from cxrdistill.localisation import location_prior

    def record(i, boxes):
        return Record(
            id=str(i),
            path=None,
            global_target=np.array([0.0, 1.0], np.float32),
            local_target=np.zeros(0, np.float32),
            local_mask=np.zeros(0, np.float32),
            boxes=np.array(boxes, np.float32).reshape(-1, 4),
            box_labels=np.zeros(len(boxes), np.int64),
            box_frame=(100, 100),
        )

    class Fake:
        def __init__(self):
            self.records = [record(0, [[0, 0, 50, 100]]), record(1, [[0, 0, 100, 50]]), record(2, [])]

    prior = location_prior(Fake(), frame=(10, 10))
    assert prior[0, 0] == 1.0 and prior[9, 9] == 0.0 and prior[0, 9] == 0.5 and prior[9, 0] == 0.5


def test_cross_fitted_miou_chooses_each_threshold_on_the_other_half():
    from cxrdistill.localisation import THRESHOLDS, MapKey, localisation_metrics

    def entry(image_id, best_index, border=False):
        iou_at = [0.1] * len(THRESHOLDS)
        iou_at[best_index] = 0.9
        return {
            "id": image_id,
            "maps": {
                MapKey("map"): {"iou_at": iou_at, "pointing": True, "box_best_iou": [0.6], "peak_on_border": border}
            },
        }

    # sorted ids a, b, c, d -> halves {a, c} and {b, d}; {a, c} prefer threshold 0.2, {b, d} prefer 0.7
    rows = [entry("a", 1), entry("b", 6, border=True), entry("c", 1), entry("d", 6)]
    metrics = localisation_metrics(rows, bootstrap=200)[MapKey("map")]
    # each half is scored at the other half's choice, where it only gets 0.1: honest, not 0.9
    assert metrics["cross_fitted_thresholds"] == [0.2, 0.7]
    assert metrics["miou_cross_fitted"] == pytest.approx(0.1)
    assert metrics["miou_at_best_threshold"] == pytest.approx(0.5)  # the optimistic same-images number
    assert metrics["peak_on_border"] == 0.25 and metrics["pointing_game"] == 1.0
    assert metrics["box_recall_iou_0.5"] == 1.0 and metrics["box_recall_iou_0.3"] == 1.0
    low, high = metrics["miou_cross_fitted_ci95"]
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1)
    # per image, in the order given, for paired comparisons
    assert metrics["per_image"] == {"id": ["a", "b", "c", "d"], "iou_cross_fitted": [0.1] * 4, "pointing": [1] * 4}


def test_a_heatmap_peak_on_the_image_edge_is_flagged():
    from cxrdistill.localisation import _score_heatmap

    heatmap = np.zeros((100, 100))
    boxes = np.array([[40.0, 40.0, 60.0, 60.0]])
    truth = np.zeros((100, 100), bool)
    truth[40:60, 40:60] = True
    heatmap[50, 50] = 1.0
    assert not _score_heatmap(heatmap, boxes, truth)["peak_on_border"]
    heatmap[2, 50] = 2.0
    scored = _score_heatmap(heatmap, boxes, truth)
    assert scored["peak_on_border"] and not scored["pointing"]


def test_grad_cam_of_a_gap_linear_cnn_is_the_rectified_cam():
    # For global average pooling + a linear head, Grad-CAM's channel weights are W[label] / (h * w), so its map is
    # ReLU(CAM - bias) up to scale: a hand-checkable identity between the library and the exact CAM.
    pytest.importorskip("pytorch_grad_cam")
    import torch

    from cxrdistill.explain import grad_cam_maps
    from cxrdistill.models import CNNTeacher, CNNTeacherConfig

    torch.manual_seed(0)
    model = CNNTeacher(CNNTeacherConfig(image_size=64, global_labels=("not_tb", "tb"), local_labels=())).eval()
    images = torch.rand(2, 1, 64, 64)
    maps = grad_cam_maps(model, images, "tb")
    assert maps.shape == (2, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    with torch.no_grad():
        output = model(images, return_features=True)
        cam = model.class_activation_maps(output.features)[:, 1] - model.global_head.bias[1]
    expected = torch.nn.functional.interpolate(cam.clamp_min(0)[:, None], size=(64, 64), mode="bilinear")[:, 0]
    for grad, exact in zip(maps, expected.numpy(), strict=True):
        exact = (exact - exact.min()) / (exact.max() - exact.min())
        assert np.corrcoef(grad.ravel(), exact.ravel())[0, 1] > 0.95
    other = grad_cam_maps(model, images, "not_tb")  # a named label, not the argmax
    assert not np.allclose(other, maps)


def test_grad_cam_works_for_a_vit_and_refuses_unknown_labels():
    pytest.importorskip("pytorch_grad_cam")
    import torch

    from cxrdistill.explain import grad_cam_maps
    from cxrdistill.models import StudentViT, StudentViTConfig

    model = StudentViT(StudentViTConfig(image_size=28, depth=2, embed_dim=48, num_heads=2))
    maps = grad_cam_maps(model, torch.rand(1, 1, 28, 28), "active_tb", head="local", method="gradcam++")
    assert maps.shape == (1, 28, 28)
    with pytest.raises(ValueError, match="not a global label"):
        grad_cam_maps(model, torch.rand(1, 1, 28, 28), "pneumonia")


def test_gradient_map_methods_weigh_the_stages_each_family_names():
    pytest.importorskip("pytorch_grad_cam")
    import torch

    from cxrdistill.explain import GRADIENT_MAP_METHODS, gradient_maps
    from cxrdistill.models import CNNTeacher, CNNTeacherConfig, StudentViT, StudentViTConfig

    torch.manual_seed(0)
    config = CNNTeacherConfig(image_size=64, global_labels=("not_tb", "tb"), local_labels=(), timm_name="resnet10t")
    model = CNNTeacher(config).eval()
    images = torch.rand(2, 1, 64, 64)
    maps = gradient_maps(model, images, list(GRADIENT_MAP_METHODS))
    assert set(maps) == set(GRADIENT_MAP_METHODS)
    for heatmap in maps.values():
        assert heatmap.shape == (2, 64, 64) and heatmap.min() >= 0 and heatmap.max() <= 1
    # the finer stage (layer3, 4 x 4 at 64 px) is not the last one (layer4, 2 x 2): different maps
    assert not torch.allclose(maps["layercam-finer"], maps["layercam"])
    fused = (maps["layercam-finer"] + maps["layercam"]) / 2
    torch.testing.assert_close(maps["layercam-multiscale"], fused)
    with pytest.raises(ValueError, match="unknown map methods"):
        gradient_maps(model, images, ["scorecam"])
    vit = StudentViT(StudentViTConfig(image_size=28, depth=2, embed_dim=48, num_heads=2))
    with pytest.raises(ValueError, match="no \\['finer'\\] stage"):
        gradient_maps(vit, torch.rand(1, 1, 28, 28), ["layercam-finer"])
    assert gradient_maps(vit, torch.rand(1, 1, 28, 28), ["hirescam"])["hirescam"].shape == (1, 28, 28)


def test_stored_localisation_is_read_back_by_its_keys_not_its_labels():
    from cxrdistill.localisation import PRIOR_LUNGS, MapKey, localisation_json, read_localisation

    cam = MapKey("CAM (tb)")
    located = {cam.with_(minus_normal=True, lungs=True): {"miou": 0.2}, PRIOR_LUNGS: {"miou": 0.3}}
    stored = json.loads(json.dumps(localisation_json(located)))
    assert set(stored) == {"CAM (tb) minus the mean normal map x lung mask", "location prior x lung mask (no model)"}
    assert read_localisation(stored) == located
    # a label that reads like another map does not fool the reader: the stored key decides
    stored["CAM (tb) x lung mask"] = stored.pop("CAM (tb) minus the mean normal map x lung mask")
    assert read_localisation(stored) == located
    with pytest.raises(ValueError, match="has no 'key'"):
        read_localisation({"CAM (tb)": {"miou": 0.1}})
