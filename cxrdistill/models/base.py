"""What every cxrdistill model shares: the output dataclass, config rules, and strict Hub loading.

Loading is deliberately stricter than ``PyTorchModelHubMixin``'s default: ``config.json`` must exist and name the
right model class, every field must be known, the weights must be ``model.safetensors`` (a pickled
``pytorch_model.bin`` is refused, never unpickled) and must match the model key for key and shape for shape.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from cxrdistill.models.card import render_model_card, validate_metrics
from cxrdistill.models.hub_files import (
    CONFIG_NAME,
    METRICS_NAME,
    REPO_URL,
    WEIGHTS_NAME,
    ModelLoadError,
    resolve_file,
    where,
)
from cxrdistill.models.presets import CUSTOM, check_preset

logger = logging.getLogger(__name__)

# config fields of earlier releases that no longer mean anything (the single screening cut, replaced by the two
# triage cuts): dropped on load instead of refusing the model
RETIRED_FIELDS = ("screening_threshold", "screening_sensitivity")

HUB_TAGS = ["cxrdistill", "chest-x-ray", "medical-imaging", "knowledge-distillation", "image-classification"]
# Keyword arguments of every model class statement, for PyTorchModelHubMixin's model card metadata.
HUB_CLASS_METADATA = dict(
    library_name="cxrdistill", repo_url=REPO_URL, pipeline_tag="image-classification", license="apache-2.0"
)


@dataclass
class ModelOutput:
    """What a model's ``forward`` returns.

    Attributes:
        global_logits: ``(B, K)`` logits of the one-of-K global head (softmax them).
        local_logits: ``(B, L)`` logits of the multi-label local head (sigmoid them).
        attentions: ViTs with ``return_attention=True``: one ``(B, heads, N, N)`` tensor per layer, attention
            probabilities (rows sum to 1), ``N`` = 1 class token + patch tokens; differentiable.
        features: with ``return_features=True``: ``(B, C, h, w)`` last feature map (CNN) or patch tokens laid
            out on their grid (ViT); for CNNs, class activation maps are exact linear maps of it.
    """

    global_logits: torch.Tensor
    local_logits: torch.Tensor
    attentions: list[torch.Tensor] | None = None
    features: torch.Tensor | None = None


INPUT_CROPS = ("film", "lungs")


@dataclass
class ModelConfig:
    """Fields every cxrdistill model config has. Subclasses add the architecture.

    Attributes:
        model_type: name of the model class; checked on load so a student's weights never load into a teacher.
        preset: the named architecture this config has (see cxrdistill.models.presets), or "custom".
        image_size: side of the square input, in pixels.
        in_chans: input channels (1: X-rays are gray).
        global_labels: names of the one-of-K global classes, in head order.
        positive_label: the global class that calls, maps and boxes are about (TB in TB-vs-not); ``None``: the last
            global label.
        local_labels: names of the multi-label local findings, in head order (may be empty).
        global_thresholds: calibrated operating threshold on each global class probability, or ``None`` when the
            model has not been calibrated (then nothing may be called positive).
        local_thresholds: likewise for the local findings; an entry is ``None`` where the finding is not trusted
            enough to be called (see :func:`cxrdistill.triage.finding_trust`): its probability is shown, uncalled.
        rule_out_threshold / rule_in_threshold: the positive class's two cuts (:mod:`cxrdistill.triage`): below
            the first the answer is ``low``, at or above the second ``signal``, between them ``indeterminate``;
            ``None`` when not calibrated (then no state is given).
        rule_out_sensitivity / rule_in_specificity: what the cuts were chosen for on the validation films (0.95 each).
        mean, std: input normalisation, applied inside ``forward`` to images in ``[0, 1]``.
        heatmap_threshold: relative threshold (share of the map's maximum) that turns this model's explanation map
            into a mask and boxes, chosen on the validation split for localisation mIoU; ``None`` when it has not
            been chosen (then 0.5 is used and the app says so).
        input_crop: what of a film the model reads: ``"film"`` (the whole film) or ``"lungs"`` (the film cropped to
            the box around its lungs, as a lung model finds them: :mod:`cxrdistill.data.lung_crop`; its maps are
            over that crop, and whoever runs it needs the lung model).
    """

    model_type: str = ""
    preset: str = CUSTOM
    image_size: int = 224
    in_chans: int = 1
    global_labels: tuple[str, ...] = ("not_tb", "tb")
    positive_label: str | None = None
    local_labels: tuple[str, ...] = ("active_tb", "latent_tb", "uncertain_tb")
    global_thresholds: tuple[float, ...] | None = None
    local_thresholds: tuple[float, ...] | None = None
    rule_out_threshold: float | None = None
    rule_in_threshold: float | None = None
    rule_out_sensitivity: float | None = None
    rule_in_specificity: float | None = None
    mean: float = 0.449
    std: float = 0.226
    heatmap_threshold: float | None = None
    input_crop: str = "film"

    def __post_init__(self) -> None:
        for name in ("global_labels", "local_labels", "global_thresholds", "local_thresholds"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))  # JSON gives lists
        if self.model_type != type(self).model_type_default():
            raise ValueError(
                f"{type(self).__name__}.model_type must be {type(self).model_type_default()!r}, got {self.model_type!r}"
            )
        _positive_int(self, "image_size")
        _positive_int(self, "in_chans")
        if len(self.global_labels) < 2:
            raise ValueError(f"global_labels needs at least 2 classes, got {self.global_labels}")
        if self.positive_label is not None and self.positive_label not in self.global_labels:
            raise ValueError(f"positive_label {self.positive_label!r} is not one of {self.global_labels}")
        for name in ("global_labels", "local_labels"):
            labels = getattr(self, name)
            if len(set(labels)) != len(labels) or not all(isinstance(x, str) and x for x in labels):
                raise ValueError(f"{name} must be distinct non-empty strings, got {labels}")
        for name, labels in (("global_thresholds", self.global_labels), ("local_thresholds", self.local_labels)):
            thresholds = getattr(self, name)
            if thresholds is None:
                continue
            if len(thresholds) != len(labels):
                raise ValueError(f"{name} has {len(thresholds)} values for {len(labels)} labels {labels}")
            uncalled = name == "local_thresholds"  # a local finding may be left uncalled (None)
            if not all((t is None and uncalled) or (t is not None and 0.0 <= float(t) <= 1.0) for t in thresholds):
                raise ValueError(f"{name} must be probabilities in [0, 1], got {thresholds}")
        for name in ("rule_out_threshold", "rule_in_threshold", "rule_out_sensitivity", "rule_in_specificity"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.heatmap_threshold is not None and not 0.0 < float(self.heatmap_threshold) < 1.0:
            raise ValueError(f"heatmap_threshold must be in (0, 1), got {self.heatmap_threshold}")
        if not self.std > 0:
            raise ValueError(f"std must be > 0, got {self.std}")
        if self.input_crop not in INPUT_CROPS:
            raise ValueError(f"input_crop must be one of {INPUT_CROPS}, got {self.input_crop!r}")
        check_preset(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def model_type_default(cls) -> str:
        """The ``model_type`` this config class describes."""
        return next(f.default for f in dataclasses.fields(cls) if f.name == "model_type")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a ``config.json`` dict; unknown fields are an error, not silently dropped, except the retired
        screening fields of releases made before the two triage cuts (logged: such a model gives no state until it
        is released again)."""
        known = {f.name for f in dataclasses.fields(cls)}
        retired = sorted(set(data) & set(RETIRED_FIELDS))
        if retired:
            logger.warning("ignoring retired config field(s) %s: re-release the model to calibrate its cuts", retired)
            data = {k: v for k, v in data.items() if k not in RETIRED_FIELDS}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**data)


