"""The MLCAK table: the MLCAK student grid (28 / 56 / 112 px x alone / logits / attention / all, seeds, the
7 x 7-token patch-4 student) against its hybrid teacher, with paired bootstrap differences over the same films.

    python train/experiments/mlcak_grid.py --dataset nih1024 --root ../shared/data/nih1024 --prefix nih1024 \\
        --json docs/results/mlcak_nih1024.json --plot docs/images/mlcak_nih1024_resolution.png

The released architecture's grid (the tiny student at every size, teacher = the released folder):

    python train/experiments/mlcak_grid.py --dataset nih1024 --root ../shared/data/nih1024 --prefix nih1024 \
        --teacher models/nih1024-teacher-224 --plot-grid=-tiny --json docs/results/mlcak_nih1024_tiny.json \
        --plot docs/images/mlcak_nih1024_tiny_resolution.png

Finds the teacher (``--teacher``: a model folder, by default ``runs/PREFIX-hybrid-teacher/best``) and every
finished ``runs/PREFIX-student-SIZE-ABLATION[-p4|-tiny|-hybrid-lite0|...][-sSEED]/best``
(train/experiments/mlcak_resolution.sh and mlcak_hybrid.sh name them so), predicts each on the validation split the
training scripts use (split seed 0: every seed is scored on the same films), and reports:

- the headline AUROC: pneumonia vs no finding for NIH-1024, TB vs not TB on the same-hospital films for TBX11K;
  for NIH-1024 also the macro AUROC over the findings with at least ``--min-positives`` validation positives;
- per grid cell, the mean over seeds and each seed's value, with the bootstrap 95% interval of the seed mean;
- each distillation row minus the student alone at the same size and grid, averaged over the seeds both have, with
  a paired bootstrap interval (each resample draws films once and scores every model on them);
- the teacher minus the MLCAK student, paired the same way.

Predictions are cached in ``runs/eval/grid/`` (keyed by the weights' modification time). Runs that are missing or
unfinished are reported as missing, never invented.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

ABLATIONS = ("none", "logits", "attention", "all")
ABLATION_NAMES = {
    "none": "student alone",
    "logits": "+ logits KD (alpha, beta)",
    "attention": "+ attention KD (gamma)",
    "all": "+ MLCAK (all terms)",
}
GRIDS = {
    "": "14 x 14 tokens",
    "-p4": "7 x 7 tokens (patch 4)",
    "-tiny": "7 x 7 tokens, 4 layers x 64 (tiny)",
    "-tiny-aug4": "tiny, 4 fixed augmented copies, 40 passes",
    "-tiny-aug4-a5": "tiny, augmented copies, alpha = beta = 5",
    "-tiny-fm": "tiny, function matching: online teacher, mixup (alpha 1.0) on the shared views, 40 epochs",
    "-hybrid-lite0": "hybrid: ImageNet Lite0 stages to stride 16, 7 x 7 tokens, 2 layers x 96",
    "-hybrid-lite0-small": "hybrid small: ImageNet Lite0 stages to stride 8, 7 x 7 tokens, 2 layers x 96",
    "-hybrid-lite0-fast": "hybrid fast: the small hybrid's stages, the stride kept in the stem (14 x 14 first stages)",
    "-hybrid-lite0-deep4": "hybrid deep fast: Lite0 stages to stride 16, only blocks[1]'s stride dropped, 4 x 4 tokens",
    "-hybrid-lite0-fast-a5": "hybrid fast, logits terms weighted 5x (alpha = beta = 5)",
    "-hybrid-lite0-fast-t16": "hybrid fast, distilled from the teacher retrained for 16 epochs",
    "-hybrid-lite0-fast-k16-t16": "hybrid fast, 16 copies, distilled from the teacher retrained for 16 epochs",
    "-hybrid-lite0-fast-k16-a5-t16": "hybrid fast, 16 copies, from the retrained teacher, logits terms weighted 5x",
    "-hybrid-lite0-fast-k16-ens": "hybrid fast, 16 copies, retrained teacher with tb-boxes-224 averaged in its logits",
    "-hybrid-lite0-fast-k16-e8": "hybrid fast, 16 copies, 8 epochs over them (128 passes)",
    "-hybrid-lite0-fast-k16-e8-t16": "hybrid fast, 16 copies, 128 passes, from the teacher retrained for 16 epochs",
    "-hybrid-lite0-fast-k16": "hybrid fast, 16 fixed augmented copies (teacher cached on them), 64 passes",
    "-hybrid-lite0-fast-k16-xfer": "hybrid fast, 16 copies, plus the other dataset's films unlabelled (16 copies each)",
    "-hybrid-lite0-k16": "hybrid, 16 fixed augmented copies (teacher cached on them), 64 passes",
    "-hybrid-lite0-mix": "hybrid, online teacher, mixup (alpha 0.4) on the shared views, 30 epochs",
    "-hybrid-lite0-xfer": "hybrid, plus the other dataset's training films unlabelled (distillation terms only)",
}
# a grid whose student alone is another grid's (only loss weights or unlabelled films differ)
ALONE_OF = {
    "-tiny-aug4-a5": "-tiny-aug4",
    "-hybrid-lite0-xfer": "-hybrid-lite0",
    "-hybrid-lite0-fast-a5": "-hybrid-lite0-fast",
    "-hybrid-lite0-fast-t16": "-hybrid-lite0-fast",
    "-hybrid-lite0-fast-k16-t16": "-hybrid-lite0-fast-k16",
    "-hybrid-lite0-fast-k16-a5-t16": "-hybrid-lite0-fast-k16",
    "-hybrid-lite0-fast-k16-ens": "-hybrid-lite0-fast-k16",
    "-hybrid-lite0-fast-k16-e8-t16": "-hybrid-lite0-fast-k16-e8",
    "-hybrid-lite0-fast-k16-xfer": "-hybrid-lite0-fast-k16",
}
# a grid whose own student alone trains on other views (mixup, augmentation) than the plain grid's: its
# distillation rows are also paired with the plain grid's student alone (the stronger baseline counts)
PLAIN_ALONE = {
    "-tiny-fm": "-tiny",
    "-hybrid-lite0-fast-k16": "-hybrid-lite0-fast",
    "-hybrid-lite0-fast-k16-xfer": "-hybrid-lite0-fast",
    "-hybrid-lite0-fast-k16-t16": "-hybrid-lite0-fast",
    "-hybrid-lite0-fast-k16-a5-t16": "-hybrid-lite0-fast",
    "-hybrid-lite0-fast-k16-ens": "-hybrid-lite0-fast",
}
# a grid that changes one setting of another grid's recipe: its distillation rows are also paired with the same
# ablation there, so the setting's own effect has an interval
REFERENCE_OF = {
    "-hybrid-lite0-fast-k16-a5-t16": "-hybrid-lite0-fast-k16-t16",
    "-hybrid-lite0-fast-k16-ens": "-hybrid-lite0-fast-k16-t16",
}
# a run's name: size, ablation, grid (one of GRIDS' suffixes, built from them so a new grid needs no second edit), seed
RUN_NAME = re.compile(
    r"student-(\d+)-(none|logits|attention|all)"
    f"({'|'.join(re.escape(suffix) for suffix in sorted(filter(None, GRIDS), key=len, reverse=True))})?"
    r"(?:-s(\d+))?$"
)


def finished(folder: Path) -> bool:
    """A run whose final evaluation wrote its training record (an interrupted run has no ``epochs_run``)."""
    metrics = folder / "best" / "metrics.json"
    if not (folder / "best" / "model.safetensors").is_file() or not metrics.is_file():
        return False
    return "epochs_run" in json.loads(metrics.read_text()).get("training", {})


def find_runs(runs: Path, prefix: str) -> list[dict]:
    students = []
    for folder in sorted(runs.glob(f"{prefix}-student-*")):
        match = RUN_NAME.search(folder.name)
        if folder.is_dir() and match and finished(folder):
            size, ablation, grid, seed = match.groups()
            students.append(
                {
                    "run": folder.name,
                    "size": int(size),
                    "ablation": ablation,
                    "grid": grid or "",
                    "seed": int(seed or 0),
                }
            )
    return students


def predictions_for(model_folder: Path, name: str, validation, cache: Path) -> dict[str, np.ndarray]:
    """The model's validation probabilities (cached by name and the weights' modification time)."""
    from cxrdistill.evaluation import predict_dataset
    from cxrdistill.models import load_model

    weights = model_folder / "model.safetensors"
    cached = cache / f"{name}-{int(weights.stat().st_mtime)}.npz"
    if cached.is_file():
        return dict(np.load(cached, allow_pickle=False))
    model = load_model(model_folder)
    p = predict_dataset(model, validation, cache_dir=str(cache / "images"))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(cached, **{k: v for k, v in p.items() if k != "localisation"})
    return {k: v for k, v in p.items() if k != "localisation"}


class Scorer:
    """The headline AUROC (and the findings' macro AUROC) of one model's predictions, on a subset of films."""

    def __init__(self, dataset: str, reference: dict[str, np.ndarray], min_positives: int):
        from cxrdistill.evaluation import same_hospital

        self.rows = same_hospital(reference) if dataset == "tbx11k" else np.ones(len(reference["source"]), bool)
        self.targets = reference["global_targets"][self.rows, -1]
        local = reference["local_targets"][self.rows] * (reference["local_mask"][self.rows] > 0.5)
        self.findings = np.flatnonzero(local.sum(0) >= min_positives) if dataset != "tbx11k" else np.array([], int)
        self.local_targets = reference["local_targets"][self.rows][:, self.findings]
        self.local_mask = reference["local_mask"][self.rows][:, self.findings]
        self.ids = reference["id"]

    def scores(self, p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if not np.array_equal(p["id"], self.ids):
            raise ValueError("predictions are not over the same films in the same order")
        return p["global_probs"][self.rows, -1], p["local_probs"][self.rows][:, self.findings]


def _auroc_columns(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each column of ``(N, M)`` scores: the Mann-Whitney statistic from average ranks (ties counted
    half, as scikit-learn's roc_auc_score), vectorised because the bootstrap calls it ~10^5 times; ``nan`` where
    ``targets`` has one class."""
    positive = np.asarray(targets) > 0.5
    count, negatives = int(positive.sum()), int((~positive).sum())
    if count == 0 or negatives == 0:
        return np.full(scores.shape[1], np.nan)
    ranks = rankdata(scores, axis=0)
    return (ranks[positive].sum(0) - count * (count + 1) / 2) / (count * negatives)


def _macro_columns(targets: np.ndarray, mask: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Macro AUROC over findings (the defined ones) for each model; ``scores`` is (N, F, M)."""
    per_finding = []
    for f in range(scores.shape[1]):
        known = mask[:, f] > 0.5
        per_finding.append(_auroc_columns(targets[known, f], scores[known, f, :]))
    return np.nanmean(np.stack(per_finding), axis=0)


def bootstrap(statistic, arrays: list[np.ndarray], samples: int, seed: int = 0) -> list[float]:
    """Percentile 95% interval of ``statistic(*arrays)`` with films (rows) resampled jointly."""
    rng = np.random.default_rng(seed)
    count = len(arrays[0])
    values = []
    for _ in range(samples):
        rows = rng.integers(0, count, count)
        value = statistic(*(a[rows] for a in arrays))
        if np.isfinite(value):
            values.append(value)
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else [math.nan] * 2


def summarise(
    scorer: Scorer, preds: dict[str, dict], students: list[dict], teacher: bool, samples: int, released: bool = False
) -> dict:
    """Cells (size, grid, ablation) with per-seed and seed-mean AUROCs, and the paired differences; with
    ``released`` (predictions under ``"released"``), that other teacher's row and the teacher minus it, paired."""
    headline = {name: scorer.scores(p)[0] for name, p in preds.items()}
    findings = {name: scorer.scores(p)[1] for name, p in preds.items()}
    t, lt, lm = scorer.targets, scorer.local_targets, scorer.local_mask
    has_findings = len(scorer.findings) > 0

    def seed_mean(names: list[str]) -> dict:
        """Mean AUROC over ``names`` (seeds) and its film-bootstrap interval."""
        stack = np.stack([headline[n] for n in names], 1)
        result = {
            "auroc": float(np.nanmean(_auroc_columns(t, stack))),
            "auroc_ci95": bootstrap(lambda tt, s: np.nanmean(_auroc_columns(tt, s)), [t, stack], samples),
            "per_seed": [float(v) for v in _auroc_columns(t, stack)],
        }
        if has_findings:
            local = np.stack([findings[n] for n in names], 2)
            result["findings_macro_auroc"] = float(np.nanmean(_macro_columns(lt, lm, local)))
            result["findings_macro_auroc_ci95"] = bootstrap(
                lambda tt, mm, s: np.nanmean(_macro_columns(tt, mm, s)), [lt, lm, local], samples
            )
        return result

    def paired(a: list[str], b: list[str]) -> dict:
        """mean over pairs of AUROC(a_i) - AUROC(b_i), films resampled once per draw for every model."""
        sa, sb = np.stack([headline[n] for n in a], 1), np.stack([headline[n] for n in b], 1)

        def difference(tt, x, y):
            return float(np.mean(_auroc_columns(tt, x) - _auroc_columns(tt, y)))

        result = {
            "pairs": len(a),
            "difference": difference(t, sa, sb),
            "ci95": bootstrap(difference, [t, sa, sb], samples),
        }
        if has_findings:
            la, lb = np.stack([findings[n] for n in a], 2), np.stack([findings[n] for n in b], 2)

            def local_difference(tt, mm, x, y):
                return float(np.mean(_macro_columns(tt, mm, x) - _macro_columns(tt, mm, y)))

            result["findings_difference"] = local_difference(lt, lm, la, lb)
            result["findings_ci95"] = bootstrap(local_difference, [lt, lm, la, lb], samples)
        return result

    cells: dict[str, dict] = {}
    for run in students:
        key = f"{run['size']}{run['grid']}:{run['ablation']}"
        cell = cells.setdefault(key, {**{k: run[k] for k in ("size", "grid", "ablation")}, "runs": {}})
        cell["runs"][run["seed"]] = run["run"]
    for cell in cells.values():
        seeds = sorted(cell["runs"])
        cell["seeds"] = seeds
        cell.update(seed_mean([cell["runs"][s] for s in seeds]))
        if cell["ablation"] != "none":
            for key, other in _baselines(cell, cells):
                common = [s for s in seeds if s in other["runs"]]
                if common:
                    cell[key] = paired([cell["runs"][s] for s in common], [other["runs"][s] for s in common])
                    cell[key]["seeds"] = common
                    if key == "minus_reference":
                        cell[key]["grid"] = other["grid"]
        if teacher:
            names = [cell["runs"][s] for s in seeds]
            cell["teacher_minus"] = paired(["teacher"] * len(names), names)
    out = {"cells": dict(sorted(cells.items(), key=lambda kv: _order(kv[1])))}
    if teacher:
        out["teacher"] = seed_mean(["teacher"])
    if released:
        out["released_teacher"] = seed_mean(["released"])
        if teacher:
            out["teacher_minus_released"] = paired(["teacher"], ["released"])
    return out


def _baselines(cell: dict, cells: dict[str, dict]) -> list[tuple[str, dict]]:
    """The cells a distillation cell is paired with: its student alone, the plain grid's alone (PLAIN_ALONE) and
    the same ablation in its reference recipe (REFERENCE_OF), under the keys its summary stores them by."""
    found = []
    for key, grid, ablation in (
        ("minus_alone", ALONE_OF.get(cell["grid"], cell["grid"]), "none"),
        ("minus_plain_alone", PLAIN_ALONE.get(cell["grid"]), "none"),
        ("minus_reference", REFERENCE_OF.get(cell["grid"]), cell["ablation"]),
    ):
        other = cells.get(f"{cell['size']}{grid}:{ablation}") if grid is not None else None
        if other is not None:
            found.append((key, other))
    return found


def _order(cell: dict) -> tuple:
    return (cell["size"], cell["grid"], ABLATIONS.index(cell["ablation"]))


def _ci(values) -> str:
    return f" ({values[0]:.3f} to {values[1]:.3f})" if values and all(np.isfinite(values)) else ""


def _signed(entry: dict | None, key: str = "difference", ci: str = "ci95") -> str:
    if not entry:
        return "-"
    return f"{entry[key]:+.3f}{_ci(entry[ci])}"


def markdown(summary: dict, metric_name: str, has_findings: bool) -> str:
    head = f"| model | px | tokens | seeds | {metric_name} (seed mean, 95% CI) | per seed | minus alone (paired) |"
    head += " teacher minus (paired) |"
    plain = any("minus_plain_alone" in cell for cell in summary["cells"].values())
    if plain:
        head += " minus the plain grid's alone (paired) |"
    reference = any("minus_reference" in cell for cell in summary["cells"].values())
    if reference:
        head += " minus the same terms in the reference recipe (paired) |"
    if has_findings:
        head += " findings macro AUROC | findings: minus alone |"
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    teachers = [("teacher", "hybrid teacher")]
    if "released_teacher" in summary:
        versus = _signed(summary.get("teacher_minus_released"))
        teachers.append(("released_teacher", f"released teacher (teacher minus it: {versus})"))
    for key, label in teachers:
        if key not in summary:
            continue
        t = summary[key]
        row = f"| {label} | 224 | 14 x 14 | 1 | {t['auroc']:.3f}{_ci(t['auroc_ci95'])} | - | - | - |"
        row += " - |" if plain else ""
        row += " - |" if reference else ""
        if has_findings:
            row += f" {t['findings_macro_auroc']:.3f}{_ci(t['findings_macro_auroc_ci95'])} | - |"
        lines.append(row)
    for cell in summary["cells"].values():
        row = (
            f"| {ABLATION_NAMES[cell['ablation']]} | {cell['size']} | "
            f"{GRIDS[cell['grid']]} | "
            f"{len(cell['seeds'])} | {cell['auroc']:.3f}{_ci(cell['auroc_ci95'])} | "
            f"{', '.join(f'{v:.3f}' for v in cell['per_seed'])} | {_signed(cell.get('minus_alone'))} | "
            f"{_signed(cell.get('teacher_minus'))} |"
        )
        row += f" {_signed(cell.get('minus_plain_alone'))} |" if plain else ""
        if reference:
            versus = cell.get("minus_reference")
            row += f" {_signed(versus)} ({GRIDS[versus['grid']]}) |" if versus else " - |"
        if has_findings:
            row += (
                f" {cell['findings_macro_auroc']:.3f}{_ci(cell['findings_macro_auroc_ci95'])} | "
                f"{_signed(cell.get('minus_alone'), 'findings_difference', 'findings_ci95')} |"
            )
        lines.append(row)
    return "\n".join(lines)


def plot(summary: dict, path: Path, metric_name: str, title: str, grid: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    if "teacher" in summary:
        t = summary["teacher"]
        ax.axhline(t["auroc"], color="black", linestyle="--", linewidth=1, label="hybrid teacher, 224 px")
        ax.axhspan(*t["auroc_ci95"], color="black", alpha=0.07)
    for k, ablation in enumerate(ABLATIONS):
        cells = sorted(
            (c for c in summary["cells"].values() if c["ablation"] == ablation and c["grid"] == grid),
            key=lambda c: c["size"],
        )
        if not cells:
            continue
        x = np.array([c["size"] for c in cells]) * (1 + 0.03 * (k - 1.5))
        y = np.array([c["auroc"] for c in cells])
        low = y - np.array([c["auroc_ci95"][0] for c in cells])
        high = np.array([c["auroc_ci95"][1] for c in cells]) - y
        ax.errorbar(x, y, yerr=[low, high], marker="o", capsize=3, label=ABLATION_NAMES[ablation])
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_xlim(24, 130)
    ax.set_xticks([28, 56, 112])
    ax.set_xticklabels(["28", "56", "112"])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("student input (px)")
    ax.set_ylabel(metric_name)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=("nih1024", "tbx11k"))
    parser.add_argument("--root", required=True)
    parser.add_argument("--prefix", required=True, help="run-name prefix (runs/PREFIX-student-...)")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument(
        "--teacher", type=Path, help="the teacher's model folder (default: runs/PREFIX-hybrid-teacher/best)"
    )
    parser.add_argument(
        "--released-teacher",
        type=Path,
        help="another teacher (the released folder, when --teacher is a retrained one): its row, and the teacher "
        "minus it paired over the same films",
    )
    parser.add_argument(
        "--plot-grid", default="", choices=sorted(GRIDS), help="which students the resolution plot draws (suffix)"
    )
    parser.add_argument("--min-positives", type=int, default=10, help="findings with fewer are left out")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)

    from cxrdistill.evaluation import EvalData, load_dataset

    students = find_runs(args.runs, args.prefix)
    teacher = args.teacher or args.runs / f"{args.prefix}-hybrid-teacher" / "best"
    if not (teacher / "model.safetensors").is_file():
        print(f"no teacher at {teacher}: the teacher rows are left out")
        teacher = None
    if not students:
        raise SystemExit(f"no finished runs/{args.prefix}-student-* runs")
    validation = load_dataset(EvalData(args.dataset, args.root, None, "val", 0.25, 0))
    cache = args.runs / "eval" / "grid"
    preds = {
        run["run"]: predictions_for(args.runs / run["run"] / "best", run["run"], validation, cache) for run in students
    }
    if teacher is not None:
        preds["teacher"] = predictions_for(teacher, f"{args.prefix}-teacher", validation, cache)
    if args.released_teacher is not None:
        preds["released"] = predictions_for(args.released_teacher, f"{args.prefix}-released-teacher", validation, cache)
    reference = next(iter(preds.values()))
    scorer = Scorer(args.dataset, reference, args.min_positives)
    summary = summarise(scorer, preds, students, teacher is not None, args.bootstrap, args.released_teacher is not None)
    from cxrdistill.data.registry import dataset_entry

    labels = list(json.loads((args.runs / students[0]["run"] / "best" / "config.json").read_text())["local_labels"])
    metric_name = "same-hospital TB AUROC" if args.dataset == "tbx11k" else "pneumonia AUROC"
    summary.update(
        dataset=args.dataset,
        dataset_name=dataset_entry(args.dataset).display_name,
        metric=metric_name,
        films=int(scorer.rows.sum()),
        positives=int(scorer.targets.sum()),
        findings=[labels[k] for k in scorer.findings],
        min_positives=args.min_positives,
        bootstrap=args.bootstrap,
    )
    table = markdown(summary, metric_name, len(scorer.findings) > 0)
    print(
        f"{summary['dataset_name']}: {summary['films']} validation films ({summary['positives']} positive); "
        f"findings in the macro AUROC (>= {args.min_positives} positives): {', '.join(summary['findings']) or '-'}"
    )
    print(table)
    if args.json:
        from cxrdistill.evaluation import to_jsonable

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_jsonable(summary), indent=1) + "\n")
    if args.plot:
        what = GRIDS[args.plot_grid]
        plot(
            summary,
            args.plot,
            metric_name,
            f"{summary['dataset_name']}\nstudents: {what}; seed means with 95% CIs (our split)",
            args.plot_grid,
        )
    return summary


if __name__ == "__main__":
    main()
