"""Distil a frozen ViT teacher into a low-resolution ViT student with the MLCAK loss.

    python train/distill_student.py --teacher runs/teacher-224/best --image-size 28 --ablation all \\
        --output-dir runs/student-28-mlcak

``--ablation`` chooses the terms: ``none`` (the student alone; no teacher needed), ``logits`` (alpha/beta),
``attention`` (gamma) or ``all`` (MLCAK). ``--teacher-mode cache`` (default) runs the teacher once over the
un-augmented training views and reuses its logits and head-averaged attention maps every epoch;
``--teacher-mode online`` runs it on every augmented batch. Student views are area-averaged from the same
224-px view the teacher sees, whatever the ablation, so every student sees identical pixels.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrdistill.distill import (
    MLCAKDistiller,
    MLCAKWeights,
    ablation_weights,
    cache_teacher_outputs,
    default_layer_pairs,
)
from cxrdistill.models import StudentViT, StudentViTConfig, TeacherViT
from train.common import (
    DataConfig,
    LoopConfig,
    add_dataclass_arguments,
    build_datasets,
    fill_dataclass,
    fit_and_save_best,
    make_accelerator,
    make_loader,
    views_for,
)


@dataclass
class DistillConfig:
    """Student architecture and the MLCAK loss (see cxrdistill.distill)."""

    teacher: str | None = None  # repo id or folder; not needed for --ablation none
    teacher_revision: str | None = None
    image_size: int = 28
    stem: str = "conv"
    embed_dim: int = 96
    depth: int = 6
    num_heads: int = 3
    drop_path_rate: float = 0.0
    ablation: str = "all"
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 100.0
    levels: int = 3
    local_weight: float = 1.0
    teacher_mode: str = "cache"  # "cache" (teacher once, un-augmented views) or "online" (every augmented batch)
    augment: bool = False
    base_size: int = 224  # views are area-averaged from this size (the teacher's input size when there is one)


def parse(argv=None) -> tuple[DataConfig, LoopConfig, DistillConfig]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_arguments(
        parser,
        DataConfig(),
        LoopConfig(output_dir="runs/student", epochs=100, lr=1e-3, warmup_epochs=5),
        DistillConfig(),
    )
    args = parser.parse_args(argv)
    return fill_dataclass(DataConfig, args), fill_dataclass(LoopConfig, args), fill_dataclass(DistillConfig, args)


def main(argv=None) -> dict:
    data, loop, settings = parse(argv)
    loop.extra = {**vars(data), **vars(settings)}
    weights = ablation_weights(settings.ablation, MLCAKWeights(settings.alpha, settings.beta, settings.gamma))
    if settings.teacher_mode not in ("cache", "online"):
        raise SystemExit(f"--teacher-mode must be 'cache' or 'online', got {settings.teacher_mode!r}")
    accelerator = make_accelerator(loop, "distill_student")
    train_set, val_set = build_datasets(data)

    teacher = None
    uses_teacher = weights.alpha > 0 or weights.beta > 0 or weights.gamma > 0
    if uses_teacher:
        if not settings.teacher:
            raise SystemExit(f"--ablation {settings.ablation} needs --teacher (a folder or Hub repo id)")
        teacher = TeacherViT.from_pretrained(settings.teacher, revision=settings.teacher_revision)
        if teacher.config.global_labels != train_set.global_space.names:
            raise SystemExit(
                f"teacher labels {teacher.config.global_labels} differ from the data's {train_set.global_space.names}"
            )
    base_size = teacher.config.image_size if teacher is not None else settings.base_size
    student = StudentViT(
        StudentViTConfig(
            image_size=settings.image_size,
            stem=settings.stem,
            embed_dim=settings.embed_dim,
            depth=settings.depth,
            num_heads=settings.num_heads,
            drop_path_rate=settings.drop_path_rate,
            global_labels=train_set.global_space.names,
            local_labels=train_set.local_space.names,
        )
    )
    layer_pairs = default_layer_pairs(student.config.depth, teacher.config.depth if teacher else 1, settings.levels)
    distiller = MLCAKDistiller(student, teacher, weights, layer_pairs, settings.local_weight)

    size = settings.image_size
    online = settings.teacher_mode == "online" and uses_teacher
    augment = settings.augment if (online or not uses_teacher) else False  # cached targets are for plain views
    train_loader = make_loader(train_set, data, views_for(base_size, (size,), augment), loop.batch_size, True)
    val_loader = make_loader(val_set, data, views_for(base_size, (size,), False), loop.batch_size, False)

    cache, cache_seconds = None, 0.0
    if uses_teacher and not online:
        start = time.perf_counter()
        plain = make_loader(train_set, data, views_for(base_size, (), False), 64, False)
        cache = cache_teacher_outputs(distiller, ((b["index"], b["views"][base_size]) for b in plain), len(train_set))
        cache_seconds = time.perf_counter() - start
        accelerator.print(f"cached teacher outputs for {len(train_set)} images in {cache_seconds:.1f} s")

    def loss_fn(batch):
        targets = cache.lookup(batch["index"], batch["views"][size].device) if cache is not None else None
        return distiller(
            batch["views"][size],
            batch["global"],
            batch["local"],
            batch["local_mask"],
            teacher_images=batch["views"][base_size] if online else None,
            teacher_targets=targets,
        )

    command = "python train/distill_student.py " + " ".join(argv if argv is not None else sys.argv[1:])
    extra = {"teacher_cache_s": round(cache_seconds, 1), "layer_pairs": layer_pairs, "ablation": settings.ablation}
    final = fit_and_save_best(
        distiller, student, loss_fn, size, train_loader, val_loader, loop, accelerator, data, command, extra
    )
    return {"final": final}


if __name__ == "__main__":
    main()
