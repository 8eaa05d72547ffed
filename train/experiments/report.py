"""Collect the MLCAK runs into the README's table (markdown), a JSON file and the resolution-sweep plot.

    python train/experiments/report.py --runs runs --json docs/results/mlcak_tbx11k.json \\
        --plot docs/images/mlcak_resolution_sweep.png

Reads ``runs/<name>/best/metrics.json`` (written by the training scripts, with bootstrap CIs) and
``runs/wall_times.txt``; runs that are missing are reported as missing, never invented.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RUNS = [
    # (run name, model, input px, how it was trained)
    ("teacher-224", "teacher", 224, "ViT teacher (conv stem, depth 6)"),
    ("student-28-alone-aug", "student alone", 28, "no teacher, augmented views"),
    ("student-28-alone", "student alone", 28, "no teacher, plain views (as MLCAK's cached teacher)"),
    ("student-28-logits", "student + logits KD", 28, "alpha, beta only"),
    ("student-28-attention", "student + attention KD", 28, "gamma only"),
    ("student-28-mlcak", "student + MLCAK", 28, "alpha, beta, gamma (all)"),
    ("student-56-alone-aug", "student alone", 56, "no teacher, augmented views"),
    ("student-56-mlcak", "student + MLCAK", 56, "all terms"),
    ("student-112-alone-aug", "student alone", 112, "no teacher, augmented views"),
    ("student-112-mlcak", "student + MLCAK", 112, "all terms"),
]


def _fmt(value, interval=None) -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}"
    if interval and None not in interval:
        text += f" ({interval[0]:.3f} to {interval[1]:.3f})"
    return text


def collect(runs_dir: Path) -> list[dict]:
    wall = {}
    wall_file = runs_dir / "wall_times.txt"
    if wall_file.is_file():
        for line in wall_file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                wall[parts[0]] = int(parts[1])
    rows = []
    for name, model, size, how in RUNS:
        metrics_file = runs_dir / name / "best" / "metrics.json"
        row = {"run": name, "model": model, "size": size, "how": how, "wall_s": wall.get(name)}
        if metrics_file.is_file() and name not in wall:  # started but stopped before its final evaluation
            row.update(found=False, unfinished=True)
        elif metrics_file.is_file():
            metrics = json.loads(metrics_file.read_text())
            raw = metrics.get("raw", {})
            history_file = runs_dir / name / "history.json"
            if raw.get("epoch") is None and history_file.is_file():  # runs from before metrics.json kept the epoch
                history = json.loads(history_file.read_text())
                raw["epoch"] = max(history, key=lambda h: h.get("same_hospital_auroc") or -1)["epoch"]
            row.update(
                found=True,
                epoch=raw.get("epoch"),
                global_auroc=raw.get("global_auroc"),
                global_auroc_ci95=raw.get("global_auroc_ci95"),
                same_hospital_auroc=raw.get("same_hospital_auroc"),
                same_hospital_auroc_ci95=raw.get("same_hospital_auroc_ci95"),
                local_macro_auroc=raw.get("local_macro_auroc"),
                command=metrics.get("training", {}).get("command"),
            )
        else:
            row["found"] = False
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| run | model | px | same-hospital AUROC (95% CI) | all-images AUROC (95% CI) | TB-type macro AUROC | "
        "best epoch | wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if not row["found"]:
            status = "stopped before the end (time limit)" if row.get("unfinished") else "not run"
            lines.append(f"| {row['run']} | {row['model']} | {row['size']} | {status} | | | | |")
            continue
        wall = f"{row['wall_s'] / 60:.0f} min" if row.get("wall_s") else "-"
        lines.append(
            f"| {row['run']} | {row['model']} | {row['size']} | "
            f"{_fmt(row['same_hospital_auroc'], row['same_hospital_auroc_ci95'])} | "
            f"{_fmt(row['global_auroc'], row['global_auroc_ci95'])} | {_fmt(row['local_macro_auroc'])} | "
            f"{row['epoch']} | {wall} |"
        )
    return "\n".join(lines)


def margins(rows: list[dict], key: str = "same_hospital_auroc") -> str:
    """The quantities the targets are about, per student size: teacher - alone, MLCAK - alone, teacher - MLCAK."""
    by_run = {r["run"]: r.get(key) for r in rows if r["found"]}
    teacher = by_run.get("teacher-224")
    lines = ["| student px | teacher - student alone | MLCAK - student alone | teacher - MLCAK |", "|---|---|---|---|"]
    for size in (28, 56, 112):
        alone, mlcak = by_run.get(f"student-{size}-alone-aug"), by_run.get(f"student-{size}-mlcak")

        def difference(a, b):
            return f"{a - b:+.3f}" if a is not None and b is not None else "-"

        lines.append(
            f"| {size} | {difference(teacher, alone)} | {difference(mlcak, alone)} | {difference(teacher, mlcak)} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, key, title in (
        (axes[0], "same_hospital_auroc", "same-hospital images (headline)"),
        (axes[1], "global_auroc", "all validation images"),
    ):
        for offset, (label, marker) in ((-0.03, ("student alone", "o")), (0.03, ("student + MLCAK", "s"))):
            chosen = sorted(
                (
                    r
                    for r in rows
                    if r["found"]
                    and r["model"] == label
                    and r["run"].endswith(("alone-aug", "mlcak"))
                    and r.get(key) is not None
                ),
                key=lambda r: r["size"],
            )
            if chosen:
                sizes = [r["size"] * 2**offset for r in chosen]  # nudge apart so the intervals do not overlap
                values = [r[key] for r in chosen]
                intervals = [r.get(f"{key}_ci95") or [v, v] for r, v in zip(chosen, values, strict=True)]
                errors = [
                    [v - low for v, (low, _) in zip(values, intervals, strict=True)],
                    [high - v for v, (_, high) in zip(values, intervals, strict=True)],
                ]
                axis.errorbar(sizes, values, yerr=errors, marker=marker, capsize=3, label=f"{label} (95% CI)")
        teacher = [r for r in rows if r["found"] and r["model"] == "teacher" and r.get(key) is not None]
        if teacher:
            axis.axhline(teacher[0][key], color="black", linestyle="--", label="teacher at 224 px")
        axis.set_xscale("log", base=2)
        axis.set_xticks([28, 56, 112, 224], labels=["28", "56", "112", "224"])
        axis.set_xlabel("student input size (px)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("TB vs not-TB AUROC (validation)")
    axes[0].legend()
    figure.suptitle("MLCAK on TBX11K: AUROC against input resolution")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--json", default="docs/results/mlcak_tbx11k.json")
    parser.add_argument("--plot", default="docs/images/mlcak_resolution_sweep.png")
    args = parser.parse_args(argv)
    rows = collect(Path(args.runs))
    print(markdown(rows))
    print()
    print("Margins on same-hospital AUROC:")
    print(margins(rows))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, Path(args.plot))
    return rows


if __name__ == "__main__":
    main()
