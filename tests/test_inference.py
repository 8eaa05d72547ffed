"""The Predictor behind the app and the CLI: released models, geometry of maps and boxes, errors, threads."""

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from support.films import REPO_ROOT, chest_png, png_bytes, shared_path, synthetic_chest
from support.models import tb_model

from cxrdistill.inference import Predictor
from cxrdistill.io import XRayReadError
from cxrdistill.models import StudentViT, StudentViTConfig, load_model
from cxrdistill.results import BOX_THRESHOLD
from cxrdistill.triage import state_of


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """The released models, with a random TB CNN while no TB model is released."""
    released = Predictor.from_release(REPO_ROOT / "models")
    if released.tb_model is None:
        released.tb_model = tb_model()
    return released


def test_released_models_load_and_predict_the_bundled_dicom(predictor):
    from cxrdistill.examples import example_path

    assert predictor.resolutions[0] == 28 and predictor.teacher is not None
    prediction = predictor.predict(example_path(), resolution=28)
    result = prediction.to_dict()
    json.dumps(result)  # JSON-friendly all the way down
    assert result["image"] == {"original_size": [1955, 1841], "format": "DICOM"}
    for model in (result["student"], result["teacher"], result["tb"]):
        assert sum(model["global_probs"].values()) == pytest.approx(1.0, abs=1e-5)
        assert all(0.0 <= p <= 1.0 for p in model["local_probs"].values())
        for box in model["boxes"]:
            x0, y0, x1, y1 = box["box"]
            assert 0 <= x0 < x1 <= 1841 and 0 <= y0 < y1 <= 1955
    # the released MLCAK models carry calibrated thresholds: every label gets a call
    assert all(isinstance(c, bool) for c in result["student"]["global_calls"].values())
    assert prediction.image.shape == (512, 482)  # display copy, longest side 512
    assert prediction.student.view.shape == (28, 28) and prediction.teacher.view.shape == (224, 224)
    maps = {f"CLS attention, layer {predictor.students[28].config.depth}", "attention rollout"}
    assert set(prediction.student.maps) == maps | {f"{name} inside the lungs" for name in maps}  # a real chest film
    assert all(m.shape == (512, 482) for m in prediction.student.maps.values())


def _iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_boxes_are_in_the_original_image_pixels(predictor):
    """The same picture at 4x the pixels gets 4x the box coordinates: exactly (to 3 display pixels) for a model
    that reads the whole film; for the released box drawer, which reads a lung crop found again at each size (a
    pixel or two apart), every box has a partner at the other size (IoU >= 0.85), except a region that only just
    crosses the boxing level (its score, the mean scaled map inside it, within 0.05 of BOX_THRESHOLD), which the
    one-pixel shift of the crop can tip either way."""
    small = chest_png(256)
    large = np.kron(np.asarray(Image.open(io.BytesIO(small))), np.ones((4, 4), dtype=np.uint8))  # same picture, x4
    whole_film = Predictor(predictor.students, tb_model=load_model(REPO_ROOT / "models" / "tb-student-28"))
    for model, exact in ((whole_film, True), (predictor, False)):
        big = model.predict(png_bytes(large), teacher=False)
        base = model.predict(small, teacher=False)
        assert big.to_dict()["image"]["original_size"] == [1024, 1024]
        assert base.tb.boxes, "the TB CNN's map should give at least one box"
        if exact:
            assert len(big.tb.boxes) == len(base.tb.boxes)
            for a, b in zip(base.tb.boxes, big.tb.boxes, strict=True):
                assert np.allclose(np.array(b.box), 4 * np.array(a.box), atol=4 * 3)
            continue
        small_boxes = [(4 * np.array(a.box), a.score) for a in base.tb.boxes]
        big_boxes = [(np.array(b.box), b.score) for b in big.tb.boxes]

        def unpaired(boxes, others):
            return [(box, score) for box, score in boxes if max(_iou(box, o) for o, _ in others) < 0.85]

        lonely = unpaired(small_boxes, big_boxes) + unpaired(big_boxes, small_boxes)
        assert len(lonely) <= 1, f"boxes without a partner at the other size: {lonely}"
        assert all(abs(score - BOX_THRESHOLD) < 0.05 for _, score in lonely), f"a strong region lost its box: {lonely}"


