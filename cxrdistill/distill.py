"""Training tasks as modules: ``forward(batch) -> (loss, {term name: value})``, the one thing a training loop calls.

Each task owns every tensor its loss needs (the model being trained, a frozen teacher, class weights as buffers),
so preparing the task with Accelerate wraps all of it: the forward pass goes through DistributedDataParallel (the
gradients are averaged across processes) and ``.to(device)`` moves the teacher and the buffers too (as lerobot's
policies return ``(loss, loss_dict)`` and open_clip's distillation task holds its frozen teacher).

* :class:`SupervisedTask`: one model, its task loss (the ViT teacher of MLCAK, the TB teacher, a student alone),
  optionally with a :class:`ConditionalSourceAdversary` that makes the source unreadable from its features.
* :class:`MLCAKDistiller`: MLCAK (Akhter et al., "Low-Resolution Chest X-ray Classification via Knowledge
  Distillation and Multi-task Learning", ISBI 2024): the student's loss is its task loss plus

      alpha * MSE(local logits) + beta * MSE(global logits) + gamma * mean over layer pairs of MSE(attention maps),

  with attention averaged over heads and compared at several matched layers ("multilevel"). The teacher's outputs
  can come from a cache (:func:`cache_teacher_outputs`), computed once on un-augmented views, because on a CPU the
  teacher is the expensive half.
* :class:`TBDistiller`: weakly supervised TB localisation by distillation (Shawkat et al., arXiv 2512.11057):
  class-weighted cross-entropy + soft-target KD + CAM alignment between a CNN student and its frozen teacher.

Frozen teachers stay in eval mode and run without gradients even when ``.train()`` is called on the task.

A batch is what :func:`cxrdistill.data.collate_views` makes: ``views`` (``{size: (B, 1, size, size)}``),
``global`` (``(B, K)`` one-hot), ``local`` and ``local_mask`` (``(B, L)``), ``index`` (``(B,)`` dataset indices).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cxrdistill.losses import (
    attention_mse,
    box_dice_loss,
    box_heatmap_loss,
    cam_alignment,
    head_average,
    logit_mse,
    min_max_normalise,
    positive_log_odds,
    soft_target_kd,
    task_loss,
)


@dataclass(frozen=True)
class MLCAKWeights:
    """Weights of the distillation terms of the MLCAK loss (Akhter et al., ISBI 2024).

    Attributes:
        alpha: weight of the local logits' MSE.
        beta: weight of the global logits' MSE.
        gamma: weight of the attention maps' MSE (attention probabilities are ~1/N, e.g. 1/197: their MSE is tiny,
            so it needs a large weight).
    """

    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 100.0

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


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``-scale`` on the way back (Ganin & Lempitsky, ICML 2015)."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(inputs: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Gradient reversal: ``inputs`` unchanged, their gradient times ``-scale``."""
    return _ReverseGradient.apply(inputs, scale)


