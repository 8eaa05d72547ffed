"""Train the lung segmentation U-Net on the shared lung outlines; report Dice on held-out outlines.

    python train/train_lungs.py --root ../shared/data/tbx11k --output-dir runs/lungs --epochs 40

The 140 outlined Shenzhen films are split (``--held-out 20`` films, seed ``--split-seed``); the model sees
letterboxed ``image_size`` views with the X-ray augmentation of the classifiers (the mask warped with the image),
learns with BCE + soft Dice, and the epoch with the best held-out Dice is saved with ``save_pretrained`` in
``OUTPUT_DIR/best`` (card and metrics.json with the Dice and its bootstrap CI). An Accelerate program like the
other scripts (``torchrun`` / ``accelerate launch --multi_gpu`` split the batches; only the main process writes).
Runs of a few minutes: there is no ``--resume``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cxrdistill.data import AugmentConfig, LungOutlines, letterbox_matrix, warp
from cxrdistill.data.transforms import jitter_intensity, random_view_matrix
from cxrdistill.metrics import bootstrap_ci
from cxrdistill.models import LungSegmenter, LungSegmenterConfig
from cxrdistill_train.cli import ModelFlags, Script, script_command
from cxrdistill_train.loop import LoopConfig, end_processes, make_accelerator, warmup_cosine


@dataclass
class LungDataConfig:
    """The outlines and their split.

    Attributes:
        root: the TBX11K folder the outlines' image paths are relative to.
        outlines: the outlines JSON (default: lung_outlines/tbx11k_shenzhen_train.json beside --root).
        held_out: films kept out of training to measure Dice on.
        split_seed: seed of the train / held-out split.
        augment: augment the training views (affine warp and intensity jitter; the mask moves with the image).
    """

    root: str = "../shared/data/tbx11k"
    outlines: str | None = None
    held_out: int = 20
    split_seed: int = 0
    augment: bool = True


@dataclass
class LungTrainConfig:
    """Everything a lung run is: the model's own config, the data, the loop."""

    model: LungSegmenterConfig
    data: LungDataConfig = field(default_factory=LungDataConfig)
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(output_dir="runs/lungs", epochs=40, batch_size=16, lr=2e-3, warmup_epochs=2)
    )


class LungViews(Dataset):
    """``(image, mask)`` pairs ``(1, S, S)`` letterboxed (and, when augmenting, warped alike) from outlines."""

    def __init__(self, outlines: LungOutlines, size: int, augment: AugmentConfig | None) -> None:
        self.items = [outlines[i] for i in range(len(outlines))]  # 140 films of 512 px: decoded once
        self.size, self.augment = size, augment

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        image, mask = torch.from_numpy(item["image"]), torch.from_numpy(item["mask"])
        matrix = letterbox_matrix(*image.shape, self.size)
        if self.augment is not None:
            matrix = random_view_matrix(self.size, self.augment) @ matrix
            image = jitter_intensity(image, self.augment, None)
        return warp(image, matrix, self.size)[None], (warp(mask, matrix, self.size) > 0.5).float()[None]