def test_each_resolution_uses_its_own_student_and_layers_are_selectable(predictor):
    data = chest_png()
    for size in predictor.resolutions:
        assert predictor.predict(data, resolution=size, teacher=False, tb=False).student.view.shape == (size, size)
    first = predictor.predict(data, layer=0, teacher=False, tb=False).student.maps
    assert "CLS attention, layer 1" in first
    with pytest.raises(ValueError, match="no student for 99 px"):
        predictor.predict(data, resolution=99)
    with pytest.raises(ValueError, match="layer must be in"):
        predictor.predict(data, layer=predictor.students[28].config.depth)


def test_bad_uploads_raise_read_errors(predictor):
    with pytest.raises(XRayReadError):
        predictor.predict(b"definitely not an image")
    with pytest.raises(XRayReadError, match=r"too small|smaller"):
        predictor.predict(png_bytes(np.zeros((8, 8), dtype=np.uint8)))


def test_an_uncalibrated_model_makes_no_calls():
    torch.manual_seed(0)
    student = StudentViT(StudentViTConfig(image_size=28, depth=2, embed_dim=48, num_heads=2))
    prediction = Predictor({28: student}).predict(chest_png())
    assert set(prediction.student.global_calls.values()) == {None}
    assert prediction.teacher is None and prediction.tb is None
    assert prediction.student.mask_threshold is None and prediction.to_dict()["student"]["box_threshold"] == 0.5


def test_predictor_construction_errors():
    with pytest.raises(ValueError, match="at least one student"):
        Predictor({})
    student = StudentViT(StudentViTConfig(image_size=28, depth=1, embed_dim=48, num_heads=2))
    with pytest.raises(ValueError, match="takes 28 px"):
        Predictor({56: student})
    with pytest.raises(ValueError, match="CNN with class activation maps"):
        Predictor({28: student}, tb_model=student)


def test_concurrent_predictions_match_sequential_ones(predictor):
    images = [chest_png(size) for size in (200, 240, 280, 320)]
    expected = [predictor.predict(image).to_dict() for image in images]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda image: predictor.predict(image).to_dict(), images * 2))
    for index, result in enumerate(results):
        want = expected[index % 4]
        for role in ("student", "teacher", "tb"):
            assert result[role]["global_probs"] == pytest.approx(want[role]["global_probs"], abs=1e-6)
            assert result[role]["boxes"] == want[role]["boxes"]


def test_each_model_reports_its_own_forward_time_apart_from_its_maps(predictor):
    from cxrdistill.data import model_input

    prediction = predictor.predict(png_bytes((synthetic_chest(300, 260) * 255).astype(np.uint8)), resolution=28)
    for result in (prediction.student, prediction.teacher, prediction.tb):
        entry = result.to_dict()
        assert result.forward_ms > 0 and result.maps_ms > 0
        assert entry["latency_ms"] == pytest.approx(entry["forward_ms"] + entry["maps_ms"], abs=2e-3)
    # the probabilities come from the plain forward pass, and the pass that records the maps agrees with it
    student = predictor.students[28]
    view = model_input(prediction.image, 28, 224)
    with torch.inference_mode():
        recorded = student.forward_for_maps(view).global_logits.softmax(-1)[0].tolist()
    assert list(prediction.student.global_probs.values()) == pytest.approx(recorded, abs=1e-5)


def test_a_one_of_k_head_gives_one_state_between_its_two_cuts():
    """The positive class's probability against the model's rule-out and rule-in cuts: a probability equal to a
    cut takes the state above it; a model without cuts gives no state."""
    from cxrdistill.results import ModelResult
    from cxrdistill.triage import Cuts

    default = Cuts(0.10, 0.40)

    def result(p_tb: float, cuts: Cuts | None = default):
        return ModelResult(
            name="m",
            model_type="x",
            image_size=28,
            global_probs={"not_tb": 1 - p_tb, "tb": p_tb},
            local_probs={},
            global_calls={},
            local_calls={},
            forward_ms=1.0,
            maps_ms=1.0,
            view=np.zeros((28, 28)),
            maps={},
            positive_label="tb",
            cuts=cuts,
        )

    states = [result(p).decision.state for p in (0.05, 0.10, 0.39, 0.40, 0.9)]
    assert states == ["low", "indeterminate", "indeterminate", "signal", "signal"]
    decision = result(0.40).decision
    assert (decision.label, decision.rule_out, decision.rule_in) == ("tb", 0.10, 0.40)
    assert "rule-in cut" in decision.explanation
    assert "a reader should look" in result(0.2).decision.explanation
    uncalibrated = result(0.9, cuts=None).decision
    assert uncalibrated.state is None and uncalibrated.rule_in is None
    assert result(0.2).to_dict()["decision"] == result(0.2).decision.to_dict()


