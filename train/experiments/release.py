"""Copy trained models into the repository's release folders (Hub layout), in float16 where that is harmless,
with cuts calibrated and cards measured on the released weights (:mod:`cxrdistill.release.measure`).

    python train/experiments/release.py --root ../shared/data/tbx11k \\
        runs/teacher-224/best=models/mlcak-teacher-224 runs/student-28-mlcak/best=models/mlcak-student-28

Fails if the whole release folder (every model in it) would exceed ``--budget-mb``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cxrdistill.evaluation import EvalData
from cxrdistill.release.measure import ReleaseOptions, release_folders
from cxrdistill.triage import RULE_IN_SPECIFICITY, RULE_OUT_SENSITIVITY


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
        "--lung-crop", help="a LungSegmenter: the films cropped to their lungs (models trained with --lung-crop)"
    )
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
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = EvalData(args.dataset, args.root, None, "val", args.val_fraction, args.split_seed, args.lung_crop)
    options = ReleaseOptions(
        data,
        max_change=args.max_auroc_change,
        bootstrap=args.bootstrap,
        localisation=args.localisation,
        lung_model=args.lung_model,
        rule_out_sensitivity=args.rule_out_sensitivity,
        rule_in_specificity=args.rule_in_specificity,
    )
    pairs = [(Path(source), Path(target)) for source, target in (pair.split("=", 1) for pair in args.pairs)]
    try:
        total = release_folders(pairs, options, args.budget_mb)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    print(f"release size: {total:.1f} MB (budget {args.budget_mb} MB); wrote {', '.join(str(t) for _, t in pairs)}")


if __name__ == "__main__":
    main()
