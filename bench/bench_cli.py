"""Which library makes the training scripts' command lines: start-up time and what each gives.

    python bench/bench_cli.py --json bench/results/cli.json     # needs tyro, jsonargparse, simple-parsing, draccus

Each library parses the same two dataclass sections (a loop and a data config, documented in Google-style
``Attributes:`` docstrings) in a fresh interpreter, import included, 5 times; the table gives the median time, whether
``--help`` shows the docstring texts, and whether the flags stay flat (``--epochs``, as the scripts' commands in the
docs are written) rather than prefixed by their section (``--loop.epochs``). A library that is not installed is
reported as such.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

PROBE = r'''
import sys, time
from dataclasses import dataclass, field
lib, help_ = sys.argv[1], sys.argv[2] == "help"
t0 = time.perf_counter()

@dataclass
class LoopConfig:
    """The optimisation schedule.

    Attributes:
        epochs: passes over the training split.
        lr: peak AdamW learning rate.
    """
    epochs: int = 60
    lr: float = 5e-4

@dataclass
class DataConfig:
    """Data.

    Attributes:
        root: the dataset folder.
    """
    root: str = "data"

@dataclass
class Args:
    loop: LoopConfig = field(default_factory=LoopConfig)
    data: DataConfig = field(default_factory=DataConfig)

argv = ["--help"] if help_ else []
if lib == "tyro":
    import tyro
    tyro.cli(Args, args=argv, config=(tyro.conf.OmitArgPrefixes,))
elif lib == "jsonargparse":
    from jsonargparse import ArgumentParser
    parser = ArgumentParser()
    parser.add_class_arguments(LoopConfig, "loop")
    parser.add_class_arguments(DataConfig, "data")
    parser.parse_args(argv)
elif lib == "simple_parsing":
    import simple_parsing
    simple_parsing.parse(Args, args=argv, add_option_string_dash_variants=simple_parsing.DashVariant.DASH)
elif lib == "draccus":
    import draccus
    draccus.parse(Args, args=argv)
print(time.perf_counter() - t0)
'''
LIBRARIES = ("tyro", "jsonargparse", "simple_parsing", "draccus")


def measure(library: str, runs: int = 5) -> dict:
    def run(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", PROBE, library, mode], capture_output=True, text=True)

    first = run("parse")
    if first.returncode:
        return {"library": library, "installed": False}
    seconds = [float(first.stdout.split()[-1])] + [float(run("parse").stdout.split()[-1]) for _ in range(runs - 1)]
    shown = run("help").stdout
    return {
        "library": library,
        "installed": True,
        "start_up_s": round(statistics.median(seconds), 3),
        "help_from_docstrings": "passes over the training split" in shown,
        "flat_flags": "--epochs" in shown and "--loop.epochs" not in shown,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = [measure(library) for library in LIBRARIES]
    print("| library | start-up (import + parse, median of 5) | help from docstrings | flat flags |")
    print("|---|---|---|---|")
    for row in rows:
        if not row["installed"]:
            print(f"| {row['library']} | not installed | | |")
            continue
        print(
            f"| {row['library']} | {row['start_up_s']:.3f} s | {'yes' if row['help_from_docstrings'] else 'no'} | "
            f"{'yes' if row['flat_flags'] else 'no'} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