class ConditionalSourceAdversary(nn.Module):
    """A source classifier behind gradient reversal, on the films of one class only (conditional adversarial
    training, Li et al., "Deep Domain Generalization via Conditional Invariant Adversarial Networks", ECCV 2018).

    Among the positive films (TB), it tries to tell those of ``archive_source`` (the TBX11K archive) from those of
    every other source (the extra sets' hospitals) from the model's pooled features; the reversed gradient trains
    the model to make them indistinguishable. Conditioning on the class matters: unconditionally, source and label
    are confounded (every normal film is from the extra sets) and erasing the source would erase TB too. The loss
    is the adversary's class-balanced binary cross-entropy (each source group weighs half), so it is ``log 2``
    (0.693) when the features carry no source.

    Args:
        width: the model's feature channels.
        positive: index of the global class the adversary looks at.
        weight: weight of its loss in the task's loss.
        archive_source: the source name that is one side (every other source is the other).
        scale: gradient-reversal strength.
    """

    def __init__(
        self, width: int, positive: int, weight: float = 1.0, archive_source: str = "tbx11k", scale: float = 1.0
    ) -> None:
        super().__init__()
        if weight < 0 or scale < 0:
            raise ValueError(f"the adversary's weight and scale must be >= 0, got {weight} and {scale}")
        self.positive, self.weight, self.archive_source, self.scale = positive, weight, archive_source, scale
        self.head = nn.Sequential(nn.Linear(width, 128), nn.ReLU(), nn.Linear(128, 1))

    def forward(self, features: torch.Tensor, global_targets: torch.Tensor, sources: Sequence[str]) -> torch.Tensor:
        """The adversary's loss on a batch: ``features`` ``(B, C, h, w)`` or ``(B, C)``, one-hot ``global_targets``
        ``(B, K)``, ``sources`` ``B`` names. Zero (with a graph) when the batch has no positive film."""
        pooled = features.mean(dim=(2, 3)) if features.ndim == 4 else features
        logits = self.head(reverse_gradient(pooled, self.scale)).squeeze(1)  # (B,)
        archive = torch.tensor([s == self.archive_source for s in sources], device=logits.device)
        positive = global_targets[:, self.positive] > 0.5  # only the positive films count
        in_archive, elsewhere = (positive & archive).sum(), (positive & ~archive).sum()
        # each source group weighs half, however few of its films this batch has
        weight = positive * torch.where(archive, 0.5 / in_archive.clamp_min(1), 0.5 / elsewhere.clamp_min(1))
        loss = F.binary_cross_entropy_with_logits(logits, archive.float(), reduction="none")
        # + 0 x logits: the head takes part in every step (DDP needs a gradient for each parameter)
        return (loss * weight).sum() / weight.sum().clamp_min(1e-8) + 0.0 * logits.sum()


class SupervisedTask(nn.Module):
    """One model and its task loss (:func:`cxrdistill.losses.task_loss`) on the ``view_size`` view.

    Args:
        model: the model being trained (any cxrdistill classifier).
        view_size: which of the batch's views it sees (its input size).
        local_weight: weight of the local-findings BCE.
        class_weights: ``(K,)`` weights of the global classes' cross-entropy (a buffer: it follows the device), or
            ``None`` for equal weights.
        adversary: a :class:`ConditionalSourceAdversary` on the model's features (a CNN's last feature map), or
            ``None``; its loss is added times its ``weight`` as the ``source_adversary`` term.
        box_weight: weight of :func:`cxrdistill.losses.box_heatmap_loss` on a CNN's class maps (the ``boxes`` term:
            the box-supervised reference; 0: image labels only).
        box_dice: weight of :func:`cxrdistill.losses.box_dice_loss` on the same log-odds map (the ``box_dice``
            term, added to the ``boxes`` term; needs ``box_weight > 0``; 0: none).
    """

    def __init__(
        self,
        model: nn.Module,
        view_size: int,
        local_weight: float = 1.0,
        class_weights: torch.Tensor | None = None,
        adversary: ConditionalSourceAdversary | None = None,
        box_weight: float = 0.0,
        box_dice: float = 0.0,
    ) -> None:
        super().__init__()
        if box_dice > 0 and box_weight <= 0:
            raise ValueError("box_dice adds to the box term: it needs box_weight > 0")
        self.model, self.view_size, self.local_weight, self.adversary = model, view_size, local_weight, adversary
        self.box_weight, self.box_dice = box_weight, box_dice
        self.register_buffer(
            "class_weights", None if class_weights is None else class_weights.float(), persistent=False
        )

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images = batch["views"][self.view_size]
        wants_features = self.adversary is not None or self.box_weight > 0
        output = self.model(images, return_features=True) if wants_features else self.model(images)
        loss, terms = task_loss(
            output.global_logits,
            output.local_logits,
            batch["global"],
            batch["local"],
            batch["local_mask"],
            self.local_weight,
            self.class_weights,
        )
        if self.adversary is not None:
            terms["source_adversary"] = self.adversary(output.features, batch["global"], batch["source"])
            loss = loss + self.adversary.weight * terms["source_adversary"]
        if self.box_weight > 0:
            maps = self.model.class_activation_maps(output.features, "global")  # (B, K, h, w)
            positive = self.model.positive_index
            log_odds = positive_log_odds(maps, positive)  # (B, h, w)
            is_positive = batch["global"][:, positive] > 0.5
            terms["boxes"] = box_heatmap_loss(
                log_odds, batch["boxes"][self.view_size], is_positive, ~is_positive, self.view_size
            )
            loss = loss + self.box_weight * terms["boxes"]
            if self.box_dice > 0:
                terms["box_dice"] = box_dice_loss(log_odds, batch["boxes"][self.view_size], is_positive, self.view_size)
                loss = loss + self.box_dice * terms["box_dice"]
        return loss, terms


