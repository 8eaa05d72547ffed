"""Teacher and student models: each an ``nn.Module`` with ``PyTorchModelHubMixin`` and one config dataclass."""

from cxrdistill.models.base import CONFIG_NAME, WEIGHTS_NAME, ModelConfig, ModelLoadError, ModelOutput
from cxrdistill.models.cnn import CNNConfig, CNNStudent, CNNStudentConfig, CNNTeacher, CNNTeacherConfig
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

MODEL_CLASSES = {
    cls.config_class.model_type_default(): cls
    for cls in (TeacherViT, StudentViT, CNNTeacher, CNNStudent, LungSegmenter)
}

__all__ = [
    "CONFIG_NAME",
    "CUSTOM",
    "MODEL_CLASSES",
    "PRESETS",
    "WEIGHTS_NAME",
    "CNNConfig",
    "CNNStudent",
    "CNNStudentConfig",
    "CNNTeacher",
    "CNNTeacherConfig",
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
    "preset_config",
    "presets_for",
    "recording_attention",
]
