"""MLCAK losses and the distiller: zero when student and teacher agree, right shapes, gradients to the student only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrdistill.distill import (
    MLCAKDistiller,
    MLCAKWeights,
    ablation_weights,
    cache_teacher_outputs,
    default_layer_pairs,
)
from cxrdistill.losses import attention_mse, class_token_map, logit_mse, task_loss
from cxrdistill.models import StudentViT, StudentViTConfig, TeacherViT, TeacherViTConfig


def attention(batch: int, heads: int, grid: int, seed: int = 0) -> torch.Tensor:
    tokens = 1 + grid * grid
    logits = torch.randn(batch, heads, tokens, tokens, generator=torch.Generator().manual_seed(seed))
    return logits.softmax(-1)


def test_logit_and_attention_losses_are_zero_when_student_matches_teacher():
    logits = torch.randn(4, 3)
    assert logit_mse(logits, logits.clone()) == 0
    maps = [attention(2, 3, 14, seed=i) for i in range(3)]
    assert attention_mse(maps, [m.clone() for m in maps], [(0, 0), (1, 1), (2, 2)]) == 0


def test_attention_loss_is_positive_when_maps_differ_and_uses_the_pairs():
    student = [attention(2, 3, 14, seed=i) for i in range(2)]
    teacher = [attention(2, 3, 14, seed=10 + i) for i in range(4)]
    value = attention_mse(student, teacher, [(0, 1), (1, 3)])
    expected = ((student[0].mean(1) - teacher[1].mean(1)) ** 2).mean() / 2 + (
        (student[1].mean(1) - teacher[3].mean(1)) ** 2
    ).mean() / 2
    torch.testing.assert_close(value, expected)


def test_head_averaged_teacher_maps_are_accepted():
    student, teacher = [attention(2, 3, 14)], [attention(2, 6, 14, seed=1)]
    torch.testing.assert_close(
        attention_mse(student, teacher, [(0, 0)]), attention_mse(student, [teacher[0].mean(1)], [(0, 0)])
    )


def test_different_grids_compare_class_token_maps_resampled_with_equal_mass():
    teacher = attention(2, 3, 7)
    # A student map whose class-token row is the teacher's, upsampled 2x (each cell split over 4 patches).
    student_row = class_token_map(teacher.mean(1)).repeat_interleave(2, -1).repeat_interleave(2, -2) / 4
    student = torch.zeros(2, 1, 1 + 14 * 14, 1 + 14 * 14)
    student[:, 0, 0, 0] = teacher.mean(1)[:, 0, 0]
    student[:, 0, 0, 1:] = student_row.flatten(1)
    value = attention_mse([student], [teacher], [(0, 0)])
    assert value < 1e-12
    assert attention_mse([attention(2, 3, 14)], [teacher], [(0, 0)]) > 0


def test_task_loss_ignores_unknown_local_labels():
    global_logits, global_targets = torch.randn(4, 2), torch.eye(2)[[0, 1, 1, 0]]
    local_logits, local_targets = torch.randn(4, 3), torch.ones(4, 3)
    mask = torch.tensor([[1.0, 1, 1], [0, 0, 0], [0, 0, 0], [1, 1, 1]])
    loss, terms = task_loss(global_logits, local_logits, global_targets, local_targets, mask)
    changed = local_logits.clone()
    changed[1:3] = 100.0  # unknown rows: must not matter
    _, terms_changed = task_loss(global_logits, changed, global_targets, local_targets, mask)
    torch.testing.assert_close(terms["local_bce"], terms_changed["local_bce"])
    torch.testing.assert_close(loss, terms["global_ce"] + terms["local_bce"])


def test_task_loss_leaves_unlabelled_films_to_distillation():
    """A film whose global target is NaN (a transfer film) adds nothing to the cross-entropy: the loss is the mean
    over the labelled films, and a batch of unlabelled films alone gives 0 with a gradient graph."""
    import torch.nn.functional as F

    global_logits = torch.randn(4, 2, requires_grad=True)
    targets = torch.eye(2)[[0, 1, 1, 0]]
    targets[1:3] = float("nan")
    no_local = torch.zeros(4, 0)
    _, terms = task_loss(global_logits, no_local, targets, no_local, no_local)
    expected = F.cross_entropy(global_logits[[0, 3]], targets[[0, 3]])
    torch.testing.assert_close(terms["global_ce"], expected)
    assert torch.isfinite(terms["global_ce"])
    none_known = torch.full((4, 2), float("nan"))
    loss, _ = task_loss(global_logits, no_local, none_known, no_local, no_local)
    loss.backward()
    assert loss.item() == 0.0 and global_logits.grad is not None


def test_default_layer_pairs():
    assert default_layer_pairs(6, 12) == [(1, 3), (3, 7), (5, 11)]
    assert default_layer_pairs(6, 6) == [(1, 1), (3, 3), (5, 5)]
    assert default_layer_pairs(2, 12, levels=3) == [(0, 5), (1, 11)]


def test_ablations():
    weights = MLCAKWeights(0.5, 2.0, 30.0)
    assert ablation_weights("none", weights) == MLCAKWeights(0, 0, 0)
    assert ablation_weights("logits", weights) == MLCAKWeights(0.5, 2.0, 0)
    assert ablation_weights("attention", weights) == MLCAKWeights(0, 0, 30.0)
    assert ablation_weights("all", weights) == weights
    with pytest.raises(ValueError, match="unknown ablation"):
        ablation_weights("half", weights)


@pytest.fixture
def pair():
    torch.manual_seed(0)
    teacher = TeacherViT(TeacherViTConfig(image_size=56, patch_size=4, depth=2, embed_dim=48))
    student = StudentViT(StudentViTConfig(image_size=28, depth=2, embed_dim=24))
    return teacher, student


def batch(teacher_size=56, student_size=28):
    generator = torch.Generator().manual_seed(3)
    return {
        "views": {
            teacher_size: torch.rand(4, 1, teacher_size, teacher_size, generator=generator),
            student_size: torch.rand(4, 1, student_size, student_size, generator=generator),
        },
        "global": torch.eye(2)[[0, 1, 1, 0]],
        "local": torch.zeros(4, 3),
        "local_mask": torch.ones(4, 3),
        "index": torch.arange(4),
    }


def test_gradients_reach_the_student_only_and_the_teacher_stays_frozen(pair):
    teacher, student = pair
    distiller = MLCAKDistiller(student, teacher, MLCAKWeights(), default_layer_pairs(2, 2)).train()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    b = batch()
    loss, terms = distiller(b)
    assert distiller.teacher_mode == "online"
    assert set(terms) == {"global_ce", "local_bce", "local_kd", "global_kd", "attention_kd"}
    assert all(torch.isfinite(v) and v >= 0 for v in terms.values())
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_cached_teacher_targets_equal_online_ones(pair):
    teacher, student = pair
    distiller = MLCAKDistiller(student, teacher, MLCAKWeights(), default_layer_pairs(2, 2)).train()
    b = batch()
    teacher_images = b["views"][56]
    cache = cache_teacher_outputs(
        distiller, [(torch.tensor([2, 3]), teacher_images[2:]), (torch.tensor([0, 1]), teacher_images[:2])], size=4
    )
    cached = cache.lookup(torch.tensor([0, 1, 2, 3]))
    online = distiller.teacher_targets(teacher_images)
    torch.testing.assert_close(cached.global_logits, online.global_logits)
    for layer in online.attentions:
        torch.testing.assert_close(cached.attentions[layer], online.attentions[layer], atol=1e-3, rtol=0)
    torch.manual_seed(0)
    from_teacher, _ = distiller(b)
    distiller.use_cache(cache)
    assert distiller.teacher_mode == "cache" and distiller.teacher is None
    torch.manual_seed(0)
    from_cache, _ = distiller(b)
    torch.testing.assert_close(from_cache, from_teacher, atol=1e-4, rtol=1e-4)


def test_student_alone_needs_no_teacher(pair):
    _, student = pair
    distiller = MLCAKDistiller(student, None, ablation_weights("none", MLCAKWeights()), [(1, 1)])
    b = batch()
    _, terms = distiller(b)
    assert set(terms) == {"global_ce", "local_bce"} and distiller.teacher_mode == "none"
    with pytest.raises(ValueError, match="needs a teacher or cached teacher targets"):
        MLCAKDistiller(student, None, MLCAKWeights(), [(1, 1)])(b)


def test_soft_target_kd_is_zero_on_agreement_and_positive_otherwise():
    from cxrdistill.losses import soft_target_kd

    logits = torch.randn(5, 2)
    assert soft_target_kd(logits, logits.clone()).abs() < 1e-6
    assert soft_target_kd(logits, -logits) > 0
    multi = torch.randn(5, 3)
    assert soft_target_kd(multi, multi.clone(), multi_label=True).abs() < 1e-6
    assert soft_target_kd(multi, -multi, multi_label=True) > 0
    student = torch.randn(5, 2, requires_grad=True)
    teacher = torch.randn(5, 2, requires_grad=True)
    soft_target_kd(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None


def test_cam_alignment_resamples_and_ignores_scale():
    from cxrdistill.losses import cam_alignment

    teacher = torch.zeros(2, 8, 8)
    teacher[:, 2:4, 4:6] = 5.0
    student = torch.zeros(2, 4, 4)
    student[:, 1, 2] = 0.3  # the same place on a coarser grid, another scale
    aligned = cam_alignment(student, teacher)
    elsewhere = torch.zeros(2, 4, 4)
    elsewhere[:, 3, 0] = 0.3
    assert cam_alignment(elsewhere, teacher) > aligned
    assert cam_alignment(teacher * 3 + 1, teacher) < 1e-10


def test_tb_distiller_trains_the_student_only_and_its_buffers_follow_the_module():
    from cxrdistill.distill import SupervisedTask, TBDistiller, TBLossWeights
    from cxrdistill.models import CNNStudent, CNNStudentConfig, CNNTeacher, CNNTeacherConfig

    labels = dict(global_labels=("not_tb", "tb"), local_labels=())
    torch.manual_seed(0)
    teacher = CNNTeacher(CNNTeacherConfig(timm_name="resnet10t", image_size=56, **labels))
    student = CNNStudent(CNNStudentConfig(timm_name="resnet10t", image_size=28, **labels))
    weights = torch.tensor([2.0, 0.5])
    task = TBDistiller(student, teacher, TBLossWeights(), class_weights=weights).train()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    loss, terms = task(batch())
    assert set(terms) == {"global_ce", "soft_kd", "cam_alignment"} and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.global_head.weight.grad.abs().sum() > 0
    # the class weights weigh the cross-entropy and move with the module (a buffer, not a closure's tensor)
    unweighted = TBDistiller(student, teacher, TBLossWeights())(batch())[1]["global_ce"]
    assert not torch.isclose(terms["global_ce"], unweighted)
    assert "class_weights" not in task.state_dict()  # derived from the data, not trained state
    with pytest.raises(ValueError, match="must agree"):
        TBDistiller(student, CNNTeacher(CNNTeacherConfig(global_labels=("a", "b"), local_labels=())), TBLossWeights())
    supervised = SupervisedTask(teacher.requires_grad_(True), 56, class_weights=weights)
    assert set(supervised(batch())[1]) == {"global_ce", "local_bce"}
    assert task.double().class_weights.dtype == torch.float64


def test_source_adversary_reverses_its_gradient_and_sees_only_positive_films():
    from cxrdistill.distill import ConditionalSourceAdversary

    torch.manual_seed(0)
    adversary = ConditionalSourceAdversary(width=6, positive=1)
    features = torch.randn(4, 6, 2, 2, requires_grad=True)
    targets = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    sources = ["tbx11k", "shenzhen", "shenzhen", "tbx11k"]
    adversary(features, targets, sources).backward()
    reversed_grad = features.grad.clone()
    assert reversed_grad[2].abs().sum() == 0  # a normal film: the adversary is conditioned on TB
    # without the reversal the same loss pulls the features the other way
    features.grad = None
    pooled = features.mean(dim=(2, 3))
    logits = adversary.head(pooled).squeeze(1)
    archive = torch.tensor([1.0, 0.0, 0.0, 1.0])
    weight = torch.tensor([0.25, 0.5, 0.0, 0.25])
    plain = (torch.nn.functional.binary_cross_entropy_with_logits(logits, archive, reduction="none") * weight).sum()
    plain.backward()
    torch.testing.assert_close(reversed_grad, -features.grad)
    # each source group weighs half: uninformative logits give log 2
    torch.nn.init.zeros_(adversary.head[2].weight)
    torch.nn.init.zeros_(adversary.head[2].bias)
    assert adversary(features, targets, sources).item() == pytest.approx(np.log(2), abs=1e-6)


def test_supervised_task_adds_the_source_adversary_term():
    from cxrdistill.distill import ConditionalSourceAdversary, SupervisedTask
    from cxrdistill.models import CNNTeacher, CNNTeacherConfig

    model = CNNTeacher(CNNTeacherConfig(image_size=32, global_labels=("not_tb", "tb"), local_labels=()))
    adversary = ConditionalSourceAdversary(model.backbone.num_features, model.positive_index, weight=0.5)
    task = SupervisedTask(model, 32, adversary=adversary)
    batch = {
        "views": {32: torch.rand(4, 1, 32, 32)},
        "global": torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]),
        "local": torch.zeros(4, 0),
        "local_mask": torch.zeros(4, 0),
        "source": ["tbx11k", "da", "da", "tbx11k"],
    }
    loss, terms = task(batch)
    assert set(terms) == {"global_ce", "local_bce", "source_adversary"}
    torch.testing.assert_close(loss, terms["global_ce"] + terms["local_bce"] + 0.5 * terms["source_adversary"])


def test_lung_guided_tb_distillation_aligns_with_the_teacher_map_inside_the_lungs():
    from cxrdistill.distill import TBDistiller, TBLossWeights
    from cxrdistill.losses import cam_alignment, min_max_normalise
    from cxrdistill.models import (
        CNNStudent,
        CNNStudentConfig,
        CNNTeacher,
        CNNTeacherConfig,
        LungSegmenter,
        LungSegmenterConfig,
    )

    labels = dict(global_labels=("not_tb", "tb"), local_labels=())
    torch.manual_seed(0)
    teacher = CNNTeacher(CNNTeacherConfig(timm_name="resnet10t", image_size=56, **labels))
    student = CNNStudent(CNNStudentConfig(timm_name="resnet10t", image_size=28, **labels))
    lungs = LungSegmenter(LungSegmenterConfig(image_size=64))
    left_half = torch.zeros(64, 64)
    left_half[:, :32] = 1.0  # a mask that differs clearly from "everywhere" (an untrained model's is near-uniform)
    lungs.lung_probability = lambda view: left_half.expand(len(view), 64, 64)
    task = TBDistiller(student, teacher, TBLossWeights(), lung_model=lungs).train()
    assert not lungs.training and all(not p.requires_grad for p in lungs.parameters())
    data = batch()
    _, terms = task(data)
    # the target by hand: the teacher's normalised CAM times each cell's lung share
    with torch.no_grad():
        images = data["views"][56]
        teacher_cam = teacher.class_activation_maps(teacher(images, return_features=True).features)[:, 1]
        view = torch.nn.functional.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False)
        share = torch.nn.functional.adaptive_avg_pool2d(lungs.lung_probability(view)[:, None], teacher_cam.shape[-2:])
        student_cam = student.class_activation_maps(student(data["views"][28], return_features=True).features)[:, 1]
    expected = cam_alignment(student_cam, min_max_normalise(teacher_cam) * share[:, 0])
    torch.testing.assert_close(terms["cam_alignment"], expected)
    plain = TBDistiller(student, teacher, TBLossWeights())(data)[1]["cam_alignment"]
    assert (plain - expected).abs() > 0.01 * plain.abs()  # the mask changes the target, not by rounding


def test_the_box_supervised_map_loss_targets_box_cells_and_skips_films_without_known_boxes():
    from cxrdistill.losses import box_cell_targets, box_heatmap_loss

    boxes = [torch.tensor([[0.0, 0.0, 56.0, 112.0]]), torch.zeros(0, 4), torch.zeros(0, 4)]
    targets = box_cell_targets(boxes, (4, 4), 224)  # cells 56 px wide: the box covers column 0, rows 0-1
    assert targets[0].tolist() == [[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert targets[1:].sum() == 0
    log_odds = torch.zeros(3, 4, 4, requires_grad=True)
    positive, negative = torch.tensor([True, True, False]), torch.tensor([False, False, True])
    loss = box_heatmap_loss(log_odds, boxes, positive, negative, 224)
    loss.backward()
    assert loss.item() == pytest.approx(np.log(2))  # every used cell at log-odds 0
    assert log_odds.grad[1].abs().sum() == 0  # a TB film without boxes adds nothing
    assert (log_odds.grad[2] > 0).all()  # a normal film: every cell pushed down
    assert (log_odds.grad[0][targets[0] > 0] < 0).all() and (log_odds.grad[0][targets[0] == 0] > 0).all()


def test_the_box_dice_loss_scores_the_overlap_of_the_map_with_the_boxes_on_tb_films_with_boxes():
    from cxrdistill.losses import box_cell_targets, box_dice_loss

    boxes = [torch.tensor([[0.0, 0.0, 56.0, 112.0]]), torch.zeros(0, 4), torch.zeros(0, 4)]
    targets = box_cell_targets(boxes, (4, 4), 224)
    positive = torch.tensor([True, True, False])
    on_box = torch.where(targets > 0, 8.0, -8.0)  # the map is the box
    shifted = torch.roll(on_box, shifts=2, dims=-1)  # the same mass, beside the box
    assert box_dice_loss(on_box, boxes, positive, 224).item() < 0.01
    assert box_dice_loss(shifted, boxes, positive, 224).item() == pytest.approx(0.8, abs=1e-3)  # 1 - 1 / (2 + 2 + 1)
    log_odds = torch.zeros(3, 4, 4, requires_grad=True)
    box_dice_loss(log_odds, boxes, positive, 224).backward()
    assert log_odds.grad[1:].abs().sum() == 0  # no boxes (a TB film without them, a normal film): nothing
    assert (log_odds.grad[0][targets[0] > 0] < 0).all() and (log_odds.grad[0][targets[0] == 0] > 0).all()
    empty = torch.zeros(3, 4, 4, requires_grad=True)
    assert box_dice_loss(empty, boxes, torch.tensor([False, True, False]), 224).item() == 0.0


def test_mixup_mixes_every_view_and_target_alike_so_views_stay_reductions_of_one_film():
    from cxrdistill.data.transforms import area_resize
    from cxrdistill.distill import mix_batch

    films = torch.rand(6, 1, 56, 56, generator=torch.Generator().manual_seed(1))
    local_mask = torch.ones(6, 3)
    local_mask[2, 1] = 0
    b = {
        "views": {56: films, 28: area_resize(films, 28)},
        "global": torch.eye(2)[[0, 1, 1, 0, 1, 0]],
        "local": torch.rand(6, 3),
        "local_mask": local_mask,
    }
    torch.manual_seed(5)
    mixed = mix_batch(b, 0.4)
    weight, perm = mixed["mixup"]
    assert 0 < weight < 1 and sorted(perm.tolist()) == list(range(6)) and perm.tolist() != list(range(6))
    torch.testing.assert_close(mixed["views"][28], area_resize(mixed["views"][56], 28))  # one mixed film, reduced
    torch.testing.assert_close(mixed["global"], weight * b["global"] + (1 - weight) * b["global"][perm])
    torch.testing.assert_close(mixed["global"].sum(1), torch.ones(6))
    unknown = {int(i) for i in torch.nonzero(perm == 2)} | {2}
    assert all(mixed["local_mask"][i, 1] == 0 for i in unknown) and mixed["local_mask"].sum() == 18 - len(unknown)


def test_the_online_teacher_sees_the_same_mix_as_the_student(pair):
    from cxrdistill.distill import mix_batch

    teacher, student = pair
    distiller = MLCAKDistiller(student, teacher, MLCAKWeights(), default_layer_pairs(2, 2), mixup_alpha=0.4).train()
    seen = {}
    teacher.register_forward_pre_hook(lambda module, args: seen.setdefault("teacher", args[0].clone()))
    student.register_forward_pre_hook(lambda module, args: seen.setdefault("student", args[0].clone()))
    torch.manual_seed(7)
    expected = mix_batch(batch(), 0.4)
    torch.manual_seed(7)
    distiller(batch())
    torch.testing.assert_close(seen["teacher"], expected["views"][56])
    torch.testing.assert_close(seen["student"], expected["views"][28])
    assert not torch.equal(seen["teacher"], batch()["views"][56])
    distiller.eval()  # evaluation is never mixed
    seen.clear()
    distiller(batch())
    torch.testing.assert_close(seen["teacher"], batch()["views"][56])
    with pytest.raises(ValueError, match="mixup_alpha must be >= 0"):
        MLCAKDistiller(student, teacher, MLCAKWeights(), default_layer_pairs(2, 2), mixup_alpha=-1)


def test_mixup_refuses_cached_teacher_outputs(pair):
    teacher, student = pair
    distiller = MLCAKDistiller(student, teacher, MLCAKWeights(), default_layer_pairs(2, 2), mixup_alpha=0.4).train()
    distiller.use_cache(cache_teacher_outputs(distiller, [(torch.arange(4), batch()["views"][56])], size=4))
    with pytest.raises(ValueError, match="needs the teacher online"):
        distiller(batch())
