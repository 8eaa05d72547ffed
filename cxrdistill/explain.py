"""Heatmaps that explain a prediction, and boxes drawn from them.

* ViT attention: the class token's attention over the patches at one layer (averaged over heads), and attention
  rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020) through all layers.
* CNN class activation maps (Zhou et al., CVPR 2016): exact for a global-average-pool + linear head, see
  ``CNNTeacher.class_activation_maps``; chosen per label, never by argmax.
* :func:`grad_cam_maps`: the Grad-CAM family (Selvaraju et al., ICCV 2017, and its variants) from the ``grad-cam``
  library for any backbone, ViTs included, for an explicitly named label (the library's argmax default is never
  used: it is wrong for multi-label X-rays). Optional: ``pip install 'cxrdistill[gradcam]'``.
* :func:`to_source_frame` maps a heatmap from the model's view back onto the original image, and
  :func:`heatmap_to_boxes` thresholds it relative to its maximum and boxes its connected components.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from cxrdistill.data.transforms import warp
from cxrdistill.losses import min_max_normalise


def cls_attention_map(attentions: Sequence[torch.Tensor], layer: int = -1, prefix_tokens: int = 1) -> torch.Tensor:
    """``(B, grid, grid)``: where the class token looks at ``layer``, averaged over heads (rows sum to 1)."""
    attention = attentions[layer].mean(dim=1)  # (B, N, N)
    row = attention[:, 0, prefix_tokens:]
    grid = int(np.sqrt(row.shape[-1]))
    return row.reshape(-1, grid, grid)


def attention_rollout(
    attentions: Sequence[torch.Tensor], prefix_tokens: int = 1, residual: float = 0.5
) -> torch.Tensor:
    """``(B, grid, grid)`` attention rollout: the product over layers of ``residual * I + (1 - residual) * A``
    (head-averaged, rows renormalised), read from the class token's row."""
    result = None
    for attention in attentions:
        mixed = attention.mean(dim=1)
        eye = torch.eye(mixed.shape[-1], dtype=mixed.dtype, device=mixed.device)
        mixed = residual * eye + (1 - residual) * mixed
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed if result is None else mixed @ result
    row = result[:, 0, prefix_tokens:]
    grid = int(np.sqrt(row.shape[-1]))
    return row.reshape(-1, grid, grid)


GRAD_CAM_METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
}


class _HeadLogits(torch.nn.Module):
    """``images -> logits`` of one head, the calling convention the grad-cam library expects."""

    def __init__(self, model: torch.nn.Module, head: str) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(images), f"{self.head}_logits")


def grad_cam_maps(
    model: torch.nn.Module,
    images: torch.Tensor,
    label: str,
    head: str = "global",
    method: str = "gradcam",
    target_layer: torch.nn.Module | None = None,
    reshape=None,
) -> np.ndarray:
    """``(B, H, W)`` maps in ``[0, 1]``, at the input's size, of where ``label`` (one of ``head``'s labels) comes from.

    Args:
        model: a cxrdistill model (CNN or ViT); its gradients are used, so call outside ``torch.inference_mode``.
        images: ``(B, 1, H, W)`` in ``[0, 1]``.
        method: a key of :data:`GRAD_CAM_METHODS`.
        target_layer: the layer whose activations are weighted (default: the model's ``grad_cam_layer()``: a
            CNN's last stage, or a ViT's last block's first norm, whose tokens are reshaped back to the patch grid).
        reshape: the reshape transform of ``target_layer`` (default: the model's for its default layer).
    """
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as error:
        raise ImportError("Grad-CAM needs the grad-cam library: pip install 'cxrdistill[gradcam]'") from error
    if method not in GRAD_CAM_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(GRAD_CAM_METHODS)}")
    labels = list(getattr(model.config, f"{head}_labels"))
    if label not in labels:
        raise ValueError(f"{label!r} is not a {head} label of this model; its {head} labels are {labels}")
    default_layer, default_reshape = model.grad_cam_layer()  # each model family names its layer (and token reshape)
    if target_layer is None:
        target_layer, reshape = default_layer, default_reshape
    cam_class = getattr(pytorch_grad_cam, GRAD_CAM_METHODS[method])
    was_training = model.training
    with cam_class(
        model=_HeadLogits(model.eval(), head), target_layers=[target_layer], reshape_transform=reshape
    ) as cam:
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(labels.index(label))] * len(images))
    model.train(was_training)
    return maps


