"""Evaluate a saved model on a dataset: per-label AUROC with bootstrap intervals, operating points, subsets.

Used by ``cxrdistill evaluate`` and ``train/evaluate.py``, and by the training scripts for their validation
passes, so a number in a model card and a number from the command line are computed by the same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cxrdistill.data import (
    CachedDataset,
    MultiResolutionViews,
    ViewDataset,
    collate_views,
    train_val_split,
)
from cxrdistill.data.registry import load_registered
from cxrdistill.explain import (
    gradient_maps,
)
from cxrdistill.localisation import MapKey, localise_batch
from cxrdistill.metrics import (
    bootstrap_ci,
    macro_auroc,
    operating_point,
    operating_point_ci,
    per_label_auroc,
    youden_threshold,
)
from cxrdistill.triage import (
    RULE_IN_SPECIFICITY,
    RULE_OUT_SENSITIVITY,
    Cuts,
    cross_fitted_state_rates,
    finding_trust,
    state_rates,
)

# Sub-sources whose TB and normal images come from one hospital each (the TBX11K extra sets): AUROC on them alone
# cannot be won by recognising which hospital or archive an image came from.
SAME_HOSPITAL_SOURCES = ("da", "db", "montgomery", "shenzhen")


@dataclass
class EvalData:
    """Which images to evaluate on: a dataset, an official split, and optionally one side of our split."""

    dataset: str = "tbx11k"  # a name of cxrdistill.data.registry.DATASETS
    root: str = "../shared/data/tbx11k"
    split: str | None = None  # official split (TBX11K: all_train, ...; NIH: train/valid; MedMNIST: train/val)
    part: str = "val"  # "all", or "train" / "val" of train_val_split(val_fraction, split_seed)
    val_fraction: float = 0.25
    split_seed: int = 0
    lung_crop: str | None = None  # a LungSegmenter (folder or Hub repo id): every film cropped to its lungs


def load_full_dataset(data: EvalData):
    """The whole official split ``data`` names (records only, nothing decoded), through the dataset registry."""
    return load_registered(data.dataset, data.root, data.split)


def load_train_val(data: EvalData):
    """``(train, validation)`` as the training scripts split them (each film cropped to its lungs where
    ``data.lung_crop`` names a lung model: :mod:`cxrdistill.data.lung_crop`)."""
    full = load_full_dataset(data)
    train, validation = train_val_split(full, data.val_fraction, seed=data.split_seed)
    if data.lung_crop is None:
        return train, validation
    from cxrdistill.data.lung_crop import LungCropped, lung_crop_boxes
    from cxrdistill.models import load_model

    crops = lung_crop_boxes(load_model(data.lung_crop), full)
    return LungCropped(train, crops), LungCropped(validation, crops)


def load_dataset(data: EvalData):
    """The images ``data`` describes: the whole split (``part="all"``) or one side of the training split."""
    if data.part == "all":
        if data.lung_crop is not None:
            raise ValueError("lung crops are made for our split: use part 'train' or 'val'")
        return load_full_dataset(data)
    if data.part not in ("train", "val"):
        raise ValueError(f"part must be 'all', 'train' or 'val', got {data.part!r}")
    train, validation = load_train_val(data)
    return train if data.part == "train" else validation


def predict_dataset(
    model: torch.nn.Module,
    dataset,
    batch_size: int = 64,
    base_size: int = 224,
    cache_dir: str | None = None,
    num_workers: int = 0,
    localise: bool = False,
    prior: np.ndarray | None = None,
    lung_model: torch.nn.Module | None = None,
    map_methods: Sequence[str] = (),
    normal_maps: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Probabilities of ``model`` on every image of ``dataset``, with targets and sources.

    Images are letterboxed to ``base_size`` and area-averaged to the model's input size, as in training. With
    ``localise``, each image with boxes also gets the IoU and pointing-game hit of the model's explanation maps
    (the model's ``explanation_maps``); given a ``prior`` (:func:`location_prior`), of the prior alone and of each
    map weighted by it; given a ``lung_model`` (``LungSegmenter``), of its lung mask alone and of every map (and the
    prior) kept inside the lungs. ``map_methods`` (keys of :data:`cxrdistill.explain.GRADIENT_MAP_METHODS`) adds the
    Grad-CAM family's maps of the positive class beside the model's own. ``normal_maps``
    (:func:`mean_negative_maps` of the training films) adds each map minus the mean map of negative films, kept
    above 0: what a normal film's map also shows says nothing about a lesion.
    """
    size = model.config.image_size
    base = max(base_size, size)
    loader = _film_loader(dataset, size, base, batch_size, cache_dir, num_workers)
    model.eval()
    collected = PredictionCollector()
    localisation: list[dict] = []
    map_grids: dict[MapKey, list] = {}
    for batch in loader:
        images = batch["views"][size]
        with torch.no_grad():
            output = model.forward_for_maps(images) if localise else model(images)
        if localise:
            maps = _maps_of(model, output, images, map_methods, normal_maps)
            for key, grids in maps.items():  # each film's map on the model's own grid: the constancy check
                map_grids.setdefault(key, []).append(grids.detach().float().numpy())
            lungs = None
            if lung_model is not None:  # (B, S, S) over the base view
                lungs = (lung_model.lung_probability(batch["views"][base]), lung_model.config.mask_threshold)
            positive_probs = output.global_logits.float().softmax(-1)[:, model.positive_index].numpy()
            localisation += localise_batch(maps, batch, base, prior, lungs, positive_probs)
        collected.add(output, batch)
    predictions = collected.arrays()
    predictions["localisation"] = localisation
    if localise:
        predictions["map_grids"] = {key: np.concatenate(grids) for key, grids in map_grids.items()}
    return predictions


