"""Classification metrics for X-ray models: per-label AUROC with bootstrap intervals, and operating points.

AUROC comes from scikit-learn. Labels that are unknown for an image (``mask == 0``, e.g. the TB type of a TB image
without boxes) are left out of that label's AUROC; a label with only one class among the known images has no AUROC
(``nan``) and is left out of the macro average, which says how many labels it averaged.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score


def auroc(targets: np.ndarray, scores: np.ndarray, mask: np.ndarray | None = None) -> float:
    """AUROC of ``scores`` for binary ``targets`` (1-D), over the entries where ``mask`` is 1; ``nan`` if undefined."""
    targets, scores = np.asarray(targets, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    keep = np.isfinite(targets) if mask is None else (np.asarray(mask) > 0.5) & np.isfinite(targets)
    targets, scores = targets[keep], scores[keep]
    if len(np.unique(targets)) < 2:
        return math.nan
    return float(roc_auc_score(targets, scores))


def per_label_auroc(targets: np.ndarray, scores: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """AUROC of each column of ``(N, L)`` ``scores`` against ``targets`` (``nan`` where undefined)."""
    targets, scores = np.asarray(targets), np.asarray(scores)
    masks = np.ones_like(targets) if mask is None else np.asarray(mask)
    return np.array([auroc(targets[:, j], scores[:, j], masks[:, j]) for j in range(targets.shape[1])])


def macro_auroc(targets: np.ndarray, scores: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean of the defined per-label AUROCs (``nan`` if none is defined)."""
    values = per_label_auroc(targets, scores, mask)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else math.nan


def bootstrap_ci(
    metric, *arrays: np.ndarray, samples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(*arrays)``, resampling rows (images) with replacement."""
    rng = np.random.default_rng(seed)
    count = len(arrays[0])
    values = []
    for _ in range(samples):
        rows = rng.integers(0, count, count)
        value = metric(*(np.asarray(a)[rows] for a in arrays))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def paired_auroc_difference(
    targets: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, samples: int = 1000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """``AUROC(a) - AUROC(b)`` of two models' scores on the *same* images, with a paired bootstrap 95% interval
    (each resample draws images, and both models are scored on the drawn images), so the interval reflects the
    difference between the models rather than the sampling of the images each was tested on."""

    def difference(t, a, b):
        return auroc(t, a) - auroc(t, b)

    return difference(targets, scores_a, scores_b), bootstrap_ci(
        difference, targets, scores_a, scores_b, samples=samples, seed=seed
    )


def paired_mean_difference(
    values_a: np.ndarray, values_b: np.ndarray, samples: int = 1000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """Mean of ``values_a - values_b`` (per-image scores of two methods on the same images: IoU, pointing hits) with
    a paired bootstrap 95% interval."""
    differences = np.asarray(values_a, dtype=np.float64) - np.asarray(values_b, dtype=np.float64)
    return float(differences.mean()), bootstrap_ci(np.mean, differences, samples=samples, seed=seed)


def youden_threshold(targets: np.ndarray, scores: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 (Youden's J) on a validation split.

    Without both classes among ``targets`` there is nothing to calibrate on: 1.0 (never positive) is returned.
    """
    from sklearn.metrics import roc_curve

    targets, scores = np.asarray(targets), np.asarray(scores)
    if len(np.unique(targets)) < 2:
        return 1.0
    false_positive, true_positive, thresholds = roc_curve(targets, scores)
    best = int(np.argmax(true_positive - false_positive))
    return float(np.clip(thresholds[best], 0.0, 1.0))


def threshold_for_sensitivity(targets: np.ndarray, scores: np.ndarray, sensitivity: float = 0.9) -> float:
    """The highest threshold at which ``scores >= threshold`` finds at least ``sensitivity`` of the positives
    (a screening operating point: the WHO target product profile for TB triage asks sensitivity >= 0.90).

    Without positives there is nothing to calibrate on: 1.0 (never positive) is returned.
    """
    if not 0.0 < sensitivity <= 1.0:
        raise ValueError(f"sensitivity must be in (0, 1], got {sensitivity}")
    positives = np.sort(np.asarray(scores)[np.asarray(targets) > 0.5])[::-1]  # highest first
    if len(positives) == 0:
        return 1.0
    needed = math.ceil(sensitivity * len(positives) - 1e-9)  # positives the call must include
    return float(positives[needed - 1])


def threshold_for_specificity(targets: np.ndarray, scores: np.ndarray, specificity: float = 0.95) -> float:
    """The lowest threshold at which ``scores >= threshold`` leaves at least ``specificity`` of the negatives
    below it. Without negatives there is nothing to calibrate on: 1.0 is returned (nothing reaches it but 1.0)."""
    if not 0.0 < specificity <= 1.0:
        raise ValueError(f"specificity must be in (0, 1], got {specificity}")
    negatives = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(targets) <= 0.5])[::-1]  # highest first
    if len(negatives) == 0:
        return 1.0
    allowed = math.floor((1.0 - specificity) * len(negatives) + 1e-9)  # negatives that may reach the cut
    if allowed >= len(negatives):
        return 0.0
    # just above the highest negative that must stay below: ties with it stay below too
    return float(np.nextafter(negatives[allowed], np.inf))


