"""BatchNorm folding and channels-last memory for inference: the same outputs, maps and Grad-CAM, fewer operators."""

import copy

import pytest
import torch
from support.models import build, images_for
from torch import nn

from cxrdistill.explain import grad_cam_maps
from cxrdistill.models import CNNTeacher, CNNTeacherConfig, preset_config
from cxrdistill.models.fusion import FoldedNorm, fold_batchnorm, prepare_for_inference


def _trained_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm running statistics and an affine map far from the identity, as training leaves them
    (a fresh model's BatchNorms are the identity at eval time, so folding them would prove nothing)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            shape = module.running_mean.shape
            module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(shape, generator=generator) * 2 + 0.2)
            module.weight.data.copy_(torch.randn(shape, generator=generator) * 0.5 + 1)
            module.bias.data.copy_(torch.randn(shape, generator=generator) * 0.2)
    return model.eval()


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(module, kind) for module in model.modules())


@pytest.mark.parametrize("name", ["cnn-teacher", "teacher-vit-hybrid", "student-vit-hybrid-lowres"])
def test_folding_removes_every_efficientnet_batchnorm_and_keeps_the_outputs(name):
    model = _trained_statistics(build(name))
    images = images_for(model)
    with torch.no_grad():
        before = model.forward_for_maps(images)
        maps_before = model.explanation_maps(before)
    norms = _count(model, nn.BatchNorm2d)
    prepared = prepare_for_inference(copy.deepcopy(model))
    assert _count(prepared, nn.BatchNorm2d) == 0 and _count(prepared, FoldedNorm) == norms > 0
    with torch.no_grad():
        after = prepared.forward_for_maps(images)
        maps_after = prepared.explanation_maps(after)
    torch.testing.assert_close(after.global_logits, before.global_logits, atol=1e-4, rtol=1e-4)
    # the logits moved well beyond the tolerance had the folding lost the BatchNorm's statistics
    with torch.no_grad():
        identity = _trained_statistics(copy.deepcopy(model))
        for module in identity.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
        assert (identity(images).global_logits - before.global_logits).abs().max() > 1e-2
    for key in maps_before:
        torch.testing.assert_close(maps_after[key], maps_before[key], atol=1e-4, rtol=1e-4)


def test_grad_cam_on_a_prepared_cnn_hooks_the_folded_layer_and_gives_the_same_map():
    config = preset_config(CNNTeacherConfig, "tb-efficientnet-lite0-fine", image_size=64, local_labels=())
    model = _trained_statistics(CNNTeacher(config))
    images = images_for(model)
    before = grad_cam_maps(model, images, model.positive_label)
    prepared = prepare_for_inference(copy.deepcopy(model))
    layer, _ = prepared.grad_cam_layer()
    assert isinstance(layer, FoldedNorm) and not getattr(layer.act, "inplace", False)
    after = grad_cam_maps(prepared, images, prepared.positive_label)
    assert abs(after - before).max() < 1e-3


def test_folding_needs_eval_mode_and_is_idempotent():
    model = _trained_statistics(build("cnn-teacher"))
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model.train())
    model.eval()
    assert fold_batchnorm(model) > 0 and fold_batchnorm(model) == 0
