"""Shared fixtures: the loopback Hub and a tiny synthetic TBX11K. Helpers the tests import live in tests/support/."""

from __future__ import annotations

import os
import tempfile

import pytest
from support.films import write_synthetic_tbx11k
from support.hub_server import LoopbackHub

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# The loopback Hub must be running, and HF_ENDPOINT pointing at it, before anything imports huggingface_hub:
# the client reads the endpoint once, at import. A private HF_HOME keeps the user's cache and token out of tests.
LOOPBACK_HUB = LoopbackHub().start()
os.environ["HF_ENDPOINT"] = LOOPBACK_HUB.endpoint
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="cxrdistill-test-hf-home-")
os.environ["HF_TOKEN"] = "hf_loopback_test_token"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_HUB_OFFLINE", None)


@pytest.fixture
def hub():
    """The loopback Hub (already running; its endpoint is HF_ENDPOINT)."""
    import huggingface_hub.constants

    assert huggingface_hub.constants.ENDPOINT == LOOPBACK_HUB.endpoint, "huggingface_hub was imported too early"
    return LOOPBACK_HUB


@pytest.fixture(scope="session")
def tiny_tbx11k(tmp_path_factory):
    """A synthetic TBX11K (see :func:`write_synthetic_tbx11k`): 24 images, learnable in a few steps."""
    return write_synthetic_tbx11k(tmp_path_factory.mktemp("tbx11k"))
