"""Benchmark the MLCAK speed targets: is the 28-px MLCAK student fast because it is small?

    python bench/bench_mlcak.py --grid docs/results/mlcak_nih1024.json docs/results/mlcak_nih1024_tiny.json \
        --plot docs/images/mlcak_auroc_latency.png

For the hybrid teacher (224 px) and each student architecture (the 14 x 14-token students at 28 / 56 / 112 px, the 7
x 7-token patch-4 student at 28 px and the tiny 7 x 7-token students at 28 / 56 / 112 px): batch-1 latency p50 / p95
in torch (eager, ``inference_mode``, this machine's threads and one thread; then "served": as the app and the CLI
run it, BatchNorm folded and channels-last, :func:`cxrdistill.models.fusion.prepare_for_inference`), TorchScript
(traced and frozen: the same weights without Python's per-layer overhead), ONNX Runtime float32 and dynamic int8;
batch-64 images/s in torch and ONNX int8; and each student's batch-64 throughput as a multiple of the teacher's.
Speed depends on the architecture, not on the weight values: a model is loaded from its released folder
(``models/...``) when there is one, else built from its preset with random weights (the table says which).
``--grid`` (mlcak_grid.py's JSON files) adds each architecture's validation AUROC (the MLCAK rows, seed mean; a
later file's cell wins) and ``--plot`` draws AUROC against batch-1 latency.

Targets: the released 28-px student >= 20x the teacher's batch-64 throughput, batch-1 < 2 ms in torch and
< 0.5 ms ONNX int8. Run it on an otherwise idle machine; prints a table and writes JSON (bench/results/mlcak.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_models import time_calls  # noqa: E402  (bench/ is the script's folder)

from cxrdistill.models import (  # noqa: E402
    StudentViT,
    StudentViTConfig,
    TeacherViT,
    TeacherViTConfig,
    load_model,
)
from cxrdistill.models.fusion import prepare_for_inference  # noqa: E402
from cxrdistill.models.presets import preset_config  # noqa: E402

# name -> (released folder, model class, config class, preset, image size, grid cell in mlcak_grid.py's JSON)
ARCHITECTURES = {
    "teacher-224 (hybrid Lite0 + 4 layers)": (
        "nih1024-teacher-224",
        TeacherViT,
        TeacherViTConfig,
        "mlcak-teacher-hybrid-lite0",
        224,
        "teacher",
    ),
    "student-28 (14 x 14 tokens)": (None, StudentViT, StudentViTConfig, "mlcak-student-conv6", 28, "28:all"),
    "student-28 (7 x 7 tokens, patch 4)": (
        None,
        StudentViT,
        StudentViTConfig,
        "mlcak-student-conv6-patch4",
        28,
        "28-p4:all",
    ),
    "student-28 tiny (7 x 7 tokens, 4 x 64)": (
        "nih1024-student-28",
        StudentViT,
        StudentViTConfig,
        "mlcak-student-tiny-patch4",
        28,
        "28-tiny:all",
    ),
    "student-28 hybrid (Lite0 stages to stride 16, 7 x 7 tokens, 2 x 96)": (
        None,
        StudentViT,
        StudentViTConfig,
        "mlcak-student-hybrid-lite0",
        28,
        "28-hybrid-lite0:all",
    ),
    "student-28 hybrid small (Lite0 stages to stride 8, 7 x 7 tokens, 2 x 96)": (
        None,
        StudentViT,
        StudentViTConfig,
        "mlcak-student-hybrid-lite0-small",
        28,
        "28-hybrid-lite0-small:all",
    ),
    "student-28 hybrid fast (the small stages, 14 x 14 first stages, 7 x 7 tokens, 2 x 96)": (
        "nih1024-student-28",
        StudentViT,
        StudentViTConfig,
        "mlcak-student-hybrid-lite0-fast",
        28,
        "28-hybrid-lite0-fast:all",
    ),
    "student-56 (14 x 14 tokens)": (
        "nih1024-student-56",
        StudentViT,
        StudentViTConfig,
        "mlcak-student-conv6",
        56,
        "56:all",
    ),
    "student-112 (14 x 14 tokens)": (
        "nih1024-student-112",
        StudentViT,
        StudentViTConfig,
        "mlcak-student-conv6",
        112,
        "112:all",
    ),
    "student-56 tiny (7 x 7 tokens, patch 8)": (
        "nih1024-student-56",
        StudentViT,
        StudentViTConfig,
        "mlcak-student-tiny-patch4",
        56,
        "56-tiny:all",
    ),
    "student-112 tiny (7 x 7 tokens, patch 16)": (
        "nih1024-student-112",
        StudentViT,
        StudentViTConfig,
        "mlcak-student-tiny-patch4",
        112,
        "112-tiny:all",
    ),
}
# the tiny preset's patch is 4; at 56 and 112 px the grid's tiny students keep 7 x 7 tokens (patch = size / 7)
PATCH_FOR_SIZE = {"mlcak-student-tiny-patch4": lambda size: size // 7}
TEACHER = "teacher-224 (hybrid Lite0 + 4 layers)"


def build(name: str):
    """The architecture ``name``: its released folder when that folder holds this architecture, else the preset."""
    folder, model_class, config_class, preset, size, _ = ARCHITECTURES[name]
    overrides = {"patch_size": PATCH_FOR_SIZE[preset](size)} if preset in PATCH_FOR_SIZE else {}
    config = preset_config(config_class, preset, image_size=size, **overrides)
    path = REPO / "models" / folder if folder else None
    if path is not None and (path / "config.json").is_file():
        released = json.loads((path / "config.json").read_text())
        if all(
            released.get(k) == v
            for k, v in config.to_dict().items()
            if k in ("patch_size", "depth", "embed_dim", "stem")
        ):
            return load_model(path).eval(), f"models/{folder}"
    return model_class(config).eval(), f"preset {preset} (random weights)"


def _timings(call, image, repeats: int) -> dict[str, float]:
    return time_calls(call, image, repeats, warmup=20)


def _rate(call, images, seconds: float) -> float:
    call(images)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call(images)
        count += len(images)
    return round(count / (time.perf_counter() - start), 1)


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        output = self.model(images)
        return output.global_logits, output.local_logits


def _torch_rows(prefix: str, model, one, batch, repeats: int, seconds: float) -> dict:
    """``PREFIX_b1`` (this machine's threads), ``PREFIX_b1_1thread`` and ``PREFIX_b64_images_per_s`` of ``model``."""
    rows = {f"{prefix}_b1": _timings(model, one, repeats)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows[f"{prefix}_b1_1thread"] = _timings(model, one, repeats)
    finally:
        torch.set_num_threads(threads)
    rows[f"{prefix}_b64_images_per_s"] = _rate(model, batch, seconds)
    return rows


def measure(name: str, repeats: int, seconds: float) -> dict:
    from cxrdistill.export import OnnxClassifier, export_onnx

    model, source = build(name)
    size = model.config.image_size
    one, batch = torch.rand(1, 1, size, size), torch.rand(64, 1, size, size)
    slow = size >= 224
    b1_repeats, rate_s = (repeats // 10, seconds * 3) if slow else (repeats, seconds)  # 224 px: fewer, longer
    row = {"source": source, "image_size": size, "tokens": model.config.grid_size**2}
    row["parameters_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 3)
    with torch.inference_mode():
        row.update(_torch_rows("torch", model, one, batch, b1_repeats, rate_s))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.freeze(torch.jit.trace(_Logits(model).eval(), one, check_trace=False))
        row["torchscript_b1"] = _timings(scripted, one, b1_repeats)
        row["torchscript_b64_images_per_s"] = _rate(scripted, batch, rate_s)
    # as the app and the CLI serve it (Predictor.from_sources): BatchNorm folded, channels-last; ONNX below
    # exports the unprepared model (ONNX Runtime folds BatchNorm itself)
    prepared = prepare_for_inference(copy.deepcopy(model))
    with torch.inference_mode():
        row.update(_torch_rows("prepared", prepared, one, batch, b1_repeats, rate_s))
    if not slow:
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(model, folder, int8=True)
            for backend, int8 in (("onnx", False), ("onnx_int8", True)):
                exported = OnnxClassifier(folder, int8=int8)
                array = one.numpy()

                def run(images, session=exported.session):
                    return session.run(None, {"images": images})

                row[f"{backend}_b1"] = _timings(run, array, repeats)
                row[f"{backend}_b64_images_per_s"] = _rate(run, batch.numpy(), seconds)
            # batch 1 on one intra-op thread: no thread hand-off for a sub-millisecond graph
            single = OnnxClassifier(folder, int8=True, threads=1).session
            row["onnx_int8_b1_1thread"] = _timings(
                lambda images: single.run(None, {"images": images}), one.numpy(), repeats
            )
    return row


def attach_auroc(rows: dict, grid_paths: list[Path]) -> None:
    """Each architecture's MLCAK seed-mean AUROC from mlcak_grid.py's JSON files (a later file's cell wins)."""
    for grid_path in grid_paths:
        grid = json.loads(grid_path.read_text())
        for name, row in rows.items():
            cell = ARCHITECTURES[name][5] if name in ARCHITECTURES else None
            entry = grid.get("teacher") if cell == "teacher" else grid["cells"].get(cell)
            if entry:
                row["auroc"] = entry["auroc"]
                row["auroc_ci95"] = entry["auroc_ci95"]
                row["auroc_metric"] = grid["metric"] + f" ({grid['dataset_name']}, our validation split)"
                row["auroc_from"] = str(grid_path)


def plot(rows: dict, path: Path) -> None:
    """AUROC (95% CI) against batch-1 latency: one colour per architecture, joined from torch (filled circle) to
    ONNX int8 (open square) so each architecture reads as one segment; a legend instead of labels on the points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.6, 4.6), dpi=120)
    colours = plt.get_cmap("tab10")
    for k, (name, row) in enumerate((n, r) for n, r in rows.items() if "auroc" in r):
        colour = "black" if name == TEACHER else colours(k % 10)
        low, high = row["auroc_ci95"]
        points = [row[key]["p50_ms"] for key in ("torch_b1", "onnx_int8_b1") if key in row]
        ax.plot(points, [row["auroc"]] * len(points), color=colour, linewidth=1, alpha=0.6)
        x0 = points[0]
        ax.errorbar(
            x0,
            row["auroc"],
            yerr=[[row["auroc"] - low], [high - row["auroc"]]],
            color=colour,
            capsize=3,
            marker="o",
            label=name,
        )
        for x in points[1:]:
            ax.plot(x, row["auroc"], marker="s", markerfacecolor="white", markeredgecolor=colour, linestyle="none")
    ax.plot([], [], marker="o", color="grey", linestyle="none", label="filled: torch, 2 threads")
    ax.plot(
        [],
        [],
        marker="s",
        markerfacecolor="white",
        markeredgecolor="grey",
        linestyle="none",
        label="open: ONNX Runtime int8, 2 threads",
    )
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency, p50 (ms, this CPU)")
    ax.set_ylabel(next(iter(r["auroc_metric"] for r in rows.values() if "auroc" in r)).split(" (")[0])
    ax.set_title("MLCAK students: AUROC (MLCAK seed mean, 95% CI) against latency", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--only", nargs="*", help="substrings of the architecture names to run")
    parser.add_argument(
        "--grid", type=Path, nargs="*", default=[], help="mlcak_grid.py's JSON files: add the AUROCs (later wins)"
    )
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "mlcak.json")
    parser.add_argument(
        "--replot", action="store_true", help="measure nothing: re-read --json, attach --grid's AUROCs, redraw"
    )
    args = parser.parse_args(argv)

    names = [n for n in ARCHITECTURES if not args.only or any(o in n for o in args.only)]
    rows = json.loads(args.json.read_text())["rows"] if args.replot else {}
    for name in [] if args.replot else names:
        rows[name] = measure(name, args.repeats, args.seconds)
        print(f"measured {name}", file=sys.stderr)
    teacher_rate = rows.get(TEACHER, {}).get("torch_b64_images_per_s")
    if teacher_rate:
        for row in rows.values():
            row["b64_vs_teacher"] = round(row["torch_b64_images_per_s"] / teacher_rate, 1)
            if "prepared_b64_images_per_s" in row and "prepared_b64_images_per_s" in rows[TEACHER]:
                rate = rows[TEACHER]["prepared_b64_images_per_s"]
                row["prepared_b64_vs_teacher"] = round(row["prepared_b64_images_per_s"] / rate, 1)
            if "onnx_int8_b64_images_per_s" in row:
                row["onnx_int8_b64_vs_teacher_torch"] = round(row["onnx_int8_b64_images_per_s"] / teacher_rate, 1)
    if args.grid:
        attach_auroc(rows, args.grid)

    def ms(row, key):
        return f"{row[key]['p50_ms']:.2f}" if key in row else "-"

    print(
        "| model | weights | tokens | torch b1 ms | 1 thread | served b1 ms | 1 thread | TorchScript b1 | ONNX b1 "
        "| ONNX int8 b1 | 1 thread | torch b64 img/s | x teacher | served b64 img/s | x teacher (served) "
        "| ONNX int8 b64 img/s | AUROC |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        auroc = f"{row['auroc']:.3f}" if "auroc" in row else "-"
        print(
            f"| {name} | {row['source']} | {row['tokens']} | {ms(row, 'torch_b1')} | {ms(row, 'torch_b1_1thread')} | "
            f"{ms(row, 'prepared_b1')} | {ms(row, 'prepared_b1_1thread')} | "
            f"{ms(row, 'torchscript_b1')} | {ms(row, 'onnx_b1')} | {ms(row, 'onnx_int8_b1')} | "
            f"{ms(row, 'onnx_int8_b1_1thread')} | "
            f"{row['torch_b64_images_per_s']} | {row.get('b64_vs_teacher', '-')} | "
            f"{row.get('prepared_b64_images_per_s', '-')} | {row.get('prepared_b64_vs_teacher', '-')} | "
            f"{row.get('onnx_int8_b64_images_per_s', '-')} | {auroc} |"
        )
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    result = {"machine": json.loads(args.json.read_text())["machine"] if args.replot else machine, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(rows, args.plot)
    return result


if __name__ == "__main__":
    main()
