"""Evaluate a saved model: the same command as ``cxrdistill evaluate`` (see ``--help``).

    python train/evaluate.py --model runs/student-28-mlcak/best --dataset tbx11k --root ../shared/data/tbx11k \\
        --json runs/student-28-mlcak/eval.json
"""

from __future__ import annotations

import sys

from cxrdistill.cli import main as cli_main


def main(argv=None) -> int:
    return cli_main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
