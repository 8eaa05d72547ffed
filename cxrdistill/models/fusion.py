"""Inference-only speed-ups that leave a model's outputs unchanged (to float rounding): BatchNorm folded into the
convolution before it, and channels-last memory for the convolutions.

At batch 1 on a CPU a small EfficientNet stage is bound by per-operator overhead, not arithmetic: each BatchNorm
is one more operator after every convolution. Folding them (``torch.nn.utils.fusion.fuse_conv_bn_eval``, the
arithmetic torch's own eval-mode fusion uses) removes a third of the stem's operators, and channels-last memory is
the layout oneDNN's depthwise kernels prefer. Measured on the project's CPU by ``bench/bench_mlcak.py`` (the
``prepared_*`` columns time models as :func:`prepare_for_inference` leaves them).

Only eval-mode inference may use a prepared model: the folded BatchNorms no longer update and cannot be trained.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# (convolution, BatchNorm) attribute pairs of timm's EfficientNet and ResNet modules, by class name; a Sequential's
# consecutive (Conv2d, BatchNorm2d) children (ResNet downsampling, deep stems) are folded too
_PAIRS = {
    "EfficientNet": (("conv_stem", "bn1"), ("conv_head", "bn2")),
    "EfficientNetFeatures": (("conv_stem", "bn1"),),
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    "ResNet": (("conv1", "bn1"),),
    "BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),
    "Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
}


class FoldedNorm(nn.Module):
    """What is left of a BatchNorm (+ activation) once its affine map lives in the convolution: the activation,
    never in place (Grad-CAM hooks this module's output and its gradient)."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        if isinstance(act, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish)):
            act = type(act)()  # the same activation, not in place
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm of timm EfficientNet and ResNet blocks into the convolution before it, in place; returns how
    many were folded. ``model`` must be in eval mode (the running statistics are what is folded)."""
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (it folds the running statistics)")
    folded = 0
    for module in model.modules():
        pairs = _PAIRS.get(type(module).__name__, ())
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            pairs = tuple(itertools.pairwise(names))
        for conv_name, norm_name in pairs:
            conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
            if not isinstance(conv, nn.Conv2d) or not isinstance(norm, nn.BatchNorm2d):
                continue  # already folded, or not this layout
            setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
            act = getattr(norm, "act", nn.Identity())
            drop = getattr(norm, "drop", nn.Identity())
            setattr(module, norm_name, FoldedNorm(act if isinstance(drop, nn.Identity) else nn.Sequential(drop, act)))
            folded += 1
    return folded


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with its BatchNorms folded and channels-last convolutions, in place (returned for
    chaining). Outputs match the unprepared model to float rounding."""
    fold_batchnorm(model.eval())
    return model.to(memory_format=torch.channels_last)
