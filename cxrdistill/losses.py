"""Losses as plain functions on tensors.

* :func:`task_loss`: the multi-task objective of MLCAK (Akhter et al., ISBI 2024): cross-entropy on the one-of-K
  global class (MCCT) plus binary cross-entropy on the multi-label local findings (MLCT), the latter only where the
  label is known (``local_mask``).
* :func:`logit_mse`: MLCAK's logit matching, ``MSE(student logits, teacher logits)``.
* :func:`soft_target_kd`: Hinton et al.'s temperature-softened targets ("Distilling the Knowledge in a Neural
  Network", 2015), softmax / KL for a one-of-K head and per-label sigmoid / BCE for a multi-label head.
* :func:`cam_alignment`: the CAM term of weakly supervised TB localisation by distillation (Shawkat et al., arXiv
  2512.11057): the student's class activation map should look where the teacher's does. Both maps are min-max
  normalised per image and the student's is resampled (bilinearly) to the teacher's grid before the MSE.
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
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy on the global class + masked BCE on the local findings.

    Args:
        global_logits: ``(B, K)``; global_targets: ``(B, K)`` one-hot (or soft) targets; a row of NaN is an
            unlabelled film (a transfer film that only distillation learns from): it adds nothing to the
            cross-entropy, which is the mean over the labelled films.
        local_logits, local_targets, local_mask: ``(B, L)``; the mask is 1 where a local label is known.
        local_weight: weight of the local term.
        class_weights: ``(K,)`` weights of the global classes in the cross-entropy, or ``None``.

    Returns:
        ``(loss, {"global_ce": ..., "local_bce": ...})``.
    """
    labelled = ~torch.isnan(global_targets).any(dim=1)
    if labelled.any():
        global_ce = F.cross_entropy(global_logits[labelled], global_targets[labelled], weight=class_weights)
    else:  # a batch of transfer films only: no label to learn from, and still a graph to step through
        global_ce = global_logits.sum() * 0.0
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


def soft_target_kd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0, multi_label: bool = False
) -> torch.Tensor:
    """Knowledge distillation on temperature-softened targets, scaled by ``T**2`` (Hinton et al., 2015).

    One-of-K heads use ``KL(softmax(t / T) || softmax(s / T))``; multi-label heads use the binary cross-entropy of
    ``sigmoid(s / T)`` against ``sigmoid(t / T)`` for each label (a softmax across independent findings would make
    them compete).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    teacher_logits = teacher_logits.detach()
    if multi_label:
        targets = torch.sigmoid(teacher_logits / temperature)
        loss = F.binary_cross_entropy_with_logits(student_logits / temperature, targets)
        # subtract the teacher's own entropy so a perfect match scores zero
        loss = loss - F.binary_cross_entropy_with_logits(teacher_logits / temperature, targets)
    else:
        loss = F.kl_div(
            F.log_softmax(student_logits / temperature, dim=-1),
            F.log_softmax(teacher_logits / temperature, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
    return loss * temperature**2


def min_max_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map of ``(B, ...)`` scaled to ``[0, 1]`` over its own values (a flat map becomes zeros)."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-6)).view_as(maps)


def cam_alignment(student_cam: torch.Tensor, teacher_cam: torch.Tensor) -> torch.Tensor:
    """MSE between min-max normalised ``(B, h, w)`` CAMs, the student's resampled to the teacher's grid."""
    teacher = min_max_normalise(teacher_cam.detach())
    student = student_cam
    if student.shape[-2:] != teacher.shape[-2:]:
        student = F.interpolate(student[:, None], size=teacher.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return F.mse_loss(min_max_normalise(student), teacher)


def box_cell_targets(boxes: Sequence[torch.Tensor], grid: tuple[int, int], view_size: int) -> torch.Tensor:
    """``(B, h, w)`` 0/1: the cells of an ``h x w`` map over a ``view_size`` view whose centre lies in one of the
    film's xyxy ``boxes`` (view pixels)."""
    height, width = grid
    step_y, step_x = view_size / height, view_size / width
    centres_y = (torch.arange(height, dtype=torch.float32) + 0.5) * step_y  # (h,)
    centres_x = (torch.arange(width, dtype=torch.float32) + 0.5) * step_x  # (w,)
    targets = torch.zeros(len(boxes), height, width)
    for i, film_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in film_boxes.reshape(-1, 4).tolist():
            inside_y = (centres_y >= y0) & (centres_y < y1)
            inside_x = (centres_x >= x0) & (centres_x < x1)
            targets[i] = torch.maximum(targets[i], (inside_y[:, None] & inside_x[None, :]).float())
    return targets


def positive_log_odds(maps: torch.Tensor, positive: int) -> torch.Tensor:
    """``(B, h, w)``: each cell's log-odds of class ``positive`` from class maps ``(B, K, h, w)``: its map minus the
    log-sum-exp of the others' (for two classes, the difference of the two maps)."""
    others = [k for k in range(maps.shape[1]) if k != positive]
    return maps[:, positive] - torch.logsumexp(maps[:, others], dim=1)


def box_heatmap_loss(
    log_odds: torch.Tensor,
    boxes: Sequence[torch.Tensor],
    positive: torch.Tensor,
    negative: torch.Tensor,
    view_size: int,
) -> torch.Tensor:
    """The box-supervised reference's map loss: binary cross-entropy between each cell's log-odds of the positive
    class ``(B, h, w)`` and whether the cell lies in a radiologist's box: every cell of a ``negative`` film is a
    negative; a ``positive`` film without boxes (type unknown) adds nothing. This uses box labels: a model trained
    with it is box-supervised, an upper bound for the weakly supervised maps, not one of them.
    """
    targets = box_cell_targets(boxes, tuple(log_odds.shape[-2:]), view_size).to(log_odds.device)
    has_boxes = torch.tensor([len(b) > 0 for b in boxes], device=log_odds.device)
    used = (positive.bool() & has_boxes) | negative.bool()  # (B,)
    if not used.any():
        return log_odds.sum() * 0.0
    return F.binary_cross_entropy_with_logits(log_odds[used], targets[used])


def box_dice_loss(
    log_odds: torch.Tensor, boxes: Sequence[torch.Tensor], positive: torch.Tensor, view_size: int
) -> torch.Tensor:
    """A soft Dice loss (Milletari et al. 2016) between each cell's probability of the positive class (the sigmoid of
    ``log_odds`` ``(B, h, w)``) and the cells inside a radiologist's box, over the ``positive`` films with boxes: one
    minus twice the overlap over the sum of the two masses, per film, averaged. Per-cell cross-entropy
    (:func:`box_heatmap_loss`) scores every cell apart, so a small lesion is a few positives among ~200 negatives;
    Dice scores the overlap of the whole map with the boxes, which is what mask IoU measures. Films without boxes add
    nothing (a normal film's map is kept low by the cross-entropy). Box-supervised, like :func:`box_heatmap_loss`."""
    targets = box_cell_targets(boxes, tuple(log_odds.shape[-2:]), view_size).to(log_odds.device)
    used = positive.bool() & (targets.flatten(1).sum(dim=1) > 0)  # (B,)
    if not used.any():
        return log_odds.sum() * 0.0
    probability, target = torch.sigmoid(log_odds[used]).flatten(1), targets[used].flatten(1)
    overlap = (probability * target).sum(dim=1)
    return (1.0 - (2.0 * overlap + 1.0) / (probability.sum(dim=1) + target.sum(dim=1) + 1.0)).mean()
