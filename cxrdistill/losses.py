"""Losses as plain functions on tensors.

* :func:`task_loss`: the multi-task objective of MLCAK (Akhter et al., ISBI 2024): cross-entropy on the one-of-K
  global class (MCCT) plus binary cross-entropy on the multi-label local findings (MLCT), the latter only where the
  label is known (``local_mask``).
* :func:`logit_mse`: MLCAK's logit matching, ``MSE(student logits, teacher logits)``.
* :func:`attention_mse`: MLCAK's multilevel attention knowledge: the MSE between head-averaged attention maps at
  several (student layer, teacher layer) pairs. When the two token grids differ, each map's class-token row (where
  the class token looks) is resampled to the teacher's grid by area averaging before comparing, because full
  ``N x N`` maps of different ``N`` have no one-to-one correspondence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def task_loss(
    global_logits: torch.Tensor,
    local_logits: torch.Tensor,
    global_targets: torch.Tensor,
    local_targets: torch.Tensor,
    local_mask: torch.Tensor,
    local_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy on the global class + masked BCE on the local findings.

    Args:
        global_logits: ``(B, K)``; global_targets: ``(B, K)`` one-hot (or soft) targets.
        local_logits, local_targets, local_mask: ``(B, L)``; the mask is 1 where a local label is known.
        local_weight: weight of the local term.

    Returns:
        ``(loss, {"global_ce": ..., "local_bce": ...})``.
    """
    global_ce = F.cross_entropy(global_logits, global_targets)
    known = local_mask.sum()
    if local_logits.shape[1] and known > 0:
        per_label = F.binary_cross_entropy_with_logits(local_logits, local_targets, reduction="none")
        local_bce = (per_label * local_mask).sum() / known
    else:
        local_bce = global_logits.new_zeros(())
    return global_ce + local_weight * local_bce, {"global_ce": global_ce, "local_bce": local_bce}


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """MSE between ``(B, K)`` logits (MLCAK's alpha / beta terms); the teacher side carries no gradient."""
    return F.mse_loss(student_logits, teacher_logits.detach())


def head_average(attention: torch.Tensor) -> torch.Tensor:
    """``(B, heads, N, N)`` -> ``(B, N, N)``: MLCAK compares attention averaged over heads."""
    return attention.mean(dim=1)


def class_token_map(attention: torch.Tensor, prefix_tokens: int = 1) -> torch.Tensor:
    """Where the class token looks: ``(B, N, N)`` head-averaged attention -> ``(B, 1, grid, grid)``."""
    row = attention[:, 0, prefix_tokens:]  # (B, grid**2)
    grid = math.isqrt(row.shape[-1])
    if grid * grid != row.shape[-1]:
        raise ValueError(f"{row.shape[-1]} patch tokens do not form a square grid")
    return row.reshape(-1, 1, grid, grid)


def attention_mse(
    student_attentions: Sequence[torch.Tensor],
    teacher_attentions: Sequence[torch.Tensor],
    layer_pairs: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """Mean over ``layer_pairs`` of the MSE between head-averaged attention maps (MLCAK's gamma term).

    Args:
        student_attentions, teacher_attentions: per-layer ``(B, heads, N, N)`` probabilities; the teacher's may be
            head-averaged already (``(B, N, N)``, as the teacher-output cache stores them).
        layer_pairs: ``(student layer, teacher layer)`` indices (negative indices count from the end).

    Same grid: the full ``N x N`` maps are compared. Different grids: the class-token rows, resampled by area
    averaging to the teacher's grid (multiplied by the patch-count ratio so both sum to the same mass).
    """
    if not layer_pairs:
        raise ValueError("attention_mse needs at least one (student layer, teacher layer) pair")
    losses = []
    for student_layer, teacher_layer in layer_pairs:
        student = head_average(student_attentions[student_layer])
        teacher = teacher_attentions[teacher_layer]
        teacher = (head_average(teacher) if teacher.ndim == 4 else teacher).detach()
        if student.shape == teacher.shape:
            losses.append(F.mse_loss(student, teacher))
            continue
        student_map, teacher_map = class_token_map(student), class_token_map(teacher)
        resampled = F.interpolate(student_map, size=teacher_map.shape[-2:], mode="area")
        resampled = resampled * (student_map.shape[-1] ** 2 / teacher_map.shape[-1] ** 2)
        losses.append(F.mse_loss(resampled, teacher_map))
    return torch.stack(losses).mean()
