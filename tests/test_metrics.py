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
