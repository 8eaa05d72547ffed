"""Benchmark every model: inference latency and throughput, memory, exports, training speed, end-to-end predict.

    python bench/bench_models.py                  # all sections; writes bench/results/models.json + a plot

Sections (each a table on stdout, all in the JSON):

1. Inference (torch, ``inference_mode``, this machine's threads): batch-1 latency p50/p95 and batch-64 images/s
   for the teacher at 224, the students at 28/56/112 and the TB teacher/student where released; the students also
   exported to ONNX (fp32 and dynamic int8) and run with ONNX Runtime. Peak memory: each model in a fresh
   subprocess, resident set size after a batch of 64 minus after imports.
2. Training images/s of each script's step (forward + backward + AdamW on a batch of 32, data excluded; the data
   pipeline is bench_data.py's): teacher, MLCAK student with cached and with online teacher targets (the cache's
   speed-up), TB teacher, TB student (its teacher runs online).
3. End-to-end ``cxrdistill predict`` images/s from PNG files (decoding in 2 DataLoader workers) and the share of time
   spent decoding vs in the model.
4. A plot: validation AUROC (from the released models' metrics.json) against batch-1 latency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrdistill.models import load_model  # noqa: E402

MODELS = {
    "teacher-224": "mlcak-teacher-224",
    "student-28": "mlcak-student-28",
    "student-56": "mlcak-student-56",
    "student-112": "mlcak-student-112",
    "tb-teacher-224": "tb-teacher-224",
    "tb-student-28": "tb-student-28",
}
# the released TB pair's backbone (train/tb_localize.py --teacher-backbone / --student-backbone)
TB_BACKBONE = "resnet10t"
HEADLINE_METRIC = "AUROC, TB vs not TB (same-hospital extra-set images)"


def released() -> dict[str, Path]:
    return {name: REPO / "models" / f for name, f in MODELS.items() if (REPO / "models" / f / "config.json").exists()}


def time_calls(call, image, repeats: int, warmup: int = 10) -> dict[str, float]:
    """p50 / p95 milliseconds of ``call(image)`` over ``repeats`` calls after ``warmup`` (bench_mlcak.py too)."""
    for _ in range(warmup):
        call(image)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(image)
        samples.append((time.perf_counter() - start) * 1000)
    p50, p95 = np.percentile(samples, [50, 95])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3)}


def latency(model, size: int, repeats: int) -> dict[str, float]:
    with torch.inference_mode():
        return time_calls(model, torch.rand(1, 1, size, size), repeats)


def throughput(model, size: int, batch: int = 64, seconds: float = 3.0) -> float:
    images = torch.rand(batch, 1, size, size)
    with torch.inference_mode():
        model(images)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(images)
            count += batch
    return round(count / (time.perf_counter() - start), 1)


def peak_memory_mib(folder: Path) -> float:
    """Peak resident-set growth of a fresh process that loads ``folder`` and runs a batch of 64 (Linux: the peak is
    reset after the imports through /proc/self/clear_refs, so import-time peaks do not count)."""
    code = f"""
import re, sys, torch
sys.path.insert(0, {str(REPO)!r})
from cxrdistill.models import load_model
def status(key):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
model = load_model({str(folder)!r})
size = model.config.image_size
with torch.inference_mode():
    model(torch.rand(64, 1, size, size))
print((status("VmHWM") - before) / 1024)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(float(result.stdout.strip().splitlines()[-1]), 1)