def _film_loader(dataset, size: int, base: int, batch_size: int, cache_dir: str | None, num_workers: int = 0):
    """Batches of ``dataset``'s films letterboxed to ``base`` and area-averaged to ``size``, as in training."""
    source = CachedDataset(dataset, size=max(256, base), cache_dir=cache_dir) if len(dataset) else dataset
    return DataLoader(
        ViewDataset(source, MultiResolutionViews(base, (size,))),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_views,
    )


@torch.no_grad()
def film_global_logits(
    model: torch.nn.Module, dataset, batch_size: int = 64, base_size: int = 224, cache_dir: str | None = None
) -> torch.Tensor:
    """``(N, G)`` raw global logits of ``model`` on every film of ``dataset``, in its order, each film read as
    :func:`predict_dataset` reads it (a second teacher's targets for distillation: :mod:`cxrdistill.distill`)."""
    size = model.config.image_size
    model.eval()
    parts = [
        model(batch["views"][size]).global_logits.float()
        for batch in _film_loader(dataset, size, max(base_size, size), batch_size, cache_dir)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, len(model.config.global_labels))


def _maps_of(model, output, images: torch.Tensor, map_methods, normal_maps) -> dict[MapKey, torch.Tensor]:
    """The model's explanation maps of a batch, the Grad-CAM family's, and each minus its mean normal map."""
    with torch.no_grad():
        named = model.explanation_maps(output)
    named.update(gradient_maps(model, images, map_methods))
    maps = {MapKey(name): grids for name, grids in named.items()}
    for key, mean in (normal_maps or {}).items():
        maps[key.with_(minus_normal=True)] = (maps[key] - mean.to(maps[key])).clamp_min(0)
    return maps


class PredictionCollector:
    """A model's outputs gathered batch by batch into the arrays of :func:`predict_dataset`: ``global_probs``
    ``(N, G)``, ``local_probs`` ``(N, L)``, their targets and mask, ``source`` and ``id`` ``(N,)``.

    ``gather`` collects a batch's tensors (or lists of strings) from every process: the identity in one process,
    ``accelerator.gather_for_metrics`` in a distributed training run.
    """

    TENSORS = ("global_probs", "local_probs", "global_targets", "local_targets", "local_mask")

    def __init__(self, gather: Callable[[Any], Any] = lambda value: value) -> None:
        self.gather = gather
        self.parts: dict[str, list] = {key: [] for key in (*self.TENSORS, "source", "id")}

    def add(self, output, batch: dict) -> None:
        """One batch: ``output`` a ModelOutput of ``batch``'s images."""
        values = {
            "global_probs": output.global_logits.float().softmax(-1),
            "local_probs": output.local_logits.float().sigmoid(),
            "global_targets": batch["global"],
            "local_targets": batch["local"],
            "local_mask": batch["local_mask"],
        }
        for key, value in values.items():
            self.parts[key].append(self.gather(value.detach()).cpu())
        for key in ("source", "id"):  # strings: gathered as objects
            self.parts[key] += self.gather(list(batch[key]))

    def arrays(self) -> dict[str, Any]:
        return {
            **{key: torch.cat(self.parts[key]).numpy() for key in self.TENSORS},
            "source": np.array(self.parts["source"]),
            "id": np.array(self.parts["id"]),
        }


