"""What the training scripts share: data, the Accelerate loop, evaluation, and crash-safe checkpoints.

Scripts stay thin: each parses its config, builds a model and a loss function ``loss_fn(batch) -> (loss, terms)``,
and calls :func:`fit`. Checkpoints are Accelerate states written to a temporary folder and swapped into place, so a
run killed at any moment resumes (``--resume``) from the last complete epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cxrdistill.data import AugmentConfig, CachedDataset, MultiResolutionViews, ViewDataset, collate_views
from cxrdistill.evaluation import EvalData, classification_metrics, load_train_val
from cxrdistill.evaluation import to_jsonable as jsonable

logger = logging.getLogger("cxrdistill.train")


@dataclass
class DataConfig:
    """Which data, how it is split and cached."""

    dataset: str = "tbx11k"  # "tbx11k" (TB vs not-TB + TB types) or "nih" (nih1000: normal/abnormal + 14 findings)
    root: str = "../shared/data/tbx11k"
    val_fraction: float = 0.25
    split_seed: int = 0
    cache_size: int = 256
    cache_dir: str | None = None
    limit: int | None = None  # use only the first N images of each split (smoke tests)
    num_workers: int = 1


def build_datasets(config: DataConfig):
    """``(train, validation)`` datasets of records (nothing decoded yet), split as ``cxrdistill evaluate`` does."""
    train, validation = load_train_val(
        EvalData(config.dataset, config.root, None, "all", config.val_fraction, config.split_seed)
    )
    if config.limit:  # evenly spaced, so a small subset still has every source and label
        train, validation = (
            d.subset(np.unique(np.linspace(0, len(d) - 1, config.limit).astype(int)).tolist())
            for d in (train, validation)
        )
    return train, validation


def make_loader(dataset, config: DataConfig, views: MultiResolutionViews, batch_size: int, shuffle: bool) -> DataLoader:
    # No generator of its own: the shuffle order and worker seeds come from the global RNG, which fit() re-seeds
    # at every epoch, so a resumed run sees the same order as an uninterrupted one.
    cached = CachedDataset(dataset, size=config.cache_size, cache_dir=config.cache_dir)
    return DataLoader(
        ViewDataset(cached, views),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(dataset) > batch_size,
        num_workers=config.num_workers,
        collate_fn=collate_views,
    )


# ------------------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def predict(forward: Callable[[dict], Any], loader: DataLoader, accelerator: Accelerator) -> dict[str, Any]:
    """Run ``forward(batch) -> ModelOutput`` over ``loader``; gather probabilities, targets and sources."""
    global_probs, local_probs, global_targets, local_targets, local_masks, sources = [], [], [], [], [], []
    for batch in loader:
        output = forward(batch)
        global_probs.append(accelerator.gather_for_metrics(output.global_logits.float().softmax(-1)).cpu())
        local_probs.append(accelerator.gather_for_metrics(output.local_logits.float().sigmoid()).cpu())
        global_targets.append(accelerator.gather_for_metrics(batch["global"]).cpu())
        local_targets.append(accelerator.gather_for_metrics(batch["local"]).cpu())
        local_masks.append(accelerator.gather_for_metrics(batch["local_mask"]).cpu())
        sources += batch["source"]
    return {
        "global_probs": torch.cat(global_probs).numpy(),
        "local_probs": torch.cat(local_probs).numpy(),
        "global_targets": torch.cat(global_targets).numpy(),
        "local_targets": torch.cat(local_targets).numpy(),
        "local_mask": torch.cat(local_masks).numpy(),
        "source": np.array(sources),
    }


# ------------------------------------------------------------------------------------------------- training


@dataclass
class LoopConfig:
    """The optimisation schedule shared by every script."""

    epochs: int = 60
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    grad_clip: float = 1.0
    mixed_precision: str = "auto"  # "auto": bf16 on a GPU that supports it, else full precision
    eval_every: int = 1
    select_metric: str = "same_hospital_auroc"
    seed: int = 0
    output_dir: str = "runs/unnamed"
    resume: bool = False
    max_steps: int | None = None  # stop early (smoke tests)
    push_to_hub: str | None = None
    bootstrap: int = 1000
    extra: dict = field(default_factory=dict)


def add_dataclass_arguments(parser: argparse.ArgumentParser, *configs) -> None:
    """``--field-name`` options for every field of the given config dataclasses (defaults from them)."""
    for config in configs:
        for f in dataclasses.fields(config):
            if f.name == "extra":
                continue
            value = getattr(config, f.name)
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
            elif isinstance(value, (tuple, list)):
                parser.add_argument(flag, nargs="+", type=type(value[0]) if value else str, default=value)
            else:
                kind = type(value) if value is not None else str
                parser.add_argument(flag, type=_optional(kind) if value is None else kind, default=value)


def _optional(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "") else (int(text) if text.isdigit() else text)

    return parse


def fill_dataclass(cls, namespace: argparse.Namespace):
    return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if hasattr(namespace, f.name)})


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class TrainerState:
    """Epoch, step and best score; saved with every checkpoint."""

    def __init__(self) -> None:
        self.epoch, self.step, self.best, self.history = 0, 0, -math.inf, []

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "best": self.best, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step, self.best, self.history = state["epoch"], state["step"], state["best"], state["history"]


def save_checkpoint(accelerator: Accelerator, output_dir: Path) -> None:
    """Write the full training state to ``output_dir/checkpoint`` atomically (temporary folder, then renames).

    Every process calls it (Accelerate saves per-process RNG states); only the main process renames.
    """
    final, temporary, old = output_dir / "checkpoint", output_dir / "checkpoint.tmp", output_dir / "checkpoint.old"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(temporary))
        if accelerator.is_main_process:
            (temporary / "COMPLETE").write_text("ok")
    except OSError as error:  # a full disk, a quota, a vanished mount: keep the last good checkpoint
        shutil.rmtree(temporary, ignore_errors=True)
        kept = latest_checkpoint(output_dir)
        message = f"could not write a checkpoint in {output_dir} ({error.strerror or error}); " + (
            f"the previous checkpoint {kept} is intact: free space, then rerun with --resume"
            if kept
            else "there is no earlier checkpoint"
        )
        logger.error(message)
        raise RuntimeError(message) from error
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            os.replace(final, old)
        os.replace(temporary, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint, including one left as ``checkpoint.old`` by a crash mid-swap."""
    for name in ("checkpoint", "checkpoint.old"):
        candidate = output_dir / name
        if (candidate / "COMPLETE").is_file():
            return candidate
    return None


