"""The TB localisation table: every model's heatmaps against the radiologists' boxes, beside the location prior.

    python train/experiments/tb_report.py runs/eval/tb-student-28-tbloc.json runs/eval/tb-teacher-224-tbloc.json ...

Reads ``cxrdistill evaluate --task tb-localisation --json`` reports, prints a Markdown table (one row per heatmap,
the prior once) and writes them together to ``--out`` (default docs/results/tb_localisation.json). ``--compact``
gives one row per model and map method instead, with the map alone, inside the lungs, and times the prior inside
the lungs side by side (the comparison table of many training variants).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cxrdistill.localisation import LUNGS, PRIOR, PRIOR_LUNGS, read_localisation
from cxrdistill.metrics import paired_mean_difference

LABELS = {  # the maps with no model, the same for every model
    PRIOR: "**location prior** (mean training box mask, no model)",
    LUNGS: "**lung mask** (the lung U-Net's probability, no TB model)",
    PRIOR_LUNGS: "**location prior x lung mask** (no TB model)",
}


def ci(values) -> str:
    return f" ({values[0]:.2f}-{values[1]:.2f})" if values else ""


def score(values: dict | None) -> str:
    """``mIoU (CI) / pointing (CI)`` of one heatmap, or a dash."""
    if values is None:
        return "-"
    return (
        f"{values['miou_cross_fitted']:.3f}{ci(values.get('miou_cross_fitted_ci95'))} / "
        f"{values['pointing_game']:.2f}{ci(values.get('pointing_game_ci95'))}"
    )


def compact_table(reports: dict[str, dict]) -> str:
    """One row per (model, map method): alone, x lung mask, x location prior x lung mask; model-free rows last."""
    lines = [
        "| model | map | map alone: mIoU (95% CI) / pointing (95% CI) | x lung mask | x location prior x lung mask "
        "| same-hospital AUROC (95% CI) |",
        "|" + "---|" * 6,
    ]
    model_free = {}
    for name, report in reports.items():
        located = read_localisation(report["localisation"])
        auroc = f"{report['same_hospital_auroc']:.3f}{ci(report.get('same_hospital_auroc_ci95'))}"
        for key in located:
            if key.model_free:
                model_free.setdefault(key, located[key])
            elif not (key.prior or key.lungs):
                variants = (key, key.with_(lungs=True), key.with_(prior=True, lungs=True))
                row = [score(located.get(variant)) for variant in variants]
                lines.append(f"| {name} | {key.label} | " + " | ".join(row) + f" | {auroc} |")
    for heatmap, values in model_free.items():
        lines.append(f"| {LABELS[heatmap]} | - | {score(values)} | - | - | - |")
    return "\n".join(lines)


def full_table(reports: dict[str, dict]) -> str:
    """One row per heatmap of every report, the model-free rows once."""
    header = (
        "| heatmap | mIoU, threshold cross-fitted (95% CI) | mIoU at 0.5 | pointing game (95% CI) | peak on border "
        "| box recall IoU 0.3 / 0.5 | same-hospital AUROC (95% CI) | AUROC all |"
    )
    lines = [header, "|" + "---|" * 8]
    done = set()
    for name, report in reports.items():
        for key, values in read_localisation(report["localisation"]).items():
            if key.model_free:
                if key in done:
                    continue
                done.add(key)
                label, auroc = LABELS[key], ("-", "-")
            else:
                label = f"{name}: {key.label}"
                auroc = (
                    f"{report['same_hospital_auroc']:.3f}{ci(report.get('same_hospital_auroc_ci95'))}",
                    f"{report['global_auroc']:.3f}",
                )
            lines.append(
                f"| {label} | {values['miou_cross_fitted']:.3f}{ci(values.get('miou_cross_fitted_ci95'))} "
                f"| {values['miou']:.3f} | {values['pointing_game']:.2f}{ci(values.get('pointing_game_ci95'))} "
                f"| {values['peak_on_border']:.0%} | {values['box_recall_iou_0.3']:.2f} / "
                f"{values['box_recall_iou_0.5']:.2f} | {auroc[0]} | {auroc[1]} |"
            )
    return "\n".join(lines)


def paired_table(reports: dict[str, dict], pairs: list[str]) -> str:
    """Differences between two models' maps on the same films, ``A-B:MAP`` each (e.g. a student against its
    teacher): mean per-film cross-fitted IoU and pointing differences with paired bootstrap intervals."""
    lines = ["| A - B | map | mIoU difference (95% CI) | pointing difference (95% CI) |", "|---|---|---|---|"]
    for pair in pairs:
        names, heatmap = pair.split(":", 1)
        first, second = names.split(",", 1)
        a, b = (_by_label(reports[name], heatmap)["per_image"] for name in (first, second))
        if a["id"] != b["id"]:
            raise SystemExit(f"{first} and {second} were not scored on the same films")
        cells = []
        for key in ("iou_cross_fitted", "pointing"):
            mean, (low, high) = paired_mean_difference(a[key], b[key])
            cells.append(f"{mean:+.3f} ({low:+.3f} to {high:+.3f})")
        lines.append(f"| {first} - {second} | {heatmap} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _by_label(report: dict, label: str) -> dict:
    """The map of ``report`` a user named on the command line by its label (as the tables print it)."""
    located = read_localisation(report["localisation"])
    matches = [values for key, values in located.items() if key.label == label]
    if not matches:
        raise SystemExit(f"no map {label!r}; the report has {sorted(key.label for key in located)}")
    return matches[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+")
    parser.add_argument("--out", default="docs/results/tb_localisation.json")
    parser.add_argument("--compact", action="store_true", help="one row per model and map method")
    parser.add_argument(
        "--paired",
        nargs="*",
        default=[],
        metavar="A,B:MAP",
        help="also compare report A's MAP with report B's on the same films (names: report file names without "
        "-tbloc.json), with paired bootstrap intervals",
    )
    args = parser.parse_args(argv)

    reports = {Path(r).name.removesuffix("-tbloc.json"): json.loads(Path(r).read_text()) for r in args.reports}
    table = (compact_table if args.compact else full_table)(reports)
    if args.paired:
        table += "\n\n" + paired_table(reports, args.paired)
    print(table)
    priors = [read_localisation(r["localisation"]).get(PRIOR) for r in reports.values()]
    images = {prior["images"] for prior in priors if prior}
    print(f"\nTB images with boxes scored: {sorted(images)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"table": table, "reports": reports}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