def mix_batch(batch: dict, alpha: float) -> dict:
    """``batch`` mixed with a shuffled copy of itself (mixup, Zhang et al. 2018): every view and the global and local
    targets as ``w * x + (1 - w) * x[perm]`` with ``w ~ Beta(alpha, alpha)``; a local label stays known only where
    both films know it. The views are reductions of one image, and the reduction is linear, so the mixed views are
    still reductions of one (mixed) image. Draws from torch's global generator (seeded every epoch by the loop)."""
    perm = torch.randperm(batch["global"].shape[0])
    weight = float(torch.distributions.Beta(float(alpha), float(alpha)).sample())

    def mix(values: torch.Tensor) -> torch.Tensor:
        return weight * values + (1 - weight) * values[perm.to(values.device)]

    mixed = dict(batch)
    mixed["views"] = {size_: mix(view) for size_, view in batch["views"].items()}
    mixed["global"], mixed["local"] = mix(batch["global"].float()), mix(batch["local"].float())
    mixed["local_mask"] = batch["local_mask"] * batch["local_mask"][perm.to(batch["local_mask"].device)]
    mixed["mixup"] = (weight, perm)
    return mixed


class MLCAKDistiller(nn.Module):
    """Student + frozen teacher (or its cached outputs); ``forward(batch)`` returns ``(loss, {term: value})``.

    Args:
        student: the model being trained (``StudentViT``); it sees the batch's ``student.config.image_size`` view.
        teacher: the frozen teacher (``TeacherViT``), run on the batch's ``teacher.config.image_size`` view, or
            ``None`` when the ablation needs none. :meth:`use_cache` replaces it by its cached outputs.
        weights: distillation weights (see :func:`ablation_weights`).
        layer_pairs: ``(student layer, teacher layer)`` pairs for the attention term.
        local_weight: weight of the local-findings BCE inside the task loss.
        mixup_alpha: > 0: in training, mix each batch with a shuffled copy of itself (Zhang et al. 2018), weight
            ~ Beta(alpha, alpha), on every view at once, so the teacher sees the mix of exactly the views whose
            reduction the student sees ("a good teacher is patient and consistent", Beyer et al. 2022). Needs the
            teacher online (its cached outputs are for unmixed views) or no teacher.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        weights: MLCAKWeights,
        layer_pairs: Sequence[tuple[int, int]],
        local_weight: float = 1.0,
        mixup_alpha: float = 0.0,
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
        if mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0, got {mixup_alpha}")
        self.mixup_alpha = mixup_alpha
        self.cache: TeacherOutputCache | None = None

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

    @property
    def teacher_mode(self) -> str:
        """Where the teacher's targets come from: ``"cache"``, ``"online"`` (the teacher runs on every batch) or
        ``"none"`` (the student alone)."""
        if not self.needs_teacher:
            return "none"
        return "cache" if self.cache is not None else "online"

    def use_cache(self, cache: TeacherOutputCache) -> None:
        """Take the teacher's targets from ``cache`` (looked up by the batch's ``index``) and drop the teacher."""
        self.cache, self.teacher = cache, None

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

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.training and self.mixup_alpha > 0:
            if self.teacher_mode == "cache":
                raise ValueError("mixup needs the teacher online: its cached outputs are for unmixed views")
            batch = mix_batch(batch, self.mixup_alpha)
        student_images = batch["views"][self.student.config.image_size]
        targets = None
        if self.teacher_mode == "cache":
            targets = self.cache.lookup(batch["index"], student_images.device)
        elif self.teacher_mode == "online":
            if self.teacher is None:
                raise ValueError("distillation needs a teacher or cached teacher targets (use_cache)")
            targets = self.teacher_targets(batch["views"][self.teacher.config.image_size])
        return self.compute_loss(student_images, batch["global"], batch["local"], batch["local_mask"], targets)

    def compute_loss(
        self,
        student_images: torch.Tensor,
        global_targets: torch.Tensor,
        local_targets: torch.Tensor,
        local_mask: torch.Tensor,
        teacher_targets: TeacherTargets | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss on tensors: ``teacher_targets`` may be ``None`` only when the ablation needs no teacher."""
        output = self.student(student_images, return_attention=self.needs_attention)
        loss, terms = task_loss(
            output.global_logits, output.local_logits, global_targets, local_targets, local_mask, self.local_weight
        )
        if not self.needs_teacher:
            return loss, terms
        if teacher_targets is None:
            raise ValueError("distillation needs teacher targets (from the teacher or a cache)")
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


