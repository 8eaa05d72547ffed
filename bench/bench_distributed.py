"""Training speed of each script in 1 process and in N processes (torchrun, gloo on the CPU), on real TBX11K images.

    python bench/bench_distributed.py --root ../shared/data/tbx11k [--processes 2] [--steps 12]

Each row runs the script for ``--steps`` optimiser steps of ``--batch-size`` images per process and reads the
``train_images_per_s`` its card records (the optimisation loop with data loading; evaluation and checkpoints
excluded). One process gets every core as torch threads; N processes get cores / N threads each, so the comparison
is one machine's cores used two ways. Prints a table and writes ``bench/results/distributed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPTS = {
    "train_teacher (ViT, 224 px)": ["train/train_teacher.py"],
    "distill_student (ViT 28 px, cached teacher)": [
        "train/distill_student.py",
        "--teacher",
        str(REPO / "models" / "mlcak-teacher-224"),
        "--ablation",
        "all",
    ],
    "tb_localize teacher (ResNet10-T, 224 px)": ["train/tb_localize.py", "--stage", "teacher"],
}


def run(script: list[str], processes: int, args: argparse.Namespace, workdir: Path) -> dict:
    cores = os.cpu_count() or 1
    output = workdir / f"{Path(script[0]).stem}-{processes}"
    options = ["--root", args.root, "--output-dir", str(output), "--cache-dir", str(workdir / "cache")]
    options += ["--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--epochs", "1"]
    options += ["--limit", str(args.limit), "--bootstrap", "10", "--num-workers", "1"]
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    if processes > 1:
        launcher += ["--nproc_per_node", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // processes)), "CUDA_VISIBLE_DEVICES": ""}
    start = time.perf_counter()
    result = subprocess.run(
        [*launcher, str(REPO / script[0]), *script[1:], *options], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{script[0]} with {processes} processes failed:\n{result.stderr[-3000:]}")
    folder = output / "teacher" if "--stage" in script else output
    training = json.loads((folder / "best" / "metrics.json").read_text())["training"]
    return {
        "images_per_s": training["train_images_per_s"],
        "processes": training["processes"],
        "wall_s": round(wall, 1),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "tbx11k"), help="TBX11K folder")
    parser.add_argument("--processes", type=int, default=2, help="processes of the distributed run (default 2)")
    parser.add_argument("--steps", type=int, default=12, help="optimiser steps per run (default 12)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step in each process (default 16)")
    parser.add_argument("--limit", type=int, default=400, help="training images used (default 400)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "distributed.json"), help="JSON report")
    args = parser.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="cxrdistill-bench-dist-") as workdir:
        for name, script in SCRIPTS.items():
            single = run(script, 1, args, Path(workdir))
            several = run(script, args.processes, args, Path(workdir))
            assert several["processes"] == args.processes, several
            rows[name] = {
                "1 process": single,
                f"{args.processes} processes": several,
                "speed-up": round(several["images_per_s"] / single["images_per_s"], 2),
            }
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "settings": vars(args),
        "rows": rows,
    }
    print(f"| script | 1 process (img/s) | {args.processes} processes (img/s) | speed-up |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['1 process']['images_per_s']} | {row[f'{args.processes} processes']['images_per_s']} "
            f"| {row['speed-up']}x |"
        )
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
