"""Releasing a trained classifier: float16 where harmless, operating cuts calibrated on its validation split, and a
card whose figures are measured on the released weights.

For each model: evaluate it in float32 and as float16 weights on the validation split it was selected on; keep
float16 only if every AUROC moves by at most ``max_change`` (0.001); calibrate on that split per-label thresholds
(Youden's J), the positive class's rule-out and rule-in cuts (:mod:`cxrdistill.triage`) and which findings are
trusted enough to be called, and store them in the config; with ``localisation`` (TB boxes of TBX11K) also score
the model's maps against the radiologists' boxes beside the model-free rows (:mod:`cxrdistill.localisation`),
store the threshold that is best on the validation images as ``heatmap_threshold`` and put the localisation
numbers and the constancy check on the card. How often each answer state happens among validation positives and
negatives is also estimated on films the cuts were not chosen on (cross-fitted).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cxrdistill.evaluation import (
    EvalData,
    calibrate_thresholds,
    classification_metrics,
    load_dataset,
    load_train_val,
    measure_findings,
    measure_triage,
    operating_points_with_ci,
    predict_dataset,
    reference_name,
    roc_points,
    to_jsonable,
)
from cxrdistill.localisation import localisation_json, localisation_metrics, location_prior, map_sanity, sanity_json
from cxrdistill.models import CXRModel, LungSegmenter, load_model
from cxrdistill.models.card import card_result, card_result_names
from cxrdistill.models.hub_files import METRICS_NAME
from cxrdistill.triage import RULE_IN_SPECIFICITY, RULE_OUT_SENSITIVITY

logger = logging.getLogger(__name__)

COMPARED = ("global_auroc", "same_hospital_auroc", "local_macro_auroc")  # AUROCs float16 must not move


@dataclass(frozen=True)
class ReleaseOptions:
    """How a classifier is released: the validation split, the float16 tolerance, the operating points.

    Attributes:
        data: the validation split the model was selected on.
        max_change: the largest AUROC change float16 weights may cause.
        bootstrap: resamples for the confidence intervals.
        localisation: also score the maps against the TB boxes (TBX11K).
        lung_model: a ``LungSegmenter`` folder or repo: localisation also scored inside the lungs.
        rule_out_sensitivity / rule_in_specificity: what the two triage cuts keep.
    """

    data: EvalData
    max_change: float = 0.001
    bootstrap: int = 1000
    localisation: bool = False
    lung_model: str | None = None
    rule_out_sensitivity: float = RULE_OUT_SENSITIVITY
    rule_in_specificity: float = RULE_IN_SPECIFICITY


@dataclass
class Measured:
    """A model as it will be released and what was measured on it."""

    model: CXRModel
    predictions: dict[str, Any]
    half: bool  # float16 weights
    changes: dict[str, float]  # AUROC change float32 -> float16


def release_model(source: Path, target: Path, options: ReleaseOptions) -> dict[str, Any]:
    """Release the model saved in ``source`` into ``target`` (replaced); returns its card (``metrics.json``)."""
    model = load_model(source)
    if isinstance(model, LungSegmenter):  # measured by its own script (Dice); released as trained
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))
        return json.loads((source / METRICS_NAME).read_text())
    if model.config.input_crop == "lungs" and options.data.lung_crop is None:
        raise ValueError(f"{source} reads films cropped to their lungs: measure it with the data's lung_crop")
    measured = _choose_precision(model, options)
    card = json.loads((source / METRICS_NAME).read_text())
    card = _calibrate_and_measure(measured, card, options)
    shutil.rmtree(target, ignore_errors=True)
    measured.model.save_pretrained(target, metrics=card, weights_dtype=torch.float16 if measured.half else None)
    logger.info("%s: %s (AUROC changes %s)", source, "float16" if measured.half else "float32", measured.changes)
    return card


def _choose_precision(model: CXRModel, options: ReleaseOptions) -> Measured:
    """The model in float16 if no AUROC moves by more than ``options.max_change``, else in float32."""
    dataset = load_dataset(options.data)
    located = options.localisation
    extras = {
        "localise": located,
        "prior": location_prior(load_train_val(options.data)[0]) if located else None,
        "lung_model": load_model(options.lung_model) if options.lung_model and located else None,
    }
    full = predict_dataset(model, dataset, **extras)
    with tempfile.TemporaryDirectory() as scratch:
        model.save_pretrained(scratch, weights_dtype=torch.float16)
        half_model = load_model(scratch)
    half = predict_dataset(half_model, dataset, **extras)
    labels = (model.config.global_labels, model.config.local_labels)
    full_metrics, half_metrics = classification_metrics(full, *labels), classification_metrics(half, *labels)
    changes = {  # the AUROCs this dataset has (NIH-1024 has no same-hospital subset)
        key: abs(half_metrics[key] - full_metrics[key])
        for key in COMPARED
        if math.isfinite(full_metrics.get(key, math.nan)) and math.isfinite(half_metrics.get(key, math.nan))
    }
    use_half = all(change <= options.max_change for change in changes.values())
    return Measured(half_model, half, True, changes) if use_half else Measured(model, full, False, changes)


def _calibrate_and_measure(measured: Measured, card: dict[str, Any], options: ReleaseOptions) -> dict[str, Any]:
    """Store the calibrated cuts in ``measured.model``'s config; return ``card`` re-measured on its weights."""
    model, predictions, bootstrap = measured.model, measured.predictions, options.bootstrap
    global_thresholds, local_thresholds = calibrate_thresholds(predictions)  # on the reference films
    positive = model.positive_index
    cuts, triage = measure_triage(predictions, positive, options.rule_out_sensitivity, options.rule_in_specificity)
    findings = measure_findings(predictions, model.config.local_labels, bootstrap)
    located = localisation_metrics(predictions["localisation"], bootstrap=bootstrap) if options.localisation else {}
    own = [key for key in located if key.own]  # the model's map as it is
    heatmap_threshold = located[own[0]]["best_threshold"] if own else None
    model.config = dataclasses.replace(
        model.config,
        global_thresholds=global_thresholds,
        local_thresholds=tuple(  # a finding that is not trusted is shown, never called
            threshold if findings[label]["called"] else None
            for label, threshold in zip(model.config.local_labels, local_thresholds, strict=True)
        ),
        heatmap_threshold=heatmap_threshold,
        rule_out_threshold=cuts.rule_out,
        rule_in_threshold=cuts.rule_in,
        rule_out_sensitivity=cuts.rule_out_sensitivity,
        rule_in_specificity=cuts.rule_in_specificity,
    )
    metrics = classification_metrics(
        predictions,
        model.config.global_labels,
        model.config.local_labels,
        bootstrap=bootstrap,
        global_thresholds=global_thresholds,
        local_thresholds=local_thresholds,
    )
    films = reference_name(predictions, positive)  # same-hospital films for TBX11K, all films for NIH-1024
    points = operating_points_with_ci(
        predictions, positive, {"rule-out": cuts.rule_out, "rule-in": cuts.rule_in}, bootstrap
    )
    lean = {key: {k: v for k, v in values.items() if k != "per_image"} for key, values in located.items()}
    card["raw"] = to_jsonable({**metrics, "localisation": localisation_json(lean)} if located else metrics)
    card["raw"].update(
        reference_calls=to_jsonable(points),
        triage=to_jsonable(triage),
        findings=to_jsonable(findings),
        roc=roc_points(predictions, positive),
    )
    if options.localisation:  # does each map change with the film? (a constant map is flagged beside its scores)
        card["raw"]["map_sanity"] = to_jsonable(sanity_json(map_sanity(predictions, positive)))
    card["release"] = {
        "weights": "float16" if measured.half else "float32",
        "auroc_change_fp16": measured.changes,
        "thresholds": f"global: Youden's J on the validation split ({films}); rule-out: the highest threshold "
        f"with sensitivity >= {cuts.rule_out_sensitivity:g} on them; rule-in: the lowest with specificity >= "
        f"{cuts.rule_in_specificity:g}; findings: called only where the validation AUROC's lower 95% bound is at "
        "least 0.70 with at least 20 positive films",
    }
    if heatmap_threshold is not None:
        card["release"]["heatmap_threshold"] = f"{heatmap_threshold} (best mIoU on the validation images)"
    label = model.positive_label
    card["results"] = [
        *_auroc_results(card, metrics, model.config.global_labels),
        *_localisation_results(located),
        *_operating_results(points, label, films),
        *_triage_results(triage["cross_fitted"], label, films),
    ]
    return card


