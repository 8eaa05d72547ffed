"""Benchmark ``cxrdistill predict`` over an archive: films per second with the app's models, and where the time goes.

    python bench/bench_batch.py --root ../shared/data/tbx11k --films 200 --workers 2

Runs :func:`cxrdistill.batch.predict_files` (what the command runs: DataLoader workers decode, the main process
calls ``Predictor.predict`` on each film) over the first ``--films`` TB films of TBX11K, with the release family's
models, and prints and writes (default bench/results/batch.json) films/s, the models' share of the wall time, and
the answers' state counts. ``--unprepared`` runs the models as saved instead of as the app serves them (BatchNorm
folded, channels-last). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrdistill.batch import BatchOptions, predict_files, read_rows  # noqa: E402
from cxrdistill.inference import Predictor  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "tbx11k"), help="TBX11K folder")
    parser.add_argument("--films", type=int, default=200, help="films to predict (default 200)")
    parser.add_argument("--workers", type=int, default=2, help="decoding workers (default 2)")
    parser.add_argument("--family", default="tbx11k", help="release family whose models run (default tbx11k)")
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "batch.json"), help="output JSON")
    parser.add_argument(
        "--unprepared", action="store_true", help="models as saved (no BatchNorm folding, no channels-last)"
    )
    args = parser.parse_args(argv)
    films = sorted(str(p) for p in (Path(args.root) / "imgs" / "tb").glob("*.png"))[: args.films]
    predictor = Predictor.from_release(REPO / "models", args.family, prepare=not args.unprepared)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "rows.csv"
        stats = predict_files(films, predictor, out, BatchOptions(num_workers=args.workers, progress=False))
        states = Counter(row["answer_state"] for row in read_rows(out))
    result = {
        "films": len(films),
        "family": args.family,
        "models": sorted(predictor.sources.values()),
        "workers": args.workers,
        "served_as": "saved (unprepared)" if args.unprepared else "BatchNorm folded, channels-last",
        "films_per_s": stats["images_per_s"],
        "wall_s": stats["wall_s"],
        "model_share_of_wall": round(stats["model_s"] / stats["wall_s"], 3),
        "answer_states": dict(states),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
    }
    print(
        f"cxrdistill predict, {len(films)} films, {args.workers} decoding workers: {result['films_per_s']} films/s "
        f"({result['model_share_of_wall']:.0%} of the wall time in Predictor.predict)"
    )
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
