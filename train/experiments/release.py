"""Copy trained models into the repository's release folders (Hub layout), in float16 where that is harmless.

    python train/experiments/release.py --root ../shared/data/tbx11k \\
        runs/teacher-224/best=models/mlcak-teacher-224 runs/student-28-mlcak/best=models/mlcak-student-28

For each model: evaluate it in float32 and as float16 weights on the validation split it was selected on; keep
float16 only if every AUROC moves by at most ``--max-auroc-change`` (0.001); calibrate on that split per-label
thresholds (Youden's J), the positive class's rule-out and rule-in cuts (cxrdistill.triage) and which findings
are trusted enough to be called, and store them in the config; with ``--localisation`` (TB boxes of TBX11K) also
score the model's heatmaps against the radiologists' boxes (mIoU with the threshold cross-fitted between halves,
pointing game, beside the location prior), store the threshold that is best on the validation images as the
config's ``heatmap_threshold`` and put the localisation numbers on the card; how often each answer state happens
among validation positives and negatives is also estimated on films the cuts were not chosen on (cross-fitted);
write config.json, model.safetensors, metrics.json and the card.
Fails if the whole release folder (every model in it) would exceed ``--budget-mb``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrdistill.evaluation import (
    EvalData,
    calibrate_thresholds,
    classification_metrics,
    load_dataset,
    load_train_val,
    localisation_metrics,
    location_prior,
    map_sanity,
    measure_findings,
    measure_triage,
    operating_points_with_ci,
    predict_dataset,
    reference_name,
    roc_points,
    to_jsonable,
)
from cxrdistill.models import LungSegmenter, load_model
from cxrdistill.triage import RULE_IN_SPECIFICITY, RULE_OUT_SENSITIVITY
from cxrdistill_train.common import card_result, card_result_names

COMPARED = ("global_auroc", "same_hospital_auroc", "local_macro_auroc")


@dataclass(frozen=True)
class ReleaseOptions:
    """How a classifier is released: the validation split, the float16 tolerance, the operating points."""

    data: EvalData
    max_change: float = 0.001
    bootstrap: int = 1000
    localisation: bool = False
    lung_model: str | None = None  # a LungSegmenter: localisation also scored inside the lungs
    rule_out_sensitivity: float = RULE_OUT_SENSITIVITY
    rule_in_specificity: float = RULE_IN_SPECIFICITY


def release(source: Path, target: Path, options: ReleaseOptions) -> dict:
    model = load_model(source)
    if isinstance(model, LungSegmenter):  # measured by its own script (Dice); released as trained
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))
        return json.loads((source / "metrics.json").read_text())
    data, localisation, bootstrap, max_change = (
        options.data,
        options.localisation,
        options.bootstrap,
        options.max_change,
    )
    dataset = load_dataset(data)
    prior = location_prior(load_train_val(data)[0]) if localisation else None
    lungs = load_model(options.lung_model) if options.lung_model and localisation else None
    full = predict_dataset(model, dataset, localise=localisation, prior=prior, lung_model=lungs)
    with tempfile.TemporaryDirectory() as scratch:
        model.save_pretrained(scratch, weights_dtype=torch.float16)
        half_model = load_model(scratch)
    half = predict_dataset(half_model, dataset, localise=localisation, prior=prior, lung_model=lungs)
    labels = (model.config.global_labels, model.config.local_labels)
    full_metrics = classification_metrics(full, *labels)
    half_metrics = classification_metrics(half, *labels)
    changes = {  # the AUROCs this dataset has (NIH-1024 has no same-hospital subset)
        k: abs(half_metrics[k] - full_metrics[k])
        for k in COMPARED
        if math.isfinite(full_metrics.get(k, math.nan)) and math.isfinite(half_metrics.get(k, math.nan))
    }
    use_half = all(change <= max_change for change in changes.values())
    chosen, predictions = (half_model, half) if use_half else (model, full)

    global_thresholds, local_thresholds = calibrate_thresholds(predictions)  # on the same-hospital films
    positive = chosen.positive_index
    cuts, triage = measure_triage(predictions, positive, options.rule_out_sensitivity, options.rule_in_specificity)
    findings = measure_findings(predictions, chosen.config.local_labels, bootstrap)
    called_thresholds = tuple(  # a finding that is not trusted is shown, never called
        threshold if findings[label]["called"] else None
        for label, threshold in zip(chosen.config.local_labels, local_thresholds, strict=True)
    )
    located = localisation_metrics(predictions["localisation"], bootstrap=bootstrap) if localisation else {}
    model_maps = [name for name in located if " x " not in name and "no model" not in name]  # the pure map
    heatmap_threshold = located[model_maps[0]]["best_threshold"] if model_maps else None
    chosen.config = dataclasses.replace(
        chosen.config,
        global_thresholds=global_thresholds,
        local_thresholds=called_thresholds,
        heatmap_threshold=heatmap_threshold,
        rule_out_threshold=cuts.rule_out,
        rule_in_threshold=cuts.rule_in,
        rule_out_sensitivity=cuts.rule_out_sensitivity,
        rule_in_specificity=cuts.rule_in_specificity,
    )
    metrics = classification_metrics(
        predictions,
        *labels,
        bootstrap=bootstrap,
        global_thresholds=global_thresholds,
        local_thresholds=local_thresholds,
    )
    card = json.loads((source / "metrics.json").read_text())
    films = reference_name(predictions, positive)  # same-hospital films for TBX11K, all films for NIH-1024
    lean = {name: {k: v for k, v in values.items() if k != "per_image"} for name, values in located.items()}
    card["raw"] = to_jsonable({**metrics, "localisation": lean} if located else metrics)
    card["release"] = {
        "weights": "float16" if use_half else "float32",
        "auroc_change_fp16": changes,
        "thresholds": f"global: Youden's J on the validation split ({films}); rule-out: the highest threshold "
        f"with sensitivity >= {cuts.rule_out_sensitivity:g} on them; rule-in: the lowest with specificity >= "
        f"{cuts.rule_in_specificity:g}; findings: called only where the validation AUROC's lower 95% bound is at "
        "least 0.70 with at least 20 positive films",
    }
    label = chosen.positive_label
    points = operating_points_with_ci(
        predictions, positive, {"rule-out": cuts.rule_out, "rule-in": cuts.rule_in}, bootstrap
    )
    card["raw"]["reference_calls"] = to_jsonable(points)
    card["raw"]["triage"] = to_jsonable(triage)
    card["raw"]["findings"] = to_jsonable(findings)
    card["raw"]["roc"] = roc_points(predictions, positive)
    if localisation:  # does each map change with the film? (a constant map is flagged beside its scores)
        card["raw"]["map_sanity"] = to_jsonable(map_sanity(predictions, positive))
    by_name = {name: key for key, name in card_result_names(chosen.config.global_labels).items()}
    card["results"] = [  # the training run's AUROCs, re-measured on the released weights; a re-release drops the
        # operating points and localisation entries of an earlier release, which are measured again below
        card_result("roc_auc", r["name"], metrics[by_name[r["name"]]], metrics.get(f"{by_name[r['name']]}_ci95"))
        for r in card["results"]
        if metrics.get(by_name.get(r["name"], "")) is not None
    ]
    for name, values in located.items():
        card["results"] += [
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
            card["results"].append(
                card_result(
                    "average_precision", f"AP50 of the TB boxes (TBX11K benchmark metric), {name}", values["ap50"]
                )
            )
    for name, point in points.items():
        for measure in ("sensitivity", "specificity"):
            card["results"].append(
                card_result(
                    measure,
                    f"{measure}, {label}, at the {name} threshold {point['threshold']:.3f} ({films})",
                    point[measure],
                    point.get(f"{measure}_ci95"),
                )
            )
    crossed = triage["cross_fitted"]
    for group, state in (("positive", "low"), ("negative", "signal"), ("positive", "signal"), ("negative", "low")):
        rate = crossed["rates"][group][state]
        card["results"].append(
            card_result(
                "accuracy",
                f"share of {label if group == 'positive' else 'not-' + label} films answered {state!r}, cuts chosen "
                f"on other films ({crossed['folds']}-fold cross-fitted, {films})",
                rate["share"],
                rate["ci95"],
            )
        )
    if heatmap_threshold is not None:
        card["release"]["heatmap_threshold"] = f"{heatmap_threshold} (best mIoU on the validation images)"
    shutil.rmtree(target, ignore_errors=True)
    chosen.save_pretrained(target, metrics=card, weights_dtype=torch.float16 if use_half else None)
    print(f"{source}: {'float16' if use_half else 'float32'} (AUROC changes {changes})")
    return card


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="SOURCE=TARGET folder pairs")
    parser.add_argument("--root", default="../shared/data/tbx11k", help="the validation data's folder")
    parser.add_argument("--dataset", default="tbx11k", help="its dataset (as cxrdistill evaluate --dataset)")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="the training scripts' validation share")
    parser.add_argument("--split-seed", type=int, default=0, help="the training scripts' split seed")
    parser.add_argument(
        "--max-auroc-change", type=float, default=0.001, help="largest AUROC change float16 may cause (0.001)"
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (1000)")
    parser.add_argument(
        "--budget-mb", type=float, default=40.0, help="size budget of the release folder (40 MB = 40,000,000 bytes)"
    )
    parser.add_argument("--localisation", action="store_true", help="score heatmaps against boxes (TBX11K)")
    parser.add_argument("--lung-model", help="a LungSegmenter: score the heatmaps inside the lungs too")
    parser.add_argument(
        "--rule-out-sensitivity",
        type=float,
        default=RULE_OUT_SENSITIVITY,
        help=f"sensitivity the rule-out cut keeps ({RULE_OUT_SENSITIVITY})",
    )
    parser.add_argument(
        "--rule-in-specificity",
        type=float,
        default=RULE_IN_SPECIFICITY,
        help=f"specificity the rule-in cut keeps ({RULE_IN_SPECIFICITY})",
    )
    args = parser.parse_args(argv)
    data = EvalData(args.dataset, args.root, None, "val", args.val_fraction, args.split_seed)
    options = ReleaseOptions(
        data,
        args.max_auroc_change,
        args.bootstrap,
        args.localisation,
        args.lung_model,
        args.rule_out_sensitivity,
        args.rule_in_specificity,
    )
    pairs = [(Path(source), Path(target)) for source, target in (pair.split("=", 1) for pair in args.pairs)]
    with tempfile.TemporaryDirectory() as scratch:
        # release into a staging folder; the release folder changes only if the result fits the budget
        staged = {target: Path(scratch) / str(i) for i, (_, target) in enumerate(pairs)}
        for source, target in pairs:
            release(source, staged[target], options)
        total = _release_size(staged) / 10**6
        print(f"release size: {total:.1f} MB (budget {args.budget_mb} MB)")
        if total > args.budget_mb:
            raise SystemExit(
                f"the release would be {total:.1f} MB, over the {args.budget_mb} MB budget: nothing was replaced"
            )
        for target, folder in staged.items():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(folder, target)
            print(f"wrote {target}")


def _bytes(path: Path) -> int:
    """Size of a file, or of every file below a folder."""
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _release_size(staged: dict[Path, Path]) -> int:
    """Bytes of the whole release folder(s) once every target is replaced by its staged folder."""
    replaced = {target.resolve() for target in staged}
    parents = {target.parent for target in replaced if target.parent.is_dir()}
    kept = sum(_bytes(p) for parent in parents for p in parent.iterdir() if p not in replaced)
    return kept + sum(_bytes(folder) for folder in staged.values())


if __name__ == "__main__":
    main()
