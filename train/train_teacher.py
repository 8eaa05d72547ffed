"""Train the high-resolution ViT teacher of MLCAK: global one-of-K + local multi-label heads, at 224 px.

    python train/train_teacher.py --root ../shared/data/tbx11k --output-dir runs/teacher-224 --epochs 60

Accelerate runs it on a CPU, a GPU or several (``accelerate launch train/train_teacher.py ...``). The best
checkpoint by the validation metric (``--select-metric``) is saved with ``save_pretrained`` in
``OUTPUT_DIR/best`` (config.json, model.safetensors, metrics.json, model card); ``--resume`` continues a killed
run from its last complete epoch; ``--push-to-hub REPO_ID`` publishes the best model at the end.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `train.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrdistill.losses import task_loss
from cxrdistill.models import TeacherViT, TeacherViTConfig
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
class TeacherModelConfig:
    """The teacher's architecture (see cxrdistill.models.TeacherViTConfig)."""

    image_size: int = 224
    stem: str = "conv"
    patch_size: int = 16
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    drop_path_rate: float = 0.1
    pretrained: bool = False
    local_weight: float = 1.0
    augment: bool = True


def parse(argv=None) -> tuple[DataConfig, LoopConfig, TeacherModelConfig]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_arguments(parser, DataConfig(), LoopConfig(output_dir="runs/teacher"), TeacherModelConfig())
    args = parser.parse_args(argv)
    return fill_dataclass(DataConfig, args), fill_dataclass(LoopConfig, args), fill_dataclass(TeacherModelConfig, args)


def main(argv=None) -> dict:
    data, loop, arch = parse(argv)
    loop.extra = {**vars(data), **vars(arch)}
    accelerator = make_accelerator(loop, "train_teacher")
    train_set, val_set = build_datasets(data)
    config = TeacherViTConfig(
        image_size=arch.image_size,
        stem=arch.stem,
        patch_size=arch.patch_size,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        drop_path_rate=arch.drop_path_rate,
        global_labels=train_set.global_space.names,
        local_labels=train_set.local_space.names,
    )
    model = TeacherViT(config, pretrained=arch.pretrained)
    train_loader = make_loader(train_set, data, views_for(arch.image_size, (), arch.augment), loop.batch_size, True)
    val_loader = make_loader(val_set, data, views_for(arch.image_size, (), False), loop.batch_size, False)

    def loss_fn(batch):
        output = model(batch["views"][arch.image_size])
        return task_loss(
            output.global_logits,
            output.local_logits,
            batch["global"],
            batch["local"],
            batch["local_mask"],
            arch.local_weight,
        )

    command = "python train/train_teacher.py " + " ".join(argv if argv is not None else sys.argv[1:])
    final = fit_and_save_best(
        model, model, loss_fn, arch.image_size, train_loader, val_loader, loop, accelerator, data, command
    )
    return {"final": final}


if __name__ == "__main__":
    main()
