"""How often the app's "two lungs" check (cxrdistill.inference.two_lungs) passes on real chest films.

    python train/experiments/lung_check.py   # writes docs/results/lung_check.json and docs/images/lung_masks.png

Every TBX11K TB and extra-set film and every 4th NIH nih1024 film goes through the released lung model as an
upload would (display size, letterboxed to its input); the check should pass on all of them. The figure shows the
lung outline the model draws on evenly spaced TBX11K TB films (top row) and NIH films (bottom row).
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cxrdistill.inference import Predictor
from cxrdistill.render import draw_outline, gray_to_rgb
from cxrdistill.results import two_lungs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="the shared data folder")
    parser.add_argument("--models", default="models", help="the release folder (with lung-unet-256)")
    parser.add_argument("--out", default="docs/results/lung_check.json", help="JSON report")
    parser.add_argument("--figure", default="docs/images/lung_masks.png", help="outlines on sample films (PNG)")
    parser.add_argument("--per-row", type=int, default=6, help="films per row of the figure")
    args = parser.parse_args(argv)
    predictor = Predictor.from_release(args.models)
    data = Path(args.data)
    files = sorted(glob.glob(str(data / "tbx11k/imgs/tb/*.png"))) + sorted(
        glob.glob(str(data / "tbx11k/imgs/extra/*/*/*"))
    )
    files += sorted(glob.glob(str(data / "nih1024/images/*.png")))[::4]
    tb_films = [f for f in files if "/imgs/tb/" in f]
    nih_films = [f for f in files if "/nih1024/" in f]
    shown = {
        f: None for rows in (tb_films, nih_films) for f in rows[:: max(1, len(rows) // args.per_row)][: args.per_row]
    }
    failed, shares = [], []
    for path in tqdm(files, desc="lung check"):
        pixels = predictor.read(path).pixels
        mask = predictor.lungs(pixels)
        shares.append(float(mask.mean()))
        if not two_lungs(mask):
            failed.append(str(Path(path).relative_to(data)))
        if path in shown:
            shown[path] = draw_outline(gray_to_rgb(pixels), mask)
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    tiles = list(shown.values())
    mosaic([tiles[: args.per_row], tiles[args.per_row :]]).save(args.figure)
    report = {
        "films": len(files),
        "failed": len(failed),
        "failed_files": failed,
        "lung_share_of_image_p1_p50_p99": np.percentile(shares, [1, 50, 99]).round(3).tolist(),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return report


def mosaic(rows: list[list[np.ndarray]], tile: int = 200) -> Image.Image:
    """RGB images resized to ``tile`` x ``tile`` and laid out in rows."""
    width = max(len(row) for row in rows) * tile
    canvas = Image.new("RGB", (width, len(rows) * tile), "white")
    for r, row in enumerate(rows):
        for c, rgb in enumerate(row):
            canvas.paste(Image.fromarray(rgb).resize((tile, tile), Image.BILINEAR), (c * tile, r * tile))
    return canvas


if __name__ == "__main__":
    main()
