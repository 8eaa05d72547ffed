"""A small lung segmentation model: where the lungs are on a chest X-ray.

A U-Net (Ronneberger et al., MICCAI 2015) from ``segmentation_models_pytorch`` (a well-kept library of segmentation
architectures over timm encoders; writing our own U-Net would only repeat it), with a MobileNetV3-Small encoder so
that it runs in a few tens of milliseconds on a CPU beside the classifiers. Trained on the shared data's lung
outlines (``train/train_lungs.py``), it keeps TB heatmaps and boxes inside the lungs, draws the lung outline in the
app, and tells a visitor when an upload shows no lungs.
"""

from __future__ import annotations

from dataclasses import dataclass

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from cxrdistill.models.base import HUB_CLASS_METADATA, HUB_TAGS, CXRModel, ModelConfig, preset_name


@dataclass
class LungSegmenterConfig(ModelConfig):
    """A U-Net whose one output channel is the lung probability of each pixel.

    Attributes:
        encoder: the ``segmentation_models_pytorch`` encoder (``tu-`` + a timm name: a timm backbone).
        decoder_channels: widths of the decoder's stages, one per encoder stage.
        mask_threshold: probability above which a pixel is lung.
    """

    model_type: str = "cxrdistill-lung-unet"
    image_size: int = 256
    global_labels: tuple[str, ...] = ("background", "lung")
    local_labels: tuple[str, ...] = ()
    encoder: str = "tu-mobilenetv3_small_100"
    decoder_channels: tuple[int, ...] = (64, 32, 16, 16, 8)
    mask_threshold: float = 0.5

    def __post_init__(self) -> None:
        self.decoder_channels = tuple(int(c) for c in self.decoder_channels)  # JSON gives a list
        super().__post_init__()
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 for the U-Net, got {self.image_size}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")


class LungSegmenter(
    nn.Module,
    CXRModel,
    tags=[*HUB_TAGS, "image-segmentation", "lung-segmentation", "u-net"],
    **{**HUB_CLASS_METADATA, "pipeline_tag": "image-segmentation"},
):
    """Lung segmentation U-Net; ``forward`` returns ``(B, 1, S, S)`` logits, :meth:`lung_probability` the
    probabilities."""

    config_class = LungSegmenterConfig
    card_summary = (
        "A small **lung segmentation** U-Net for chest X-rays. cxrdistill uses it to keep TB heatmaps and boxes "
        "inside the lungs, to draw the lung outline in its demo and to notice uploads that show no lungs."
    )
    card_citation = (
        "Ronneberger, O., Fischer, P., Brox, T. *U-Net: Convolutional Networks for Biomedical Image Segmentation.* "
        "MICCAI 2015. Lung outlines: Jaeger et al., QIMS 2014 (Shenzhen), via TBX11K (Liu et al., CVPR 2020)."
    )

    def __init__(self, config: LungSegmenterConfig | None = None, pretrained: bool = False) -> None:
        super().__init__()
        c = self.config = self.resolve_config(config)
        if pretrained:
            raise ValueError("LungSegmenter has no pretrained weights to start from; train it (train/train_lungs.py)")
        self.unet = smp.Unet(
            encoder_name=c.encoder,
            encoder_weights=None,
            in_channels=c.in_chans,
            classes=1,
            encoder_depth=len(c.decoder_channels),
            decoder_channels=c.decoder_channels,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` lung logits of ``images`` ``(B, 1, S, S)`` in ``[0, 1]`` (``S = config.image_size``)."""
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(f"LungSegmenter takes {size} x {size} images, got {tuple(images.shape[-2:])}")
        return self.unet(self.normalise(images))

    @torch.no_grad()
    def lung_probability(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, S, S)`` probability that each pixel is lung, over ``images`` ``(B, 1, H, W)`` in ``[0, 1]`` of any
        square size: the one way every caller (evaluation, distillation, the app) makes the lung model's input,
        area-averaged down to its ``S x S`` input (as films are reduced in training) or bilinear up to it."""
        return self(self.model_view(images))[:, 0].sigmoid()

    def model_view(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` ``(B, 1, H, W)`` resized to the model's input: area-averaged when larger, bilinear when
        smaller, clamped to ``[0, 1]``."""
        size = self.config.image_size
        if tuple(images.shape[-2:]) == (size, size):
            return images
        if images.shape[-1] > size:
            return F.interpolate(images, size=(size, size), mode="area").clamp(0, 1)
        return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)

    def architecture_summary(self) -> str:
        c = self.config
        return (
            f"{preset_name(c)}segmentation_models_pytorch U-Net, encoder `{c.encoder}`, decoder widths "
            f"{list(c.decoder_channels)}; one output channel (lung), mask at probability {c.mask_threshold:g}"
        )

    def outputs_summary(self) -> str:
        return "\n".join(
            [
                "| output | meaning |",
                "|---|---|",
                f"| `(B, 1, S, S)` logits | lung probability of each pixel after a sigmoid; lung where it is above "
                f"{self.config.mask_threshold:g} |",
            ]
        )

    def usage_example(self) -> str:
        size = self.config.image_size
        return "\n".join(
            [
                "from cxrdistill.models import LungSegmenter",
                "from cxrdistill.io import load_xray",
                "from cxrdistill.data import model_input",
                "",
                'model = LungSegmenter.from_pretrained("REPO_ID_OR_FOLDER")',
                f'image = model_input(load_xray("chest.png").pixels, {size})  # letterboxed to {size} px',
                "lungs = model.lung_probability(image)[0] > model.config.mask_threshold  # (H, W) bool",
            ]
        )
