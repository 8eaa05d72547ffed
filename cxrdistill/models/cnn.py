"""CNN teacher and student for weakly supervised TB localisation (Shawkat et al., arXiv 2512.11057).

A timm ResNet body, then global average pooling and linear heads, so the class activation map of a label is
exactly its head's weights applied to the last feature map (Zhou et al., CVPR 2016): ``CAM_k = sum_c w_kc F_c``.
The paper uses ResNet50 for both; the CPU defaults are ResNet18, and for low-resolution inputs a ``"lowres"``
stem (a 3x3 stride-1 convolution, no max-pool) keeps a 4 x 4 map at 28 px instead of the 1 x 1 an ImageNet stem
leaves, so a CAM still has somewhere to point.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import nn

from cxrdistill.models.base import (
    HUB_CLASS_METADATA,
    HUB_TAGS,
    CXRModel,
    ModelConfig,
    ModelOutput,
    linear_head,
    preset_name,
)

STEMS = ("imagenet", "lowres")


@dataclass
class CNNConfig(ModelConfig):
    """A timm ResNet with global-average-pool + linear global and local heads.

    Attributes:
        timm_name: a timm ResNet, e.g. ``"resnet18"`` or ``"resnet50"`` (the paper's).
        stem: ``"imagenet"`` (7x7 stride-2 convolution + max-pool, 32x reduction) or ``"lowres"`` (3x3 stride 1,
            no max-pool, 8x reduction) for inputs of 28 to 112 px; a deep stem (``resnet10t``) keeps its three
            convolutions and loses the first one's stride.
        drop_rate: dropout on the pooled features.
    """

    timm_name: str = "resnet18"
    stem: str = "imagenet"
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if not self.timm_name.startswith(("resnet", "resnext", "seresnet", "wide_resnet")):
            raise ValueError(f"timm_name must be a timm ResNet family model, got {self.timm_name!r}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")

    @property
    def reduction(self) -> int:
        """Input pixels per feature-map cell along a side."""
        return 32 if self.stem == "imagenet" else 8


@dataclass
class CNNTeacherConfig(CNNConfig):
    """ResNet18 at 224 px by default (``timm_name="resnet50"`` for the paper's teacher)."""

    model_type: str = "cxrdistill-cnn-teacher"


@dataclass
class CNNStudentConfig(CNNConfig):
    """ResNet18 with the low-resolution stem at 28 px by default."""

    model_type: str = "cxrdistill-cnn-student"
    image_size: int = 28
    stem: str = "lowres"


class _CNNClassifier(nn.Module, CXRModel):
    """Shared body of CNNTeacher and CNNStudent."""

    config_class = CNNConfig
    explains_with = "cam"
    card_citation = (
        "Shawkat, Hasan, Hasan. *Weakly Supervised Tuberculosis Localization in Chest X-rays through Knowledge "
        "Distillation.* arXiv:2512.11057."
    )

    def forward_for_maps(self, images: torch.Tensor) -> ModelOutput:
        return self(images, return_features=True)

    def explanation_maps(self, output: ModelOutput, layer: int = -1) -> dict[str, torch.Tensor]:
        """The exact class activation map of the positive class (``layer`` does not apply: one feature map)."""
        cam = self.class_activation_maps(output.features, "global")[:, self.positive_index]
        return {f"CAM ({self.positive_label})": cam}

    def grad_cam_layer(self):
        return self.backbone.layer4[-1], None

    def architecture_summary(self) -> str:
        c = self.config
        return (
            f"{preset_name(c)}timm `{c.timm_name}`, `{c.stem}` stem ({c.reduction}x reduction); global average "
            "pooling and linear global and local heads (exact class activation maps)"
        )

    def __init__(self, config: CNNConfig | None = None, pretrained: bool = False) -> None:
        super().__init__()
        c = self.config = self.resolve_config(config)
        self.backbone = timm.create_model(
            c.timm_name, pretrained=pretrained, num_classes=0, global_pool="", in_chans=c.in_chans
        )
        if c.stem == "lowres":
            self._make_lowres_stem(c.in_chans)
        width = self.backbone.num_features
        self.dropout = nn.Dropout(c.drop_rate)
        self.global_head = linear_head(width, len(c.global_labels))
        self.local_head = linear_head(width, len(c.local_labels))

    def _make_lowres_stem(self, in_chans: int) -> None:
        """Stride 1 in the stem and no max-pool: an 8x instead of a 32x reduction.

        A plain ResNet's 7x7 stride-2 convolution becomes a 3x3 stride-1 one; a deep stem (``resnet10t``,
        ``resnet26d``: three 3x3 convolutions, the first with stride 2) keeps its layers and loses only that stride.
        """
        conv1 = self.backbone.conv1
        if isinstance(conv1, nn.Conv2d):
            self.backbone.conv1 = nn.Conv2d(
                in_chans, conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False
            )
        else:
            first = next((m for m in conv1.modules() if isinstance(m, nn.Conv2d)), None)
            if first is None:
                raise ValueError(f"{self.config.timm_name}: no convolution in the stem to make low-resolution")
            first.stride = (1, 1)
        self.backbone.maxpool = nn.Identity()

    def forward(
        self, images: torch.Tensor, return_attention: bool = False, return_features: bool = False
    ) -> ModelOutput:
        """Classify ``images`` ``(B, in_chans, H, W)`` in ``[0, 1]`` (trained at ``config.image_size``).

        Args:
            return_attention: not available (a CNN has no attention); raises ``ValueError``.
            return_features: also return the last feature map ``(B, C, H / reduction, W / reduction)``.
        """
        if return_attention:
            raise ValueError(f"{type(self).__name__} has no attention maps; use return_features for CAMs")
        features = self.backbone.forward_features(self.normalise(images))  # (B, C, h, w)
        pooled = self.dropout(features.mean(dim=(2, 3)))
        return ModelOutput(
            self.global_head(pooled), self.local_head(pooled), None, features if return_features else None
        )

    def class_activation_maps(self, features: torch.Tensor, head: str = "global") -> torch.Tensor:
        """Exact CAMs ``(B, labels, h, w)`` of ``head`` (``"global"`` or ``"local"``) from ``features``.

        Averaging a CAM over its cells gives that label's logit, bias included.
        """
        layer = {"global": self.global_head, "local": self.local_head}[head]
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"the {head} head has no labels, so it has no class activation maps")
        return torch.einsum("kc,bchw->bkhw", layer.weight, features) + layer.bias[None, :, None, None]


class CNNTeacher(
    _CNNClassifier,
    tags=[*HUB_TAGS, "resnet", "teacher", "class-activation-maps"],
    **HUB_CLASS_METADATA,
):
    """CNN teacher for TB classification and CAM localisation (ResNet18 at 224 px by default)."""

    config_class = CNNTeacherConfig
    card_summary = (
        "CNN **teacher** for tuberculosis classification whose class activation maps localise TB without box "
        "labels (Shawkat et al., arXiv 2512.11057)."
    )


class CNNStudent(
    _CNNClassifier,
    tags=[*HUB_TAGS, "resnet", "student", "low-resolution", "class-activation-maps"],
    **HUB_CLASS_METADATA,
):
    """Low-resolution CNN student (ResNet18, low-res stem, 28 px by default)."""

    config_class = CNNStudentConfig
    card_summary = (
        "Low-resolution CNN **student** for tuberculosis classification and weakly supervised localisation, "
        "distilled from a CNN teacher (Shawkat et al., arXiv 2512.11057)."
    )
