"""Every training script under two real processes (torchrun, gloo, CPU): the data is split, the ranks end with the
same parameters, only the main process saves, and --resume works the same under two processes.

Each run goes through ``tests/support/traced_run.py``, which records, per process, the dataset indices of every
training batch, the final parameters and the ``save_pretrained`` calls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from support.films import REPO_ROOT
from support.scripts import common_args

from cxrdistill.models import TeacherViT, TeacherViTConfig

TRACED = str(REPO_ROOT / "tests" / "support" / "traced_run.py")


def torchrun(trace, module: str, args: list[str], processes: int = 2, env: dict | None = None):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    command += ["--standalone", TRACED, str(trace), module, *args]  # --standalone: a free port of its own
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)


def traces(trace, processes: int = 2) -> list[dict]:
    return [json.loads((trace / f"rank{rank}.json").read_text()) for rank in range(processes)]


def final_parameters(trace, stage: int, processes: int = 2) -> list[dict[str, torch.Tensor]]:
    return [load_file(trace / f"rank{rank}-{stage}.safetensors") for rank in range(processes)]


@pytest.fixture(scope="module")
def random_teacher(tmp_path_factory):
    """A small untrained ViT teacher: enough to exercise distillation's plumbing."""
    folder = tmp_path_factory.mktemp("teacher") / "best"
    torch.manual_seed(0)
    TeacherViT(TeacherViTConfig(image_size=64, depth=2, embed_dim=48, num_heads=3)).save_pretrained(folder)
    return folder


SCRIPTS = {
    "train_teacher": ("cxrdistill_train.train_teacher", ["--image-size", "64", "--depth", "2", "--embed-dim", "48"]),
    "distill_student": ("cxrdistill_train.distill_student", ["--depth", "2", "--embed-dim", "24", "--ablation", "all"]),
    # fixed augmented copies with a co-teacher's film logits blended into the cached ones, on every rank
    "distill_student_coteacher": (
        "cxrdistill_train.distill_student",
        ["--depth", "2", "--embed-dim", "24", "--ablation", "all", "--augment-copies", "2"],
    ),
    "tb_localize": ("cxrdistill_train.tb_localize", ["--teacher-image-size", "64", "--stage", "both"]),
    # weighted sampling with replacement, the source adversary inside the prepared task, harmonised views
    "tb_localize_source_aware": (
        "cxrdistill_train.tb_localize",
        [
            "--teacher-image-size",
            "64",
            "--stage",
            "both",
            "--sampling",
            "source-balanced",
            "--source-adversary",
            "0.5",
            "--harmonise",
        ],
    ),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_two_processes_split_the_data_agree_on_the_parameters_and_save_once(
    script, tiny_tbx11k, random_teacher, tmp_path
):
    module, options = SCRIPTS[script]
    output, trace = tmp_path / "out", tmp_path / "trace"
    args = [*common_args(tiny_tbx11k, output, tmp_path / "cache"), "--batch-size", "4", "--epochs", "2"]
    args += [*options, "--max-steps", "3"]
    if script.startswith("distill_student"):
        args += ["--teacher", str(random_teacher)]
    if script == "distill_student_coteacher":
        args += ["--coteacher", str(random_teacher)]
    result = torchrun(trace, module, args)
    assert result.returncode == 0, result.stderr[-4000:]

    main, other = traces(trace)
    stages = len(main["fits"])
    assert stages == (2 if script.startswith("tb_localize") else 1) and len(other["fits"]) == stages
    steps = 3 * stages
    assert len(main["batches"]) == len(other["batches"]) == steps, (main["batches"], other["batches"])
    for mine, theirs in zip(main["batches"], other["batches"], strict=True):
        if "--sampling" in options:  # drawn with replacement: one film may fall in both shards, the shards differ
            assert len(mine) == 4 and mine != theirs, "both processes trained on the same images"
        else:
            assert len(mine) == 4 and not set(mine) & set(theirs), "both processes trained on the same images"
    for stage in range(stages):
        first, second = final_parameters(trace, stage)
        for name in first:
            assert torch.equal(first[name], second[name]), f"stage {stage}: {name} differs between the ranks"
    assert main["saves"] >= 1 and other["saves"] == 0, "only the main process may write models"

    folders = [output / "teacher", output / "student"] if script.startswith("tb_localize") else [output]
    for folder in folders:
        card = json.loads((folder / "best" / "metrics.json").read_text())["training"]
        assert card["processes"] == 2
        assert sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    if script.startswith("distill_student"):
        assert card["teacher_mode"] == "cache"
        assert main["fits"][0]["loss_terms"] == ["attention_kd", "global_ce", "global_kd", "local_bce", "local_kd"]
    if script == "distill_student_coteacher":
        assert card["coteacher"] == str(random_teacher) and card["augment_copies"] == 2


def test_resume_under_two_processes_continues_from_the_checkpoint_and_matches_an_uninterrupted_run(
    tiny_tbx11k, tmp_path
):
    options = ["--batch-size", "4", "--epochs", "3", "--depth", "2", "--embed-dim", "24", "--ablation", "none"]

    def run(name, *extra, env=None):
        args = [*common_args(tiny_tbx11k, tmp_path / name, tmp_path / "cache"), *options, *extra]
        return torchrun(tmp_path / f"trace-{name}", "cxrdistill_train.distill_student", args, env=env)

    straight = run("straight")
    assert straight.returncode == 0, straight.stderr[-4000:]
    killed = run("killed", env={"CXRDISTILL_DIE_AFTER_CHECKPOINTS": "2"})
    assert killed.returncode != 0 and not (tmp_path / "trace-killed" / "rank0-0.safetensors").exists()
    resumed = run("killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    assert "resumed from" in resumed.stdout and "at epoch 2" in resumed.stdout
    for rank_trace in traces(tmp_path / "trace-killed"):
        assert rank_trace["fits"] == [{"start_epoch": 2, "epochs_run": 1, "loss_terms": ["global_ce", "local_bce"]}]
        assert len(rank_trace["batches"]) == 2  # one epoch of 16 images, 4 a step in each of 2 processes
    history = json.loads((tmp_path / "killed" / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    expected = final_parameters(tmp_path / "trace-straight", 0)[0]
    for got in final_parameters(tmp_path / "trace-killed", 0):
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)