def _auroc_results(card: dict[str, Any], metrics: dict[str, Any], global_labels) -> list[dict]:
    """The training run's AUROCs, re-measured on the released weights (a re-release drops the operating points and
    localisation entries of an earlier release, which are measured again)."""
    by_name = {name: key for key, name in card_result_names(global_labels).items()}
    return [
        card_result("roc_auc", r["name"], metrics[by_name[r["name"]]], metrics.get(f"{by_name[r['name']]}_ci95"))
        for r in card["results"]
        if metrics.get(by_name.get(r["name"], "")) is not None
    ]


def _localisation_results(located: dict) -> list[dict]:
    results = []
    for key, values in located.items():
        name = key.label
        results += [
            card_result(
                "mean_iou",
                f"mIoU vs radiologists' TB boxes, {name} (threshold cross-fitted)",
                values["miou_cross_fitted"],
                values.get("miou_cross_fitted_ci95"),
            ),
            card_result(
                "accuracy",
                f"pointing game vs radiologists' TB boxes, {name}",
                values["pointing_game"],
                values.get("pointing_game_ci95"),
            ),
        ]
        if values.get("ap50") is not None:
            results.append(
                card_result(
                    "average_precision", f"AP50 of the TB boxes (TBX11K benchmark metric), {name}", values["ap50"]
                )
            )
    return results


