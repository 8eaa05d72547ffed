"""Command-line pieces the training-script tests share."""

from __future__ import annotations


def common_args(root, output, cache) -> list[str]:
    return [
        "--root",
        str(root),
        "--output-dir",
        str(output),
        "--cache-dir",
        str(cache),
        "--batch-size",
        "8",
        "--num-workers",
        "0",
        "--bootstrap",
        "20",
        "--cache-size",
        "96",
        "--val-fraction",
        "0.3",
    ]
