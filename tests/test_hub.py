"""Models through the Hub: the unchanged huggingface_hub client against the loopback Hub server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
import torch
from support.films import REPO_ROOT
from support.models import small_student

from cxrdistill.models import CNNStudent, CNNStudentConfig, ModelLoadError, StudentViT

METRICS = {
    "dataset": {"name": "TBX11K", "type": "tbx11k", "split": "validation (20% of all_train)", "licence": "research"},
    "results": [
        {"type": "roc_auc", "name": "macro AUROC (global)", "value": 0.9123, "ci95": [0.88, 0.94]},
        {"type": "roc_auc", "name": "AUROC, same-hospital images", "value": 0.8012},
    ],
    "training": {"command": "python train/distill_student.py --size 28", "machine": "2-core CPU", "data": "TBX11K"},
}


def repo_name() -> str:
    return f"cxr-org/student-{uuid.uuid4().hex[:8]}"


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (key, left), (_, right) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(left, right, atol=0, rtol=0, msg=key)


def test_push_to_hub_then_from_pretrained(hub):
    repo_id = repo_name()
    model = small_student()
    model.push_to_hub(repo_id, metrics=METRICS)
    loaded = StudentViT.from_pretrained(repo_id)
    assert_same_weights(model, loaded)
    image = torch.rand(1, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image).global_logits, model(image).global_logits, atol=0, rtol=0)
    # pushing again to the existing repo takes the 409 "already exists" path of create_repo
    model.push_to_hub(repo_id, metrics=METRICS)


def test_push_folder_with_a_tag_and_pull_by_tag_after_main_moved_on(hub, tmp_path):
    from huggingface_hub import HfApi

    from cxrdistill.hub import pull, push_folder

    repo_id = repo_name()
    first, second = small_student(seed=1), small_student(seed=2)
    first.save_pretrained(tmp_path / "v1", metrics=METRICS)
    second.save_pretrained(tmp_path / "v2")
    v1_commit = push_folder(tmp_path / "v1", repo_id, tag="v1.0")
    push_folder(tmp_path / "v2", repo_id)
    refs = HfApi().list_repo_refs(repo_id)
    assert [t.name for t in refs.tags] == ["v1.0"] and refs.tags[0].target_commit == v1_commit
    assert_same_weights(StudentViT.from_pretrained(repo_id, revision="v1.0"), first)
    assert_same_weights(StudentViT.from_pretrained(repo_id, revision=v1_commit), first)
    assert_same_weights(StudentViT.from_pretrained(repo_id), second)
    folder = pull(repo_id, revision="v1.0", local_dir=tmp_path / "pulled")
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "README.md",
        "config.json",
        "metrics.json",
        "model.safetensors",
    ]
    assert json.loads((folder / "metrics.json").read_text()) == METRICS


def test_branch_push_and_snapshot_download(hub, tmp_path):
    from huggingface_hub import hf_hub_download, snapshot_download

    from cxrdistill.hub import push_folder

    repo_id = repo_name()
    model = CNNStudent(CNNStudentConfig()).eval()
    model.save_pretrained(tmp_path / "cnn")
    push_folder(tmp_path / "cnn", repo_id, branch="experiment")
    folder = snapshot_download(repo_id, revision="experiment")
    assert {"config.json", "model.safetensors", "README.md"} <= set(os.listdir(folder))
    config = json.loads(open(hf_hub_download(repo_id, "config.json", revision="experiment")).read())
    assert config["model_type"] == "cxrdistill-cnn-student"
    assert_same_weights(CNNStudent.from_pretrained(repo_id, revision="experiment"), model)
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        CNNStudent.from_pretrained(repo_id)  # main has only the initial commit


def test_card_on_the_hub_has_valid_metadata_and_the_measured_metrics(hub):
    from huggingface_hub import ModelCard

    repo_id = repo_name()
    small_student().push_to_hub(repo_id, metrics=METRICS)
    card = ModelCard.load(repo_id)
    data = card.data
    assert data.library_name == "cxrdistill" and data.pipeline_tag == "image-classification"
    assert data.datasets == ["tbx11k"] and "knowledge-distillation" in data.tags
    results = {r.metric_name: r.metric_value for r in data.eval_results}  # parsed back from model-index
    assert results == {"macro AUROC (global)": 0.9123, "AUROC, same-hospital images": 0.8012}
    text = card.text
    assert "Not a medical device" in text and "0.8800 to 0.9400" in text and "How to load" in text
    assert "python train/distill_student.py --size 28" in text


def test_missing_repo_and_wrong_revision_are_clear_errors(hub):
    with pytest.raises(ModelLoadError, match="no model repo 'cxr-org/does-not-exist'"):
        StudentViT.from_pretrained("cxr-org/does-not-exist")
    repo_id = repo_name()
    small_student().push_to_hub(repo_id)
    with pytest.raises(ModelLoadError, match=r"has no revision 'v9\.9'"):
        StudentViT.from_pretrained(repo_id, revision="v9.9")


def test_pickled_weights_are_never_published(hub, tmp_path):
    from cxrdistill.hub import push_folder

    small_student().save_pretrained(tmp_path)
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickled weights"):
        push_folder(tmp_path, repo_name())


def test_offline_mode_loads_from_the_cache(hub, tmp_path):
    repo_id = repo_name()
    model = small_student(seed=7)
    model.push_to_hub(repo_id)
    StudentViT.from_pretrained(repo_id)  # fills the cache
    model.save_pretrained(tmp_path / "expected")
    code = (
        "import sys, torch\n"
        "from cxrdistill.models import StudentViT, ModelLoadError\n"
        f"a = StudentViT.from_pretrained({repo_id!r})\n"
        f"b = StudentViT.from_pretrained({str(tmp_path / 'expected')!r})\n"
        "assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))\n"
        "try:\n"
        "    StudentViT.from_pretrained('cxr-org/never-downloaded')\n"
        "except ModelLoadError as error:\n"
        "    print('refused:', error)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout and "not in the local cache" in result.stdout


def test_cli_push_and_pull(hub, tmp_path, capsys):
    from cxrdistill.cli import main

    repo_id = repo_name()
    small_student().save_pretrained(tmp_path / "model", metrics=METRICS)
    assert main(["push", str(tmp_path / "model"), repo_id, "--tag", "v0.1"]) == 0
    assert "tag v0.1" in capsys.readouterr().out
    assert main(["pull", repo_id, "--revision", "v0.1", "--local-dir", str(tmp_path / "pulled")]) == 0
    assert "StudentViT, 28 px" in capsys.readouterr().out
    assert main(["pull", "cxr-org/nothing-here"]) == 1
    assert "no model repo" in capsys.readouterr().err
    assert main(["push", str(tmp_path / "empty-folder"), repo_id]) == 1


@pytest.mark.parametrize("name", ["teacher-vit", "student-vit-28", "cnn-teacher", "cnn-student"])
def test_every_model_class_round_trips_through_the_hub_by_tag(hub, name):
    from support.models import build, images_for

    model = build(name, seed=11)
    repo_id = repo_name()
    model.push_to_hub(repo_id)
    from huggingface_hub import HfApi

    HfApi().create_tag(repo_id, tag="v1")
    build(name, seed=12).push_to_hub(repo_id)  # main moves on: v1 is no longer its head
    loaded = type(model).from_pretrained(repo_id, revision="v1")
    assert_same_weights(model, loaded)
    newer = type(model).from_pretrained(repo_id)
    assert any(
        not torch.equal(a, b) for a, b in zip(newer.state_dict().values(), model.state_dict().values(), strict=True)
    )
    images = images_for(model)
    with torch.no_grad():
        expected, actual = model(images), loaded(images)
    torch.testing.assert_close(actual.global_logits, expected.global_logits, atol=0, rtol=0)
    torch.testing.assert_close(actual.local_logits, expected.local_logits, atol=0, rtol=0)
