"""MLCAK distillation: a student plus a frozen teacher, returning a loss and its named terms.

MLCAK (Akhter et al., "Low-Resolution Chest X-ray Classification via Knowledge Distillation and Multi-task
Learning", ISBI 2024): the student's loss is its task loss plus

    alpha * MSE(local logits) + beta * MSE(global logits) + gamma * mean over layer pairs of MSE(attention maps),

with attention averaged over heads and compared at several matched layers ("multilevel"). The teacher is kept in
eval mode and run without gradients, even when ``.train()`` is called on the distiller (as in open_clip's
distillation task). Its outputs can instead come from a cache (:func:`cache_teacher_outputs`), computed once on
un-augmented views, because on a CPU the teacher is the expensive half.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cxrdistill.losses import attention_mse, head_average, logit_mse, task_loss


@dataclass(frozen=True)
class MLCAKWeights:
    """Weights of the distillation terms (alpha: local logits, beta: global logits, gamma: attention)."""

    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 100.0  # attention probabilities are ~1/N: their MSE is tiny, so it needs a large weight

    def __post_init__(self) -> None:
        if min(self.alpha, self.beta, self.gamma) < 0:
            raise ValueError(f"distillation weights must be >= 0, got {self}")


def ablation_weights(name: str, weights: MLCAKWeights) -> MLCAKWeights:
    """The weights of an ablation: ``none`` (student alone), ``logits``, ``attention`` or ``all`` (MLCAK)."""
    choices = {
        "none": MLCAKWeights(0.0, 0.0, 0.0),
        "logits": MLCAKWeights(weights.alpha, weights.beta, 0.0),
        "attention": MLCAKWeights(0.0, 0.0, weights.gamma),
        "all": weights,
    }
    if name not in choices:
        raise ValueError(f"unknown ablation {name!r}; choose from {sorted(choices)}")
    return choices[name]


def default_layer_pairs(student_depth: int, teacher_depth: int, levels: int = 3) -> list[tuple[int, int]]:
    """``levels`` evenly spaced (student layer, teacher layer) pairs, ending with both last layers.

    With 6 student and 12 teacher layers and 3 levels: ``[(1, 3), (3, 7), (5, 11)]``.
    """
    levels = max(1, min(levels, student_depth, teacher_depth))
    return [
        ((level + 1) * student_depth // levels - 1, (level + 1) * teacher_depth // levels - 1)
        for level in range(levels)
    ]


@dataclass
class TeacherTargets:
    """What the student learns from: teacher logits and head-averaged attention maps of the paired layers.

    Attributes:
        global_logits: ``(B, K)``; local_logits: ``(B, L)``.
        attentions: ``{teacher layer: (B, N, N)}`` head-averaged attention, only the layers that are paired.
    """

    global_logits: torch.Tensor
    local_logits: torch.Tensor
    attentions: dict[int, torch.Tensor]


class MLCAKDistiller(nn.Module):
    """Student + frozen teacher; ``forward`` returns ``(loss, {term name: value})``.

    Args:
        student: the model being trained (``StudentViT``).
        teacher: the frozen teacher (``TeacherViT``), or ``None`` when its outputs come from a cache or the
            ablation needs none.
        weights: distillation weights (see :func:`ablation_weights`).
        layer_pairs: ``(student layer, teacher layer)`` pairs for the attention term.
        local_weight: weight of the local-findings BCE inside the task loss.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        weights: MLCAKWeights,
        layer_pairs: Sequence[tuple[int, int]],
        local_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self.weights = weights
        self.layer_pairs = [tuple(pair) for pair in layer_pairs]
        self.local_weight = local_weight

    def train(self, mode: bool = True) -> MLCAKDistiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # dropout and stochastic depth stay off in the teacher
        return self

    @property
    def needs_teacher(self) -> bool:
        return self.weights.alpha > 0 or self.weights.beta > 0 or self.weights.gamma > 0

    @property
    def needs_attention(self) -> bool:
        return self.weights.gamma > 0

    @torch.no_grad()
    def teacher_targets(self, teacher_images: torch.Tensor) -> TeacherTargets:
        """Run the frozen teacher on ``(B, 1, H, W)`` images."""
        if self.teacher is None:
            raise RuntimeError("this distiller has no teacher; pass teacher_targets from a cache")
        output = self.teacher(teacher_images, return_attention=self.needs_attention)
        attentions = {}
        if self.needs_attention:
            attentions = {t: head_average(output.attentions[t]) for _, t in self.layer_pairs}
        return TeacherTargets(output.global_logits, output.local_logits, attentions)

    def forward(
        self,
        student_images: torch.Tensor,
        global_targets: torch.Tensor,
        local_targets: torch.Tensor,
        local_mask: torch.Tensor,
        teacher_images: torch.Tensor | None = None,
        teacher_targets: TeacherTargets | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        output = self.student(student_images, return_attention=self.needs_attention)
        loss, terms = task_loss(
            output.global_logits, output.local_logits, global_targets, local_targets, local_mask, self.local_weight
        )
        if not self.needs_teacher:
            return loss, terms
        if teacher_targets is None:
            if teacher_images is None:
                raise ValueError("distillation needs teacher_images or cached teacher_targets")
            teacher_targets = self.teacher_targets(teacher_images)
        w = self.weights
        if w.alpha > 0 and output.local_logits.shape[1]:
            terms["local_kd"] = logit_mse(output.local_logits, teacher_targets.local_logits)
            loss = loss + w.alpha * terms["local_kd"]
        if w.beta > 0:
            terms["global_kd"] = logit_mse(output.global_logits, teacher_targets.global_logits)
            loss = loss + w.beta * terms["global_kd"]
        if w.gamma > 0:
            teacher_maps = {t: teacher_targets.attentions[t] for _, t in self.layer_pairs}
            terms["attention_kd"] = attention_mse(output.attentions, teacher_maps, self.layer_pairs)
            loss = loss + w.gamma * terms["attention_kd"]
        return loss, terms


class TeacherOutputCache:
    """Teacher targets for every image of a dataset, looked up by dataset index.

    Attention maps are kept in float16 (head-averaged, paired layers only): 3 layers of 197 x 197 maps cost
    ~230 kB an image.
    """

    def __init__(
        self, global_logits: torch.Tensor, local_logits: torch.Tensor, attentions: dict[int, torch.Tensor]
    ) -> None:
        self.global_logits, self.local_logits, self.attentions = global_logits, local_logits, attentions

    def lookup(self, indices: torch.Tensor, device: torch.device | str = "cpu") -> TeacherTargets:
        indices = indices.cpu()
        return TeacherTargets(
            self.global_logits[indices].to(device),
            self.local_logits[indices].to(device),
            {layer: maps[indices].to(device=device, dtype=torch.float32) for layer, maps in self.attentions.items()},
        )


def cache_teacher_outputs(
    distiller: MLCAKDistiller, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], size: int
) -> TeacherOutputCache:
    """Run the teacher once over ``(indices, teacher images)`` batches covering a dataset of ``size`` images."""
    global_logits = local_logits = None
    attentions: dict[int, torch.Tensor] = {}
    for indices, images in batches:
        targets = distiller.teacher_targets(images)
        if global_logits is None:
            global_logits = torch.zeros(size, targets.global_logits.shape[1])
            local_logits = torch.zeros(size, targets.local_logits.shape[1])
            attentions = {
                layer: torch.zeros(size, *maps.shape[1:], dtype=torch.float16)
                for layer, maps in targets.attentions.items()
            }
        global_logits[indices] = targets.global_logits.float().cpu()
        local_logits[indices] = targets.local_logits.float().cpu()
        for layer, maps in targets.attentions.items():
            attentions[layer][indices] = maps.cpu().to(torch.float16)
    if global_logits is None:
        raise ValueError("no batches to cache")
    return TeacherOutputCache(global_logits, local_logits, attentions)
