"""What a prediction is: each model's result (probabilities, calls, maps, boxes, the answer state), the family's one
answer, and the display geometry maps and boxes are drawn with. Plain data and pure functions; the
:class:`~cxrdistill.inference.Predictor` fills them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cxrdistill.data.transforms import area_resize, letterbox_matrix
from cxrdistill.explain import ScoredBox, heatmap_to_boxes, to_source_frame
from cxrdistill.triage import Cuts, explain_state, state_of

BOX_THRESHOLD = 0.5  # boxes surround the regions above half the map's maximum (the README's box-recall protocol)
# Lung on each side of a frontal chest film's centre line, as a share of the whole image
LUNG_SHARE = (0.03, 0.30)
DISPLAY_SIZE = 512  # longest side of the image that maps and overlays are drawn on
BASE_SIZE = 224  # the square every model input is area-averaged from (as in training)


@dataclass(frozen=True)
class Decision:
    """What a one-of-K head says about its positive class: the probability, the two cuts it is read against and
    the state it falls in (:mod:`cxrdistill.triage`).

    Attributes:
        label: the positive class (``tb``, ``pneumonia``).
        probability: its softmax probability.
        rule_out / rule_in: the model's cuts (``None``: not calibrated, so no state is given).
        state: ``low``, ``indeterminate`` or ``signal`` (``None`` without cuts).
        explanation: the state in plain words.
    """

    label: str
    probability: float
    rule_out: float | None
    rule_in: float | None
    state: str | None
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probability": round(self.probability, 4),
            "state": self.state,
            "rule_out": None if self.rule_out is None else round(self.rule_out, 4),
            "rule_in": None if self.rule_in is None else round(self.rule_in, 4),
            "explanation": self.explanation,
        }


@dataclass
class ModelResult:
    """What one model says about one image.

    Attributes:
        name: the role and size, e.g. ``"student-28"``.
        global_probs / local_probs: label -> probability (softmax over the global classes, sigmoid per finding).
        global_calls / local_calls: label -> positive at the model's calibrated threshold, or ``None`` when the
            model has no calibrated threshold (never a silent 0.5) or the finding is not trusted enough to be
            called (``local_reasons`` says why).
        forward_ms: the model's own forward pass (what a deployment without maps pays), input preparation
            excluded; ``latency_ms`` adds ``maps_ms``.
        maps_ms: the explanation maps: the forward pass that records them (attention or features), the maps, their
            mapping onto the display image and the boxes.
        view: ``(size, size)`` in ``[0, 1]``: the input the model saw.
        maps: name -> ``(H, W)`` heatmap over the display image (``Prediction.image``).
        boxes: boxes from the first map, in the original image's pixels, best score first; none when a lung model
            is loaded and finds no lungs (the boxes of a film are always inside its lungs).
        positive_label: the global class the maps and boxes explain (TB for a TB model).
        source: where the model came from: the release folder's name (``tb-student-28``) or the Hub repo id.
        cuts: the positive class's rule-out and rule-in cuts (``None`` when the model has none).
        local_reasons: finding -> why it is not called (only the uncalled findings).
        global_thresholds: global class -> its balanced (Youden's J) threshold (empty when uncalibrated).
        mask_threshold: the model's relative mask threshold chosen on validation data for localisation mIoU
            (``None`` when not chosen). Boxes use :data:`BOX_THRESHOLD` instead: a threshold that maximises mask
            IoU can be low enough to box most of the chest.
        input_crop: ``"film"`` or ``"lungs"``: whether the model saw the whole film or the film cropped to its lungs
            (its maps are drawn back onto the whole film either way).
    """

    name: str
    model_type: str
    image_size: int
    global_probs: dict[str, float]
    local_probs: dict[str, float]
    global_calls: dict[str, bool | None]
    local_calls: dict[str, bool | None]
    forward_ms: float
    maps_ms: float
    view: np.ndarray = field(repr=False)
    maps: dict[str, np.ndarray] = field(repr=False)
    boxes: list[ScoredBox] = field(default_factory=list)
    positive_label: str = ""
    source: str = ""
    cuts: Cuts | None = None
    local_reasons: dict[str, str] = field(default_factory=dict)
    mask_threshold: float | None = None
    global_thresholds: dict[str, float] = field(default_factory=dict)
    input_crop: str = "film"

    @property
    def latency_ms(self) -> float:
        """Forward pass plus explanation maps."""
        return self.forward_ms + self.maps_ms

    @property
    def decision(self) -> Decision:
        """The positive class's state between the model's two cuts (none without cuts)."""
        probability = self.global_probs[self.positive_label]
        cuts = self.cuts
        if cuts is None:
            return Decision(self.positive_label, probability, None, None, None, "no calibrated cuts: no answer")
        state = state_of(probability, cuts.rule_out, cuts.rule_in)
        words = explain_state(state, self.positive_label, cuts.rule_out_sensitivity, cuts.rule_in_specificity)
        return Decision(self.positive_label, probability, cuts.rule_out, cuts.rule_in, state, words)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_type": self.model_type,
            "image_size": self.image_size,
            "global_probs": self.global_probs,
            "local_probs": self.local_probs,
            "global_calls": self.global_calls,
            "local_calls": self.local_calls,
            "latency_ms": round(self.latency_ms, 3),
            "forward_ms": round(self.forward_ms, 3),
            "maps_ms": round(self.maps_ms, 3),
            "boxes": [{"box": [round(v, 1) for v in b.box], "score": round(b.score, 4)} for b in self.boxes],
            "box_threshold": BOX_THRESHOLD,
            "positive_label": self.positive_label,
            "source": self.source,
            "not_called": self.local_reasons,
            "mask_threshold": self.mask_threshold,
            "input_crop": self.input_crop,
            "decision": self.decision.to_dict(),
        }


@dataclass(frozen=True)
class Answer:
    """The one answer a family gives for a film: its answering model's state (see :class:`Decision`).

    Attributes:
        family: the release family (``tbx11k``, ``nih1024``) or ``custom``.
        model: the answering model's source (release folder name or Hub repo id).
        decision: its positive class's probability, cuts and state.
        auroc: its validation AUROC on the reference films, from its card (``None`` when unmeasured).
        why: why this model answers (the family's rule, or the only model that could run).
    """

    family: str
    model: str
    decision: Decision
    auroc: float | None = None
    why: str = "of the family's models, the one with the best validation AUROC"

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "model": self.model,
            **self.decision.to_dict(),  # label, probability, state, rule_out, rule_in, explanation
            "validation_auroc": None if self.auroc is None else round(self.auroc, 4),
        }


@dataclass
class Prediction:
    """Everything the app shows for one upload.

    ``image`` is the X-ray scaled to at most ``DISPLAY_SIZE`` px (``scale`` = original / display pixels); maps are
    over it, boxes are in the original's pixels. ``meta`` holds technical facts only (no patient data).
    ``answer`` is the family's one answer; ``student``, ``teacher`` and ``tb`` are the models compared beneath it
    (the answering model's result is one of them, or ``answer_result`` when none of them is it).
    """

    image: np.ndarray = field(repr=False)
    scale: float
    meta: dict[str, Any]
    student: ModelResult
    answer: Answer
    answer_result: ModelResult = field(repr=False)
    teacher: ModelResult | None = None
    tb: ModelResult | None = None
    lungs: np.ndarray | None = field(default=None, repr=False)

    @property
    def lung_fraction(self) -> float | None:
        """Share of the display image the lung model calls lung (``None`` without a lung model)."""
        return None if self.lungs is None else float(self.lungs.mean())

    @property
    def lungs_found(self) -> bool:
        """The lung model found two lungs (see :func:`two_lungs`)."""
        return self.lungs is not None and bool(two_lungs(self.lungs))

    @property
    def results(self) -> list[ModelResult]:
        """Every model that ran, the answering one first, each once."""
        ran = [self.answer_result, self.student, self.teacher, self.tb]
        return list({id(r): r for r in ran if r is not None}.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly results (no arrays): what the API endpoint and ``cxrdistill predict`` return."""
        return {
            "image": {"original_size": list(self.meta["original_size"]), "format": self.meta["format"]},
            "answer": self.answer.to_dict(),
            "student": self.student.to_dict(),
            "teacher": self.teacher.to_dict() if self.teacher else None,
            "tb": self.tb.to_dict() if self.tb else None,
            "answer_result": self.answer_result.to_dict(),
            "lungs": None
            if self.lungs is None
            else {"fraction_of_image": round(self.lung_fraction, 4), "found": self.lungs_found},
        }


def two_lungs(mask: np.ndarray) -> bool:
    """Whether a lung mask looks like a frontal chest film's: each side of the image's centre line holds
    :data:`LUNG_SHARE` of the image as lung, and the mask is one or two regions (its two largest cover 80% of it;
    the lungs can touch behind the heart at this resolution). Uniform noise (lung over most of the image, in pieces)
    and a blank image (one blob on one side) fail; all 1,096 real films of train/experiments/lung_check.py pass."""
    from scipy import ndimage

    if not mask.any():
        return False
    half = mask.shape[1] // 2
    low, high = LUNG_SHARE
    sides = (mask[:, :half].sum() / mask.size, mask[:, half:].sum() / mask.size)
    if not all(low <= share <= high for share in sides):
        return False
    labels, count = ndimage.label(mask)
    sizes = np.sort(ndimage.sum(mask, labels, range(1, count + 1)))[::-1]
    return bool(sizes[:2].sum() >= 0.8 * mask.sum())


def unit_scale(heatmap: np.ndarray) -> np.ndarray:
    low, high = float(heatmap.min()), float(heatmap.max())
    return (heatmap - low) / (high - low) if high > low else np.zeros_like(heatmap)


def grid_to_display(grid: torch.Tensor, image_size: int, display_shape: tuple[int, int]) -> torch.Tensor:
    """A map over a model's view, drawn back onto the ``display_shape`` image it was made from."""
    base = max(BASE_SIZE, image_size)
    return to_source_frame(grid, letterbox_matrix(*display_shape, base), base, display_shape)


def display_boxes(heatmap: np.ndarray, config, scale: float, min_box_area: float = 0.002) -> list[ScoredBox]:
    """Boxes of a display-frame ``heatmap`` at :data:`BOX_THRESHOLD`, in original-image pixels."""
    return [
        ScoredBox(tuple(v * scale for v in b.box), b.score)
        for b in heatmap_to_boxes(np.asarray(heatmap), BOX_THRESHOLD, min_box_area)
    ]


def display_image(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` area-averaged so that the longest side is at most ``DISPLAY_SIZE`` (unchanged if already).

    The models see this copy too (letterboxed onto the 224-px base and area-averaged), which is what training's
    256-px cache amounts to for any image larger than the display size."""
    height, width = pixels.shape
    scale = max(height, width) / DISPLAY_SIZE
    if scale <= 1.0:
        return np.asarray(pixels, dtype=np.float32)
    size = (max(1, round(height / scale)), max(1, round(width / scale)))
    return area_resize(torch.as_tensor(pixels, dtype=torch.float32), size).numpy()


def calls(labels, probs, thresholds) -> dict[str, bool | None]:
    """label -> ``probability >= threshold``; ``None`` where there is no threshold (uncalibrated or not called)."""
    if thresholds is None:
        return dict.fromkeys(labels)
    return {label: None if t is None else bool(p >= t) for label, p, t in zip(labels, probs, thresholds, strict=True)}


def model_cuts(config) -> Cuts | None:
    """The rule-out / rule-in cuts a model's config carries (``None`` when it was released without them)."""
    if config.rule_out_threshold is None or config.rule_in_threshold is None:
        return None
    return Cuts(
        config.rule_out_threshold,
        config.rule_in_threshold,
        config.rule_out_sensitivity or 0.0,
        config.rule_in_specificity or 0.0,
    )