def inference_section(repeats: int, seconds: float) -> dict:
    from cxrdistill.export import OnnxClassifier, export_onnx

    rows = {}
    for name, folder in released().items():
        model = load_model(folder)
        size = model.config.image_size
        rows[name] = {
            "backend": "torch",
            **latency(model, size, repeats),
            "batch64_images_per_s": throughput(model, size, seconds=seconds),
            "peak_memory_mib": peak_memory_mib(folder),
            "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        }
        if name.startswith("student-"):
            with tempfile.TemporaryDirectory() as export_dir:
                export_onnx(model, export_dir, int8=True)
                for backend, int8 in (("onnx", False), ("onnx-int8", True)):
                    exported = OnnxClassifier(export_dir, int8=int8)
                    rows[f"{name} ({backend})"] = {
                        "backend": backend,
                        **latency(exported, size, repeats),
                        "batch64_images_per_s": throughput(exported, size, seconds=seconds),
                    }
    return rows


def train_step_rate(step, batch: int, seconds: float) -> float:
    step()  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += batch
    return round(count / (time.perf_counter() - start), 1)


def training_section(seconds: float, batch: int = 32) -> dict:
    """Training-step rates of the tasks the scripts train (cxrdistill.distill), on random images."""
    from cxrdistill.distill import (
        MLCAKDistiller,
        MLCAKWeights,
        SupervisedTask,
        TBDistiller,
        TBLossWeights,
        cache_teacher_outputs,
        default_layer_pairs,
    )
    from cxrdistill.models import (
        CNNStudent,
        CNNStudentConfig,
        CNNTeacher,
        CNNTeacherConfig,
        StudentViT,
        StudentViTConfig,
        TeacherViT,
        TeacherViTConfig,
        preset_config,
    )

    teacher = TeacherViT(preset_config(TeacherViTConfig, "mlcak-teacher-conv6"))
    student = StudentViT(preset_config(StudentViTConfig, "mlcak-student-conv6", image_size=28))
    data = {
        "views": {224: torch.rand(batch, 1, 224, 224), 28: torch.rand(batch, 1, 28, 28)},
        "global": torch.eye(2)[torch.randint(0, 2, (batch,))],
        "local": torch.randint(0, 2, (batch, 3)).float(),
        "local_mask": torch.ones(batch, 3),
        "index": torch.arange(batch),
    }

    def stepper(task):
        optimiser = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-4)

        def step():
            optimiser.zero_grad(set_to_none=True)
            task(data)[0].backward()
            optimiser.step()

        return step

    pairs = default_layer_pairs(6, 6)
    online = MLCAKDistiller(student, TeacherViT(teacher.config), MLCAKWeights(), pairs).train()
    cached = MLCAKDistiller(student, TeacherViT(teacher.config), MLCAKWeights(), pairs).train()
    cached.use_cache(cache_teacher_outputs(cached, [(data["index"], data["views"][224])], batch))
    rows = {
        "train_teacher (ViT 224)": train_step_rate(stepper(SupervisedTask(teacher, 224).train()), batch, seconds),
        "distill_student 28, cached teacher targets": train_step_rate(stepper(cached), batch, seconds),
        "distill_student 28, online teacher": train_step_rate(stepper(online), batch, seconds),
    }
    labels = dict(global_labels=("not_tb", "tb"), local_labels=())
    cnn_teacher = CNNTeacher(preset_config(CNNTeacherConfig, f"tb-{TB_BACKBONE}", **labels))
    cnn_student = CNNStudent(preset_config(CNNStudentConfig, f"tb-{TB_BACKBONE}-lowres", image_size=28, **labels))
    frozen = CNNTeacher(cnn_teacher.config)
    rows[f"tb_localize teacher ({TB_BACKBONE} 224)"] = train_step_rate(
        stepper(SupervisedTask(cnn_teacher, 224).train()), batch, seconds
    )
    rows[f"tb_localize student 28 ({TB_BACKBONE}, online teacher)"] = train_step_rate(
        stepper(TBDistiller(cnn_student, frozen, TBLossWeights()).train()), batch, seconds
    )
    rows["teacher-output cache speed-up (x)"] = round(
        rows["distill_student 28, cached teacher targets"] / rows["distill_student 28, online teacher"], 2
    )
    return rows


