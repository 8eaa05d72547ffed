"""Scoring explanation maps against radiologists' boxes: mask IoU, the pointing game, box recall and the TBX11K
benchmark's AP50, for the model's maps and the model-free baselines (the location prior, the lung mask), alone and
combined; and the check that a map changes with the film.

Every scored map is named by a :class:`MapKey` (which map, and what it was multiplied by), never by a joined string:
the display label is derived from the key, and stored reports carry the key's fields beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from cxrdistill.data.transforms import transform_boxes
from cxrdistill.explain import heatmap_mask, heatmap_to_boxes, to_source_frame
from cxrdistill.metrics import (
    average_precision,
    box_iou,
    boxes_mask,
    map_constancy,
    mask_iou,
    pointing_game,
)


@dataclass(frozen=True, order=True)
class MapKey:
    """One scored map.

    Attributes:
        map: the model's map (a key of its ``explanation_maps`` or a Grad-CAM-family method); ``None`` for a map
            made without a model (the location prior and / or the lung mask).
        minus_normal: the map minus the mean map of the training split's normal films, kept above 0.
        prior: multiplied by the location prior (or, without a model, the prior itself).
        lungs: multiplied by the lung mask (or, without a model, the lung probability itself).
    """

    map: str | None
    minus_normal: bool = False
    prior: bool = False
    lungs: bool = False

    @property
    def model_free(self) -> bool:
        return self.map is None

    @property
    def own(self) -> bool:
        """The model's map as it is: no contrast, prior or lung mask."""
        return self.map is not None and not (self.minus_normal or self.prior or self.lungs)

    def with_(self, **changes) -> MapKey:
        return MapKey(**{**asdict(self), **changes})

    @property
    def label(self) -> str:
        """How tables and cards name it, e.g. ``CAM (tb) x lung mask`` or ``location prior (no model)``."""
        if self.map is None:
            parts = [name for name, used in (("location prior", self.prior), ("lung mask", self.lungs)) if used]
            return " x ".join(parts) + " (no model)"
        text = self.map + (" minus the mean normal map" if self.minus_normal else "")
        return text + (" x location prior" if self.prior else "") + (" x lung mask" if self.lungs else "")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


PRIOR = MapKey(None, prior=True)
LUNGS = MapKey(None, lungs=True)
PRIOR_LUNGS = MapKey(None, prior=True, lungs=True)
MODEL_FREE = (PRIOR, PRIOR_LUNGS, LUNGS)  # the rows beside every model's