# Map methods beyond a model's own maps, for evaluation: name -> (grad-cam method, the model's stages it weighs).
# Several stages are fused as the LayerCAM paper fuses its layers: the mean of the min-max scaled maps.
GRADIENT_MAP_METHODS = {
    "gradcam": ("gradcam", ("last",)),
    "hirescam": ("hirescam", ("last",)),
    "layercam": ("layercam", ("last",)),
    "hirescam-finer": ("hirescam", ("finer",)),
    "layercam-finer": ("layercam", ("finer",)),
    "layercam-multiscale": ("layercam", ("finer", "last")),
}


def gradient_maps(model: torch.nn.Module, images: torch.Tensor, methods) -> dict[str, torch.Tensor]:
    """``{method: (B, H, W) map in [0, 1]}`` of the model's positive class for each name in ``methods`` (keys of
    :data:`GRADIENT_MAP_METHODS`), at the input's size; call outside ``torch.inference_mode``.

    ``"finer"`` stages (one reduction before the last feature map: 14 x 14 instead of 7 x 7 at 224 px) trade the
    last stage's class specificity for resolution; ``layercam-multiscale`` fuses both.
    """
    unknown = sorted(set(methods) - set(GRADIENT_MAP_METHODS))
    if unknown:
        raise ValueError(f"unknown map methods {unknown}; choose from {sorted(GRADIENT_MAP_METHODS)}")
    stages = model.grad_cam_stages()
    maps = {}
    for name in methods:
        method, wanted = GRADIENT_MAP_METHODS[name]
        missing = [stage for stage in wanted if stage not in stages]
        if missing:
            raise ValueError(f"{type(model).__name__} has no {missing} stage for {name!r}; it has {sorted(stages)}")
        fused = []
        for stage in wanted:
            layer, reshape = stages[stage]
            with torch.enable_grad():
                result = grad_cam_maps(
                    model, images, model.positive_label, method=method, target_layer=layer, reshape=reshape
                )
            fused.append(min_max_normalise(torch.from_numpy(np.asarray(result, dtype=np.float32))))
        maps[name] = torch.stack(fused).mean(dim=0)
    return maps


def to_source_frame(
    heatmap: torch.Tensor, to_view: np.ndarray, view_size: int, source_size: tuple[int, int]
) -> torch.Tensor:
    """Map a ``(h, w)`` heatmap over a model view back onto the source image's ``(H, W)`` pixels.

    Args:
        heatmap: a map over the ``view_size`` square (any resolution: it is stretched over the view first).
        to_view: the 3x3 source -> view matrix of that view (``MultiResolutionViews`` output ``to_view``, which
            is for the base view; pass ``view_size`` = the base size).
        source_size: ``(H, W)`` of the source image.
    """
    heatmap = heatmap.float()
    view = torch.nn.functional.interpolate(
        heatmap[None, None], size=(view_size, view_size), mode="bilinear", align_corners=False
    )[0, 0]
    return warp(view, np.linalg.inv(np.asarray(to_view, dtype=np.float64)), source_size)


@dataclass(frozen=True)
class ScoredBox:
    """A box ``(x0, y0, x1, y1)`` in source pixels and the mean heatmap value inside its component."""

    box: tuple[float, float, float, float]
    score: float


def heatmap_mask(heatmap: np.ndarray | torch.Tensor, relative_threshold: float = 0.5) -> np.ndarray:
    """Binary mask of the pixels at or above ``relative_threshold`` x the heatmap's maximum (min-max scaled)."""
    values = np.asarray(heatmap, dtype=np.float64)
    low, high = values.min(), values.max()
    if high <= low:
        return np.zeros(values.shape, dtype=bool)
    return (values - low) / (high - low) >= relative_threshold


def heatmap_to_boxes(
    heatmap: np.ndarray | torch.Tensor, relative_threshold: float = 0.5, min_area_fraction: float = 0.002
) -> list[ScoredBox]:
    """Boxes around the connected components of :func:`heatmap_mask`, largest score first.

    Components smaller than ``min_area_fraction`` of the image are dropped (noise, single hot pixels).
    """
    values = np.asarray(heatmap, dtype=np.float64)
    mask = heatmap_mask(values, relative_threshold)
    labels, _ = ndimage.label(mask)
    boxes = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        component = labels[region] == index
        if component.sum() < min_area_fraction * values.size:
            continue
        rows, columns = region
        score = float(values[region][component].mean())
        boxes.append(ScoredBox((float(columns.start), float(rows.start), float(columns.stop), float(rows.stop)), score))
    return sorted(boxes, key=lambda b: b.score, reverse=True)