def test_the_family_answer_comes_from_its_answering_model_whatever_the_options(predictor):
    """One answer per film: the release family's answering model runs even when the comparisons are switched off,
    and ``answer`` carries its name, probability, state and cuts."""
    from cxrdistill.release import RELEASE_FAMILIES

    answering = RELEASE_FAMILIES["tbx11k"].answer
    assert predictor.sources[predictor.answer_name] == answering
    film = shared_path("tbx11k", "imgs", "tb") / "tb0005.png"
    full = predictor.predict(film, resolution=28)
    bare = predictor.predict(film, resolution=56, teacher=False, tb=False)
    answer = full.to_dict()["answer"]
    assert set(answer) >= {"family", "model", "label", "probability", "state", "rule_out", "rule_in"}
    assert (answer["family"], answer["model"], answer["label"]) == ("tbx11k", answering, "tb")
    assert bare.to_dict()["answer"] == answer and bare.teacher is None and bare.tb is None
    result = full.answer_result
    model = predictor.classifiers[predictor.answer_name]
    assert answer["probability"] == round(result.global_probs["tb"], 4)
    assert (answer["rule_out"], answer["rule_in"]) == (
        round(model.config.rule_out_threshold, 4),
        round(model.config.rule_in_threshold, 4),
    )
    assert answer["state"] == state_of(
        result.global_probs["tb"], model.config.rule_out_threshold, model.config.rule_in_threshold
    )
    assert full.results[0].name == predictor.answer_name  # the answering model is listed first, once
    assert len({r.name for r in full.results}) == len(full.results)


def test_tb_boxes_are_drawn_from_the_map_kept_inside_the_lungs(predictor):
    from cxrdistill.results import display_boxes

    film = shared_path("tbx11k", "imgs", "tb") / "tb0007.png"
    prediction = predictor.predict(film)
    assert prediction.lungs_found
    tb = prediction.tb
    masked_name, masked = next(iter(tb.maps.items()))
    assert masked_name.endswith("inside the lungs")
    assert tb.boxes and tb.boxes == display_boxes(masked, predictor.tb_model.config, prediction.scale)
    unmasked = tb.maps[masked_name.removesuffix(" inside the lungs")]
    assert tb.boxes != display_boxes(unmasked, predictor.tb_model.config, prediction.scale)
    for box in tb.boxes:  # each box's centre lies in the lungs
        x0, y0, x1, y1 = (v / prediction.scale for v in box.box)
        assert prediction.lungs[int((y0 + y1) / 2), int((x0 + x1) / 2)]


def test_findings_that_are_not_trusted_are_shown_but_never_called():
    """NIH-1024's findings: called only where the card's validation AUROC's lower bound reaches 0.70 with 20
    positive films; the others keep their probability, get no call, and say why."""
    from cxrdistill.triage import FINDING_MIN_AUROC_LOWER, FINDING_MIN_POSITIVES

    nih = Predictor.from_release(REPO_ROOT / "models", "nih1024")
    prediction = nih.predict(chest_png())
    for result in prediction.results:
        findings = nih.cards[result.name]["raw"]["findings"]
        for label, trust in findings.items():
            trusted = trust["positives"] >= FINDING_MIN_POSITIVES and (
                trust["auroc_ci95"] is not None and trust["auroc_ci95"][0] >= FINDING_MIN_AUROC_LOWER
            )
            assert trust["called"] == trusted, (result.name, label, trust)
            assert 0.0 <= result.local_probs[label] <= 1.0
            if trusted:
                assert isinstance(result.local_calls[label], bool) and label not in result.local_reasons
            else:
                assert result.local_calls[label] is None and result.local_reasons[label] == trust["reason"]
        assert sum(c is not None for c in result.local_calls.values()) <= 3  # at most a few of the 14 findings


def test_released_models_are_prepared_for_inference_and_give_the_saved_models_outputs(predictor):
    """The Predictor folds BatchNorm into the convolutions (cxrdistill.models.fusion): no BatchNorm is left in its
    CNN-based models, and each gives the logits of the folder's model as saved."""
    from cxrdistill.release import RELEASE_FAMILIES

    release = RELEASE_FAMILIES["tbx11k"]
    for model, name in ((predictor.teacher, release.teacher), (predictor.tb_model, release.tb)):
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        saved = load_model(REPO_ROOT / "models" / name).eval()
        size = model.config.image_size
        images = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(model(images).global_logits, saved(images).global_logits, atol=1e-4, rtol=1e-4)


def test_prepare_false_keeps_the_models_as_saved():
    kept = Predictor.from_release(REPO_ROOT / "models", prepare=False)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in kept.teacher.modules())