def _positive_int(config: Any, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class CXRModel(PyTorchModelHubMixin):
    """Mixin for cxrdistill models: config handling, input checks and strict Hub loading.

    Subclasses set ``config_class`` and build themselves from ``config`` in ``__init__(config, pretrained=False)``.
    """

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    config: ModelConfig
    # What a family's explanation maps are made of: "attention" (ViTs) or "cam" (class activation maps, CNNs).
    explains_with: ClassVar[str] = ""
    card_summary: ClassVar[str] = ""  # the model card's opening paragraph
    card_citation: ClassVar[str] = ""  # the paper the family comes from

    @property
    def positive_index(self) -> int:
        """Index of :attr:`positive_label` among the global labels."""
        return self.config.global_labels.index(self.positive_label)

    @property
    def positive_label(self) -> str:
        """The global class that calls, maps and boxes are about (``config.positive_label``, else the last)."""
        return self.config.positive_label or self.config.global_labels[-1]

    def forward_for_maps(self, images: torch.Tensor) -> ModelOutput:
        """The forward pass that also returns what :meth:`explanation_maps` needs."""
        raise NotImplementedError

    def explanation_maps(self, output: ModelOutput, layer: int = -1) -> dict[str, torch.Tensor]:
        """``{name: (B, h, w)}`` maps explaining the positive class, from :meth:`forward_for_maps`'s output;
        the first is the one boxes are drawn from."""
        raise NotImplementedError

    def grad_cam_layer(self) -> tuple[nn.Module, Any]:
        """``(target layer, reshape transform or None)`` for the Grad-CAM family (cxrdistill.explain)."""
        raise NotImplementedError

    def card_tags(self) -> list[str]:
        """The Hub tags of this model's card: its class's (a family adds what differs between its members)."""
        return sorted(type(self)._hub_mixin_info.model_card_data.tags or [])

    def grad_cam_stages(self) -> dict[str, tuple[nn.Module, Any]]:
        """``{stage: (target layer, reshape)}`` the Grad-CAM family can weigh: ``"last"`` (:meth:`grad_cam_layer`)
        and, where the family has one, ``"finer"``: the stage one reduction earlier (a 2x finer map)."""
        return {"last": self.grad_cam_layer()}

    def architecture_summary(self) -> str:
        """One line for the model card."""
        raise NotImplementedError

    def outputs_summary(self) -> str:
        """The model card's table of outputs: each head's labels and calibrated thresholds."""
        config = self.config
        rows = ["| head | label | operating threshold |", "|---|---|---|"]
        for head, labels, values in (
            ("global (softmax, one-of-K)", config.global_labels, config.global_thresholds),
            ("local (sigmoid, multi-label)", config.local_labels, config.local_thresholds),
        ):
            shown = (
                ["not called" if v is None else f"{v:.3f}" for v in values]
                if values is not None
                else ["not calibrated"] * len(labels)
            )
            rows += [f"| {head} | {label} | {value} |" for label, value in zip(labels, shown, strict=True)]
        return "\n".join(rows)

    def usage_example(self) -> str:
        """The model card's code: load the model and classify one X-ray."""
        name, size = type(self).__name__, self.config.image_size
        return "\n".join(
            [
                f"from cxrdistill.models import {name}",
                "from cxrdistill.io import load_xray",
                "from cxrdistill.data import model_input",
                "",
                f'model = {name}.from_pretrained("REPO_ID_OR_FOLDER")  # revision="v1.0" for a tag',
                'pixels = load_xray("chest.png").pixels  # PNG, JPEG or DICOM -> (H, W) in [0, 1]',
                f"image = model_input(pixels, {size})  # letterboxed and area-averaged as in training",
                "probabilities = model(image).global_logits.softmax(-1)[0]",
                "print(dict(zip(model.config.global_labels, probabilities.tolist())))",
            ]
        )

    @classmethod
    def resolve_config(cls, config: ModelConfig | None) -> ModelConfig:
        """``config``, or the class's default config; a config of another model class is a ``TypeError``."""
        config = config if config is not None else cls.config_class()
        if not isinstance(config, cls.config_class):
            raise TypeError(f"{cls.__name__} needs a {cls.config_class.__name__}, got {type(config).__name__}")
        return config

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Check ``images`` ``(B, C, H, W)`` in ``[0, 1]`` and apply the config's normalisation."""
        if images.ndim != 4 or images.shape[1] != self.config.in_chans:
            raise ValueError(
                f"{type(self).__name__} expects images of shape (B, {self.config.in_chans}, H, W), "
                f"got {tuple(images.shape)}"
            )
        return (images - self.config.mean) / self.config.std

    # ----------------------------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        map_location: str | torch.device = "cpu",
    ):
        """Load a model from a local folder, a Hub repo id (at ``revision``: tag, branch or commit) or the cache.

        With ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) only the local cache is used.

        Raises:
            ModelLoadError: missing repo, revision or file; a pickle-only repo; a config for another model class;
                an invalid config; weights that do not match the config key for key and shape for shape.
        """
        source = str(pretrained_model_name_or_path)
        files = dict(
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        config_path = resolve_file(source, CONFIG_NAME, **files)
        try:
            data = json.loads(Path(config_path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ModelLoadError(f"{where(source, revision)}: {CONFIG_NAME} is not valid JSON ({error})") from error
        if not isinstance(data, dict):
            raise ModelLoadError(f"{where(source, revision)}: {CONFIG_NAME} must hold a JSON object")
        expected = cls.config_class.model_type_default()
        if data.get("model_type") != expected:
            raise ModelLoadError(
                f"{where(source, revision)} holds a {data.get('model_type')!r} model, not a {expected!r} "
                f"({cls.__name__}); load it with the matching class"
            )
        try:
            config = cls.config_class.from_dict(data)
        except (TypeError, ValueError) as error:
            raise ModelLoadError(f"{where(source, revision)}: invalid {CONFIG_NAME}: {error}") from error

        weights_path = resolve_file(source, WEIGHTS_NAME, **files)
        model = cls(config)
        try:
            state = load_file(weights_path, device=str(map_location))
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelLoadError(
                f"{where(source, revision)}: {WEIGHTS_NAME} is corrupt or truncated ({error})"
            ) from error
        _load_strict(model, state, where(source, revision))
        model.eval()
        return model

    # ------------------------------------------------------------------------------------------------ saving

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        metrics: dict | None = None,
        weights_dtype: torch.dtype | None = None,
        model_card_kwargs: dict | None = None,
        **kwargs,
    ):
        """Write ``config.json``, ``model.safetensors``, a freshly rendered ``README.md`` card and, given
        ``metrics``, ``metrics.json`` (see :func:`cxrdistill.models.card.validate_metrics`). Files are replaced
        atomically.

        ``weights_dtype=torch.float16`` stores floating-point weights at half size (a release format: loading
        casts them back to the model's float32 parameters).
        """
        save_directory = Path(save_directory)
        metrics = metrics if metrics is not None else (model_card_kwargs or {}).get("metrics")
        if metrics is not None:
            validate_metrics(metrics)
        save_directory.mkdir(parents=True, exist_ok=True)
        (save_directory / "README.md").unlink(missing_ok=True)  # the card is always re-rendered, never kept stale
        if metrics is not None:
            _atomic_write_text(save_directory / METRICS_NAME, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        self._weights_dtype = weights_dtype
        try:
            return super().save_pretrained(save_directory, model_card_kwargs={"metrics": metrics}, **kwargs)
        finally:
            self._weights_dtype = None

    def push_to_hub(self, repo_id: str, *, metrics: dict | None = None, **kwargs) -> str:
        """Save (with ``metrics``) and upload to ``repo_id`` in one commit; returns the commit URL."""
        model_card_kwargs = {**(kwargs.pop("model_card_kwargs", None) or {}), "metrics": metrics}
        return super().push_to_hub(repo_id, model_card_kwargs=model_card_kwargs, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save_file

        _atomic_write_text(save_directory / CONFIG_NAME, json.dumps(self.config.to_dict(), indent=2) + "\n")
        dtype = getattr(self, "_weights_dtype", None)
        state = {
            key: (value.to(dtype) if dtype is not None and value.is_floating_point() else value).contiguous()
            for key, value in self.state_dict().items()
        }
        temporary = save_directory / f".{WEIGHTS_NAME}.tmp-{os.getpid()}"
        try:
            save_file(state, str(temporary), metadata={"format": "pt"})
            os.replace(temporary, save_directory / WEIGHTS_NAME)
        finally:
            temporary.unlink(missing_ok=True)

    # ----------------------------------------------------------------------------------------- model cards

    def generate_model_card(self, *args, **kwargs):
        """The card written by ``save_pretrained`` / ``push_to_hub``: rendered from the config and ``metrics``."""
        return render_model_card(self, metrics=kwargs.get("metrics"))


class NoLabels(nn.Module):
    """The head of an empty label space: ``(B, features) -> (B, 0)``, without zero-size parameters (which
    safetensors sees as shared storage and PyTorch warns about initialising)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.new_zeros(features.shape[0], 0)


def preset_name(config: ModelConfig) -> str:
    """``"preset `name`: "`` or ``"custom: "``, the start of a card's architecture line."""
    return f"preset `{config.preset}`: " if config.preset != CUSTOM else "custom: "


def linear_head(width: int, labels: int) -> nn.Module:
    """A linear head with ``labels`` outputs, or :class:`NoLabels` for none."""
    return nn.Linear(width, labels) if labels else NoLabels()


def _atomic_write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_first(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_first(mismatched)}")
    if problems:
        raise ModelLoadError(f"{where}: the weights do not match config.json: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _first(items: list[str], count: int = 5) -> str:
    shown = ", ".join(items[:count])
    return f"[{shown}{f', ... {len(items) - count} more' if len(items) > count else ''}]"
