"""Load any cxrdistill model, or the metrics that travel with it, from a folder or a Hub repo."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from cxrdistill.models.base import CXRModel
from cxrdistill.models.card import validate_metrics
from cxrdistill.models.cnn import CNNStudent, CNNTeacher
from cxrdistill.models.hub_files import CONFIG_NAME, METRICS_NAME, ModelLoadError, resolve_file
from cxrdistill.models.lung import LungSegmenter
from cxrdistill.models.vit import StudentViT, TeacherViT

logger = logging.getLogger(__name__)

# model_type of config.json -> the class that loads it
MODEL_CLASSES: dict[str, type[CXRModel]] = {
    cls.config_class.model_type_default(): cls
    for cls in (TeacherViT, StudentViT, CNNTeacher, CNNStudent, LungSegmenter)
}


def _file_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: kwargs[key] for key in ("cache_dir", "local_files_only", "token") if key in kwargs}


def load_model(source: str | os.PathLike, revision: str | None = None, **kwargs) -> CXRModel:
    """Load any cxrdistill model from a folder or Hub repo, picking the class from ``config.json``.

    ``kwargs`` go to the class's ``from_pretrained`` (``cache_dir``, ``local_files_only``, ``token``, ...).
    """
    config_path = resolve_file(source, CONFIG_NAME, revision=revision, **_file_options(kwargs))
    model_type = json.loads(Path(config_path).read_text()).get("model_type")
    if model_type not in MODEL_CLASSES:
        raise ModelLoadError(f"{source!r}: unknown model_type {model_type!r}; known: {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[model_type].from_pretrained(source, revision=revision, **kwargs)


def load_metrics(source: str | os.PathLike, revision: str | None = None, **kwargs) -> dict[str, Any] | None:
    """The ``metrics.json`` that travels with a model (folder or Hub repo), or ``None`` where it has none or it is
    not valid (a model may be shared without one; the app then says the model is unmeasured)."""
    try:
        path = resolve_file(source, METRICS_NAME, revision=revision, **_file_options(kwargs))
        return validate_metrics(json.loads(Path(path).read_text()))
    except (ModelLoadError, OSError, ValueError) as error:
        logger.info("no usable %s for %s: %s", METRICS_NAME, source, error)
        return None
