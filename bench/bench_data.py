"""Benchmark the data pipeline: paired views straight from the PNG files vs from the pre-resized tensor cache.

    python bench/bench_data.py --root ../shared/data/tbx11k --images 300

Prints a table and writes JSON (default bench/results/data_cache.json). Both paths run the same augmented
MultiResolutionViews (teacher 224 + students 28/56/112) in one process, as one DataLoader worker would.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from cxrdistill.data import TBX11K, AugmentConfig, CachedDataset, MultiResolutionViews


def images_per_second(dataset, transform, count: int, generator: torch.Generator) -> float:
    start = time.perf_counter()
    for index in range(count):
        transform(dataset[index % len(dataset)], generator)
    return count / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/tbx11k", help="TBX11K folder")
    parser.add_argument("--split", default="all_train")
    parser.add_argument("--images", type=int, default=300, help="samples timed per path")
    parser.add_argument("--cache-size", type=int, default=256)
    parser.add_argument("--json", default="bench/results/data_cache.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # one DataLoader worker's view of the machine
    dataset = TBX11K(args.root, args.split)
    transform = MultiResolutionViews(224, (28, 56, 112), augment=AugmentConfig())
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        cached = CachedDataset(dataset, size=args.cache_size, cache_dir=cache_dir, progress=False)
        build_seconds = time.perf_counter() - start
        cache_mib = cached.pixels_path.stat().st_size / 2**20
        images_per_second(dataset, transform, 10, torch.Generator().manual_seed(0))  # warm-up
        from_files = images_per_second(dataset, transform, args.images, torch.Generator().manual_seed(0))
        from_cache = images_per_second(cached, transform, args.images, torch.Generator().manual_seed(0))

    result = {
        "dataset": f"TBX11K {args.split} ({len(dataset)} images, 512 px PNG/JPG)",
        "views": [224, 112, 56, 28],
        "augment": True,
        "images_timed": args.images,
        "threads": 1,
        "from_files_images_per_s": round(from_files, 1),
        "from_cache_images_per_s": round(from_cache, 1),
        "speedup": round(from_cache / from_files, 2),
        "cache_build_s": round(build_seconds, 1),
        "cache_size_px": args.cache_size,
        "cache_file_mib": round(cache_mib, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
    }
    print(f"{'path':<24}{'images/s':>10}")
    print(f"{'PNG decode + views':<24}{from_files:>10.1f}")
    print(f"{'tensor cache + views':<24}{from_cache:>10.1f}")
    print(f"speed-up x{result['speedup']}; cache built in {build_seconds:.1f} s, {cache_mib:.1f} MiB")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
