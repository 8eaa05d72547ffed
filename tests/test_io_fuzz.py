"""Fuzz load_xray and the app's predict path: random bytes and mutated real files give an XRay (a prediction) or
XRayReadError, never anything else, quickly.

Each input's time and peak memory (growth of the process's peak RSS over its RSS before the input, Linux) are
bounded. The suite runs a fast slice; set CXRDISTILL_FUZZ_EXAMPLES (e.g. 10000) for a long run, and
CXRDISTILL_FUZZ_REPORT to a JSON path for per-strategy time and memory figures:

    CXRDISTILL_FUZZ_EXAMPLES=10000 CXRDISTILL_FUZZ_REPORT=bench/results/fuzz.json \
        python -m pytest tests/test_io_fuzz.py -q
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import os
import platform
import signal
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from support.films import REPO_ROOT, SHARED_DATA, make_dicom, png_bytes, synthetic_chest

from cxrdistill.inference import Predictor
from cxrdistill.io import XRay, XRayReadError, load_xray

EXAMPLES = int(os.environ.get("CXRDISTILL_FUZZ_EXAMPLES", "150"))
# Generous for a slow or busy CI machine, yet far below a hang: the biggest seed (a 1955 x 1841 JPEG 2000) decodes
# in ~0.2 s and the app's three models answer in ~0.1 s on an idle 2-core CPU.
PER_INPUT_SECONDS = 20.0
# The largest seed (3.6 megapixels) costs ~100 MiB through the whole predict path; a decoded 40-megapixel image (the
# ReadLimits maximum) would cost a few hundred. A decompression bomb that slipped past the header checks would cost
# gigabytes.
PER_INPUT_MIB = 1024.0
REPORT_PATH = os.environ.get("CXRDISTILL_FUZZ_REPORT")
# strategy -> one (seconds, peak MiB or None, outcome) per input
MEASUREMENTS: dict[str, list[tuple[float, float | None, str]]] = defaultdict(list)


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@pytest.fixture(scope="module", autouse=True)
def _write_report():
    yield
    if not REPORT_PATH:
        return
    report = {
        "examples_per_strategy": EXAMPLES,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "strategies": {},
    }
    for strategy, rows in sorted(MEASUREMENTS.items()):
        seconds = np.array([row[0] for row in rows])
        memory = np.array([row[1] for row in rows if row[1] is not None])
        outcomes = [row[2] for row in rows]
        report["strategies"][strategy] = {
            "inputs": len(rows),
            "decoded": outcomes.count("decoded"),
            "refused_with_xray_read_error": outcomes.count("refused"),
            "seconds": {
                "mean": float(seconds.mean()),
                "p50": float(np.percentile(seconds, 50)),
                "p99": float(np.percentile(seconds, 99)),
                "max": float(seconds.max()),
            },
            "peak_rss_growth_mib": None
            if memory.size == 0
            else {
                "p50": float(np.percentile(memory, 50)),
                "p99": float(np.percentile(memory, 99)),
                "max": float(memory.max()),
            },
        }
    Path(REPORT_PATH).parent.mkdir(parents=True, exist_ok=True)
    Path(REPORT_PATH).write_text(json.dumps(report, indent=2) + "\n")


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


REAL_SEEDS = {
    "tbx11k-png": ("tbx11k", "imgs", "tb", "tb0005.png"),
    "db-jpeg": ("tbx11k", "imgs", "extra", "da+db", "train", "nx1.jpg"),
    "nih-dicom": ("dicom_samples", "NIH_DX_mono2_1024_nofinding.dcm"),
    "j2k-lossy-dicom": ("dicom_samples", "RG1_J2KI.dcm"),
}
SYNTHETIC = _synthetic_seeds()
REAL = {
    name: SHARED_DATA.joinpath(*parts).read_bytes()
    for name, parts in REAL_SEEDS.items()
    if SHARED_DATA.joinpath(*parts).is_file()
}
MISSING_REAL = sorted(set(REAL_SEEDS) - set(REAL))
SEEDS = {**SYNTHETIC, **REAL}
PREDICTOR = Predictor.from_release(REPO_ROOT / "models")  # the app's models and limits (32 MiB uploads)


class InputTimeout(Exception):
    """One fuzz input ran past PER_INPUT_SECONDS (raised by the watchdog, from outside the call)."""


@contextlib.contextmanager
def watchdog(seconds: float):
    """Bound the block's time from outside it: SIGALRM raises :class:`InputTimeout` into Python code that hangs,
    and faulthandler, a C thread, dumps every stack and exits the process if the block is stuck inside C code
    (a decoder looping) for twice as long, so CI fails instead of stalling."""

    def expire(signum, frame):
        raise InputTimeout(f"one input ran past {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(2 * seconds, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


def _check(data: bytes, strategy: str) -> None:
    with watchdog(PER_INPUT_SECONDS):
        _check_unbounded(data, strategy)


def _check_unbounded(data: bytes, strategy: str) -> None:
    measure_memory = _reset_peak_rss()
    rss_before = _proc_status_kib("VmRSS") if measure_memory else 0
    start = time.perf_counter()
    outcome = "refused"
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
        outcome = "decoded"
    except XRayReadError as error:
        assert str(error), "errors must say what is wrong"
    elapsed = time.perf_counter() - start
    peak_mib = (_proc_status_kib("VmHWM") - rss_before) / 1024 if measure_memory else None
    MEASUREMENTS[strategy].append((elapsed, peak_mib, outcome))
    assert elapsed < PER_INPUT_SECONDS, f"one input took {elapsed:.1f} s"
    assert peak_mib is None or peak_mib < PER_INPUT_MIB, f"one input took {peak_mib:.0f} MiB"


@st.composite
def mutated(draw, seeds: dict[str, bytes]) -> bytes:
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
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
    _check(data, "random bytes")


@FUZZ_SETTINGS
@given(
    st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"BM", b"RIFF", b"\0" * 128 + b"DICM"]),
    st.binary(min_size=0, max_size=2048),
)
def test_valid_magic_with_garbage_never_escapes(magic, tail):
    _check(magic + tail, "valid magic + garbage")


@FUZZ_SETTINGS
@given(mutated(SYNTHETIC))
def test_mutated_synthetic_files_never_escape_or_hang(data):
    _check(data, "mutated synthetic files")


@pytest.mark.skipif(bool(MISSING_REAL), reason=f"real seed files not in {SHARED_DATA}: {MISSING_REAL}")
@FUZZ_SETTINGS
@given(mutated(REAL))
def test_mutated_real_files_never_escape_or_hang(data):
    _check(data, "mutated real files")


@pytest.mark.parametrize("name", sorted(SYNTHETIC) + sorted(REAL_SEEDS))
def test_every_seed_reads_unmutated(name):
    if name not in SEEDS:
        pytest.skip(f"real seed {name!r} not available: {SHARED_DATA.joinpath(*REAL_SEEDS[name])}")
    assert isinstance(load_xray(SEEDS[name]), XRay)
    _check(SEEDS[name], "unmutated seeds")


@pytest.mark.skipif(not _reset_peak_rss(), reason="needs Linux's /proc/self/clear_refs to reset the peak-RSS mark")
def test_the_memory_measurement_sees_a_large_allocation():
    # 256 MiB, so that what other threads of the test process (servers of earlier tests) free or allocate meanwhile,
    # a few MiB, cannot move the figure out of its bounds (a 64-MiB block did once in a full run)
    _reset_peak_rss()
    before = _proc_status_kib("VmRSS")
    block = np.ones(256 * 2**20, dtype=np.uint8)  # touched
    grown = (_proc_status_kib("VmHWM") - before) / 1024
    del block
    assert 240 < grown < 400, f"{grown:.0f} MiB"


def test_an_input_that_hangs_fails_within_the_bound_instead_of_stalling(monkeypatch):
    import test_io_fuzz

    def hang(data):
        time.sleep(3600)

    monkeypatch.setattr(test_io_fuzz, "load_xray", hang)
    monkeypatch.setattr(test_io_fuzz, "PER_INPUT_SECONDS", 0.5)
    start = time.perf_counter()
    with pytest.raises(InputTimeout, match=r"ran past 0\.5 s"):
        test_io_fuzz._check(b"\x89PNG\r\n\x1a\n", "hang")
    assert time.perf_counter() - start < 5