@dataclass(frozen=True)
class TBLossWeights:
    """Weights of the CNN pair's distillation terms (Shawkat et al.): soft-target KD at ``temperature``, CAM
    alignment."""

    kd: float = 1.0
    cam: float = 1.0
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if min(self.kd, self.cam) < 0 or self.temperature <= 0:
            raise ValueError(f"TB distillation weights must be >= 0 and the temperature > 0, got {self}")


class TBDistiller(nn.Module):
    """A CNN student + its frozen CNN teacher, for weakly supervised TB localisation (Shawkat et al.).

    Loss: class-weighted cross-entropy + ``kd`` x soft-target KD + ``cam`` x CAM alignment (the student's class
    activation map of ``positive_label`` against the teacher's, both min-max normalised, on the teacher's grid).
    The teacher runs on the batch's view at its own resolution, the student on its own. Given a ``lung_model``
    (a frozen ``LungSegmenter``), the teacher's map is kept inside the lungs before it is aligned (lung-guided
    distillation): the student learns the teacher's map where TB can be, not where the teacher also looked.

    Args:
        student, teacher: ``CNNStudent`` and a trained ``CNNTeacher`` with the same global labels.
        weights: :class:`TBLossWeights`.
        class_weights: ``(K,)`` cross-entropy class weights (a buffer) or ``None``.
        positive_label: the global class whose map is aligned.
        lung_model: a ``LungSegmenter`` run on the teacher's view, or ``None``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        weights: TBLossWeights,
        class_weights: torch.Tensor | None = None,
        positive_label: str = "tb",
        lung_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        labels = student.config.global_labels
        if teacher.config.global_labels != labels or positive_label not in labels:
            raise ValueError(
                f"student labels {labels} and teacher labels {teacher.config.global_labels} must agree and contain "
                f"{positive_label!r}"
            )
        self.student, self.teacher, self.weights = student, teacher.requires_grad_(False).eval(), weights
        self.positive = labels.index(positive_label)
        self.lung_model = None if lung_model is None else lung_model.requires_grad_(False).eval()
        self.register_buffer(
            "class_weights", None if class_weights is None else class_weights.float(), persistent=False
        )

    def train(self, mode: bool = True) -> TBDistiller:
        super().train(mode)
        self.teacher.eval()
        if self.lung_model is not None:
            self.lung_model.eval()
        return self

    @torch.no_grad()
    def lungs_on_grid(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(B, h, w)``: the share of each cell of a ``grid`` over ``images`` ``(B, 1, H, W)`` that is lung."""
        return F.adaptive_avg_pool2d(self.lung_model.lung_probability(images)[:, None], grid)[:, 0]

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            teacher_images = batch["views"][self.teacher.config.image_size]
            teacher_output = self.teacher(teacher_images, return_features=True)
            teacher_cam = self.teacher.class_activation_maps(teacher_output.features)[:, self.positive]  # (B, h, w)
            if self.lung_model is not None:
                teacher_cam = min_max_normalise(teacher_cam) * self.lungs_on_grid(
                    teacher_images, teacher_cam.shape[-2:]
                )
        output = self.student(batch["views"][self.student.config.image_size], return_features=True)
        student_cam = self.student.class_activation_maps(output.features)[:, self.positive]
        terms = {
            "global_ce": F.cross_entropy(output.global_logits, batch["global"], weight=self.class_weights),
            "soft_kd": soft_target_kd(output.global_logits, teacher_output.global_logits, self.weights.temperature),
            "cam_alignment": cam_alignment(student_cam, teacher_cam),
        }
        loss = terms["global_ce"] + self.weights.kd * terms["soft_kd"] + self.weights.cam * terms["cam_alignment"]
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


