"""Export a classifier to ONNX (optionally int8), and run it with ONNX Runtime.

    cxrdistill export models/mlcak-student-28 --out exported/student-28 --int8

writes ``model.onnx`` (float32) and ``model.int8.onnx`` (dynamic int8 quantisation of the linear layers) beside a
copy of ``config.json``, so :func:`load_onnx` knows the labels, thresholds and input size. The exported graph takes
``images`` ``(batch, 1, size, size)`` in ``[0, 1]`` (normalisation is inside, as in the torch model) and returns
``global_logits`` and ``local_logits``: classification only; attention maps and CAMs stay with the torch models.

Needs the ``onnx`` extra: ``pip install 'cxrdistill[onnx]'``.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from cxrdistill.models import CONFIG_NAME, MODEL_CLASSES
from cxrdistill.models.base import ModelOutput

ONNX_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"


class _Logits(torch.nn.Module):
    """``images -> (global_logits, local_logits)``: the part of ``forward`` an exported graph keeps."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        output = self.model(images)
        return output.global_logits, output.local_logits


def export_onnx(model, folder: str | os.PathLike, int8: bool = False, opset: int = 18) -> list[Path]:
    """Write ``model`` to ``folder`` as ONNX (+ int8 with ``int8``) with its ``config.json``; returns the files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size = model.config.image_size
    example = torch.rand(2, model.config.in_chans, size, size)
    onnx_path = folder / ONNX_NAME
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the shape checks in forward (constant at export)
        torch.onnx.export(
            _Logits(model.eval()),
            (example,),
            str(onnx_path),
            input_names=["images"],
            output_names=["global_logits", "local_logits"],
            dynamic_axes={"images": {0: "batch"}, "global_logits": {0: "batch"}, "local_logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    (folder / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    files = [onnx_path, folder / CONFIG_NAME]
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Only the matrix products with stored weights (the transformer's linear layers, the heads) are quantized.
        # Dynamic int8 convolutions (ConvInteger) and products of two activations (the attention scores) moved the
        # hybrid students' TB probability by up to 0.84 on varied films, against 0.008 this way (tests/test_batch.py)
        quantize_dynamic(
            str(onnx_path),
            str(folder / INT8_NAME),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            extra_options={"MatMulConstBOnly": True},
        )
        files.append(folder / INT8_NAME)
    return files


class OnnxClassifier:
    """An exported classifier behind the torch models' calling convention: ``model(images) -> ModelOutput``.

    Args:
        folder: written by :func:`export_onnx`.
        int8: run ``model.int8.onnx`` instead of ``model.onnx``.
        threads: ONNX Runtime intra-op threads (default: its own choice).
    """

    def __init__(self, folder: str | os.PathLike, int8: bool = False, threads: int | None = None) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        data = json.loads((folder / CONFIG_NAME).read_text())
        model_class = MODEL_CLASSES.get(data.get("model_type"))
        if model_class is None:
            raise ValueError(f"{folder / CONFIG_NAME} has an unknown model_type {data.get('model_type')!r}")
        self.config = model_class.config_class.from_dict(data)
        path = folder / (INT8_NAME if int8 else ONNX_NAME)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; run cxrdistill export{' --int8' if int8 else ''}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path

    def __call__(
        self, images: torch.Tensor | np.ndarray, return_attention: bool = False, return_features: bool = False
    ) -> ModelOutput:
        if return_attention or return_features:
            raise ValueError("an exported model returns logits only; use the torch model for maps")
        array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        global_logits, local_logits = self.session.run(None, {"images": array.astype(np.float32, copy=False)})
        return ModelOutput(torch.from_numpy(global_logits), torch.from_numpy(local_logits))

    def eval(self) -> OnnxClassifier:  # the Predictor / batch code call .eval() on every model
        return self


def copy_card(source: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Copy the source model's card and metrics beside the export (what was measured travels with it)."""
    for name in ("README.md", "metrics.json"):
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, Path(folder) / name)