def mean_negative_maps(model: torch.nn.Module, dataset, **kwargs) -> dict[MapKey, torch.Tensor]:
    """map -> ``(h, w)``: each of ``model``'s maps averaged over the negative films of ``dataset`` (build it from
    the training side), for :func:`predict_dataset`'s ``normal_maps``."""
    predictions = predict_dataset(model, dataset, localise=True, **kwargs)
    negatives = predictions["global_targets"][:, model.positive_index] < 0.5
    if not negatives.any():
        raise ValueError("no negative film to average a normal map over")
    return {key: torch.from_numpy(grids[negatives].mean(0)) for key, grids in predictions["map_grids"].items()}


def global_auroc(targets: np.ndarray, probs: np.ndarray) -> float:
    """AUROC of the positive (last) class of a binary space, or one-vs-rest macro AUROC for K > 2."""
    if targets.shape[1] == 2:
        return macro_auroc(targets[:, 1:], probs[:, 1:])
    return macro_auroc(targets, probs)


def classification_metrics(
    predictions: dict[str, Any],
    global_labels,
    local_labels,
    bootstrap: int = 0,
    global_thresholds=None,
    local_thresholds=None,
) -> dict[str, Any]:
    """AUROCs (overall, same-hospital subset, per local label, macro) and, given thresholds, operating points."""
    p = predictions
    metrics: dict[str, Any] = {"images": len(p["source"])}
    metrics["global_auroc"] = global_auroc(p["global_targets"], p["global_probs"])
    per_global = per_label_auroc(p["global_targets"], p["global_probs"])
    metrics["global_auroc_per_class"] = dict(zip(global_labels, per_global.tolist(), strict=True))
    same = same_hospital(p)
    metrics["same_hospital_images"] = int(same.sum())
    metrics["same_hospital_auroc"] = (
        global_auroc(p["global_targets"][same], p["global_probs"][same]) if same.any() else math.nan
    )
    if len(local_labels):
        per_local = per_label_auroc(p["local_targets"], p["local_probs"], p["local_mask"])
        metrics["local_auroc"] = dict(zip(local_labels, per_local.tolist(), strict=True))
        metrics["local_macro_auroc"] = macro_auroc(p["local_targets"], p["local_probs"], p["local_mask"])
    if bootstrap:
        metrics["global_auroc_ci95"] = bootstrap_ci(
            global_auroc, p["global_targets"], p["global_probs"], samples=bootstrap
        )
        if same.any():
            metrics["same_hospital_auroc_ci95"] = bootstrap_ci(
                global_auroc, p["global_targets"][same], p["global_probs"][same], samples=bootstrap
            )
        if len(local_labels):
            metrics["local_macro_auroc_ci95"] = bootstrap_ci(
                macro_auroc, p["local_targets"], p["local_probs"], p["local_mask"], samples=bootstrap
            )
    if global_thresholds is not None:
        metrics["global_operating_points"] = {
            label: operating_point(p["global_targets"][:, k], p["global_probs"][:, k], global_thresholds[k])
            for k, label in enumerate(global_labels)
        }
        if same.any():  # the same points on the same-hospital images alone (free of the source shortcut)
            metrics["same_hospital_operating_points"] = {
                label: operating_point(p["global_targets"][same, k], p["global_probs"][same, k], global_thresholds[k])
                for k, label in enumerate(global_labels)
            }
    if local_thresholds is not None and len(local_labels):
        known = p["local_mask"] > 0.5
        metrics["local_operating_points"] = {
            label: operating_point(
                p["local_targets"][known[:, k], k], p["local_probs"][known[:, k], k], local_thresholds[k]
            )
            for k, label in enumerate(local_labels)
            if local_thresholds[k] is not None  # a finding the release does not call has no threshold
        }
    return metrics


def to_jsonable(value):
    """``value`` with numpy scalars made plain and non-finite floats made ``None`` (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def calibrate_thresholds(predictions: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-label operating thresholds (Youden's J) for the global classes and the known local labels.

    Global thresholds are chosen on the **same-hospital** images (TB and normal from the same place) wherever they
    hold both classes of a label: on the whole split the source shortcut wins and the thresholds land where the
    source, not the disease, separates the films. A label without both positives and negatives cannot be
    calibrated: its threshold is 1.0, so it is never reported positive rather than positive at an arbitrary 0.5.
    """
    p = predictions
    same = same_hospital(p)
    global_thresholds = []
    for k in range(p["global_probs"].shape[1]):
        targets = p["global_targets"][:, k]
        rows = same if len(np.unique(targets[same])) == 2 else np.ones_like(same)
        global_thresholds.append(youden_threshold(targets[rows], p["global_probs"][rows, k]))
    local_thresholds = []
    for k in range(p["local_probs"].shape[1]):
        known = p["local_mask"][:, k] > 0.5
        local_thresholds.append(youden_threshold(p["local_targets"][known, k], p["local_probs"][known, k]))
    return tuple(global_thresholds), tuple(local_thresholds)


