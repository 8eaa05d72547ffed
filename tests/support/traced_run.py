"""Run a training script's ``main`` in this process and record what it did, for the multi-process tests.

    torchrun --nproc_per_node 2 tests/support/traced_run.py TRACE_DIR cxrdistill_train.train_teacher [script args]

Each process writes ``TRACE_DIR/rank{R}.json`` (the dataset indices of every training batch it saw, its count of
``save_pretrained`` calls, the epoch each ``fit`` call started at) and ``TRACE_DIR/rank{R}-{stage}.safetensors``
(the trained model's final parameters, one file per ``fit`` call). ``CXRDISTILL_DIE_AFTER_CHECKPOINTS=N`` makes
every process exit (code 3) right after its N-th complete checkpoint, as a crash between epochs would.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

from safetensors.torch import save_file

import cxrdistill_train.loop as loop
from cxrdistill.models.base import CXRModel

trace_dir, module_name, *script_args = sys.argv[1:]
trace_dir = Path(trace_dir)
rank = int(os.environ.get("RANK", 0))
trace = {"batches": [], "saves": 0, "fits": []}


def write_trace() -> None:
    trace_dir.mkdir(parents=True, exist_ok=True)
    (trace_dir / f"rank{rank}.json").write_text(json.dumps(trace))


real_fit, real_save_pretrained, real_save_checkpoint = loop.fit, CXRModel.save_pretrained, loop.save_checkpoint


def traced_fit(run, loop, accelerator, on_best):
    stage = len(trace["fits"])
    hook = run.task.register_forward_pre_hook(lambda module, args: trace["batches"].append(args[0]["index"].tolist()))
    result = real_fit(run, loop, accelerator, on_best)
    hook.remove()
    trace["fits"].append({key: result[key] for key in ("start_epoch", "epochs_run", "loss_terms")})
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in run.model.state_dict().items()}
    save_file(state, str(trace_dir / f"rank{rank}-{stage}.safetensors"))
    write_trace()
    return result


def traced_save_pretrained(self, *args, **kwargs):
    trace["saves"] += 1
    return real_save_pretrained(self, *args, **kwargs)


checkpoints = 0


def save_then_maybe_die(accelerator, output_dir, progress=None):
    global checkpoints
    real_save_checkpoint(accelerator, output_dir, progress)
    checkpoints += 1
    if checkpoints == int(os.environ.get("CXRDISTILL_DIE_AFTER_CHECKPOINTS", 0)):
        write_trace()
        os._exit(3)


trace_dir.mkdir(parents=True, exist_ok=True)
loop.fit, CXRModel.save_pretrained, loop.save_checkpoint = traced_fit, traced_save_pretrained, save_then_maybe_die
importlib.import_module(module_name).main(script_args)
write_trace()
