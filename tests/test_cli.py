"""The ``cxrdistill`` command, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from support.films import png_bytes, synthetic_chest

from cxrdistill.cli import main, text_preview


def test_inspect_example_prints_what_it_found():
    result = subprocess.run(
        [sys.executable, "-m", "cxrdistill", "inspect", "--example"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "modality: CR" in result.stdout and "MONOCHROME1" in result.stdout and "1955 x 1841" in result.stdout
    preview = result.stdout.strip().splitlines()[-20:]
    assert all(len(line) == 48 for line in preview)


def test_inspect_json(tmp_path, capsys):
    path = tmp_path / "chest.png"
    path.write_bytes(png_bytes(np.round(synthetic_chest() * 255).astype(np.uint8)))
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "PNG" and report["pixels"]["shape"] == [96, 80] and report["bit_depth"] == 8


def test_inspect_bad_file_fails_with_the_reason(tmp_path, capsys):
    path = tmp_path / "notes.png"
    path.write_text("not an x-ray")
    assert main(["inspect", str(path)]) == 1
    assert "not an image" in capsys.readouterr().err


def test_text_preview_shows_dark_lungs_as_light_characters():
    lines = text_preview(synthetic_chest(200, 160), width=40).splitlines()
    middle = lines[len(lines) // 2]
    assert middle[10] in " .:" and middle[20] in "%@#"