def localisation_json(located: dict[MapKey, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """:func:`localisation_metrics`'s result for a JSON file: by label, each entry with its ``key`` fields."""
    return {key.label: {**values, "key": key.to_json()} for key, values in located.items()}


def read_localisation(stored: dict[str, dict[str, Any]]) -> dict[MapKey, dict[str, Any]]:
    """The inverse of :func:`localisation_json`: each entry keyed by the :class:`MapKey` stored with it.

    Raises:
        ValueError: an entry without its ``key`` (a report written before keys were stored: evaluate again).
    """
    located = {}
    for label, values in stored.items():
        if not isinstance(values.get("key"), dict):
            raise ValueError(f"localisation entry {label!r} has no 'key': re-run cxrdistill evaluate to rewrite it")
        located[MapKey(**values["key"])] = {k: v for k, v in values.items() if k != "key"}
    return located


def sanity_json(sanity: dict[MapKey, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """:func:`map_sanity`'s result for a JSON file (by label; the maps there are the models' own)."""
    return {key.label: values for key, values in sanity.items()}


THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(1, 10))  # relative heatmap thresholds scored per image
BORDER = 0.05  # a heatmap peak in the outer 5% of the image is counted as "on the border" (the shortcut check)


def location_prior(dataset, frame: tuple[int, int] = (256, 256)) -> np.ndarray:
    """The mean box mask of ``dataset``'s images with boxes, on a ``frame`` grid: a heatmap with no model at all.

    Build it from the training side only; evaluation images are then scored with it like any model's map.
    """
    total, count = np.zeros(frame, dtype=np.float64), 0
    for record in dataset.records:
        if len(record.boxes) == 0:
            continue
        height, width = record.box_frame or frame
        scale = np.array([frame[1] / width, frame[0] / height] * 2)
        total += boxes_mask(record.boxes * scale, frame)
        count += 1
    if count == 0:
        raise ValueError("no image with boxes to build a location prior from")
    return total / count


def _detections(heatmap: np.ndarray, probability: float) -> list[list[float]]:
    """The boxes a map draws (at half its maximum) as ``[x0, y0, x1, y1, score]``: the box's mean map value as a
    share of the map's maximum, times the film's probability of the positive class (1 for a map with no model)."""
    peak = float(heatmap.max())
    return [[*b.box, (b.score / peak if peak > 0 else 0.0) * probability] for b in heatmap_to_boxes(heatmap, 0.5)]


def _score_heatmap(
    heatmap: np.ndarray, boxes: np.ndarray, truth: np.ndarray, probability: float = 1.0
) -> dict[str, Any]:
    detections = _detections(heatmap, probability)
    predicted = [d[:4] for d in detections]
    best_iou = box_iou(boxes, predicted).max(axis=1) if predicted else np.zeros(len(boxes))
    row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    margin_y, margin_x = BORDER * heatmap.shape[0], BORDER * heatmap.shape[1]
    return {
        "iou_at": [mask_iou(heatmap_mask(heatmap, t), truth) for t in THRESHOLDS],
        "pointing": pointing_game(heatmap, boxes),
        "box_best_iou": best_iou.tolist(),
        "detections": detections,
        "peak_on_border": bool(
            row < margin_y
            or row >= heatmap.shape[0] - margin_y
            or column < margin_x
            or column >= heatmap.shape[1] - margin_x
        ),
    }


def localise_batch(
    maps: dict[str, torch.Tensor],
    batch: dict,
    base: int,
    prior: np.ndarray | None = None,
    lungs=None,
    probabilities: np.ndarray | None = None,
) -> list[dict]:
    """Per image: each heatmap's boxes (for AP50: a film without boxes contributes false positives only) and, for
    an image with boxes, its mask IoU at every threshold, pointing game and best box IoUs, all in the source
    image's pixels; combinations with the prior and, given ``lungs`` (``((B, S, S) lung probability over the base
    view, mask threshold)``), with the lung mask. A model's boxes are scored with the film's ``probabilities`` of
    the positive class; a map with no model scores its boxes alone."""
    results = []
    for i, view_boxes in enumerate(batch["boxes"][base]):
        source_size = tuple(int(v) for v in batch["source_size"][i])
        to_view = batch["to_view"][i].numpy()
        has_boxes = len(view_boxes) > 0
        boxes = transform_boxes(view_boxes.numpy(), np.linalg.inv(to_view), max(source_size))[0] if has_boxes else None
        truth = boxes_mask(boxes, source_size) if has_boxes else None
        probability = 1.0 if probabilities is None else float(probabilities[i])
        entry: dict[str, Any] = {"id": batch["id"][i], "has_boxes": has_boxes, "boxes": boxes, "maps": {}}

        def score(key: MapKey, heatmap: np.ndarray, p: float, entry=entry, boxes=boxes, truth=truth) -> None:
            if boxes is not None:
                entry["maps"][key] = _score_heatmap(heatmap, boxes, truth, p)
            else:
                entry["maps"][key] = {"detections": _detections(heatmap, p)}

        resized = None
        if prior is not None:
            resized = torch.nn.functional.interpolate(
                torch.from_numpy(prior)[None, None].float(), size=source_size, mode="bilinear", align_corners=False
            )[0, 0].numpy()
        lung_probability = lung_mask = None
        if lungs is not None:
            lung_probability = to_source_frame(lungs[0][i], to_view, base, source_size).numpy()
            lung_mask = (lung_probability > lungs[1]).astype(np.float32)
        for key, heatmaps in maps.items():
            heatmap = to_source_frame(heatmaps[i], to_view, base, source_size).numpy()
            score(key, heatmap, probability)
            low, high = heatmap.min(), heatmap.max()
            scaled = (heatmap - low) / (high - low) if high > low else np.zeros_like(heatmap)
            if resized is not None:  # the model's map weighted by where TB usually is: reported as a combination
                score(key.with_(prior=True), scaled * resized, probability)
            if lung_mask is not None:  # the model's map kept inside the lungs
                score(key.with_(lungs=True), scaled * lung_mask, probability)
                if resized is not None:
                    score(key.with_(prior=True, lungs=True), scaled * resized * lung_mask, probability)
        if resized is not None:
            score(PRIOR, resized, 1.0)
        if lung_mask is not None:
            score(LUNGS, lung_probability, 1.0)
            if resized is not None:
                score(PRIOR_LUNGS, resized * lung_mask, 1.0)
        results.append(entry)
    return results


def map_sanity(predictions: dict[str, Any], positive: int) -> dict[MapKey, dict[str, Any]]:
    """Per explanation map: does it change with the film? :func:`cxrdistill.metrics.map_constancy` on the maps of
    the positive films and of the negative films apart (a constant map peaks in one cell on every film and
    correlates about 1 with its mean)."""
    positives = predictions["global_targets"][:, positive] > 0.5
    return {
        key: {"positive films": map_constancy(grids[positives]), "negative films": map_constancy(grids[~positives])}
        for key, grids in predictions.get("map_grids", {}).items()
    }


def localisation_metrics(
    localisation: list[dict], bootstrap: int = 1000, seed: int = 0
) -> dict[MapKey, dict[str, Any]]:
    """Per map (:class:`MapKey`) over the images with boxes.

    * ``miou``: mask IoU at the 0.5 relative threshold; ``miou_cross_fitted``: each image scored at the threshold
      that is best on the *other* half of the images (halves by sorted id), so the threshold is always chosen on
      images it is not reported on; ``cross_fitted_thresholds`` are the two choices. ``best_threshold`` and
      ``miou_at_best_threshold`` are chosen and reported on the same images: an optimistic bound, not a result.
    * ``pointing_game``: share of images whose heatmap maximum lies inside a box; ``peak_on_border``: share whose
      maximum lies in the outer 5% of the image (a border / marker shortcut).
    * ``box_recall_iou_0.3`` / ``_0.5``: share of ground-truth boxes hit by a predicted box (threshold 0.5).
    * ``ap50``: the TBX11K benchmark's detection AP at IoU 0.5 over every film scored (boxes drawn on films without
      radiologists' boxes are false positives), a model's boxes ranked by box score x the film's probability.
    * ``*_ci95``: bootstrap over images; ``per_image``: each image's id, cross-fitted IoU and pointing hit.
    """
    detected = localisation
    localisation = [entry for entry in localisation if entry.get("has_boxes", True)]
    if not localisation:
        return {}
    names = list(localisation[0]["maps"])
    order = np.argsort([str(entry["id"]) for entry in localisation], kind="stable")
    halves = (order[0::2], order[1::2])
    return {key: _map_metrics(key, localisation, detected, halves, bootstrap, seed) for key in names}


def _map_metrics(
    key: MapKey, localisation: list[dict], detected: list[dict], halves: tuple, bootstrap: int, seed: int
) -> dict[str, Any]:
    """:func:`localisation_metrics` of one map: ``localisation`` the films with boxes, ``detected`` every film."""
    truths = {str(entry["id"]): entry["boxes"] for entry in localisation if entry.get("boxes") is not None}
    iou_at = np.array([entry["maps"][key]["iou_at"] for entry in localisation])  # (images, thresholds)
    per_threshold = iou_at.mean(axis=0)
    best = int(np.argmax(per_threshold))
    crossed = np.empty(len(localisation))
    chosen = []
    for fit, score in (halves, halves[::-1]):
        if len(fit) == 0 or len(score) == 0:
            continue
        k = int(np.argmax(iou_at[fit].mean(axis=0)))
        chosen.append(THRESHOLDS[k])
        crossed[score] = iou_at[score, k]
    if len(chosen) < 2:  # a single image: nothing to fit on
        crossed[:] = iou_at[:, THRESHOLDS.index(0.5)]
    pointing = np.array([entry["maps"][key]["pointing"] for entry in localisation], dtype=float)
    box_ious = np.concatenate([entry["maps"][key]["box_best_iou"] for entry in localisation])
    return {
        "images": len(localisation),
        "miou": float(per_threshold[THRESHOLDS.index(0.5)]),
        "miou_cross_fitted": float(crossed.mean()),
        "miou_cross_fitted_ci95": _mean_ci(crossed, bootstrap, seed),
        "cross_fitted_thresholds": chosen,
        "best_threshold": THRESHOLDS[best],
        "miou_at_best_threshold": float(per_threshold[best]),
        "pointing_game": float(pointing.mean()),
        "pointing_game_ci95": _mean_ci(pointing, bootstrap, seed),
        "peak_on_border": float(np.mean([entry["maps"][key].get("peak_on_border", False) for entry in localisation])),
        "ap50": average_precision(
            [(str(entry["id"]), d[:4], d[4]) for entry in detected for d in entry["maps"][key].get("detections", [])],
            truths,
        )
        if truths
        else None,
        "box_recall_iou_0.3": float(np.mean(box_ious >= 0.3)) if len(box_ious) else None,
        "box_recall_iou_0.5": float(np.mean(box_ious >= 0.5)) if len(box_ious) else None,
        # per image, for paired comparisons of two maps on the same films (cxrdistill.metrics)
        "per_image": {
            "id": [str(entry["id"]) for entry in localisation],
            "iou_cross_fitted": crossed.round(4).tolist(),
            "pointing": pointing.astype(int).tolist(),
        },
    }


def _mean_ci(values: np.ndarray, samples: int, seed: int) -> list[float] | None:
    if samples <= 0 or len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (samples, len(values)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