def predict_section(images_dir: Path, count: int) -> dict:
    from cxrdistill.batch import predict_files

    files = sorted(str(p) for p in images_dir.glob("*.png"))[:count]
    if not files:
        return {"skipped": f"no PNG files in {images_dir}"}
    student = load_model(released()["student-28"])
    with tempfile.TemporaryDirectory() as out_dir:
        stats = predict_files(files, student, Path(out_dir) / "out.csv", num_workers=2, progress=False)
    busy = stats["decode_s"] + stats["model_s"]
    return {
        "images": stats["images"],
        "images_per_s": stats["images_per_s"],
        "decode_share": round(stats["decode_s"] / busy, 3) if busy else None,
        "model_share": round(stats["model_s"] / busy, 3) if busy else None,
        "note": "decoding runs in 2 worker processes (decode_s summed over them), the model in the main one",
    }


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    families = {"MLCAK ViTs": ("o", "tab:blue"), f"TB CNNs ({TB_BACKBONE})": ("s", "tab:orange")}
    latencies = []
    for name, folder in released().items():
        metrics_path = folder / "metrics.json"
        if name not in rows or not metrics_path.exists():
            continue
        results = {r["name"]: r for r in json.loads(metrics_path.read_text()).get("results", [])}
        if HEADLINE_METRIC not in results:
            continue
        x, y = rows[name]["p50_ms"], results[HEADLINE_METRIC]["value"]
        low, high = results[HEADLINE_METRIC].get("ci95", [y, y])
        family = list(families)[name.startswith("tb-")]
        marker, colour = families[family]
        ax.errorbar(x, y, yerr=[[y - low], [high - y]], fmt=marker, color=colour, capsize=3, label=family)
        latencies.append(x)
        # the two teachers sit close together: the ViT's label goes left of its point, below it
        offset, align = ((-6, -12), "right") if name == "teacher-224" else ((6, 4), "left")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=offset, ha=align, fontsize=8)
    ax.set_xscale("log")
    if latencies:
        ax.set_xlim(right=max(latencies) * 1.6)  # room for the rightmost label
        for axis_ticks in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis_ticks(ScalarFormatter())  # plain milliseconds on every tick, not 6 x 10^0
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one legend entry per family
    ax.legend(unique.values(), unique.keys(), loc="lower right", fontsize=8)
    ax.set_xlabel("batch-1 latency on this CPU, ms (log scale)")
    ax.set_ylabel("same-hospital AUROC (validation, 95% CI)")
    ax.set_title("What each model costs and what it scores")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="batch-1 calls timed per model")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per throughput / training measurement")
    parser.add_argument("--images", default=str(REPO.parent / "shared/data/tbx11k/imgs/tb"), help="PNG folder")
    parser.add_argument("--predict-images", type=int, default=200)
    parser.add_argument("--sections", nargs="+", default=["inference", "training", "predict"])
    parser.add_argument("--json", default=str(REPO / "bench/results/models.json"))
    parser.add_argument("--plot", default=str(REPO / "docs/images/auroc_vs_latency.png"))
    args = parser.parse_args(argv)

    result: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
    }
    if "inference" in args.sections:
        rows = result["inference"] = inference_section(args.repeats, args.seconds)
        print(f"{'model':<28} {'p50 ms':>8} {'p95 ms':>8} {'b64 img/s':>10} {'peak MiB':>9}")
        for name, row in rows.items():
            memory = row.get("peak_memory_mib", "")
            print(
                f"{name:<28} {row['p50_ms']:>8.2f} {row['p95_ms']:>8.2f} {row['batch64_images_per_s']:>10.1f} "
                f"{memory:>9}"
            )
        if "teacher-224" in rows and "student-28" in rows:
            ratio = rows["student-28"]["batch64_images_per_s"] / rows["teacher-224"]["batch64_images_per_s"]
            result["student28_vs_teacher_throughput_x"] = round(ratio, 2)
            print(f"student-28 / teacher-224 batch-64 throughput: {ratio:.1f}x")
        plot(rows, Path(args.plot))
    if "training" in args.sections:
        rows = result["training"] = training_section(args.seconds)
        print(f"{'training step (batch 32)':<44} {'img/s':>8}")
        for name, value in rows.items():
            print(f"{name:<44} {value:>8}")
    if "predict" in args.sections:
        result["predict"] = predict_section(Path(args.images), args.predict_images)
        print("end-to-end predict:", json.dumps(result["predict"]))
    result["peak_rss_mib_this_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
