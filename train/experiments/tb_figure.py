"""The README figure of TB localisation: radiologists' boxes, the location prior and each model's map and boxes.

    python train/experiments/tb_figure.py --models tb-teacher-224=runs/tb-r18/teacher/best models/tb-student-28 \\
        --out docs/images/tb_localisation.png

Rows are validation TB images with boxes (the first ``--images`` in id order, never picked by result), then the
first ``--normal`` normal validation films (a map that localises should not look the same on them); columns are
the X-ray with the radiologists' boxes (green), the location prior, then each model's heatmap with its boxes (red,
at half the map's maximum) and the image's mask IoU (at the model's stored mask threshold, else 0.5). Drawn with
cxrdistill.render, through the same Predictor code as the app; with ``--lung-model``, as the app draws them: maps and
boxes kept inside the lungs, and models that read lung crops shown their crops.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from cxrdistill.evaluation import EvalData, load_dataset, load_train_val
from cxrdistill.explain import heatmap_mask
from cxrdistill.inference import Predictor
from cxrdistill.io import XRay, XRayMeta
from cxrdistill.localisation import location_prior
from cxrdistill.metrics import boxes_mask, mask_iou
from cxrdistill.models import load_model
from cxrdistill.render import TRUTH_COLOUR, draw_boxes, gray_to_rgb, overlay
from cxrdistill.results import display_image

TILE = 256


def tile(rgb: np.ndarray, caption: str) -> Image.Image:
    picture = Image.fromarray(rgb).resize((TILE, round(TILE * rgb.shape[0] / rgb.shape[1])))
    canvas = Image.new("RGB", (TILE, TILE + 22), (255, 255, 255))
    canvas.paste(picture.crop((0, 0, TILE, TILE)), (0, 0))
    ImageDraw.Draw(canvas).text((4, TILE + 4), caption, fill=(0, 0, 0))
    return canvas


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="model folders, or LABEL=FOLDER")
    parser.add_argument("--root", default="../shared/data/tbx11k")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--normal", type=int, default=0, help="also this many normal validation films")
    parser.add_argument("--out", default="docs/images/tb_localisation.png")
    parser.add_argument(
        "--lung-model",
        help="a LungSegmenter: maps and boxes kept inside the lungs as the app draws them (needed by models that "
        "read lung crops)",
    )
    args = parser.parse_args(argv)

    data = EvalData("tbx11k", args.root, None, "val")
    dataset = load_dataset(data)
    prior = location_prior(load_train_val(data)[0])
    sources = [m.split("=", 1) if "=" in m else (Path(m).name, m) for m in args.models]  # LABEL=PATH or PATH
    models = {label: load_model(path) for label, path in sources}
    lungs = load_model(args.lung_model) if args.lung_model else None
    predictors = {name: Predictor({model.config.image_size: model}, lung_model=lungs) for name, model in models.items()}
    with_boxes = [i for i, record in enumerate(dataset.records) if len(record.boxes)][: args.images]
    positive = dataset.global_space.names.index("tb")
    normal = [i for i in range(len(dataset)) if dataset.global_targets()[i, positive] < 0.5][: args.normal]
    rows = []
    for index in with_boxes + normal:
        sample = dataset[index]
        pixels = np.asarray(sample["image"], dtype=np.float32)
        display = display_image(pixels)
        scale = pixels.shape[0] / display.shape[0]
        truth_boxes = np.asarray(sample["boxes"], dtype=np.float64) / scale
        truth = boxes_mask(truth_boxes, display.shape)
        xray = XRay(display, XRayMeta(format="PNG", original_size=pixels.shape, bit_depth=8))
        prior_map = torch.nn.functional.interpolate(
            torch.from_numpy(prior)[None, None].float(), size=display.shape, mode="bilinear"
        )[0, 0].numpy()
        has_boxes = len(truth_boxes) > 0

        def scored(heatmap, threshold, truth=truth, has_boxes=has_boxes) -> str:
            return f"IoU {mask_iou(heatmap_mask(heatmap, threshold), truth):.2f}" if has_boxes else "normal film"

        label = f"{sample['id']}: boxes" if has_boxes else f"{sample['id']}: normal"
        cells = [
            tile(draw_boxes(gray_to_rgb(display), truth_boxes, colour=TRUTH_COLOUR), label),
            tile(overlay(display, prior_map, colour_bar=False), f"location prior, {scored(prior_map, 0.5)}"),
        ]
        for name, predictor in predictors.items():
            result = predictor.predict(xray, teacher=False, tb=False).student
            heatmap = next(iter(result.maps.values()))
            picture = overlay(display, heatmap, colour_bar=False)
            picture = draw_boxes(picture, truth_boxes, colour=TRUTH_COLOUR)
            picture = draw_boxes(picture, [[v / scale for v in b.box] for b in result.boxes])
            p_tb = result.global_probs[result.positive_label]
            cells.append(tile(picture, f"{name}: p(TB) {p_tb:.2f}, {scored(heatmap, result.mask_threshold or 0.5)}"))
        rows.append(cells)
    width, height = TILE * len(rows[0]), (TILE + 22) * len(rows)
    figure = Image.new("RGB", (width, height), (255, 255, 255))
    for r, cells in enumerate(rows):
        for c, cell in enumerate(cells):
            figure.paste(cell, (c * TILE, r * (TILE + 22)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.out)
    print(f"wrote {args.out} ({len(rows)} images)")


if __name__ == "__main__":
    main()