def dice_per_image(logits: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``(B,)`` Dice of the thresholded predictions against ``masks`` (both ``(B, 1, S, S)``)."""
    predicted = (logits.sigmoid() > threshold).float()
    overlap = (predicted * masks).sum((1, 2, 3))
    return 2 * overlap / (predicted.sum((1, 2, 3)) + masks.sum((1, 2, 3))).clamp_min(1)


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    probabilities = logits.sigmoid()
    overlap = (probabilities * masks).sum((1, 2, 3))
    return (1 - (2 * overlap + 1) / (probabilities.sum((1, 2, 3)) + masks.sum((1, 2, 3)) + 1)).mean()


def command_line() -> Script:
    defaults = LungTrainConfig(model=LungSegmenterConfig())
    unused = ("extra", "eval_every", "select_metric", "resume", "cpu")  # the lung loop has no such options
    return Script(
        __doc__,
        (defaults.data, defaults.loop),
        (ModelFlags(LungSegmenterConfig, "lung-unet-mobilenetv3s"),),
        hidden=unused,
    )


def parse(argv=None) -> LungTrainConfig:
    (data, loop), (model,) = command_line().parse(argv)
    return LungTrainConfig(model, data, loop)


def main(argv=None) -> dict:
    config = parse(argv)
    loop, data = config.loop, config.data
    loop.extra = {**vars(data), "preset": config.model.preset}
    accelerator = make_accelerator(loop, "train_lungs")
    outlines = LungOutlines(data.root, data.outlines)
    order = np.random.default_rng(data.split_seed).permutation(len(outlines))
    held_out, train = sorted(order[: data.held_out].tolist()), sorted(order[data.held_out :].tolist())
    size = config.model.image_size
    train_loader = DataLoader(
        LungViews(outlines.subset(train), size, AugmentConfig() if data.augment else None),
        batch_size=loop.batch_size,
        shuffle=True,
        drop_last=len(train) > loop.batch_size,
    )
    val_loader = DataLoader(LungViews(outlines.subset(held_out), size, None), batch_size=loop.batch_size)
    model = LungSegmenter(config.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    steps_per_epoch = max(1, len(train_loader))
    total_steps = loop.max_steps or loop.epochs * steps_per_epoch
    scheduler = warmup_cosine(optimizer, int(loop.warmup_epochs * steps_per_epoch), total_steps)
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )
    raw = accelerator.unwrap_model(model)
    best, history, step, start = -1.0, [], 0, time.perf_counter()
    output = Path(loop.output_dir)
    for epoch in range(1, loop.epochs + 1):
        model.train()
        torch.manual_seed(loop.seed + epoch)
        for images, masks in tqdm(train_loader, desc=f"epoch {epoch}", disable=not accelerator.is_main_process):
            logits = model(images)
            loss = F.binary_cross_entropy_with_logits(logits, masks) + soft_dice_loss(logits, masks)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), loop.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if loop.max_steps and step >= loop.max_steps:
                break
        model.eval()
        with torch.no_grad():
            dice = torch.cat([accelerator.gather_for_metrics(dice_per_image(raw(x), y)) for x, y in val_loader])
        last_loss = float(loss.detach())
        history.append({"epoch": epoch, "step": step, "dice": float(dice.mean()), "loss": last_loss})
        accelerator.print(f"epoch {epoch}: held-out Dice {dice.mean():.4f}, train loss {last_loss:.4f}")
        if float(dice.mean()) > best and accelerator.is_main_process:
            best = float(dice.mean())
            low, high = bootstrap_ci(np.mean, dice.numpy(), samples=loop.bootstrap)
            raw.save_pretrained(output / "best", metrics=card(best, (low, high), dice, epoch, data, argv, start))
        if loop.max_steps and step >= loop.max_steps:
            break
    if accelerator.is_main_process:
        (output / "history.json").write_text(json.dumps(history, indent=2))
    accelerator.wait_for_everyone()
    result = json.loads((output / "best" / "metrics.json").read_text())
    for tracker in accelerator.trackers:
        tracker.finish()
    end_processes()
    return result


def card(dice: float, ci95, per_image: torch.Tensor, epoch: int, data: LungDataConfig, argv, start: float) -> dict:
    """metrics.json of the best epoch: mean Dice on the held-out outlines with its bootstrap CI."""
    return {
        "dataset": {
            "name": "TBX11K Shenzhen lung outlines",
            "type": "tbx11k-lung-outlines",
            "split": f"{len(per_image)} held-out outlined films (split seed {data.split_seed})",
            "licence": "research use; see the datasets' terms",
        },
        "results": [
            {
                "type": "dice",
                "name": "Dice, lungs (held-out outlines, mask at 0.5)",
                "value": round(dice, 4),
                "ci95": [round(float(v), 4) for v in ci95],
            },
            {"type": "dice", "name": "lowest Dice of a held-out film", "value": round(float(per_image.min()), 4)},
        ],
        "training": {
            "command": script_command("train/train_lungs.py", argv),
            "data": f"{data.root} with its lung outlines",
            "epoch": epoch,
            "train_s": round(time.perf_counter() - start, 1),
        },
    }


if __name__ == "__main__":
    main()