def _operating_results(points: dict, label: str, films: str) -> list[dict]:
    return [
        card_result(
            measure,
            f"{measure}, {label}, at the {name} threshold {point['threshold']:.3f} ({films})",
            point[measure],
            point.get(f"{measure}_ci95"),
        )
        for name, point in points.items()
        for measure in ("sensitivity", "specificity")
    ]


def _triage_results(crossed: dict, label: str, films: str) -> list[dict]:
    results = []
    for group, state in (("positive", "low"), ("negative", "signal"), ("positive", "signal"), ("negative", "low")):
        rate = crossed["rates"][group][state]
        results.append(
            card_result(
                "accuracy",
                f"share of {label if group == 'positive' else 'not-' + label} films answered {state!r}, cuts chosen "
                f"on other films ({crossed['folds']}-fold cross-fitted, {films})",
                rate["share"],
                rate["ci95"],
            )
        )
    return results


def release_folders(pairs: list[tuple[Path, Path]], options: ReleaseOptions, budget_mb: float) -> float:
    """Release each ``(source, target)`` pair; the targets change only if the whole release folder (every model in
    it) stays within ``budget_mb`` (10**6 bytes). Returns the release's size in MB.

    Raises:
        ValueError: the release would exceed the budget (nothing was replaced).
    """
    with tempfile.TemporaryDirectory() as scratch:
        staged = {target: Path(scratch) / str(i) for i, (_, target) in enumerate(pairs)}
        for source, target in pairs:
            release_model(source, staged[target], options)
        total = _release_size(staged) / 10**6
        if total > budget_mb:
            raise ValueError(f"the release would be {total:.1f} MB, over the {budget_mb} MB budget: nothing replaced")
        for target, folder in staged.items():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(folder, target)
    return total


def _bytes(path: Path) -> int:
    """Size of a file, or of every file below a folder."""
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _release_size(staged: dict[Path, Path]) -> int:
    """Bytes of the whole release folder(s) once every target is replaced by its staged folder."""
    replaced = {target.resolve() for target in staged}
    parents = {target.parent for target in replaced if target.parent.is_dir()}
    kept = sum(_bytes(p) for parent in parents for p in parent.iterdir() if p not in replaced)
    return kept + sum(_bytes(folder) for folder in staged.values())