def fit(
    model: torch.nn.Module,
    loss_fn: Callable[[dict], tuple[torch.Tensor, dict]],
    forward_eval: Callable[[dict], Any],
    train_loader: DataLoader,
    val_loader: DataLoader,
    loop: LoopConfig,
    accelerator: Accelerator,
    on_best: Callable[[dict], None],
    global_labels,
    local_labels,
) -> dict:
    """Train ``model`` with AdamW + warm-up/cosine, clipping, periodic evaluation and crash-safe checkpoints.

    ``on_best(metrics)`` is called (main process) whenever the selection metric improves, to save the best model.
    Returns the final state's history entry of the best epoch.
    """
    output_dir = Path(loop.output_dir)
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": loop.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=loop.lr
    )
    steps_per_epoch = max(1, len(train_loader))
    total_steps = loop.max_steps or loop.epochs * steps_per_epoch
    scheduler = warmup_cosine(optimizer, int(loop.warmup_epochs * steps_per_epoch), total_steps)
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )
    state = TrainerState()
    accelerator.register_for_checkpointing(state)
    if loop.resume:
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is None:
            logger.warning("--resume: no complete checkpoint in %s; starting from scratch", output_dir)
        else:
            accelerator.load_state(str(checkpoint))
            logger.info("resumed from %s at epoch %d", checkpoint, state.epoch)

    start = time.perf_counter()
    while state.epoch < loop.epochs and (loop.max_steps is None or state.step < loop.max_steps):
        model.train()
        # A fresh, epoch-seeded shuffle: resuming replays the same order an uninterrupted run would have used.
        set_seed(loop.seed + state.epoch)
        progress = tqdm(
            train_loader,
            desc=f"epoch {state.epoch + 1}/{loop.epochs}",
            disable=not accelerator.is_local_main_process,
            leave=False,
        )
        for batch in progress:
            with accelerator.autocast():
                loss, terms = loss_fn(batch)
            accelerator.backward(loss)
            loss = loss.detach()
            if loop.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), loop.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            state.step += 1
            logged = {
                "train/loss": loss.item(),
                **{f"train/{k}": float(v.detach()) for k, v in terms.items()},
                "train/lr": scheduler.get_last_lr()[0],
            }
            accelerator.log(logged, step=state.step)
            progress.set_postfix(loss=f"{loss.item():.4f}")
            if loop.max_steps is not None and state.step >= loop.max_steps:
                break
        state.epoch += 1
        if state.epoch % loop.eval_every == 0 or state.epoch == loop.epochs:
            model.eval()
            predictions = predict(forward_eval, val_loader, accelerator)
            metrics = classification_metrics(predictions, global_labels, local_labels)
            metrics.update(epoch=state.epoch, step=state.step, elapsed_s=round(time.perf_counter() - start, 1))
            accelerator.log({f"val/{k}": v for k, v in metrics.items() if isinstance(v, float)}, step=state.step)
            score = _score(metrics, loop.select_metric)
            state.history.append(jsonable(metrics))
            accelerator.print(
                f"epoch {state.epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            )
            if score > state.best:
                state.best = score
                if accelerator.is_main_process:
                    on_best(jsonable(metrics))
        save_checkpoint(accelerator, output_dir)
    if accelerator.is_main_process:
        (output_dir / "history.json").write_text(json.dumps(state.history, indent=2))
    return max(state.history, key=lambda h: _score(h, loop.select_metric)) if state.history else {}


def _score(entry: dict, metric: str) -> float:
    """The selection metric, falling back to the overall AUROC, then to -1 (keeps the first model saved)."""
    for key in (metric, "global_auroc", "local_macro_auroc"):
        value = entry.get(key)
        if isinstance(value, float) and np.isfinite(value):
            return value
    return -1.0


def evaluate_best(
    folder: Path,
    val_loader,
    accelerator: Accelerator,
    data: DataConfig,
    loop: LoopConfig,
    command: str,
    model_class,
    view_size: int,
    training_extra: dict | None = None,
) -> dict:
    """Re-evaluate the saved best model with bootstrap intervals and rewrite its card with them (and with
    ``training_extra`` in its training record)."""
    model = model_class.from_pretrained(folder)
    selected = json.loads((folder / "metrics.json").read_text())["raw"]  # written when this epoch was the best
    predictions = predict(lambda batch: model(batch["views"][view_size]), val_loader, accelerator)
    metrics = classification_metrics(
        predictions, model.config.global_labels, model.config.local_labels, bootstrap=loop.bootstrap
    )
    metrics.update(epoch=selected.get("epoch"), step=selected.get("step"))
    card = card_metrics(metrics, data, command)
    card["training"].update(training_extra or {})
    if accelerator.is_main_process:
        model.save_pretrained(folder, metrics=card)
    return card


# metric key -> its name in model cards and metrics.json (release.py maps names back with it)
CARD_RESULTS = {
    "global_auroc": "AUROC, TB vs not TB (all validation images)",
    "same_hospital_auroc": "AUROC, TB vs not TB (same-hospital extra-set images)",
    "local_macro_auroc": "macro AUROC, TB type (local labels)",
}


def card_result(kind: str, name: str, value: float, ci95=None) -> dict:
    """One entry of a card's ``results`` (see cxrdistill.hub.validate_metrics), rounded to 4 decimals."""
    entry = {"type": kind, "name": name, "value": round(float(value), 4)}
    if ci95:
        entry["ci95"] = [round(float(v), 4) for v in ci95]
    return entry


def fit_and_save_best(
    trained: torch.nn.Module,
    saved: torch.nn.Module,
    loss_fn: Callable[[dict], tuple[torch.Tensor, dict]],
    view_size: int,
    train_loader: DataLoader,
    val_loader: DataLoader,
    loop: LoopConfig,
    accelerator: Accelerator,
    data: DataConfig,
    command: str,
    training_extra: dict | None = None,
) -> dict:
    """The end of every training script: :func:`fit` ``trained`` (which contains ``saved``), keep the best
    ``saved`` model in ``OUTPUT_DIR/best`` with its card, re-evaluate it with bootstrap CIs, push it if asked.

    Returns the final metrics.json dict (its ``training`` record holds ``train_s`` and ``training_extra``).
    """
    best_dir = Path(loop.output_dir) / "best"

    def on_best(metrics):
        saved.save_pretrained(best_dir, metrics=card_metrics(metrics, data, command))

    start = time.perf_counter()
    fit(
        trained,
        loss_fn,
        lambda batch: saved(batch["views"][view_size]),
        train_loader,
        val_loader,
        loop,
        accelerator,
        on_best,
        saved.config.global_labels,
        saved.config.local_labels,
    )
    extra = {"train_s": round(time.perf_counter() - start, 1), **(training_extra or {})}
    final = evaluate_best(best_dir, val_loader, accelerator, data, loop, command, type(saved), view_size, extra)
    if loop.push_to_hub and accelerator.is_main_process:
        type(saved).from_pretrained(best_dir).push_to_hub(loop.push_to_hub, metrics=final)
    accelerator.end_training()
    return final


def card_metrics(metrics: dict, data: DataConfig, command: str) -> dict:
    """The metrics.json schema of cxrdistill.hub from a classification_metrics dict."""
    results = [
        card_result("roc_auc", name, metrics[key], metrics.get(f"{key}_ci95"))
        for key, name in CARD_RESULTS.items()
        if isinstance(metrics.get(key), float)
    ]
    return {
        "dataset": {
            "name": "TBX11K" if data.dataset == "tbx11k" else "NIH ChestX-ray14",
            "type": data.dataset,
            "split": f"validation ({data.val_fraction:.0%} of all_train, split seed {data.split_seed})",
            "licence": "research use; see the dataset's terms",
        },
        "results": results or [{"type": "roc_auc", "name": "AUROC", "value": 0.0}],
        "training": {"command": command, "data": f"{data.dataset} at {data.root}", "epoch": metrics.get("epoch")},
        "raw": jsonable(metrics),
    }


def make_accelerator(loop: LoopConfig, project: str) -> Accelerator:
    mixed = loop.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    Path(loop.output_dir).mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision=mixed, log_with="tensorboard", project_dir=loop.output_dir)
    accelerator.init_trackers(project, config=_flat_config(loop))
    set_seed(loop.seed)
    return accelerator


def _flat_config(loop: LoopConfig) -> dict:
    flat = {}
    for key, value in {**dataclasses.asdict(loop), **loop.extra}.items():
        if isinstance(value, (int, float, str, bool)):
            flat[key] = value
        elif value is not None:
            flat[key] = str(value)
    return flat


def views_for(teacher_size: int, student_sizes, augment: bool) -> MultiResolutionViews:
    return MultiResolutionViews(teacher_size, tuple(student_sizes), augment=AugmentConfig() if augment else None)
