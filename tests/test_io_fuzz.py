"""Fuzz load_xray and the app's predict path: random bytes and mutated real files give an XRay (a prediction) or
XRayReadError, never anything else, quickly.

The suite runs a fast slice; set CXRDISTILL_FUZZ_EXAMPLES (e.g. 10000) for a long run:

    CXRDISTILL_FUZZ_EXAMPLES=10000 python -m pytest tests/test_io_fuzz.py -q
"""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pytest
from conftest import REPO_ROOT, SHARED_DATA, make_dicom, png_bytes, synthetic_chest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cxrdistill.inference import Predictor
from cxrdistill.io import XRay, XRayReadError, load_xray

EXAMPLES = int(os.environ.get("CXRDISTILL_FUZZ_EXAMPLES", "150"))
# Generous for a slow or busy CI machine, yet far below a hang: the biggest seed (a 1955 x 1841 JPEG 2000) decodes
# in ~0.2 s and the app's three models answer in ~0.1 s on an idle 2-core CPU.
PER_INPUT_SECONDS = 20.0


def _synthetic_seeds() -> dict[str, bytes]:
    chest = synthetic_chest(120, 100)
    jpeg = io.BytesIO()
    Image.fromarray(np.round(chest * 255).astype(np.uint8)).save(jpeg, format="JPEG")
    return {
        "png8": png_bytes(np.round(chest * 255).astype(np.uint8)),
        "png16": png_bytes(np.round(chest * 65535).astype(np.uint16)),
        "jpeg": jpeg.getvalue(),
        "dicom": make_dicom(
            np.round(chest * 4095).astype(np.uint16), "MONOCHROME1", WindowCenter=2048, WindowWidth=4096
        ),
    }


def _real_seeds() -> dict[str, bytes]:
    names = {
        "tbx11k-png": ("tbx11k", "imgs", "tb", "tb0005.png"),
        "db-jpeg": ("tbx11k", "imgs", "extra", "da+db", "train", "nx1.jpg"),
        "nih-dicom": ("dicom_samples", "NIH_DX_mono2_1024_nofinding.dcm"),
        "j2k-lossy-dicom": ("dicom_samples", "RG1_J2KI.dcm"),
    }
    seeds = {}
    for name, parts in names.items():
        path = SHARED_DATA.joinpath(*parts)
        if path.is_file():
            seeds[name] = path.read_bytes()
    return seeds


SEEDS = {**_synthetic_seeds(), **_real_seeds()}
PREDICTOR = Predictor.from_release(REPO_ROOT / "models")  # the app's models and limits (32 MiB uploads)


def _check(data: bytes) -> None:
    start = time.perf_counter()
    try:
        result = load_xray(data)
    except XRayReadError as error:
        assert str(error), "errors must say what is wrong"
    else:
        assert isinstance(result, XRay)
        assert result.pixels.dtype == np.float32 and result.pixels.ndim == 2
        assert np.isfinite(result.pixels).all()
        assert result.pixels.min() >= 0.0 and result.pixels.max() <= 1.0
    try:  # the app's whole request: decode, every model, maps and boxes, JSON
        json.dumps(PREDICTOR.predict(data).to_dict())
    except XRayReadError as error:
        assert str(error), "errors must say what is wrong"
    elapsed = time.perf_counter() - start
    assert elapsed < PER_INPUT_SECONDS, f"one input took {elapsed:.1f} s"


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "overwrite-header", "truncate", "insert", "zero-run"]))
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        if operation == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "overwrite-header":  # headers hold sizes, types and offsets: the dangerous bytes
            header_position = draw(st.integers(0, min(len(data), 2048) - 1))
            data[header_position] = draw(st.integers(0, 255))
        elif operation == "truncate":
            del data[position:]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        else:
            data[position : position + draw(st.integers(1, 256))] = b"\0" * 256
    return bytes(data)


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ_SETTINGS
@given(st.binary(min_size=0, max_size=4096))
def test_random_bytes_never_escape_or_hang(data):
    _check(data)


@FUZZ_SETTINGS
@given(
    st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"BM", b"RIFF", b"\0" * 128 + b"DICM"]),
    st.binary(min_size=0, max_size=2048),
)
def test_valid_magic_with_garbage_never_escapes(magic, tail):
    _check(magic + tail)


@FUZZ_SETTINGS
@given(mutated())
def test_mutated_real_files_never_escape_or_hang(data):
    _check(data)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_reads_unmutated(name):
    assert isinstance(load_xray(SEEDS[name]), XRay)