def same_hospital(predictions: dict[str, Any]) -> np.ndarray:
    """``(N,)`` bool: the images from the extra sets, where TB and normal films come from the same hospital."""
    return np.isin(predictions["source"], SAME_HOSPITAL_SOURCES)


def reference_films(predictions: dict[str, Any], positive: int) -> np.ndarray:
    """``(N,)`` bool: the films a model's operating points are chosen and measured on: the same-hospital films
    where they hold both classes of ``positive`` (TBX11K: free of the source shortcut), else every film (datasets
    from one hospital, such as NIH-1024)."""
    same = same_hospital(predictions)
    if len(np.unique(predictions["global_targets"][same, positive])) == 2:
        return same
    return np.ones_like(same)


def reference_name(predictions: dict[str, Any], positive: int) -> str:
    """How cards name :func:`reference_films`."""
    rows = reference_films(predictions, positive)
    return "same-hospital films" if same_hospital(predictions)[rows].all() else "all validation films"


def roc_points(predictions: dict[str, Any], positive: int, max_points: int = 100) -> dict[str, Any]:
    """The ROC curve of ``positive`` on the reference films (at most ``max_points`` points, the corners kept), for
    cards and the app's "How good is this model?" panel."""
    from sklearn.metrics import roc_curve

    rows = reference_films(predictions, positive)
    targets, scores = predictions["global_targets"][rows, positive], predictions["global_probs"][rows, positive]
    fpr, tpr, thresholds = roc_curve(targets, scores, drop_intermediate=True)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).round().astype(int))
    return {
        "films": reference_name(predictions, positive),
        "images": int(rows.sum()),
        "positives": int((targets > 0.5).sum()),
        "fpr": [round(float(v), 4) for v in fpr[keep]],
        "tpr": [round(float(v), 4) for v in tpr[keep]],
        "thresholds": [round(float(min(v, 1.0)), 4) for v in thresholds[keep]],
    }


def operating_points_with_ci(
    predictions: dict[str, Any], positive: int, thresholds: dict[str, float], samples: int = 1000
) -> dict[str, dict]:
    """``{name: sensitivity, specificity (and their 95% CIs) on the reference films at that threshold}``."""
    p = predictions
    same = reference_films(p, positive)
    targets, scores = p["global_targets"][same, positive], p["global_probs"][same, positive]
    points = {}
    for name, threshold in thresholds.items():
        point = operating_point(targets, scores, threshold)
        intervals = operating_point_ci(targets, scores, threshold, samples) if samples else {}
        points[name] = {**point, **{f"{k}_ci95": v for k, v in intervals.items()}, "images": int(same.sum())}
    return points


def measure_triage(
    predictions: dict[str, Any],
    positive: int,
    rule_out_sensitivity: float = RULE_OUT_SENSITIVITY,
    rule_in_specificity: float = RULE_IN_SPECIFICITY,
    folds: int = 5,
) -> tuple[Cuts, dict[str, Any]]:
    """The two cuts of ``positive`` (:mod:`cxrdistill.triage`) chosen on the reference films
    (:func:`reference_films`), and the card's record of them: how often each state happens among the validation
    positives and negatives, on the films the cuts were chosen on and ``folds``-fold cross-fitted (on films they
    were not chosen on), with Wilson 95% intervals."""
    p = predictions
    rows = reference_films(p, positive)
    targets, scores = p["global_targets"][rows, positive], p["global_probs"][rows, positive]
    cuts = Cuts.choose(targets, scores, rule_out_sensitivity, rule_in_specificity)
    record = {
        "films": reference_name(p, positive),
        "images": int(rows.sum()),
        "positives": int((targets > 0.5).sum()),
        "rule_out": {"threshold": cuts.rule_out, "sensitivity_target": rule_out_sensitivity},
        "rule_in": {"threshold": cuts.rule_in, "specificity_target": rule_in_specificity},
        "rates": state_rates(targets, scores, cuts),
        "cross_fitted": cross_fitted_state_rates(
            targets, scores, p["id"][rows], folds, rule_out_sensitivity, rule_in_specificity
        ),
    }
    return cuts, record


def measure_findings(predictions: dict[str, Any], local_labels, samples: int = 1000) -> dict[str, dict[str, Any]]:
    """``{finding: finding_trust(...)}`` on the validation films whose label for it is known."""
    p = predictions
    known = p["local_mask"] > 0.5
    return {
        label: finding_trust(p["local_targets"][known[:, k], k], p["local_probs"][known[:, k], k], samples)
        for k, label in enumerate(local_labels)
    }
