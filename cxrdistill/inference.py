"""One X-ray in, probabilities + explanation maps + boxes out: the ``Predictor`` behind the app and the CLI.

    predictor = Predictor.from_release("models")           # the released folders; no network needed
    prediction = predictor.predict("chest.png", resolution=28)
    prediction.to_dict()                                    # JSON-friendly: probabilities, calls, boxes, latency

Models load once and are shared by every call (and every thread: attention capture is thread-local). Images
are prepared exactly as in training and evaluation (letterboxed onto the 224-px base square, then area-averaged
to each model's input size), and maps are drawn back onto the image through the same geometry.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrdistill.data.lung_crop import CROP_MARGIN, CropBox, crop_film, mask_crop_box
from cxrdistill.data.transforms import model_input
from cxrdistill.io import ReadLimits, XRay, XRaySource, load_xray
from cxrdistill.models import load_metrics, load_model
from cxrdistill.models.base import CXRModel
from cxrdistill.models.fusion import prepare_for_inference
from cxrdistill.release import RELEASE_FAMILIES
from cxrdistill.results import (
    BASE_SIZE,
    Answer,
    ModelResult,
    Prediction,
    calls,
    display_boxes,
    display_image,
    grid_to_display,
    model_cuts,
    two_lungs,
    unit_scale,
)
from cxrdistill.triage import answer_model, reference_auroc

logger = logging.getLogger(__name__)


class Predictor:
    """Students (one per input size), an optional teacher and an optional TB localisation model.

    Args:
        students: input size -> student model (at least one).
        teacher: the high-resolution model shown beside the student for comparison.
        tb_model: a CNN whose class activation map of its last global class (TB) gives the TB boxes.
        limits: what uploads are accepted (see :class:`cxrdistill.io.ReadLimits`).
        min_box_area: boxes smaller than this share of the image are dropped.
        lung_model: keeps maps and boxes inside the lungs it finds.
        cards: model name (``student-28``, ``teacher-224``, ``tb-28``: :meth:`name_of`) -> the metrics its card
            reports (``metrics.json``), for "how good is this model?".
        sources: model name -> where it came from (release folder name or Hub repo id; default: the name).
        family: what the answer is for (a release family's key, e.g. ``tbx11k``).
        answer: the model that answers for the family (a name or a source); default: chosen by
            :func:`cxrdistill.triage.answer_model` from the cards of the models with cuts, else the smallest
            student.
    """

    def __init__(
        self,
        students: Mapping[int, CXRModel],
        teacher: CXRModel | None = None,
        tb_model: CXRModel | None = None,
        limits: ReadLimits | None = None,
        min_box_area: float = 0.002,
        *,
        lung_model: CXRModel | None = None,
        cards: Mapping[str, dict] | None = None,
        sources: Mapping[str, str] | None = None,
        family: str = "custom",
        answer: str | None = None,
    ) -> None:
        if not students:
            raise ValueError("a Predictor needs at least one student model")
        for size, model in students.items():
            if model.config.image_size != size:
                raise ValueError(f"the student for {size} px takes {model.config.image_size} px images")
        self.students = {size: students[size].eval() for size in sorted(students)}
        self.teacher = teacher.eval() if teacher is not None else None
        self.tb_model = tb_model.eval() if tb_model is not None else None
        if self.tb_model is not None and self.tb_model.explains_with != "cam":
            raise ValueError(f"the TB model must be a CNN with class activation maps, got {type(tb_model).__name__}")
        self.lung_model = lung_model.eval() if lung_model is not None else None
        cropping = [name for name, m in self.classifiers.items() if m.config.input_crop == "lungs"]
        if cropping and self.lung_model is None:
            raise ValueError(f"{', '.join(cropping)} read films cropped to their lungs: give the lung model too")
        self.limits = limits or ReadLimits(max_file_bytes=32 * 2**20)
        self.min_box_area = min_box_area
        self.cards = dict(cards or {})
        self.sources = dict(sources or {})
        self.family = family
        self.answer_name = self._answer_name(answer)

    def _answer_name(self, answer: str | None) -> str:
        classifiers = self.classifiers
        if answer is not None:
            by_source = {self.sources.get(name, name): name for name in classifiers}
            if answer not in classifiers and answer not in by_source:
                raise ValueError(f"no loaded model {answer!r} can answer; loaded: {', '.join(by_source)}")
            return answer if answer in classifiers else by_source[answer]
        with_cuts = {
            name: (model.config.image_size, self.cards.get(name))
            for name, model in classifiers.items()
            if model_cuts(model.config) is not None
        }
        return answer_model(with_cuts) or next(iter(classifiers))

    @property
    def classifiers(self) -> dict[str, CXRModel]:
        """name -> every loaded classifier (students smallest first, the teacher, the TB model)."""
        models = [("student", m) for m in self.students.values()] + [("teacher", self.teacher), ("tb", self.tb_model)]
        return {self.name_of(role, model): model for role, model in models if model is not None}

    def _not_called(self, name: str, config) -> dict[str, str]:
        """finding -> why it is not called: the card's reason, or "not calibrated"."""
        findings = self.cards.get(name, {}).get("raw", {}).get("findings", {})
        thresholds = config.local_thresholds or (None,) * len(config.local_labels)
        return {
            label: findings.get(label, {}).get("reason") or "not calibrated"
            for label, threshold in zip(config.local_labels, thresholds, strict=True)
            if threshold is None
        }

    # ------------------------------------------------------------------------------------------ construction

    @classmethod
    def from_sources(
        cls,
        students: list[str],
        teacher: str | None = None,
        tb_model: str | None = None,
        revision: str | None = None,
        lung_model: str | None = None,
        prepare: bool = True,
        **kwargs,
    ) -> Predictor:
        """Load every model with ``from_pretrained`` (folders or Hub repo ids, all at ``revision``), prepared for
        inference (BatchNorm folded, channels-last: :mod:`cxrdistill.models.fusion`; ``prepare=False`` keeps the
        models as saved, e.g. to fine-tune them), and the metrics each one's card reports."""

        def load(source: str) -> CXRModel:
            model = load_model(source, revision=revision)
            return prepare_for_inference(model) if prepare else model

        roles = [("student", source) for source in students] + [("teacher", teacher), ("tb", tb_model)]
        loaded, cards, sources = {}, {}, {}
        for role, source in roles:
            if source:
                model = load(source)
                loaded.setdefault(role, []).append(model)
                cards[cls.name_of(role, model)] = load_metrics(source, revision=revision)
                sources[cls.name_of(role, model)] = source_name(source)
        return cls(
            {model.config.image_size: model for model in loaded["student"]},
            teacher=loaded.get("teacher", [None])[0],
            tb_model=loaded.get("tb", [None])[0],
            lung_model=load(lung_model) if lung_model else None,
            cards={name: card for name, card in cards.items() if card},
            sources=sources,
            **kwargs,
        )

    @staticmethod
    def name_of(role: str, model: CXRModel) -> str:
        """How results and cards name a model: its role and input size (``student-28``, ``teacher-224``)."""
        return f"{role}-{model.config.image_size}"

    @classmethod
    def from_release(
        cls,
        folder: str | os.PathLike = "models",
        family: str = "tbx11k",
        *,
        teacher: str | None = None,
        tb_model: str | None = None,
        revision: str | None = None,
        answer: str | None = None,
        **kwargs,
    ) -> Predictor:
        """The released models of ``family`` (a key of :data:`cxrdistill.release.RELEASE_FAMILIES`) in ``folder``;
        those present: a missing teacher, TB or lung model is left out. ``teacher`` / ``tb_model`` (folders or Hub
        repo ids, at ``revision``) replace the release's; ``answer`` names the model that answers
        (default: the family's, or the rule's choice where a replaced model may have changed it).

        Raises:
            FileNotFoundError: none of the family's students is in ``folder``.
        """
        folder = Path(folder)
        if family not in RELEASE_FAMILIES:
            raise ValueError(f"unknown release family {family!r}; known: {', '.join(RELEASE_FAMILIES)}")
        release = RELEASE_FAMILIES[family]

        def present(name: str | None) -> str | None:
            return str(folder / name) if name and (folder / name / "config.json").is_file() else None

        students = [path for path in map(present, release.students) if path]
        if not students:
            raise FileNotFoundError(
                f"no released {family} student in {folder} (looked for {', '.join(release.students)})"
            )
        if answer is None and teacher is None and tb_model is None and present(release.answer):
            answer = release.answer  # with a replaced model the release's choice may be gone: the rule picks again
        return cls.from_sources(
            students,
            teacher=teacher or present(release.teacher),
            tb_model=tb_model or present(release.tb),
            lung_model=present(release.lungs),
            revision=revision,
            family=family,
            answer=answer,
            **kwargs,
        )

    @property
    def resolutions(self) -> list[int]:
        return list(self.students)

    def vit_models(self) -> list[CXRModel]:
        """The students and the teacher (the models whose attention the app shows), those loaded."""
        return [model for model in (*self.students.values(), self.teacher) if model is not None]

    # ---------------------------------------------------------------------------------------------- predict

    def read(self, source: XRaySource | XRay) -> XRay:
        """Decode an upload within this predictor's limits and keep a display-size copy of its pixels (at most
        ``DISPLAY_SIZE`` px: every model input and map is made from it); ``meta`` keeps the original size.

        Raises:
            XRayReadError: the upload is not a readable chest X-ray (the message says why).
        """
        return read_for_prediction(source, self.limits)

    @torch.inference_mode()
    def predict(
        self,
        source: XRaySource | XRay,
        resolution: int | None = None,
        layer: int = -1,
        teacher: bool = True,
        tb: bool = True,
    ) -> Prediction:
        """Classify and explain one X-ray.

        Args:
            source: a path, the file's bytes, a binary file object, or an already decoded ``XRay``.
            resolution: which student (default: the smallest).
            layer: the ViT layer whose class-token attention is shown (negative counts from the last).
            teacher / tb: also run the teacher and the TB model (when loaded).

        Raises:
            XRayReadError: the upload is not a readable chest X-ray.
            ValueError: no student for ``resolution`` or no such ``layer``.
        """
        resolution = self.resolutions[0] if resolution is None else int(resolution)
        if resolution not in self.students:
            raise ValueError(f"no student for {resolution} px; available: {self.resolutions}")
        xray = self.read(source)
        display = xray.pixels
        scale = xray.meta.original_size[0] / display.shape[0]  # original / display pixels
        lungs = self.lungs(display)
        inside = lungs if lungs is not None and two_lungs(lungs) else None  # every map and box stays in the lungs
        ran: dict[str, ModelResult] = {}

        def run(model: CXRModel | None, role: str) -> ModelResult | None:
            if model is None:
                return None
            name = self.name_of(role, model)
            if name not in ran:
                ran[name] = self._run(name, model, display, scale, layer, inside, lungs=lungs)
            return ran[name]

        student = run(self.students[resolution], "student")
        teacher_result = run(self.teacher, "teacher") if teacher else None
        tb_result = run(self.tb_model, "tb") if tb else None
        answering = self.classifiers[self.answer_name]  # always runs: the family's answer never depends on options
        answer_result = run(answering, self.role_of(answering))
        return Prediction(
            image=display,
            scale=scale,
            meta=xray.meta.to_dict(),
            lungs=lungs,
            student=student,
            teacher=teacher_result,
            tb=tb_result,
            answer=self._answer(answer_result),
            answer_result=answer_result,
        )

    def role_of(self, model: CXRModel) -> str:
        """``student``, ``teacher`` or ``tb``: the role ``model`` has in this predictor."""
        if model is self.teacher:
            return "teacher"
        return "tb" if model is self.tb_model else "student"

    def _answer(self, result: ModelResult, why: str | None = None) -> Answer:
        auroc = reference_auroc(self.cards.get(result.name))
        if why is None:
            return Answer(self.family, result.source, result.decision, auroc)
        return Answer(self.family, result.source, result.decision, auroc, why)

    @torch.inference_mode()
    def predict_view(self, view: np.ndarray, layer: int = -1) -> Prediction:
        """Classify an already reduced student input: the low-bandwidth mode, where the browser makes the
        ``(size, size)`` view in ``[0, 1]`` (as :func:`cxrdistill.data.transforms.model_input` would) and sends
        only that. The student for that size runs; its maps are over the view itself; no teacher, TB model or lung
        model, which all need the full film, so the answer is this student's own.

        Raises:
            ValueError: the view is not square, not in ``[0, 1]``, or no student takes its size.
        """
        view = np.asarray(view, dtype=np.float32)
        if view.ndim != 2 or view.shape[0] != view.shape[1]:
            raise ValueError(f"a reduced view must be a square image, got shape {view.shape}")
        size = view.shape[0]
        if size not in self.students:
            raise ValueError(f"no student for {size} px; available: {self.resolutions}")
        if not np.isfinite(view).all() or view.min() < 0 or view.max() > 1:
            raise ValueError("a reduced view must hold values in [0, 1]")
        model = self.students[size]
        if model.config.input_crop != "film":
            raise ValueError(f"the {size}-px student reads films cropped to their lungs, which need the whole film")
        student = self._run(
            self.name_of("student", model), model, view, 1.0, layer, view=torch.from_numpy(view)[None, None]
        )
        return Prediction(
            image=view,
            scale=1.0,
            meta={"original_size": [size, size], "format": "reduced in the browser"},
            student=student,
            answer=self._answer(student, "the only model that runs on a view reduced in the browser"),
            answer_result=student,
        )

    def lungs(self, display: np.ndarray) -> np.ndarray | None:
        """``(H, W)`` bool lung mask over the display image (``None`` without a lung model)."""
        if self.lung_model is None:
            return None
        size = self.lung_model.config.image_size
        probability = self.lung_model.lung_probability(model_input(display, size, size))[0]  # letterboxed as trained
        return grid_to_display(probability, size, display.shape).numpy() > self.lung_model.config.mask_threshold

    def _run(
        self,
        name: str,
        model: CXRModel,
        display: np.ndarray,
        scale: float,
        layer: int,
        inside=None,
        view: torch.Tensor | None = None,
        lungs: np.ndarray | None = None,
    ) -> ModelResult:
        config = model.config
        crop = None
        if config.input_crop == "lungs":  # the film cropped to its lungs, as in training; the maps go back onto it
            found = lungs if lungs is not None else np.zeros(display.shape, dtype=bool)
            crop = mask_crop_box(found, display.shape, CROP_MARGIN)
        if view is None:  # (1, 1, size, size), prepared as in training
            view = model_input(display if crop is None else crop_film(display, crop), config.image_size, BASE_SIZE)
        started = time.perf_counter()
        output = model(view)  # the model alone: its own time, apart from the maps'
        forward_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        explained = model.forward_for_maps(view)
        grids = {key: grid[0] for key, grid in model.explanation_maps(explained, layer).items()}
        maps = {key: _map_on_display(grid, config.image_size, display.shape, crop) for key, grid in grids.items()}
        if inside is not None:  # each map min-max scaled and kept inside the lungs; the kept one comes first
            kept = {f"{key} inside the lungs": unit_scale(value) * inside for key, value in maps.items()}
            maps = {**kept, **maps}
        # with a lung model, boxes only inside lungs it found: on a film without them there is nothing to box
        lungs_missing = self.lung_model is not None and inside is None
        boxes = [] if lungs_missing else display_boxes(next(iter(maps.values())), config, scale, self.min_box_area)
        maps_ms = (time.perf_counter() - started) * 1000
        global_probs = output.global_logits.float().softmax(-1)[0].tolist()
        local_probs = output.local_logits.float().sigmoid()[0].tolist()
        return ModelResult(
            name=name,
            model_type=config.model_type,
            image_size=config.image_size,
            global_probs=dict(zip(config.global_labels, global_probs, strict=True)),
            local_probs=dict(zip(config.local_labels, local_probs, strict=True)),
            global_calls=calls(config.global_labels, global_probs, config.global_thresholds),
            local_calls=calls(config.local_labels, local_probs, config.local_thresholds),
            forward_ms=forward_ms,
            maps_ms=maps_ms,
            view=view[0, 0].numpy(),
            maps=maps,
            boxes=boxes,
            positive_label=model.positive_label,
            source=self.sources.get(name, name),
            cuts=model_cuts(config),
            local_reasons=self._not_called(name, config),
            mask_threshold=config.heatmap_threshold,
            input_crop=config.input_crop,
            global_thresholds={}
            if config.global_thresholds is None
            else dict(zip(config.global_labels, config.global_thresholds, strict=True)),
        )


def _map_on_display(grid: torch.Tensor, size: int, shape: tuple[int, int], crop: CropBox | None) -> np.ndarray:
    """A model's map over its view drawn onto the display image; a crop's map lies in the crop, at its own lowest
    value around it."""
    if crop is None:
        return grid_to_display(grid, size, shape).numpy()
    x0, y0, x1, y1 = crop.box
    inner = grid_to_display(grid, size, crop.size).numpy()
    placed = np.full(shape, inner.min(), dtype=np.float32)  # outside the crop: the map's lowest value
    placed[y0:y1, x0:x1] = inner
    return placed


@dataclass(frozen=True)
class ModelChoice:
    """Which models to load, as the app's and ``cxrdistill predict``'s options say: ``students`` (folders or Hub
    repo ids, with ``teacher`` / ``tb_model``), else the release ``family`` in ``models_dir`` (with ``teacher`` /
    ``tb_model`` replacing the release's); all at ``revision``; ``answer`` names the answering model."""

    students: Sequence[str] | None = None
    teacher: str | None = None
    tb_model: str | None = None
    revision: str | None = None
    models_dir: str | os.PathLike = "models"
    family: str = "tbx11k"
    answer: str | None = None


def load_predictor(choice: ModelChoice) -> Predictor:
    """The :class:`Predictor` of ``choice``: one function for the app and the command line, so both load the same
    models for the same options."""
    if choice.students:
        return Predictor.from_sources(
            list(choice.students), choice.teacher, choice.tb_model, revision=choice.revision, answer=choice.answer
        )
    return Predictor.from_release(
        choice.models_dir,
        choice.family,
        teacher=choice.teacher,
        tb_model=choice.tb_model,
        revision=choice.revision,
        answer=choice.answer,
    )


# ------------------------------------------------------- pieces shared with batch prediction (cxrdistill.batch)


def read_for_prediction(source: XRaySource | XRay, limits: ReadLimits) -> XRay:
    """Decode ``source`` within ``limits`` (an ``XRay`` is taken as decoded) and keep a display-size copy of its
    pixels: what :meth:`Predictor.read` and the batch CLI's decoding workers both hand to :meth:`Predictor.predict`.
    """
    xray = source if isinstance(source, XRay) else load_xray(source, limits=limits)
    return XRay(display_image(xray.pixels), xray.meta)


def source_name(source: str | os.PathLike) -> str:
    """How answers name a model: a folder's name (``models/tb-student-28`` -> ``tb-student-28``), or the Hub repo
    id as given."""
    path = Path(source)
    return path.name if path.exists() else str(source)
