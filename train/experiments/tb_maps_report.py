"""The TB-maps table of docs/tb_maps.md: every model's own map, inside the lungs, times the prior, minus the mean normal
map, with AP50, the constancy check and paired differences, beside the maps with no model (scored again over the
crops' frame for models that read lung crops).

    python train/experiments/tb_maps_report.py tb-student-28=runs/eval/tb-student-28.json \\
        fine-avg=runs/eval/tbmap-lite0-fine-avg.json ... --out docs/results/tb_maps.json

Reads ``cxrdistill evaluate --task tb-localisation --lung-model ... --contrast-normal --json`` reports of the same
validation films. Paired differences (bootstrap over the same films): map x prior x lungs minus prior x lungs, and
each model's own map, and its map inside the lungs, minus the first model's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cxrdistill.localisation import MODEL_FREE, PRIOR_LUNGS, read_localisation
from cxrdistill.metrics import paired_mean_difference


def ci(values) -> str:
    return f" ({values[0]:.2f}-{values[1]:.2f})" if values else ""


def cell(values: dict | None) -> str:
    """``mIoU (CI) / pointing / AP50`` of one heatmap, or a dash."""
    if values is None:
        return "-"
    ap = "-" if values.get("ap50") is None else f"{values['ap50']:.3f}"
    return (
        f"{values['miou_cross_fitted']:.3f}{ci(values.get('miou_cross_fitted_ci95'))} / "
        f"{values['pointing_game']:.2f} / {ap}"
    )


def paired(a: dict, b: dict) -> dict:
    """Mean per-film difference of cross-fitted IoU a - b, with its paired 95% interval (the same films)."""
    ids_a, ids_b = a["per_image"]["id"], b["per_image"]["id"]
    if ids_a != ids_b:
        raise SystemExit("the reports scored different films: paired differences need the same ones")
    mean, interval = paired_mean_difference(a["per_image"]["iou_cross_fitted"], b["per_image"]["iou_cross_fitted"])
    return {"mean": mean, "ci95": list(interval)}


def model_rows(name: str, report: dict, reference: dict | None) -> dict:
    """One model's record: its own map (the first one scored as it is) and its variants."""
    located = read_localisation(report["localisation"])
    own = next(key for key in located if key.own)
    row = {
        "model": name,
        "map": own.label,
        "same_hospital_auroc": report.get("same_hospital_auroc"),
        "same_hospital_auroc_ci95": report.get("same_hospital_auroc_ci95"),
        "own": located[own],
        "lungs": located.get(own.with_(lungs=True)),
        "prior_lungs": located.get(own.with_(prior=True, lungs=True)),
        "minus_normal_lungs": located.get(own.with_(minus_normal=True, lungs=True)),
        "sanity": report.get("map_sanity", {}).get(own.label, {}),
    }
    prior_lungs = located.get(PRIOR_LUNGS)
    if row["prior_lungs"] and prior_lungs:
        row["prior_lungs_minus_prior"] = paired(row["prior_lungs"], prior_lungs)
    if reference is not None and row["lungs"] and reference["lungs"]:
        row["lungs_minus_reference"] = paired(row["lungs"], reference["lungs"])
    if reference is not None:
        row["own_minus_reference"] = paired(row["own"], reference["own"])
    return row


def markdown(rows: list[dict], model_free: dict) -> str:
    lines = [
        "| model | same-hospital AUROC | own map (minus the first row's) | map x lungs (minus the first row's) | "
        "map x prior x lungs (minus prior x lungs) | "
        "(map - mean normal map) x lungs | peak-cell share TB / normal | correlation with mean TB / normal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        auroc = row["same_hospital_auroc"]
        own = cell(row["own"])
        if "own_minus_reference" in row:
            difference = row["own_minus_reference"]
            own += f" ({difference['mean']:+.3f}{ci(difference['ci95'])})"
        lungs = cell(row["lungs"])
        if "lungs_minus_reference" in row:
            difference = row["lungs_minus_reference"]
            lungs += f" ({difference['mean']:+.3f}{ci(difference['ci95'])})"
        combined = cell(row["prior_lungs"])
        if "prior_lungs_minus_prior" in row:
            difference = row["prior_lungs_minus_prior"]
            combined += f" ({difference['mean']:+.3f}{ci(difference['ci95'])})"
        sanity = row["sanity"]
        shares = " / ".join(
            "-" if not sanity.get(g) else f"{sanity[g]['peak_cell_share']:.2f}"
            for g in ("positive films", "negative films")
        )
        correlations = " / ".join(
            "-"
            if not sanity.get(g) or sanity[g]["median_correlation_with_mean"] is None
            else f"{sanity[g]['median_correlation_with_mean']:.2f}"
            for g in ("positive films", "negative films")
        )
        lines.append(
            f"| {row['model']} | {'-' if auroc is None else f'{auroc:.3f}'}{ci(row['same_hospital_auroc_ci95'])} | "
            f"{own} | {lungs} | {combined} | {cell(row['minus_normal_lungs'])} | {shares} | "
            f"{correlations} |"
        )
    for name, values in model_free.items():
        lines.append(f"| **{name}** | - | {cell(values)} | | | | | |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="NAME=REPORT.json; the first is the reference of the paired rows")
    parser.add_argument("--out", default="docs/results/tb_maps.json", help="JSON of every row")
    args = parser.parse_args(argv)
    rows, model_free, reference = [], {}, None
    for pair in args.reports:
        name, path = pair.split("=", 1)
        report = json.loads(Path(path).read_text())
        row = model_rows(name, report, reference)
        reference = reference or row
        rows.append(row)
        located = read_localisation(report["localisation"])
        frame = " on lung crops" if report.get("data", {}).get("lung_crop") else ""  # maps over the crops' frame
        for key in MODEL_FREE:
            model_free.setdefault(key.label + frame, located.get(key))
    print(markdown(rows, {k: v for k, v in model_free.items() if v}))
    lean = [dict(row) for row in rows]  # the per-film lists stay out of the JSON
    for row in lean:
        for key in ("own", "lungs", "prior_lungs", "minus_normal_lungs"):
            if row.get(key):
                row[key] = {k: v for k, v in row[key].items() if k != "per_image"}
    free = {k: {kk: vv for kk, vv in v.items() if kk != "per_image"} for k, v in model_free.items() if v}
    Path(args.out).write_text(json.dumps({"models": lean, "model_free": free}, indent=1) + "\n")


if __name__ == "__main__":
    main()
