"""Metrics with hand-computed expected values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrdistill.metrics import (
    auroc,
    bootstrap_ci,
    macro_auroc,
    operating_point,
    per_label_auroc,
    youden_threshold,
)


def test_auroc_hand_computed():
    # positives 0.8, 0.4; negatives 0.6, 0.2: of the 4 (positive, negative) pairs, 3 are ordered right.
    assert auroc([1, 1, 0, 0], [0.8, 0.4, 0.6, 0.2]) == 0.75
    assert auroc([1, 0], [0.5, 0.5]) == 0.5  # a tie counts half
    assert math.isnan(auroc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_mask_leaves_unknown_labels_out():
    targets = np.array([1, 1, 0, 0, 1])
    scores = np.array([0.8, 0.4, 0.6, 0.2, 0.0])
    assert auroc(targets, scores, mask=[1, 1, 1, 1, 0]) == 0.75


def test_macro_auroc_skips_undefined_labels():
    targets = np.array([[1, 1], [1, 0], [0, 1], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3], [0.2, 0.4]])
    per_label = per_label_auroc(targets, scores)
    assert per_label.tolist() == [1.0, 0.25]
    assert macro_auroc(targets, scores) == pytest.approx(0.625)
    targets[:, 1] = 1
    assert macro_auroc(targets, scores) == 1.0


def test_operating_point_hand_computed():
    point = operating_point([1, 1, 0, 0, 0], [0.9, 0.3, 0.6, 0.2, 0.1], threshold=0.5)
    assert point == {"threshold": 0.5, "sensitivity": 0.5, "specificity": 2 / 3, "f1": 0.5, "accuracy": 0.6}


def test_youden_threshold_separates_and_refuses_to_guess():
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9]) == 0.7
    assert youden_threshold([0, 0, 0], [0.1, 0.2, 0.3]) == 1.0


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 200)
    scores = targets * 0.3 + rng.random(200)
    low, high = bootstrap_ci(auroc, targets, scores, samples=300)
    assert low < auroc(targets, scores) < high and high - low < 0.25


def test_threshold_for_sensitivity_is_the_highest_that_finds_enough_positives():
    from cxrdistill.metrics import operating_point, threshold_for_sensitivity

    targets = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    scores = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.1, 0.2, 0.05, 0.65])
    threshold = threshold_for_sensitivity(targets, scores, 0.9)
    assert threshold == 0.3  # 9 of the 10 positives score >= 0.3; any higher threshold finds only 8
    assert operating_point(targets, scores, threshold)["sensitivity"] == 0.9
    assert threshold_for_sensitivity(targets, scores, 1.0) == 0.1
    assert threshold_for_sensitivity(np.zeros(3), np.ones(3), 0.9) == 1.0  # no positives: never positive


def test_thresholds_are_calibrated_on_same_hospital_films_not_where_the_source_wins():
    from cxrdistill.evaluation import calibrate_thresholds, measure_triage, operating_points_with_ci

    # TBX11K TB films (source "tb") all score high; among the same-hospital films TB scores 0.3-0.6, normal 0.1-0.35
    source = np.array(["tb"] * 20 + ["shenzhen"] * 20)
    tb = np.r_[np.ones(20), np.ones(10), np.zeros(10)]
    p_tb = np.r_[np.full(20, 0.97), np.linspace(0.3, 0.6, 10), np.linspace(0.1, 0.35, 10)]
    predictions = {
        "source": source,
        "global_targets": np.stack([1 - tb, tb], 1),
        "global_probs": np.stack([1 - p_tb, p_tb], 1),
        "local_probs": np.zeros((40, 0)),
        "local_targets": np.zeros((40, 0)),
        "local_mask": np.zeros((40, 0)),
        "id": np.array([f"{i:02d}" for i in range(40)]),
    }
    (_, tb_threshold), _ = calibrate_thresholds(predictions)
    assert 0.3 <= tb_threshold <= 0.4  # separates TB from normal among same-hospital films, not 0.97 from the rest
    cuts, record = measure_triage(predictions, 1, rule_out_sensitivity=0.9)
    assert cuts.rule_out == pytest.approx(np.linspace(0.3, 0.6, 10)[1])  # 9 of the 10 same-hospital TB films
    assert record["images"] == 20 and record["films"] == "same-hospital films"  # the 0.97 archive films left out
    points = operating_points_with_ci(predictions, 1, {"rule-out": cuts.rule_out}, samples=50)
    assert points["rule-out"]["sensitivity"] == 0.9 and points["rule-out"]["images"] == 20
    low, high = points["rule-out"]["sensitivity_ci95"]
    assert low <= 0.9 <= high


def test_one_hospital_datasets_take_their_operating_points_and_roc_on_every_film():
    """NIH-1024 has no same-hospital subset: calls and the card's ROC use every film; TBX11K keeps its subset."""
    from cxrdistill.evaluation import (
        measure_triage,
        operating_points_with_ci,
        reference_films,
        reference_name,
        roc_points,
    )
    from cxrdistill.metrics import auroc

    rng = np.random.default_rng(1)
    n = 200
    sick = rng.random(n) < 0.5
    scores = np.clip(np.where(sick, 0.6, 0.4) + 0.25 * rng.standard_normal(n), 0, 1)
    predictions = {
        "global_targets": np.stack([~sick, sick], 1).astype(float),
        "global_probs": np.stack([1 - scores, scores], 1),
        "source": np.array(["nih"] * n),
        "id": np.array([f"{i:03d}" for i in range(n)]),
    }
    assert reference_films(predictions, 1).all() and reference_name(predictions, 1) == "all validation films"
    points = operating_points_with_ci(predictions, 1, {"balanced": 0.5}, samples=20)
    assert points["balanced"]["images"] == n and 0 < points["balanced"]["sensitivity"] < 1
    assert measure_triage(predictions, 1)[1]["images"] == n
    roc = roc_points(predictions, 1, max_points=30)
    assert roc["images"] == n and roc["positives"] == sick.sum() and len(roc["fpr"]) <= 30
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(auroc(sick, scores), abs=0.02)
    predictions["source"] = np.array(["shenzhen"] * 100 + ["tb"] * 100)  # TBX11K-like: the subset is used
    assert reference_films(predictions, 1).sum() == 100 and roc_points(predictions, 1)["films"] == "same-hospital films"


