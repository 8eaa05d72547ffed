"""Copy trained models into the repository's release folders (Hub layout), in float16 where that is harmless.

    python train/experiments/release.py --root ../shared/data/tbx11k \\
        runs/teacher-224/best=models/mlcak-teacher-224 runs/student-28-mlcak/best=models/mlcak-student-28

For each model: evaluate it in float32 and as float16 weights on the validation split it was selected on; keep
float16 only if every AUROC moves by at most ``--max-auroc-change`` (0.001); calibrate per-label thresholds on
that split (Youden's J) and store them in the config; write config.json, model.safetensors, metrics.json and the
card. Fails if the release folder would exceed ``--budget-mib`` in total.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from cxrdistill.evaluation import (
    EvalData,
    calibrate_thresholds,
    classification_metrics,
    load_dataset,
    predict_dataset,
    to_jsonable,
)
from cxrdistill.hub import load_model

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from train.common import CARD_RESULTS

COMPARED = ("global_auroc", "same_hospital_auroc", "local_macro_auroc")


def release(source: Path, target: Path, data: EvalData, max_change: float, bootstrap: int) -> dict:
    model = load_model(source)
    dataset = load_dataset(data)
    full = predict_dataset(model, dataset)
    with tempfile.TemporaryDirectory() as scratch:
        model.save_pretrained(scratch, weights_dtype=torch.float16)
        half_model = load_model(scratch)
    half = predict_dataset(half_model, dataset)
    labels = (model.config.global_labels, model.config.local_labels)
    full_metrics = classification_metrics(full, *labels)
    half_metrics = classification_metrics(half, *labels)
    changes = {k: abs((half_metrics.get(k) or 0) - (full_metrics.get(k) or 0)) for k in COMPARED}
    use_half = all(change <= max_change for change in changes.values())
    chosen, predictions = (half_model, half) if use_half else (model, full)

    global_thresholds, local_thresholds = calibrate_thresholds(predictions)
    chosen.config = dataclasses.replace(
        chosen.config, global_thresholds=global_thresholds, local_thresholds=local_thresholds
    )
    metrics = classification_metrics(
        predictions,
        *labels,
        bootstrap=bootstrap,
        global_thresholds=global_thresholds,
        local_thresholds=local_thresholds,
    )
    card = json.loads((source / "metrics.json").read_text())
    card["raw"] = to_jsonable(metrics)
    card["release"] = {
        "weights": "float16" if use_half else "float32",
        "auroc_change_fp16": changes,
        "thresholds": "Youden's J on the validation split",
    }
    for result in card["results"]:  # keep the card's numbers those of the released weights
        key = {name: key for key, name in CARD_RESULTS.items()}.get(result["name"])
        if key and metrics.get(key) is not None:
            result["value"] = round(metrics[key], 4)
            if metrics.get(f"{key}_ci95"):
                result["ci95"] = [round(v, 4) for v in metrics[f"{key}_ci95"]]
    shutil.rmtree(target, ignore_errors=True)
    chosen.save_pretrained(target, metrics=card, weights_dtype=torch.float16 if use_half else None)
    print(f"{source} -> {target}: {'float16' if use_half else 'float32'} (AUROC changes {changes})")
    return card


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="SOURCE=TARGET folder pairs")
    parser.add_argument("--root", default="../shared/data/tbx11k")
    parser.add_argument("--dataset", default="tbx11k")
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--max-auroc-change", type=float, default=0.001)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--budget-mib", type=float, default=40.0)
    args = parser.parse_args(argv)
    data = EvalData(args.dataset, args.root, None, "val", args.val_fraction, args.split_seed)
    targets = []
    for pair in args.pairs:
        source, target = pair.split("=", 1)
        release(Path(source), Path(target), data, args.max_auroc_change, args.bootstrap)
        targets.append(Path(target))
    total = sum(f.stat().st_size for t in targets for f in t.rglob("*") if f.is_file()) / 2**20
    print(f"release size: {total:.1f} MiB (budget {args.budget_mib} MiB)")
    if total > args.budget_mib:
        raise SystemExit(f"the release is {total:.1f} MiB, over the {args.budget_mib} MiB budget")


if __name__ == "__main__":
    main()
