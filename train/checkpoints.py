"""Crash-safe checkpoints: Accelerate states written to a temporary folder and swapped into place, so a run killed at
any moment resumes (``--resume``) from the last complete epoch; only the main process renames.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

from accelerate import Accelerator

logger = logging.getLogger("cxrdistill.train")


class TrainerState:
    """Epoch, step and best score; saved with every checkpoint."""

    def __init__(self) -> None:
        self.epoch, self.step, self.best, self.history = 0, 0, -math.inf, []

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "best": self.best, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step, self.best, self.history = state["epoch"], state["step"], state["best"], state["history"]


def save_checkpoint(accelerator: Accelerator, output_dir: Path, progress: dict | None = None) -> None:
    """Write the full training state to ``output_dir/checkpoint`` atomically (temporary folder, then renames).

    Every process calls it (Accelerate saves per-process RNG states); only the main process renames. The folder's
    ``COMPLETE`` marker, written last, holds ``progress`` (the epoch and step it was taken at) as JSON.
    """
    final, temporary, old = output_dir / "checkpoint", output_dir / "checkpoint.tmp", output_dir / "checkpoint.old"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(temporary))
        if accelerator.is_main_process:
            (temporary / "COMPLETE").write_text(json.dumps(progress or {}))
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
    """The newest complete checkpoint: ``checkpoint``, else what a crash in the middle of the swap left (a complete
    ``checkpoint.tmp``, newer, or ``checkpoint.old``)."""
    for name in ("checkpoint", "checkpoint.tmp", "checkpoint.old"):
        candidate = output_dir / name
        if (candidate / "COMPLETE").is_file():
            return candidate
    return None


def checkpoint_progress(checkpoint: Path) -> dict:
    """The epoch and step a complete checkpoint was taken at (its ``COMPLETE`` marker)."""
    return json.loads((checkpoint / "COMPLETE").read_text())