def test_paired_differences_resample_the_same_images_for_both_models():
    from cxrdistill.metrics import auroc, paired_auroc_difference, paired_mean_difference

    rng = np.random.default_rng(0)
    targets = (rng.random(200) < 0.5).astype(float)
    good = targets + rng.normal(0, 0.5, 200)
    noisy = targets + rng.normal(0, 2.0, 200)
    difference, (low, high) = paired_auroc_difference(targets, good, noisy, samples=200)
    assert difference == pytest.approx(auroc(targets, good) - auroc(targets, noisy))
    assert 0 < low < difference < high
    assert paired_auroc_difference(targets, good, good, samples=50) == (0.0, (0.0, 0.0))
    # pairing: two methods whose per-image scores move together differ by a constant: a zero-width interval,
    # where unpaired intervals of each mean would be wide
    shared = rng.random(150)
    mean, interval = paired_mean_difference(shared + 0.1, shared, samples=100)
    assert mean == pytest.approx(0.1) and interval == pytest.approx((0.1, 0.1))


def test_a_constant_map_is_flagged_and_a_varying_one_is_not():
    from cxrdistill.metrics import map_constancy

    rng = np.random.default_rng(0)
    base = rng.random((4, 4))
    constant = np.stack([base * rng.uniform(0.5, 2) + rng.normal(0, 0.01, (4, 4)) for _ in range(50)])
    flagged = map_constancy(constant)
    assert flagged["peak_cell_share"] > 0.9 and flagged["median_correlation_with_mean"] > 0.95
    varying = rng.random((50, 4, 4))
    fine = map_constancy(varying)
    assert fine["peak_cell_share"] < 0.3 and abs(fine["median_correlation_with_mean"]) < 0.5
    assert map_constancy(np.zeros((3, 2, 2)))["median_correlation_with_mean"] is None  # flat maps: undefined
    assert map_constancy(np.zeros((0, 2, 2)))["films"] == 0


def test_ap50_matches_a_hand_computed_precision_recall_curve():
    from cxrdistill.metrics import average_precision

    truths = {"a": np.array([[0, 0, 10, 10]]), "b": np.array([[0, 0, 10, 10], [20, 20, 30, 30]])}
    detections = [
        ("a", np.array([0, 0, 10, 10]), 0.9),  # TP
        ("n", np.array([0, 0, 10, 10]), 0.8),  # a normal film's box: FP
        ("b", np.array([1, 1, 10, 10]), 0.7),  # TP (IoU 0.81)
        ("b", np.array([0, 0, 10, 10]), 0.6),  # duplicate of a matched box: FP
        ("b", np.array([50, 50, 60, 60]), 0.5),  # FP
    ]
    # recall 1/3 at precision 1, 2/3 at precision 2/3; the third box is never found
    assert average_precision(detections, truths) == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3)
    # at IoU 0.9 b's first box (IoU 0.81) misses and the exact one behind it matches: TP, FP, FP, TP, FP
    assert average_precision(detections, truths, iou=0.9) == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 4)
    assert average_precision([], truths) == 0.0
    assert np.isnan(average_precision(detections, {}))
