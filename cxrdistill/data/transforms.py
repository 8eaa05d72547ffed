"""One augmented X-ray -> a teacher view and student views, with boxes that follow every resize.

Geometry is one affine matrix per sample, mapping continuous pixel coordinates of the source image (pixel
``(row i, column j)`` covers ``[j, j+1) x [i, i+1)``) to those of the *base view*, a square of the largest
requested size. The image is warped once with that matrix and boxes are moved with the same matrix, so they
cannot drift apart. The base view is then area-averaged down to every other size (224 -> 112, 56, 28 is an exact
2x2 / 4x4 / 8x8 mean), which is what a low-resolution sensor or a downsampled archive produces.

Without augmentation the matrix is a *letterbox*: the image is scaled so its long side fits and centred on a black
square, keeping its aspect ratio. Augmentation adds a small random zoom, aspect change, rotation and shift, and
gamma / contrast / brightness jitter. There is no horizontal flip by default: the heart is on the left and a
flipped film is a different (rare, pathological) anatomy.

*Harmonisation* augmentations (off by default; :meth:`AugmentConfig.harmonising`) blur what tells one archive from
another, so a classifier cannot win by recognising where a film came from: histogram equalisation (every film gets
the same intensity distribution), a round trip through a lower resolution (films digitised or stored at different
sizes), and JPEG re-encoding at a random quality (archives compressed differently).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data
from PIL import Image


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation suited to chest X-rays (all ranges inclusive).

    Attributes:
        zoom: range of the zoom factor (> 1 zooms in, cropping the border).
        aspect: range of the horizontal / vertical scale ratio.
        rotate_degrees: maximum absolute rotation.
        translate: maximum shift as a fraction of the view side.
        hflip_p: probability of a horizontal flip (0 by default: anatomy is not left-right symmetric).
        gamma: range of the gamma exponent (sampled log-uniformly).
        contrast: range of the contrast factor around mid-grey.
        brightness: maximum absolute brightness offset.
        min_box_visibility: a box is dropped when less than this share of it stays inside the view.
        equalize_p: probability of histogram equalisation (harmonisation; 0 by default).
        resample_p: probability of a round trip through a lower resolution (harmonisation; 0 by default).
        resample_scale: range of that lower resolution as a share of the view's side.
        jpeg_p: probability of JPEG re-encoding (harmonisation; 0 by default).
        jpeg_quality: range of the JPEG quality.
    """

    zoom: tuple[float, float] = (0.9, 1.15)
    aspect: tuple[float, float] = (0.95, 1.05)
    rotate_degrees: float = 10.0
    translate: float = 0.06
    hflip_p: float = 0.0
    gamma: tuple[float, float] = (0.8, 1.25)
    contrast: tuple[float, float] = (0.85, 1.15)
    brightness: float = 0.05
    min_box_visibility: float = 0.25
    equalize_p: float = 0.0
    resample_p: float = 0.0
    resample_scale: tuple[float, float] = (0.25, 0.75)
    jpeg_p: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 90)

    def __post_init__(self) -> None:
        for name in ("zoom", "aspect", "gamma", "contrast", "resample_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"AugmentConfig.{name} must be (low, high) with 0 < low <= high, got {(low, high)}")
        if self.resample_scale[1] > 1:
            raise ValueError(f"AugmentConfig.resample_scale must stay <= 1, got {self.resample_scale}")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 95:
            raise ValueError(f"AugmentConfig.jpeg_quality must be (low, high) in [1, 95], got {self.jpeg_quality}")
        for name in ("hflip_p", "min_box_visibility", "equalize_p", "resample_p", "jpeg_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.rotate_degrees < 0 or self.translate < 0 or self.brightness < 0:
            raise ValueError("AugmentConfig.rotate_degrees, translate and brightness must be >= 0")

    @classmethod
    def harmonising(cls, **overrides) -> AugmentConfig:
        """The default augmentation plus the harmonisation ones (equalisation 0.5, resolution round trip 0.5, JPEG
        0.5): inputs from different archives look alike."""
        return cls(**{"equalize_p": 0.5, "resample_p": 0.5, "jpeg_p": 0.5, **overrides})

    @property
    def harmonises(self) -> bool:
        return max(self.equalize_p, self.resample_p, self.jpeg_p) > 0


# ------------------------------------------------------------------------------------------------------ geometry


def letterbox_matrix(height: int, width: int, size: int) -> np.ndarray:
    """3x3 matrix mapping an ``(height, width)`` image onto a ``size`` square, aspect kept, centred."""
    scale = size / max(height, width)
    return np.array(
        [[scale, 0.0, (size - width * scale) / 2], [0.0, scale, (size - height * scale) / 2], [0.0, 0.0, 1.0]]
    )


def random_view_matrix(size: int, config: AugmentConfig, generator: torch.Generator | None = None) -> np.ndarray:
    """3x3 random similarity-plus-aspect transform of a ``size`` square about its centre."""

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    zoom = uniform(*config.zoom)
    aspect = uniform(*config.aspect)
    angle = math.radians(uniform(-config.rotate_degrees, config.rotate_degrees))
    shift_x = uniform(-config.translate, config.translate) * size
    shift_y = uniform(-config.translate, config.translate) * size
    flip = -1.0 if float(torch.rand((), generator=generator)) < config.hflip_p else 1.0
    scale_x, scale_y = zoom * math.sqrt(aspect) * flip, zoom / math.sqrt(aspect)
    cos, sin = math.cos(angle), math.sin(angle)
    centre = size / 2
    to_centre = np.array([[1, 0, -centre], [0, 1, -centre], [0, 0, 1]], dtype=np.float64)
    linear = np.array([[cos * scale_x, -sin * scale_y, 0], [sin * scale_x, cos * scale_y, 0], [0, 0, 1]])
    back = np.array([[1, 0, centre + shift_x], [0, 1, centre + shift_y], [0, 0, 1]], dtype=np.float64)
    return back @ linear @ to_centre


def transform_boxes(
    boxes: np.ndarray, matrix: np.ndarray, size: int, min_visibility: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Move xyxy ``boxes`` ``(M, 4)`` with ``matrix`` onto a ``size`` square.

    A rotated box becomes the axis-aligned box around its four corners. Boxes are clipped to the square; those
    keeping less than ``min_visibility`` of their area (or none at all) are dropped.

    Returns:
        ``(boxes (M', 4) float32, keep (M,) bool)``.
    """
    if len(boxes) == 0:
        return np.zeros((0, 4), dtype=np.float32), np.zeros((0,), dtype=bool)
    boxes = np.asarray(boxes, dtype=np.float64)
    x0, y0, x1, y1 = boxes.T
    corners = np.stack(
        [np.stack([x, y, np.ones_like(x)], axis=-1) for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))], 1
    )
    moved = corners @ matrix.T  # (M, 4 corners, 3)
    moved_boxes = np.concatenate([moved[..., :2].min(1), moved[..., :2].max(1)], axis=1)
    clipped = np.clip(moved_boxes, 0, size)
    area = np.prod(np.maximum(moved_boxes[:, 2:] - moved_boxes[:, :2], 0), axis=1)
    clipped_area = np.prod(np.maximum(clipped[:, 2:] - clipped[:, :2], 0), axis=1)
    keep = (clipped_area > 0) & (clipped_area >= min_visibility * area)
    return clipped[keep].astype(np.float32), keep


# -------------------------------------------------------------------------------------------------------- pixels


def area_resize(image: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Area-average ``image`` ``(..., H, W)`` to ``size``: each output pixel is the mean of the input it covers."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(image.shape[-2:]) == size:
        return image
    leading = image.shape[:-2]
    flat = image.reshape(-1, 1, *image.shape[-2:])
    return F.interpolate(flat, size=size, mode="area").reshape(*leading, *size)


def warp(image: torch.Tensor, matrix: np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    """Warp ``image`` ``(H, W)`` with ``matrix`` (source -> output pixels) onto a ``size`` square (or an
    ``(height, width)`` frame, e.g. to map a heatmap back onto the original image); outside is 0.

    Large reductions are anti-aliased: the source is first area-averaged by the integer factor that brings the
    warp's scale to between 1 and 2, then sampled bilinearly.
    """
    height, width = image.shape
    scale = math.sqrt(abs(np.linalg.det(matrix[:2, :2])))
    factor = max(1, int(1.0 / scale)) if scale < 1 else 1
    if factor > 1:
        small = (max(1, round(height / factor)), max(1, round(width / factor)))
        image = area_resize(image, small)
        # coordinates of the reduced image -> original -> output
        matrix = matrix @ np.diag([width / small[1], height / small[0], 1.0])
        height, width = small
    out_height, out_width = (size, size) if isinstance(size, int) else size
    inverse = np.linalg.inv(matrix)
    grid_y, grid_x = torch.meshgrid(
        torch.arange(out_height, dtype=torch.float64) + 0.5,
        torch.arange(out_width, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], -1) @ torch.from_numpy(inverse).T
    # align_corners=False: -1 and +1 are the outer edges of the first and last pixel, i.e. coordinates 0 and W.
    grid = torch.stack([points[..., 0] / width * 2 - 1, points[..., 1] / height * 2 - 1], -1).to(image.dtype)
    # Border padding keeps the image's own edge rows at full value; the mask then blacks out every output pixel
    # whose centre falls outside the source, so the image ends sharply where the letterbox padding starts.
    sampled = F.grid_sample(image[None, None], grid[None], mode="bilinear", padding_mode="border", align_corners=False)
    inside = (points[..., 0] >= 0) & (points[..., 0] < width) & (points[..., 1] >= 0) & (points[..., 1] < height)
    return sampled[0, 0] * inside.to(image.dtype)


def model_input(pixels: np.ndarray | torch.Tensor, size: int, base_size: int = 224) -> torch.Tensor:
    """``(1, 1, size, size)`` model input from an ``(H, W)`` image in ``[0, 1]``, made as in training and evaluation:
    letterboxed onto a ``base_size`` square, then area-averaged down to ``size``."""
    image = torch.as_tensor(pixels, dtype=torch.float32)
    base = max(base_size, size)
    view = warp(image, letterbox_matrix(*image.shape, base), base)
    return area_resize(view, size)[None, None]


def jitter_intensity(
    image: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random gamma, contrast and brightness on an image in ``[0, 1]``; the result stays in ``[0, 1]``."""
    log_low, log_high = math.log(config.gamma[0]), math.log(config.gamma[1])
    gamma = math.exp(log_low + (log_high - log_low) * float(torch.rand((), generator=generator)))
    contrast = config.contrast[0] + (config.contrast[1] - config.contrast[0]) * float(
        torch.rand((), generator=generator)
    )
    brightness = (2 * float(torch.rand((), generator=generator)) - 1) * config.brightness
    return ((image.clamp(0, 1) ** gamma - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)


def equalize_histogram(image: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Histogram equalisation of an image in ``[0, 1]``: each value becomes the share of pixels at or below its bin
    (the empirical CDF), so every film ends with a near-uniform intensity distribution."""
    levels = (image.clamp(0, 1) * (bins - 1)).round().long()
    cdf = torch.bincount(levels.flatten(), minlength=bins).cumsum(0).float()
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0]).clamp_min(1)
    return cdf[levels]


def resample_round_trip(image: torch.Tensor, scale: float) -> torch.Tensor:
    """``(H, W)`` image area-averaged to ``scale`` of its size, then enlarged back bilinearly (detail lost as in a
    film stored at a lower resolution)."""
    height, width = image.shape
    small = area_resize(image, (max(1, round(height * scale)), max(1, round(width * scale))))
    return F.interpolate(small[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]


def jpeg_round_trip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """``(H, W)`` image in ``[0, 1]`` encoded as an 8-bit JPEG at ``quality`` and decoded (PIL)."""
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=int(quality))
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"), dtype=np.float32)
    return torch.from_numpy(decoded / 255.0)


def harmonise(image: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """The harmonisation augmentations of ``config`` on an ``(H, W)`` image in ``[0, 1]``, each with its own
    probability: equalisation, resolution round trip, JPEG round trip. Draws no random numbers when all are off."""

    def happens(probability: float) -> bool:
        return probability > 0 and float(torch.rand((), generator=generator)) < probability

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    if happens(config.equalize_p):
        image = equalize_histogram(image)
    if happens(config.resample_p):
        image = resample_round_trip(image, uniform(*config.resample_scale))
    if happens(config.jpeg_p):
        image = jpeg_round_trip(image, round(uniform(*config.jpeg_quality)))
    return image


# --------------------------------------------------------------------------------------------------------- views


class MultiResolutionViews:
    """Turn a dataset sample into paired views for distillation.

    Args:
        teacher_size: side of the teacher's view (default 224).
        student_sizes: sides of the student views (default 28, 56, 112).
        augment: random augmentation, or ``None`` for the deterministic letterbox (evaluation).

    Calling it on a sample (see :mod:`cxrdistill.data.base`) returns::

        {
            "views": {size: tensor (1, size, size) in [0, 1]},     # teacher_size and every student size
            "boxes": {size: tensor (M, 4) xyxy in that view's pixels},
            "box_labels": tensor (M,),
            "global", "local", "local_mask": tensors,
            "to_view": tensor (3, 3): source-image pixels -> base-view pixels (to map maps back),
            "source_size": (H, W) of the image the sample came from,
            "id", "group", "source": str,
        }
    """

    def __init__(
        self,
        teacher_size: int = 224,
        student_sizes: Sequence[int] = (28, 56, 112),
        augment: AugmentConfig | None = None,
    ) -> None:
        sizes = [teacher_size, *student_sizes]
        if any(not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"view sizes must be positive integers, got {sizes}")
        self.teacher_size = teacher_size
        self.student_sizes = tuple(student_sizes)
        self.sizes = tuple(sorted(set(sizes), reverse=True))
        self.base_size = self.sizes[0]
        self.augment = augment

    def __call__(self, sample: dict, generator: torch.Generator | None = None) -> dict:
        image = torch.as_tensor(sample["image"], dtype=torch.float32)
        if image.ndim != 2:
            raise ValueError(f"expected a 2-D (H, W) image, got shape {tuple(image.shape)}")
        to_image = np.asarray(sample.get("to_image", np.eye(3)), dtype=np.float64)  # e.g. from the tensor cache
        matrix = letterbox_matrix(*image.shape, self.base_size)
        min_visibility = 0.0
        if self.augment is not None:
            matrix = random_view_matrix(self.base_size, self.augment, generator) @ matrix
            image = jitter_intensity(image, self.augment, generator)
            min_visibility = self.augment.min_box_visibility
        base = warp(image, matrix, self.base_size)
        if self.augment is not None and self.augment.harmonises:
            base = harmonise(base, self.augment, generator)
        base_boxes, keep = transform_boxes(sample["boxes"], matrix, self.base_size, min_visibility)

        views, boxes = {}, {}
        for size in self.sizes:
            views[size] = area_resize(base, size)[None]
            boxes[size] = torch.from_numpy(base_boxes * (size / self.base_size))
        return {
            "views": views,
            "boxes": boxes,
            "box_labels": torch.as_tensor(np.asarray(sample["box_labels"])[keep], dtype=torch.int64),
            "global": torch.as_tensor(sample["global"]),
            "local": torch.as_tensor(sample["local"]),
            "local_mask": torch.as_tensor(sample["local_mask"]),
            "to_view": torch.from_numpy(matrix @ to_image),
            "source_size": tuple(sample.get("source_size", image.shape)),
            "id": sample["id"],
            "group": sample["group"],
            "source": sample["source"],
        }


class ViewDataset(torch.utils.data.Dataset):
    """``dataset`` (a dataset or its tensor cache) passed through ``views``; items also carry their ``index``."""

    def __init__(self, dataset, views: MultiResolutionViews) -> None:
        self.dataset, self.views = dataset, views

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.views(self.dataset[index])
        item["index"] = index
        return item


class AugmentedCopies(torch.utils.data.Dataset):
    """``copies`` fixed augmented views of every image of ``dataset``: item ``j`` is image ``j % len(dataset)``
    through ``views`` with a generator seeded by ``(seed, j)``, so the same item is the same view every time it is
    read, in any process or worker. A teacher cached on these items (its targets looked up by the item's ``index``)
    therefore saw exactly the view the student is trained on: consistent distillation on augmented views without
    running the teacher every step (Beyer et al., "Knowledge distillation: a good teacher is patient and
    consistent", CVPR 2022). Items carry ``index`` (the item) and ``film`` (the image's index in ``dataset``).

    The view sizes do not change the draws (the random transform is drawn on the base view), so views made with
    only the teacher's size and views made with the teacher's and the student's sizes agree on the shared size.
    """

    def __init__(self, dataset, views: MultiResolutionViews, copies: int, seed: int = 0) -> None:
        if copies < 1:
            raise ValueError(f"copies must be at least 1, got {copies}")
        if views.augment is None:
            raise ValueError("AugmentedCopies needs augmenting views (views.augment is None)")
        self.dataset, self.views, self.copies, self.seed = dataset, views, copies, seed

    def __len__(self) -> int:
        return len(self.dataset) * self.copies

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} augmented copies")
        film = index % len(self.dataset)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        item = self.views(self.dataset[film], generator)
        item["index"], item["film"] = index, film
        return item


def collate_views(batch: list[dict]) -> dict:
    """DataLoader ``collate_fn`` for :class:`MultiResolutionViews` outputs.

    Views and targets are stacked (``views[size]`` is ``(B, 1, size, size)``); boxes, which vary in number, stay
    lists of ``(M_i, 4)`` tensors; string fields become lists.
    """
    sizes = batch[0]["views"].keys()
    return {
        "views": {size: torch.stack([item["views"][size] for item in batch]) for size in sizes},
        "boxes": {size: [item["boxes"][size] for item in batch] for size in sizes},
        "box_labels": [item["box_labels"] for item in batch],
        "global": torch.stack([item["global"] for item in batch]),
        "local": torch.stack([item["local"] for item in batch]),
        "local_mask": torch.stack([item["local_mask"] for item in batch]),
        "to_view": torch.stack([item["to_view"] for item in batch]),
        "source_size": [item["source_size"] for item in batch],
        "id": [item["id"] for item in batch],
        "group": [item["group"] for item in batch],
        "source": [item["source"] for item in batch],
        **({"index": torch.tensor([item["index"] for item in batch])} if "index" in batch[0] else {}),
    }