def blend_global_logits(cache: TeacherOutputCache, film_logits: torch.Tensor) -> TeacherOutputCache:
    """An ensemble teacher for the global logits: each cached item's global logits averaged with a second
    teacher's ``(N, G)`` logits on its film (item ``j`` is film ``j % N``, as
    :class:`~cxrdistill.data.transforms.AugmentedCopies` numbers augmented copies; plain views are ``j``). The local
    logits and the attention maps stay the first teacher's."""
    items, films = cache.global_logits.shape[0], film_logits.shape[0]
    if films == 0 or items % films or film_logits.shape[1] != cache.global_logits.shape[1]:
        raise ValueError(
            f"{tuple(film_logits.shape)} film logits do not fit {tuple(cache.global_logits.shape)} cached items"
        )
    film_of_item = torch.arange(items) % films
    blended = (cache.global_logits + film_logits.float()[film_of_item]) / 2
    return TeacherOutputCache(blended, cache.local_logits, cache.attentions)


def cache_teacher_outputs(
    distiller: MLCAKDistiller,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    size: int,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TeacherOutputCache:
    """Run the teacher once over ``(indices, teacher images)`` batches covering a dataset of ``size`` images.

    Under several processes each can take a share of the batches: ``gather`` (``accelerator.gather``) collects
    every process's indices and outputs, so each process ends with the whole cache (an index seen twice, as a
    padded last batch repeats some, is written twice with the same values).
    """
    gather = gather or (lambda tensor: tensor)
    global_logits = local_logits = None
    attentions: dict[int, torch.Tensor] = {}
    for indices, images in batches:
        targets = distiller.teacher_targets(images)
        indices = gather(indices.to(images.device)).cpu()
        if global_logits is None:
            global_logits = torch.zeros(size, targets.global_logits.shape[1])
            local_logits = torch.zeros(size, targets.local_logits.shape[1])
            attentions = {
                layer: torch.zeros(size, *maps.shape[1:], dtype=torch.float16)
                for layer, maps in targets.attentions.items()
            }
        global_logits[indices] = gather(targets.global_logits.float()).cpu()
        local_logits[indices] = gather(targets.local_logits.float()).cpu()
        for layer, maps in targets.attentions.items():
            attentions[layer][indices] = gather(maps.to(torch.float16)).cpu()
    if global_logits is None:
        raise ValueError("no batches to cache")
    return TeacherOutputCache(global_logits, local_logits, attentions)
