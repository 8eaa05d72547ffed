"""The training scripts end to end on a tiny synthetic TBX11K, in seconds: teacher, MLCAK student, resume."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, write_synthetic_tbx11k

sys.path.insert(0, str(REPO_ROOT))

from cxrdistill.models import StudentViT, TeacherViT
from train import distill_student, train_teacher
from train.common import latest_checkpoint


@pytest.fixture(scope="module")
def tiny_tbx11k(tmp_path_factory):
    return write_synthetic_tbx11k(tmp_path_factory.mktemp("tbx11k"))


def common_args(root, output, cache) -> list[str]:
    return [
        "--root",
        str(root),
        "--output-dir",
        str(output),
        "--cache-dir",
        str(cache),
        "--batch-size",
        "8",
        "--num-workers",
        "0",
        "--bootstrap",
        "20",
        "--cache-size",
        "96",
        "--val-fraction",
        "0.3",
    ]


@pytest.fixture(scope="module")
def teacher_folder(tiny_tbx11k, tmp_path_factory):
    output = tmp_path_factory.mktemp("teacher")
    result = train_teacher.main(
        [
            *common_args(tiny_tbx11k, output, output / "cache"),
            "--epochs",
            "2",
            "--image-size",
            "64",
            "--depth",
            "2",
            "--embed-dim",
            "48",
        ]
    )
    assert result["final"]["results"]
    return output / "best"


def test_teacher_script_saves_a_loadable_model_with_a_card(teacher_folder):
    model = TeacherViT.from_pretrained(teacher_folder)
    assert model.config.image_size == 64 and model.config.global_labels == ("not_tb", "tb")
    metrics = json.loads((teacher_folder / "metrics.json").read_text())
    assert metrics["training"]["command"].startswith("python train/train_teacher.py")
    assert "AUROC" in (teacher_folder / "README.md").read_text()


@pytest.mark.parametrize(
    "ablation, mode", [("all", "cache"), ("all", "online"), ("none", "cache"), ("attention", "cache")]
)
def test_distill_script_every_ablation(teacher_folder, tiny_tbx11k, tmp_path, ablation, mode):
    args = [
        *common_args(tiny_tbx11k, tmp_path / "out", tmp_path / "cache"),
        "--epochs",
        "2",
        "--depth",
        "2",
        "--embed-dim",
        "24",
        "--ablation",
        ablation,
        "--teacher-mode",
        mode,
    ]
    if ablation != "none":
        args += ["--teacher", str(teacher_folder)]
    result = distill_student.main(args)
    student = StudentViT.from_pretrained(tmp_path / "out" / "best")
    assert student.config.image_size == 28 and student.config.grid_size == 14
    assert result["final"]["training"]["ablation"] == ablation
    saved = json.loads((tmp_path / "out" / "best" / "metrics.json").read_text())["training"]
    assert saved["ablation"] == ablation and saved["train_s"] > 0 and "teacher_cache_s" in saved


def test_distillation_without_a_teacher_is_refused(tiny_tbx11k, tmp_path):
    with pytest.raises(SystemExit, match="needs --teacher"):
        distill_student.main([*common_args(tiny_tbx11k, tmp_path, tmp_path / "cache"), "--ablation", "all"])


def test_resume_continues_where_a_killed_run_stopped_and_matches_an_uninterrupted_run(
    tiny_tbx11k, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    from train import common

    def run(output, resume=False):
        args = [
            *common_args(tiny_tbx11k, output, tmp_path / "cache"),
            "--epochs",
            "3",
            "--depth",
            "2",
            "--embed-dim",
            "24",
            "--ablation",
            "none",
            "--warmup-epochs",
            "1",
        ]
        return distill_student.main([*args, "--resume"] if resume else args)

    run(tmp_path / "straight")
    # Kill the second run right after its second checkpoint, as a SIGKILL between epochs would.
    real_save, saves = common.save_checkpoint, []

    def save_then_die(accelerator, output_dir):
        real_save(accelerator, output_dir)
        saves.append(output_dir)
        if len(saves) == 2:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(common, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "interrupted")
    monkeypatch.setattr(common, "save_checkpoint", real_save)
    assert latest_checkpoint(tmp_path / "interrupted") is not None
    run(tmp_path / "interrupted", resume=True)
    history = json.loads((tmp_path / "interrupted" / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    straight = load_file(tmp_path / "straight" / "checkpoint" / "model.safetensors")
    interrupted = load_file(tmp_path / "interrupted" / "checkpoint" / "model.safetensors")
    for key in straight:
        torch.testing.assert_close(interrupted[key], straight[key], atol=1e-6, rtol=1e-5, msg=key)


def test_evaluate_cli_reports_and_calibrates(teacher_folder, tiny_tbx11k, tmp_path):
    from train import evaluate

    report_path = tmp_path / "eval.json"
    assert (
        evaluate.main(
            [
                "--model",
                str(teacher_folder),
                "--dataset",
                "tbx11k",
                "--root",
                str(tiny_tbx11k),
                "--val-fraction",
                "0.3",
                "--bootstrap",
                "20",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--json",
                str(report_path),
                "--calibrate-to",
                str(tmp_path / "calibrated"),
                "--location-prior",
            ]
        )
        == 0
    )
    report = json.loads(report_path.read_text())
    assert report["images"] == 8 and set(report["global_operating_points"]) == {"not_tb", "tb"}
    localisation = report["localisation"]["last-layer CLS attention"]
    assert localisation["images"] > 0 and 0 <= localisation["miou"] <= localisation["miou_at_best_threshold"] <= 1
    maps = {"last-layer CLS attention", "attention rollout"}
    combined = {f"{name} x location prior" for name in maps}  # each map weighted by the prior, labelled as such
    assert set(report["localisation"]) == maps | combined | {"location prior (no model)"}
    calibrated = TeacherViT.from_pretrained(tmp_path / "calibrated")
    assert calibrated.config.global_thresholds is not None and len(calibrated.config.local_thresholds) == 3


def test_tb_localisation_script_teacher_then_student(tiny_tbx11k, tmp_path):
    from cxrdistill.models import CNNStudent, CNNTeacher
    from train import tb_localize

    result = tb_localize.main(
        [
            *common_args(tiny_tbx11k, tmp_path / "tb", tmp_path / "cache"),
            "--epochs",
            "1",
            "--teacher-size",
            "64",
            "--student-size",
            "28",
        ]
    )
    assert set(result) == {"teacher", "student"}
    teacher = CNNTeacher.from_pretrained(tmp_path / "tb" / "teacher" / "best")
    student = CNNStudent.from_pretrained(tmp_path / "tb" / "student" / "best")
    assert teacher.config.local_labels == () and student.config.global_labels == ("not_tb", "tb")
    with pytest.raises(SystemExit, match="needs --teacher"):
        tb_localize.main([*common_args(tiny_tbx11k, tmp_path / "x", tmp_path / "cache"), "--stage", "student"])

    # the release step: calibrated thresholds, a heatmap threshold from the boxes, localisation on the card
    from train.experiments import release

    target = tmp_path / "models" / "tb-student-28"
    source = tmp_path / "tb" / "student" / "best"
    release.main([f"{source}={target}", "--root", str(tiny_tbx11k), "--localisation", "--bootstrap", "20"])
    released = CNNStudent.from_pretrained(target)
    assert released.config.global_thresholds is not None and 0 < released.config.heatmap_threshold < 1
    card = json.loads((target / "metrics.json").read_text())
    names = [r["name"] for r in card["results"]]
    assert any("mIoU" in n and "location prior" in n for n in names) and any("pointing game" in n for n in names)
    assert "mIoU" in (target / "README.md").read_text()

    # over the size budget: it says so and the release already there is left exactly as it was
    before = {f: f.read_bytes() for f in target.parent.rglob("*") if f.is_file()}
    other = tmp_path / "models" / "tb-teacher-64"
    with pytest.raises(SystemExit, match=r"over the 0\.01 MiB budget: nothing was replaced"):
        release.main([f"{source}={target}", f"{source}={other}", "--root", str(tiny_tbx11k), "--budget-mib", "0.01"])
    assert {f: f.read_bytes() for f in target.parent.rglob("*") if f.is_file()} == before


def test_class_weights_balance_the_classes():
    from train.tb_localize import class_weight_tensor

    targets = torch.tensor([[1.0, 0.0]] * 1 + [[0.0, 1.0]] * 3)
    torch.testing.assert_close(class_weight_tensor(targets, "balanced"), torch.tensor([2.0, 2 / 3]))
    assert class_weight_tensor(targets, "none") is None


def test_a_full_disk_at_save_time_keeps_the_previous_checkpoint_and_says_so(tmp_path, caplog):
    import errno

    from accelerate import Accelerator

    from train.common import save_checkpoint

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(3, 2))
    save_checkpoint(accelerator, tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoint").iterdir() if p.is_file()}

    def full_disk(path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"half")  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    accelerator.save_state = full_disk
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(RuntimeError, match=r"No space left on device.*previous checkpoint .* is intact"):
        save_checkpoint(accelerator, tmp_path)
    assert "is intact" in caplog.text
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint"
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoint").iterdir() if p.is_file()} == before
    assert not (tmp_path / "checkpoint.tmp").exists()


def test_sigkill_at_a_random_moment_then_resume_ends_with_the_uninterrupted_weights(tiny_tbx11k, tmp_path):
    """A real ``kill -9`` of the training process (not an exception inside it), at a random moment after the first
    checkpoint, then ``--resume``: the final weights match a run that was never interrupted."""
    import random
    import signal
    import subprocess
    import time

    from safetensors.torch import load_file

    script = str(REPO_ROOT / "train" / "distill_student.py")
    options = ["--epochs", "8", "--depth", "2", "--embed-dim", "24", "--ablation", "none", "--warmup-epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

    def command(output):
        return [sys.executable, script, *common_args(tiny_tbx11k, output, tmp_path / "cache"), *options]

    subprocess.run(command(tmp_path / "straight"), env=env, check=True, capture_output=True, timeout=600)
    victim = subprocess.Popen(
        command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while latest_checkpoint(tmp_path / "killed") is None and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random().uniform(0.0, 1.0))  # somewhere in a later epoch, maybe mid-checkpoint
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert latest_checkpoint(tmp_path / "killed") is not None  # a complete checkpoint survived the kill
    subprocess.run([*command(tmp_path / "killed"), "--resume"], env=env, check=True, capture_output=True, timeout=600)
    straight = load_file(tmp_path / "straight" / "checkpoint" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "checkpoint" / "model.safetensors")
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-6, rtol=1e-5, msg=key)
