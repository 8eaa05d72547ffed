"""Pictures of predictions: heatmap overlays with a colour bar, boxes with scores, enlarged model views.

Pure NumPy + Pillow (no matplotlib), so the app and the README figures draw the same way from an installed wheel.
Every function takes gray images as ``float`` arrays in ``[0, 1]`` and returns ``uint8`` RGB ``(H, W, 3)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# The viridis colour map at 9 evenly spaced points (matplotlib's values, rounded); interpolated linearly between.
_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [71, 45, 123],
        [59, 82, 139],
        [44, 114, 142],
        [33, 145, 140],
        [40, 174, 128],
        [94, 201, 98],
        [170, 220, 50],
        [253, 231, 37],
    ],
    dtype=np.float64,
)
_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_VIRIDIS)), _VIRIDIS[:, c]) for c in range(3)], axis=1
).astype(np.uint8)  # (256, 3)

BOX_COLOUR = (255, 64, 64)
TRUTH_COLOUR = (64, 255, 64)


def gray_to_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` in ``[0, 1]`` -> ``(H, W, 3)`` ``uint8``."""
    gray = (np.clip(np.asarray(image, dtype=np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def normalise(heatmap: np.ndarray) -> np.ndarray:
    """Min-max scale to ``[0, 1]`` (a constant map becomes all zeros)."""
    values = np.asarray(heatmap, dtype=np.float64)
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def colourise(values: np.ndarray) -> np.ndarray:
    """``(H, W)`` in ``[0, 1]`` -> viridis ``(H, W, 3)`` ``uint8``."""
    return _LUT[(np.clip(values, 0, 1) * 255 + 0.5).astype(np.intp)]


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, colour_bar: bool = True) -> np.ndarray:
    """The X-ray ``image`` with ``heatmap`` (same ``(H, W)``, any range: min-max scaled) blended over it.

    The blend weight grows with the heat, so cold regions show the X-ray and hot ones the colour. With
    ``colour_bar`` a vertical bar labelled "high"/"low" is added on the right.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.shape != np.shape(heatmap):
        raise ValueError(f"image {image.shape} and heatmap {np.shape(heatmap)} must have the same shape")
    heat = normalise(heatmap)
    weight = (alpha * (0.25 + 0.75 * heat))[..., None]
    blended = (1 - weight) * gray_to_rgb(image) + weight * colourise(heat)
    result = (blended + 0.5).astype(np.uint8)
    return add_colour_bar(result) if colour_bar else result


def add_colour_bar(rgb: np.ndarray, label_high: str = "high", label_low: str = "low") -> np.ndarray:
    """``rgb`` with a viridis colour bar (top = high) and its two labels on a dark strip at the right."""
    height = rgb.shape[0]
    bar_width = max(8, height // 40)
    strip_width = bar_width + max(36, height // 10)
    strip = np.full((height, strip_width, 3), 24, dtype=np.uint8)
    margin = max(4, height // 50)
    ramp = np.linspace(1, 0, height - 2 * margin)[:, None].repeat(bar_width, axis=1)
    strip[margin : height - margin, 4 : 4 + bar_width] = colourise(ramp)
    picture = Image.fromarray(strip)
    draw = ImageDraw.Draw(picture)
    font = _font(max(10, height // 40))
    draw.text((bar_width + 7, margin), label_high, fill=(230, 230, 230), font=font)
    draw.text(
        (bar_width + 7, height - margin - getattr(font, "size", 11) - 2), label_low, fill=(230, 230, 230), font=font
    )
    return np.concatenate([rgb, np.asarray(picture)], axis=1)


def draw_boxes(
    rgb: np.ndarray,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[str] | None = None,
    colour: tuple[int, int, int] = BOX_COLOUR,
) -> np.ndarray:
    """``rgb`` with ``boxes`` (``xyxy`` in its pixels) outlined and labelled (e.g. with scores)."""
    picture = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(picture)
    width = max(2, rgb.shape[0] // 200)
    font = _font(max(11, rgb.shape[0] // 36))
    for index, box in enumerate(boxes):
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        if labels is not None:
            text = labels[index]
            left, top, right, bottom = draw.textbbox((x0, y0), text, font=font)
            y = y0 - (bottom - top) - 4 if y0 - (bottom - top) - 4 >= 0 else y0 + width
            draw.rectangle((x0, y, x0 + (right - left) + 6, y + (bottom - top) + 4), fill=colour)
            draw.text((x0 + 3, y + 1 - (top - y0)), text, fill=(0, 0, 0), font=font)
    return np.asarray(picture)


def enlarge(view: np.ndarray, size: int = 336) -> np.ndarray:
    """A small model input ``(h, w)`` in ``[0, 1]`` enlarged to about ``size`` px by repeating pixels (nearest
    neighbour), so each input pixel stays visible as a square."""
    factor = max(1, size // max(view.shape))
    return gray_to_rgb(np.kron(np.asarray(view, dtype=np.float32), np.ones((factor, factor), dtype=np.float32)))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a single bitmap size
        return ImageFont.load_default()


def draw_outline(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (80, 200, 255)) -> np.ndarray:
    """``rgb`` with the boundary of the bool ``mask`` (same ``(H, W)``) drawn 2 px wide in ``colour``."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    boundary = mask & ~ndimage.binary_erosion(mask, iterations=2)
    out = np.array(rgb, copy=True)
    out[boundary] = colour
    return out


def roc_picture(
    fpr: Sequence[float],
    tpr: Sequence[float],
    points: Sequence[tuple[float, float]] = (),
    title: str = "",
    size: int = 240,
) -> np.ndarray:
    """A ROC curve (false-positive rate on x, sensitivity on y, both ``[0, 1]``) on white with the chance diagonal;
    each of ``points`` (false-positive rate, sensitivity) marks one of the model's cuts. ``(size, size, 3)``
    ``uint8``."""
    picture = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    font = _font(max(10, size // 22))
    left, right, top, bottom = size * 0.17, size * 0.95, size * 0.12, size * 0.83

    def xy(x: float, y: float) -> tuple[float, float]:
        return left + x * (right - left), bottom - y * (bottom - top)

    draw.rectangle((left, top, right, bottom), outline=(120, 120, 120))
    for tick in (0.25, 0.5, 0.75):
        draw.line((*xy(tick, 0), *xy(tick, 1)), fill=(232, 232, 232))
        draw.line((*xy(0, tick), *xy(1, tick)), fill=(232, 232, 232))
    draw.line((*xy(0, 0), *xy(1, 1)), fill=(170, 170, 170))
    draw.line([xy(x, y) for x, y in zip(fpr, tpr, strict=True)], fill=tuple(int(v) for v in _VIRIDIS[2]), width=3)
    radius = max(4, size // 45)
    for point in points:
        x, y = xy(*point)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=BOX_COLOUR, outline=(0, 0, 0))
    draw.text((left, bottom + 4), "0", fill=(60, 60, 60), font=font)
    draw.text((right - 8, bottom + 4), "1", fill=(60, 60, 60), font=font)
    draw.text((left + (right - left) / 2 - size * 0.2, bottom + 4), "1 - specificity", fill=(60, 60, 60), font=font)
    draw.text((4, top), "sens.", fill=(60, 60, 60), font=font)
    draw.text((4, bottom - 12), "0", fill=(60, 60, 60), font=font)
    if title:
        draw.text((left, 4), title, fill=(0, 0, 0), font=font)
    return np.asarray(picture)
