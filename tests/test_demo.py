"""The demo's handlers, called directly (no server): what each returns for what a visitor gives."""

from __future__ import annotations

import pytest
from support.films import REPO_ROOT, chest_png

from cxrdistill.demo import DemoError, Handlers
from cxrdistill.inference import Predictor


@pytest.fixture(scope="module")
def handlers(tmp_path_factory) -> tuple[Handlers, list[str]]:
    uploads = tmp_path_factory.mktemp("uploads")
    warnings: list[str] = []
    predictor = Predictor.from_release(REPO_ROOT / "models")
    return Handlers({"TB": predictor}, upload_root=lambda: uploads, warn=warnings.append), warnings


def test_an_upload_is_read_once_deleted_and_analysed(handlers):
    handlers, _ = handlers
    upload = handlers.upload_root() / "film.png"
    upload.write_bytes(chest_png())
    xray, status = handlers.read_upload(str(upload))
    assert not upload.exists() and "already deleted" in status and "256 x 256 px" in status
    shown = handlers.analyse(xray, "TB", 28, 1)
    assert len(shown) == 12 and "cxr-answer" in shown[0] and shown[-1]["answer"]["family"]
    assert shown[2].shape[:2] != shown[1].shape[:2]  # what the 28-px student sees is not the display image
    assert handlers.analyse(None, "TB", 28, 1) == ("",) + (None,) * 9 + ("", None)  # nothing readable: all cleared


def test_a_bad_upload_is_said_in_the_status_line_and_a_warning(handlers):
    handlers, warnings = handlers
    upload = handlers.upload_root() / "notes.png"
    upload.write_bytes(b"not an image at all")
    xray, status = handlers.read_upload(str(upload))
    assert xray is None and status.startswith("**Cannot use this file:**") and warnings[-1] in status.replace("*", "")


def test_the_api_refuses_what_it_cannot_answer(handlers):
    handlers, _ = handlers
    with pytest.raises(DemoError, match="No file"):
        handlers.predict_api(None)
    film = handlers.upload_root() / "api.png"
    film.write_bytes(chest_png())
    with pytest.raises(DemoError, match="Unknown model family 'Lungs'"):
        handlers.predict_api(str(film), 28, "Lungs")
    with pytest.raises(DemoError, match="no 30-px student"):
        handlers.predict_api(str(film), 30, "TB")
    assert handlers.predict_api(str(film), 28, "TB")["answer"]["state"] in ("low", "indeterminate", "signal")
    with pytest.raises(DemoError, match="no longer on the server"):
        handlers.predict_api(str(handlers.upload_root() / "never-uploaded.png"), 28, "TB")


def test_a_family_change_offers_its_own_sizes_with_the_smallest_chosen(handlers):
    handlers, _ = handlers
    choices, size, panel = handlers.family_sizes("TB")
    assert choices == sorted(choices) and size == choices[0] and f"{size} px" in panel


def test_the_low_bandwidth_answer_says_why_the_student_answers(handlers):
    import base64

    import numpy as np

    handlers, _ = handlers
    pixels = (np.linspace(0, 255, 28 * 28) % 256).astype(np.uint8).tobytes()
    status, view, heat, results = handlers.analyse_reduced("28:" + base64.b64encode(pixels).decode(), "TB", 28, 1)
    assert "Sent **" in status and view is not None and heat is not None
    assert "the only model that runs on a view reduced in the browser" in results
    assert "best validation AUROC" not in results.split("cxr-answer")[1].split("</div></div>")[0]
    status, *_ = handlers.analyse_reduced("error:no file chosen", "TB", 28, 1)
    assert status.startswith("**Nothing sent:**")