def operating_point_ci(
    targets: np.ndarray, scores: np.ndarray, threshold: float, samples: int = 1000
) -> dict[str, tuple[float, float]]:
    """Bootstrap 95% intervals (over images) of the sensitivity and specificity at ``threshold``."""
    targets, scores = np.asarray(targets), np.asarray(scores)
    return {
        name: bootstrap_ci(lambda t, s, n=name: operating_point(t, s, threshold)[n], targets, scores, samples=samples)
        for name in ("sensitivity", "specificity")
    }


def operating_point(targets: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, F1 and accuracy of ``scores >= threshold``."""
    targets = np.asarray(targets) > 0.5
    predicted = np.asarray(scores) >= threshold
    true_positive = float(np.sum(predicted & targets))
    false_positive = float(np.sum(predicted & ~targets))
    false_negative = float(np.sum(~predicted & targets))
    true_negative = float(np.sum(~predicted & ~targets))

    def ratio(a: float, b: float) -> float:
        return a / b if b else math.nan

    return {
        "threshold": float(threshold),
        "sensitivity": ratio(true_positive, true_positive + false_negative),
        "specificity": ratio(true_negative, true_negative + false_positive),
        "f1": ratio(2 * true_positive, 2 * true_positive + false_positive + false_negative),
        "accuracy": ratio(true_positive + true_negative, len(targets)),
    }


# ------------------------------------------------------------------------------------------------- localisation


def boxes_mask(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Union of xyxy ``boxes`` as a boolean ``shape`` mask (a pixel is in when its centre is)."""
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        rows = slice(max(0, int(np.ceil(y0 - 0.5))), min(shape[0], int(np.ceil(y1 - 0.5))))
        columns = slice(max(0, int(np.ceil(x0 - 0.5))), min(shape[1], int(np.ceil(x1 - 0.5))))
        mask[rows, columns] = True
    return mask


def mask_iou(predicted: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    union = np.logical_or(predicted, target).sum()
    return float(np.logical_and(predicted, target).sum() / union) if union else 0.0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(M, N)`` IoU between xyxy boxes ``a`` ``(M, 4)`` and ``b`` ``(N, 4)``."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)


def pointing_game(heatmap: np.ndarray, boxes: np.ndarray) -> bool:
    """Whether the heatmap's maximum falls inside one of the ground-truth boxes (Zhang et al., ECCV 2016)."""
    values = np.asarray(heatmap)
    row, column = np.unravel_index(int(np.argmax(values)), values.shape)
    return bool(boxes_mask(boxes, values.shape)[row, column])


def map_constancy(grids: np.ndarray) -> dict[str, float | None]:
    """Is a map the same on every film? ``grids`` ``(N, h, w)``: one map per film on the model's own grid.

    Returns ``peak_cell_share`` (the share of films whose maximum falls in the most common peak cell: 1.0 for a
    constant map, about ``1 / cells`` for maps that peak anywhere), ``median_correlation_with_mean`` (each film's
    Pearson correlation with the mean map, median over the films whose map is not flat: near 1 for a constant map)
    and ``films``.
    """
    grids = np.asarray(grids, dtype=np.float64)
    if grids.ndim != 3 or len(grids) == 0:
        return {"peak_cell_share": None, "median_correlation_with_mean": None, "films": 0}
    flat = grids.reshape(len(grids), -1)
    peaks = flat.argmax(axis=1)
    share = float(np.bincount(peaks).max() / len(peaks))
    centred = flat - flat.mean(axis=1, keepdims=True)
    mean = flat.mean(axis=0)
    mean_centred = mean - mean.mean()
    norms = np.linalg.norm(centred, axis=1) * np.linalg.norm(mean_centred)
    varied = norms > 1e-12
    correlation = (centred[varied] @ mean_centred) / norms[varied]
    return {
        "peak_cell_share": share,
        "median_correlation_with_mean": float(np.median(correlation)) if varied.any() else None,
        "films": len(grids),
    }


def average_precision(
    detections: list[tuple[str, np.ndarray, float]], truths: dict[str, np.ndarray], iou: float = 0.5
) -> float:
    """Detection AP at an IoU threshold (PASCAL VOC all-point interpolation, the TBX11K benchmark's AP50 at 0.5).

    Args:
        detections: ``(film id, xyxy box, score)`` from every film scored, normal films included (their boxes are
            false positives).
        truths: film id -> ``(M, 4)`` ground-truth boxes (films without boxes may be absent).
        iou: the overlap a detection needs with a not yet matched ground-truth box of its film.

    Returns:
        AP in ``[0, 1]`` (``nan`` without ground-truth boxes).
    """
    total = sum(len(boxes) for boxes in truths.values())
    if total == 0:
        return math.nan
    order = sorted(range(len(detections)), key=lambda k: -detections[k][2])
    matched = {film: np.zeros(len(boxes), dtype=bool) for film, boxes in truths.items()}
    hits = np.zeros(len(order))
    for rank, k in enumerate(order):
        film, box, _ = detections[k]
        boxes = truths.get(film)
        if boxes is None or len(boxes) == 0:
            continue
        overlaps = box_iou(np.asarray(box)[None], boxes)[0]
        overlaps[matched[film]] = -1.0
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou:
            matched[film][best] = True
            hits[rank] = 1.0
    true_positives = np.cumsum(hits)
    recall = true_positives / total
    precision = true_positives / np.arange(1, len(order) + 1)
    # all-point interpolation: precision made monotone from the right, integrated over recall
    recall = np.concatenate([[0.0], recall, [recall[-1] if len(recall) else 0.0]])
    precision = np.concatenate([[1.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * precision[1:]))
