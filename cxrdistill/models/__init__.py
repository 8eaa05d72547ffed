"""Teacher and student models: each an ``nn.Module`` with ``PyTorchModelHubMixin`` and one config dataclass."""

from cxrdistill.models.base import CXRModel, ModelConfig, ModelOutput
from cxrdistill.models.card import CardMetrics, render_model_card, validate_metrics
from cxrdistill.models.cnn import CNNConfig, CNNStudent, CNNStudentConfig, CNNTeacher, CNNTeacherConfig
from cxrdistill.models.hub_files import CONFIG_NAME, METRICS_NAME, WEIGHTS_NAME, ModelLoadError, resolve_file
from cxrdistill.models.loading import MODEL_CLASSES, load_metrics, load_model
from cxrdistill.models.lung import LungSegmenter, LungSegmenterConfig
from cxrdistill.models.presets import CUSTOM, PRESETS, preset_config, presets_for
from cxrdistill.models.vit import (
    StudentViT,
    StudentViTConfig,
    TeacherViT,
    TeacherViTConfig,
    ViTConfig,
    recording_attention,
)

__all__ = [
    "CONFIG_NAME",
    "CUSTOM",
    "METRICS_NAME",
    "MODEL_CLASSES",
    "PRESETS",
    "WEIGHTS_NAME",
    "CNNConfig",
    "CNNStudent",
    "CNNStudentConfig",
    "CNNTeacher",
    "CNNTeacherConfig",
    "CXRModel",
    "CardMetrics",
    "LungSegmenter",
    "LungSegmenterConfig",
    "ModelConfig",
    "ModelLoadError",
    "ModelOutput",
    "StudentViT",
    "StudentViTConfig",
    "TeacherViT",
    "TeacherViTConfig",
    "ViTConfig",
    "load_metrics",
    "load_model",
    "preset_config",
    "presets_for",
    "recording_attention",
    "render_model_card",
    "resolve_file",
    "validate_metrics",
]
