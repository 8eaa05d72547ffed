"""The training loop every script shares: AdamW with warm-up and cosine decay, clipping, periodic evaluation and
crash-safe checkpoints, under any number of processes.

Scripts stay thin: each parses its config, builds a model and the task module that owns its loss
(``task(batch) -> (loss, terms)``, from :mod:`cxrdistill.distill`), and calls :func:`fit_and_save_best`. The loop
calls the task *as Accelerate prepared it*, so under several processes the forward pass goes through
DistributedDataParallel and the gradients are averaged. :func:`make_accelerator` makes a CPU-only launch of several
processes (``torchrun``, ``accelerate launch --multi_gpu``) a real gloo run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cxrdistill.data.registry import dataset_entry
from cxrdistill.evaluation import PredictionCollector, classification_metrics
from cxrdistill.evaluation import to_jsonable as jsonable
from cxrdistill.models.card import card_result, card_result_names
from cxrdistill_train.checkpoints import TrainerState, latest_checkpoint, save_checkpoint
from cxrdistill_train.data import DataConfig

logger = logging.getLogger("cxrdistill.train")


@dataclass
class LoopConfig:
    """The optimisation schedule shared by every script.

    Attributes:
        epochs: passes over the training split.
        batch_size: images per optimiser step in each process (N processes: N x this per step).
        lr: peak AdamW learning rate, after the warm-up.
        weight_decay: AdamW weight decay of the weight matrices (none on biases and norms).
        warmup_epochs: epochs of linear warm-up before the cosine decay to zero.
        grad_clip: clip the gradient norm to this (0: no clipping).
        mixed_precision: "auto" (bf16 on a GPU that supports it, else full precision), "no", "bf16" or "fp16".
        cpu: train on the CPU even where a GPU is present.
        eval_every: validate every N epochs (and after the last).
        select_metric: the validation metric that picks the best epoch.
        seed: seed of initialisation, shuffling and augmentation.
        output_dir: where checkpoints, the best model, history.json and the TensorBoard log go.
        resume: continue from OUTPUT_DIR's last complete checkpoint.
        max_steps: stop after N optimiser steps (smoke tests); none: run every epoch.
        push_to_hub: publish the best model to this Hub repo id at the end.
        bootstrap: bootstrap resamples for the confidence intervals of the final evaluation.
        extra: the script's own settings, recorded in the TensorBoard config (not a flag).
    """

    epochs: int = 60
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    grad_clip: float = 1.0
    mixed_precision: str = "auto"
    cpu: bool = False
    eval_every: int = 1
    select_metric: str = "same_hospital_auroc"
    seed: int = 0
    output_dir: str = "runs/unnamed"
    resume: bool = False
    max_steps: int | None = None
    push_to_hub: str | None = None
    bootstrap: int = 1000
    extra: dict = field(default_factory=dict)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def predict(forward: Callable[[dict], Any], loader: DataLoader, accelerator: Accelerator) -> dict[str, Any]:
    """Run ``forward(batch) -> ModelOutput`` over ``loader`` in every process; the predictions of all of them, as
    :func:`cxrdistill.evaluation.predict_dataset` gives them."""
    collected = PredictionCollector(accelerator.gather_for_metrics)
    for batch in loader:
        collected.add(forward(batch), batch)
    return collected.arrays()


def view_forward(model: torch.nn.Module) -> Callable[[dict], Any]:
    """``batch -> model(the batch's view at the model's input size)``."""
    return lambda batch: model(batch["views"][model.config.image_size])


@dataclass
class TrainingRun:
    """What :func:`fit` trains and what it keeps.

    Attributes:
        task: ``task(batch) -> (loss, {term: value})``, an ``nn.Module`` holding ``model`` (and a frozen teacher,
            buffers); the loop optimises its trainable parameters through the prepared (DDP) wrapper.
        model: the model inside ``task`` that is evaluated every epoch and saved as the best model.
        train_loader, val_loader: data loaders (not yet prepared).
        data: the data configuration (for the card).
        command: the command line that made this run (for the card).
        extra: more facts for the card's training record.
    """

    task: torch.nn.Module
    model: torch.nn.Module
    train_loader: DataLoader
    val_loader: DataLoader
    data: DataConfig
    command: str
    extra: dict = field(default_factory=dict)


@dataclass
class Prepared:
    """The task, optimiser, loaders and schedule of a run as Accelerate prepared them (DDP-wrapped, sharded)."""

    task: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    val_loader: DataLoader
    scheduler: Any
    shuffle_generator: torch.Generator | None  # the training loader's own: re-seeded every epoch


def prepare(run: TrainingRun, loop: LoopConfig, accelerator: Accelerator) -> Prepared:
    """AdamW (no weight decay on biases and norms) with warm-up and cosine decay, prepared with the loaders."""
    trainable = [p for p in run.task.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": loop.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=loop.lr
    )
    # Counted on the unsplit loader: Accelerate's prepared scheduler steps once per process per optimiser step,
    # so the schedule spans the same epochs under any number of processes.
    steps_per_epoch = max(1, len(run.train_loader))
    total_steps = loop.max_steps or loop.epochs * steps_per_epoch
    scheduler = warmup_cosine(optimizer, int(loop.warmup_epochs * steps_per_epoch), total_steps)
    shuffle_generator = run.train_loader.generator  # the same object inside the prepared loader
    prepared = accelerator.prepare(run.task, optimizer, run.train_loader, run.val_loader, scheduler)
    return Prepared(*prepared, shuffle_generator=shuffle_generator)


def train_step(prepared: Prepared, batch: dict, loop: LoopConfig, accelerator: Accelerator):
    """One optimiser step on ``batch``; returns ``(loss, {term: value})``, detached."""
    with accelerator.autocast():
        loss, terms = prepared.task(batch)  # the prepared module: DDP averages the gradients
    accelerator.backward(loss)
    if loop.grad_clip:
        accelerator.clip_grad_norm_(prepared.task.parameters(), loop.grad_clip)
    prepared.optimizer.step()
    prepared.scheduler.step()
    prepared.optimizer.zero_grad()
    return loss.detach(), {name: value.detach() for name, value in terms.items()}


def fit(run: TrainingRun, loop: LoopConfig, accelerator: Accelerator, on_best: Callable[[dict], None]) -> dict:
    """Train ``run.task`` with AdamW + warm-up/cosine, clipping, periodic evaluation and crash-safe checkpoints.

    ``on_best(metrics)`` is called (main process only) whenever the selection metric improves, to save the best
    model. Returns ``{"best": the best epoch's history entry, "loss_terms": the loss terms used, "start_epoch": the
    epoch it started from (a checkpoint's after --resume), "epochs_run": the epochs this call ran,
    "train_images_per_s": training images per second over all processes, evaluation and checkpoints excluded}``.
    """
    output_dir = Path(loop.output_dir)
    prepared = prepare(run, loop, accelerator)
    state = TrainerState()
    accelerator.register_for_checkpointing(state)
    if loop.resume:
        _resume(state, output_dir, accelerator)
    start, first_epoch, loss_terms = time.perf_counter(), state.epoch, set()
    loop_seconds, images_seen = 0.0, 0  # the optimisation alone (no evaluation, no checkpoints), all processes
    while state.epoch < loop.epochs and (loop.max_steps is None or state.step < loop.max_steps):
        epoch_start = time.perf_counter()
        images_seen += _train_epoch(prepared, state, loop, accelerator, loss_terms)
        loop_seconds += time.perf_counter() - epoch_start
        state.epoch += 1
        share_main_buffers(run.task, accelerator)
        if state.epoch % loop.eval_every == 0 or state.epoch == loop.epochs:
            _validate(run, prepared, state, loop, accelerator, on_best, time.perf_counter() - start)
        save_checkpoint(accelerator, output_dir, {"epoch": state.epoch, "step": state.step})
    if accelerator.is_main_process:
        (output_dir / "history.json").write_text(json.dumps(state.history, indent=2))
    best = max(state.history, key=lambda h: _score(h, loop.select_metric)) if state.history else {}
    return {
        "best": best,
        "loss_terms": sorted(loss_terms),
        "start_epoch": first_epoch,
        "epochs_run": state.epoch - first_epoch,
        "train_images_per_s": round(images_seen / loop_seconds, 1) if loop_seconds else None,
    }


def _resume(state: TrainerState, output_dir: Path, accelerator: Accelerator) -> None:
    checkpoint = latest_checkpoint(output_dir)
    if checkpoint is None:
        logger.warning("--resume: no complete checkpoint in %s; starting from scratch", output_dir)
        return
    accelerator.load_state(str(checkpoint))
    logger.info("resumed from %s at epoch %d", checkpoint, state.epoch)
    accelerator.print(f"resumed from {checkpoint} at epoch {state.epoch} (step {state.step})")


def _train_epoch(
    prepared: Prepared, state: TrainerState, loop: LoopConfig, accelerator: Accelerator, loss_terms: set
) -> int:
    """One pass over the training loader (or up to ``max_steps``); returns the images seen by all processes."""
    prepared.task.train()
    # A fresh, epoch-seeded shuffle: resuming replays the same order an uninterrupted run would have used.
    set_seed(loop.seed + state.epoch)
    if prepared.shuffle_generator is not None:
        prepared.shuffle_generator.manual_seed(loop.seed + state.epoch)
    progress = tqdm(
        prepared.train_loader,
        desc=f"epoch {state.epoch + 1}/{loop.epochs}",
        disable=not accelerator.is_local_main_process,
        leave=False,
    )
    images = 0
    for batch in progress:
        images += len(batch["index"]) * accelerator.num_processes
        loss, terms = train_step(prepared, batch, loop, accelerator)
        state.step += 1
        loss_terms.update(terms)
        logged = {"train/loss": loss.item(), **{f"train/{k}": float(v) for k, v in terms.items()}}
        accelerator.log({**logged, "train/lr": prepared.scheduler.get_last_lr()[0]}, step=state.step)
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if loop.max_steps is not None and state.step >= loop.max_steps:
            break
    return images


def _validate(
    run: TrainingRun,
    prepared: Prepared,
    state: TrainerState,
    loop: LoopConfig,
    accelerator: Accelerator,
    on_best: Callable[[dict], None],
    elapsed_s: float,
) -> None:
    """Evaluate ``run.model`` on the validation loader, log it, and call ``on_best`` where it is the best yet."""
    prepared.task.eval()
    predictions = predict(view_forward(run.model), prepared.val_loader, accelerator)
    config = run.model.config
    metrics = classification_metrics(predictions, config.global_labels, config.local_labels)
    metrics.update(epoch=state.epoch, step=state.step, elapsed_s=round(elapsed_s, 1))
    accelerator.log({f"val/{k}": v for k, v in metrics.items() if isinstance(v, float)}, step=state.step)
    state.history.append(jsonable(metrics))
    accelerator.print(
        f"epoch {state.epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    )
    score = _score(metrics, loop.select_metric)
    if score > state.best:
        state.best = score
        if accelerator.is_main_process:
            on_best(jsonable(metrics))


def share_main_buffers(module: torch.nn.Module, accelerator: Accelerator) -> None:
    """Copy the main process's buffers (BatchNorm running statistics) to every process, in place.

    DDP broadcasts them at the start of each training forward, so after the last step every process holds its own
    batch's update; sharing the main process's (the one that is saved) makes evaluation and the checkpoint agree
    everywhere.
    """
    if accelerator.num_processes > 1:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer.data, src=0)


def _score(entry: dict, metric: str) -> float:
    """The selection metric, falling back to the overall AUROC, then to -1 (keeps the first model saved)."""
    for key in (metric, "global_auroc", "local_macro_auroc"):
        value = entry.get(key)
        if isinstance(value, float) and np.isfinite(value):
            return value
    return -1.0


def evaluate_best(folder: Path, run: TrainingRun, loop: LoopConfig, accelerator: Accelerator, extra: dict) -> dict:
    """Re-evaluate the saved best model with bootstrap intervals and rewrite its card with them (and with ``extra``
    in its training record). Every process evaluates its share; the main process writes."""
    accelerator.wait_for_everyone()  # the main process wrote the best model
    model = type(run.model).from_pretrained(folder).to(accelerator.device)
    selected = json.loads((folder / "metrics.json").read_text())["raw"]  # written when this epoch was the best
    predictions = predict(view_forward(model), accelerator.prepare(run.val_loader), accelerator)
    metrics = classification_metrics(
        predictions, model.config.global_labels, model.config.local_labels, bootstrap=loop.bootstrap
    )
    metrics.update(epoch=selected.get("epoch"), step=selected.get("step"))
    card = card_metrics(metrics, run.data, run.command)
    card["training"].update(extra)
    if accelerator.is_main_process:
        model.save_pretrained(folder, metrics=card)
    accelerator.wait_for_everyone()
    return card


def fit_and_save_best(run: TrainingRun, loop: LoopConfig, accelerator: Accelerator) -> dict:
    """The end of every training script: :func:`fit` ``run.task``, keep the best ``run.model`` in
    ``OUTPUT_DIR/best`` with its card, re-evaluate it with bootstrap CIs, push it if asked.

    Returns the final metrics.json dict; its ``training`` record holds ``train_s``, ``processes``, the loss terms
    used, ``epochs_run`` and ``run.extra``.
    """
    best_dir = Path(loop.output_dir) / "best"

    def on_best(metrics):
        run.model.save_pretrained(best_dir, metrics=card_metrics(metrics, run.data, run.command))

    start = time.perf_counter()
    result = fit(run, loop, accelerator, on_best)
    extra = {
        "train_s": round(time.perf_counter() - start, 1),
        "processes": accelerator.num_processes,
        "loss_terms": result["loss_terms"],
        "start_epoch": result["start_epoch"],
        "epochs_run": result["epochs_run"],
        "train_images_per_s": result["train_images_per_s"],
        **run.extra,
    }
    final = evaluate_best(best_dir, run, loop, accelerator, extra)
    if loop.push_to_hub and accelerator.is_main_process:
        type(run.model).from_pretrained(best_dir).push_to_hub(loop.push_to_hub, metrics=final)
    for tracker in accelerator.trackers:  # not end_training(): a script may train a second model in this process group
        tracker.finish()
    accelerator.wait_for_everyone()
    return final


def end_processes() -> None:
    """The end of a script: leave the process group (a no-op in a single process)."""
    PartialState().destroy_process_group()


def card_metrics(metrics: dict, data: DataConfig, command: str) -> dict:
    """The metrics.json schema of cxrdistill.hub from a classification_metrics dict.

    Raises:
        ValueError: no AUROC could be measured (a validation split with one class): a card never shows a placeholder.
    """
    results = [
        card_result("roc_auc", name, metrics[key], metrics.get(f"{key}_ci95"))
        for key, name in card_result_names(metrics.get("global_auroc_per_class", ())).items()
        if isinstance(metrics.get(key), float) and np.isfinite(metrics[key])
    ]
    if not results:
        measured = sorted(k for k, v in metrics.items() if isinstance(v, float))
        raise ValueError(
            f"no AUROC could be measured on the validation split (measured: {measured}); it needs images of every "
            "class: use more data (--limit) or another --val-fraction"
        )
    entry = dataset_entry(data.dataset)
    return {
        "dataset": {
            "name": entry.display_name,
            "type": data.dataset,
            "split": f"validation ({data.val_fraction:.0%} of the training films, by patient, split seed "
            f"{data.split_seed})",
            "licence": entry.licence,
        },
        "results": results,
        "training": {"command": command, "data": f"{data.dataset} at {data.root}", "epoch": metrics.get("epoch")},
        "raw": jsonable(metrics),
    }


def launched_processes() -> int:
    """How many processes the launcher started (torchrun / accelerate launch / MPI set these), 1 if none."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def has_accelerator_device() -> bool:
    """A GPU (or another torch accelerator) is visible."""
    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()


def make_accelerator(loop: LoopConfig, project: str) -> Accelerator:
    """The run's ``Accelerator``: bf16 on a GPU that has it (``--mixed-precision auto``); several processes on a
    machine without a GPU become a gloo CPU run (Accelerate alone would give each process a separate, undistributed
    run that thinks it is the main one); ``--cpu`` forces the CPU."""
    mixed = loop.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    cpu = loop.cpu or (launched_processes() > 1 and not has_accelerator_device())
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed, log_with="tensorboard", project_dir=loop.output_dir)
    if accelerator.is_main_process:
        Path(loop.output_dir).mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    if launched_processes() != accelerator.num_processes:
        raise RuntimeError(
            f"the launcher started {launched_processes()} processes but Accelerate set up {accelerator.num_processes}"
            f" ({accelerator.distributed_type}); refusing to train copies of one run"
        )
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
