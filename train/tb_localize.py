"""Weakly supervised TB localisation by distillation (Shawkat et al., arXiv 2512.11057): CNN teacher, then student.

    python train/tb_localize.py --root ../shared/data/tbx11k --output-dir runs/tb --stage both

Both models learn from image labels only (TB vs not TB): boxes are never used for training, and neither are the
TB-type labels that come from the boxes' categories. The teacher (``CNNTeacher``, ResNet18 at 224 px by default;
``--teacher-backbone resnet50`` for the paper's) is trained with class-weighted cross-entropy; the student
(``CNNStudent``, a low-resolution ResNet18 at 28 px by default) with cross-entropy + ``kd_weight`` x soft-target
KD (temperature ``--temperature``) + ``cam_weight`` x CAM alignment (its TB class activation map against the
teacher's, both min-max normalised, on the teacher's grid). The teacher runs on the same augmented view as the
student, at its own resolution. Localisation (mIoU, pointing game against the radiologists' boxes) is measured
with ``cxrdistill evaluate`` on the saved models.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from cxrdistill.losses import cam_alignment, soft_target_kd
from cxrdistill.models import CNNStudent, CNNStudentConfig, CNNTeacher, CNNTeacherConfig
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

STAGES = ("teacher", "student", "both")


@dataclass
class TBConfig:
    """The two models and the distillation loss."""

    stage: str = "both"
    teacher: str | None = None  # a trained CNNTeacher (folder or repo id) for --stage student
    teacher_backbone: str = "resnet18"
    teacher_size: int = 224
    student_backbone: str = "resnet18"
    student_size: int = 28
    student_stem: str = "lowres"
    pretrained: bool = False
    class_weights: str = "balanced"  # "balanced" (inverse class frequency) or "none"
    temperature: float = 2.0
    kd_weight: float = 1.0
    cam_weight: float = 1.0
    augment: bool = True


def parse(argv=None) -> tuple[DataConfig, LoopConfig, TBConfig]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_arguments(parser, DataConfig(), LoopConfig(output_dir="runs/tb", epochs=40, lr=1e-3), TBConfig())
    args = parser.parse_args(argv)
    return fill_dataclass(DataConfig, args), fill_dataclass(LoopConfig, args), fill_dataclass(TBConfig, args)


def class_weight_tensor(targets: torch.Tensor, mode: str) -> torch.Tensor | None:
    """Inverse-frequency weights of the one-hot ``targets`` ``(N, K)`` (``None`` for ``mode="none"``)."""
    if mode == "none":
        return None
    if mode != "balanced":
        raise SystemExit(f"--class-weights must be 'balanced' or 'none', got {mode!r}")
    counts = targets.sum(0).clamp_min(1)
    return (counts.sum() / (len(counts) * counts)).float()


def main(argv=None) -> dict:
    data, loop, settings = parse(argv)
    if settings.stage not in STAGES:
        raise SystemExit(f"--stage must be one of {STAGES}, got {settings.stage!r}")
    if settings.stage == "student" and not settings.teacher:
        raise SystemExit("--stage student needs --teacher (a trained CNNTeacher folder or repo id)")
    output_dir = Path(loop.output_dir)
    command = "python train/tb_localize.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {}
    teacher_source = settings.teacher
    if settings.stage in ("teacher", "both"):
        results["teacher"] = train_teacher(data, loop, settings, output_dir / "teacher", command)
        teacher_source = str(output_dir / "teacher" / "best")
    if settings.stage in ("student", "both"):
        results["student"] = train_student(data, loop, settings, output_dir / "student", command, teacher_source)
    return results


def _stage_loop(loop: LoopConfig, output_dir: Path, extra: dict) -> LoopConfig:
    return LoopConfig(**{**vars(loop), "output_dir": str(output_dir), "extra": extra})


def train_teacher(data: DataConfig, loop: LoopConfig, settings: TBConfig, output_dir: Path, command: str) -> dict:
    stage_loop = _stage_loop(loop, output_dir, {**vars(data), **vars(settings)})
    accelerator = make_accelerator(stage_loop, "tb_teacher")
    train_set, val_set = build_datasets(data)
    size = settings.teacher_size
    model = CNNTeacher(
        CNNTeacherConfig(
            timm_name=settings.teacher_backbone,
            image_size=size,
            global_labels=train_set.global_space.names,
            local_labels=(),
        ),
        pretrained=settings.pretrained,
    )
    weights = class_weight_tensor(torch.from_numpy(train_set.global_targets()), settings.class_weights)
    train_loader = make_loader(train_set, data, views_for(size, (), settings.augment), stage_loop.batch_size, True)
    val_loader = make_loader(val_set, data, views_for(size, (), False), stage_loop.batch_size, False)

    def loss_fn(batch):
        output = model(batch["views"][size])
        loss = F.cross_entropy(output.global_logits, batch["global"], weight=weights)
        return loss, {"global_ce": loss.detach()}

    return fit_and_save_best(
        model, model, loss_fn, size, train_loader, val_loader, stage_loop, accelerator, data, command
    )


def train_student(
    data: DataConfig, loop: LoopConfig, settings: TBConfig, output_dir: Path, command: str, teacher_source: str
) -> dict:
    stage_loop = _stage_loop(loop, output_dir, {**vars(data), **vars(settings)})
    accelerator = make_accelerator(stage_loop, "tb_student")
    train_set, val_set = build_datasets(data)
    teacher = CNNTeacher.from_pretrained(teacher_source).requires_grad_(False).eval()
    teacher_size, size = teacher.config.image_size, settings.student_size
    student = CNNStudent(
        CNNStudentConfig(
            timm_name=settings.student_backbone,
            image_size=size,
            stem=settings.student_stem,
            global_labels=teacher.config.global_labels,
            local_labels=(),
        )
    )
    weights = class_weight_tensor(torch.from_numpy(train_set.global_targets()), settings.class_weights)
    base = max(teacher_size, size)
    train_loader = make_loader(
        train_set, data, views_for(base, (teacher_size, size), settings.augment), stage_loop.batch_size, True
    )
    val_loader = make_loader(val_set, data, views_for(base, (size,), False), stage_loop.batch_size, False)

    def loss_fn(batch):
        with torch.no_grad():
            teacher_output = teacher(batch["views"][teacher_size], return_features=True)
            teacher_cam = teacher.class_activation_maps(teacher_output.features)[:, -1]  # (B, h, w), positive class
        output = student(batch["views"][size], return_features=True)
        student_cam = accelerator.unwrap_model(student).class_activation_maps(output.features)[:, -1]
        terms = {
            "global_ce": F.cross_entropy(output.global_logits, batch["global"], weight=weights),
            "soft_kd": soft_target_kd(output.global_logits, teacher_output.global_logits, settings.temperature),
            "cam_alignment": cam_alignment(student_cam, teacher_cam),
        }
        loss = terms["global_ce"] + settings.kd_weight * terms["soft_kd"] + settings.cam_weight * terms["cam_alignment"]
        return loss, {k: v.detach() for k, v in terms.items()}

    return fit_and_save_best(
        student, student, loss_fn, size, train_loader, val_loader, stage_loop, accelerator, data, command
    )


if __name__ == "__main__":
    main()
