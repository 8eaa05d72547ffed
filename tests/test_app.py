"""The Gradio app, end to end: gradio_client against the launched app, a real browser, models from the Hub, the Space.

The app is launched in-process on 127.0.0.1 with the released models (a random TB CNN stands in where models/ has
no TB model). Browser tests drive Debian's chromium through playwright and are skipped, with the reason, where it is
not installed (.ci/run installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from support.films import REPO_ROOT, make_dicom, png_bytes, shared_path, synthetic_chest
from support.models import tb_model

import app
from cxrdistill import pages
from cxrdistill.inference import Predictor
from cxrdistill.pages import model_card_row, model_panel
from cxrdistill.serving import ConsumedUploads, UploadGone, reduced_view

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = os.environ.get("CXRDISTILL_SCREENSHOTS")  # keep the browser screenshots here when set


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def upload_dir(tmp_path_factory) -> Path:
    """Gradio's upload folder for this module (Gradio reads GRADIO_TEMP_DIR at each upload)."""
    folder = tmp_path_factory.mktemp("gradio-uploads")
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = previous


@pytest.fixture(scope="module")
def served(upload_dir):
    """``(url, predictor)`` of the app launched as ``python app.py`` would, on a free port (``predictor``: the
    default release family's; every family in models/ is offered)."""
    args = app.parse_args(
        ["--host", "127.0.0.1", "--port", str(free_port()), "--models-dir", str(REPO_ROOT / "models")]
    )
    families = app.load_predictors(args)
    predictor = next(iter(families.values()))
    if predictor.tb_model is None:
        predictor.tb_model = tb_model()
    demo = app.build_demo(families)
    demo.queue(**app.queue_options(args))
    _, url, _ = demo.launch(**app.launch_options(args), prevent_thread_lock=True, quiet=True)
    yield url, predictor
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[0], verbose=False, download_files=False)


def write_png(folder: Path, name: str, size: int = 300) -> Path:
    path = folder / name
    path.write_bytes(png_bytes((synthetic_chest(size, size) * 255).astype(np.uint8)))
    return path


def test_client_gets_json_for_a_real_and_a_synthetic_xray(client, tmp_path):
    from gradio_client import handle_file

    from cxrdistill.release import RELEASE_FAMILIES

    real = shared_path("tbx11k", "imgs", "tb", "tb0005.png")
    result = client.predict(handle_file(str(real)), 28, api_name="/predict")  # the default family: TB
    assert result["student"]["image_size"] == 28 and set(result["student"]["global_probs"]) == {"not_tb", "tb"}
    assert result["teacher"]["image_size"] == 224 and isinstance(result["tb"]["boxes"], list)
    synthetic = handle_file(str(write_png(tmp_path, "synthetic.png")))
    result = client.predict(synthetic, 28, RELEASE_FAMILIES["nih1024"].title, api_name="/predict")
    assert set(result["student"]["global_probs"]) == {"normal", "pneumonia"} and result["tb"] is None
    assert result["teacher"]["image_size"] == 224 and result["image"]["original_size"] == [300, 300]


def test_bad_uploads_get_a_clear_error_and_the_app_keeps_serving(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    text = tmp_path / "notes.png"
    text.write_text("this is not an X-ray")
    ct = tmp_path / "ct.dcm"
    ct.write_bytes(make_dicom(np.full((64, 64), 900, dtype=np.uint16), modality="CT"))
    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(png_bytes(np.zeros((10, 10), dtype=np.uint8)))
    for bad, reason in ((text, "not an image"), (ct, "CT"), (tiny, "small")):
        with pytest.raises(AppError, match=reason):
            client.predict(handle_file(str(bad)), 28, api_name="/predict")
    result = client.predict(handle_file(str(write_png(tmp_path, "good.png"))), 28, api_name="/predict")
    assert result["student"]["name"] == "student-28"


def test_uploads_do_not_stay_on_disk(client, upload_dir, tmp_path):
    from gradio_client import handle_file

    path = write_png(tmp_path, "private-xray.png", size=200)
    client.predict(handle_file(str(path)), 28, api_name="/predict")
    data = path.read_bytes()
    leftovers = [p for p in upload_dir.rglob("*") if p.is_file() and p.stat().st_size and p.read_bytes() == data]
    assert leftovers == []
    assert not list(upload_dir.rglob("private-xray.png"))


def test_an_upload_is_deleted_at_once_and_its_empty_folder_only_once_old(upload_dir):
    # Gradio makes <sha256>/ and then renames an identical upload into it: removing that folder at once made such
    # uploads fail with HTTP 500 (seen in the crowd tests), so only the file goes at once.
    consumed = ConsumedUploads(folder_ttl_s=600)
    folder = upload_dir / ("a" * 64)
    folder.mkdir()
    (folder / "x.png").write_bytes(b"pixels")
    assert consumed.consume(folder / "x.png", upload_dir) == b"pixels"
    assert folder.is_dir() and not any(folder.iterdir())
    assert consumed.consume(folder / "x.png", upload_dir) == b"pixels"  # a second visitor with the same file
    with pytest.raises(UploadGone):
        ConsumedUploads(ttl_s=0).consume(folder / "x.png", upload_dir)

    busy, other = upload_dir / ("b" * 64), upload_dir / "not-an-upload-folder"
    busy.mkdir()
    (busy / "y.png").write_bytes(b"other pixels")
    other.mkdir()
    consumed.sweep_folders(upload_dir)
    assert folder.is_dir()  # still young
    old = time.time() - 3600
    for path in (folder, busy, other):
        os.utime(path, (old, old))
    consumed.sweep_folders(upload_dir)
    assert not folder.exists() and busy.is_dir() and other.is_dir()  # only empty upload folders go
    shutil.rmtree(busy)
    other.rmdir()


def test_many_visitors_sending_the_same_file_at_once_all_get_answers(served, tmp_path):
    # Gradio stores an upload under a hash of its content: identical concurrent uploads share one path, which
    # the first request deletes. Every request must still be answered.
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    path = write_png(tmp_path, "shared-sample.png", size=256)

    def one(_):
        client = Client(served[0], verbose=False, download_files=False)
        return client.predict(handle_file(str(path)), 28, api_name="/predict")["student"]["name"]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(8))) == ["student-28"] * 8


def test_dicom_patient_fields_never_reach_the_output_or_the_logs(client, upload_dir, tmp_path, caplog, capfd):
    import logging

    from gradio_client import handle_file

    path = tmp_path / "patient.dcm"
    pixels = (synthetic_chest(256, 256) * 4000).astype(np.uint16)
    path.write_bytes(make_dicom(pixels, PatientName="Doe^Jane", PatientID="PID-123456"))
    with caplog.at_level(logging.DEBUG):
        result = client.predict(handle_file(str(path)), 28, api_name="/predict")
    assert result["image"]["format"] == "DICOM"
    captured = capfd.readouterr()
    for where, text in {
        "result": repr(result),
        "logs": caplog.text,
        "stdout": captured.out,
        "stderr": captured.err,
    }.items():
        assert "Doe" not in text and "PID-123456" not in text, where
    # nothing written beside the uploads carries them either
    for file in upload_dir.rglob("*"):
        if file.is_file():
            assert b"PID-123456" not in file.read_bytes(), file


def test_models_come_from_the_hub_at_a_revision(hub, monkeypatch):
    from cxrdistill.hub import push_folder

    push_folder(REPO_ROOT / "models" / "mlcak-student-28", "tester/app-student-28", tag="v1")  # TB
    push_folder(REPO_ROOT / "models" / "nih1024-student-28", "tester/app-student-28")  # main moves on: pneumonia
    args = app.parse_args(["--student", "tester/app-student-28", "--revision", "v1"])
    predictor = app.load_predictor(args)
    assert predictor.resolutions == [28] and predictor.teacher is None and predictor.tb_model is None
    assert predictor.students[28].config.global_labels[-1] == "tb"
    latest = app.load_predictor(app.parse_args(["--student", "tester/app-student-28"]))
    assert latest.students[28].config.global_labels[-1] == "pneumonia"
    monkeypatch.setenv("CXRDISTILL_STUDENTS", "tester/app-student-28")
    monkeypatch.setenv("CXRDISTILL_REVISION", "v1")
    monkeypatch.setenv("CXRDISTILL_TEACHER", str(REPO_ROOT / "models" / "mlcak-teacher-224"))
    from_env = app.load_predictor(app.parse_args([]))
    assert from_env.resolutions == [28] and from_env.teacher.config.image_size == 224


def test_each_release_family_is_offered_and_answers_with_its_own_models(tmp_path):
    """Two families in the models folder: the app offers both, and the API answers with the chosen family's
    student (released students stand in for the second family's)."""
    from gradio_client import Client, handle_file

    from cxrdistill.models import StudentViT, StudentViTConfig, preset_config
    from cxrdistill.release import RELEASE_FAMILIES

    models = tmp_path / "models"
    models.mkdir()
    (models / "mlcak-student-28").symlink_to(REPO_ROOT / "models" / "mlcak-student-28")
    stand_in = StudentViT(preset_config(StudentViTConfig, "mlcak-student-conv6", image_size=56))  # untrained
    stand_in.save_pretrained(models / "nih1024-student-56")
    args = app.parse_args(["--models-dir", str(models), "--host", "127.0.0.1", "--port", str(free_port())])
    families = app.load_predictors(args)
    tb_title, nih_title = RELEASE_FAMILIES["tbx11k"].title, RELEASE_FAMILIES["nih1024"].title
    assert list(families) == [tb_title, nih_title]
    assert families[tb_title].resolutions == [28] and families[nih_title].resolutions == [56]
    note = pages.models_note(families)
    assert tb_title in note and nih_title in note and note.index(tb_title) < note.index("56 px")
    demo = app.build_demo(families)
    demo.queue(**app.queue_options(args))
    _, url, _ = demo.launch(**app.launch_options(args), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False, download_files=False)
        xray = handle_file(str(write_png(tmp_path, "synthetic.png")))
        assert client.predict(xray, 28, api_name="/predict")["student"]["image_size"] == 28  # the default family
        assert client.predict(xray, 56, nih_title, api_name="/predict")["student"]["image_size"] == 56
        with pytest.raises(Exception, match="no 28-px student"):
            client.predict(xray, 28, nih_title, api_name="/predict")
        with pytest.raises(Exception, match="Unknown model family"):
            client.predict(xray, 28, "Cardiology", api_name="/predict")
    finally:
        demo.close()


def test_a_missing_model_stops_the_app_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match="cannot load the models"):
        app.main(["--models-dir", str(tmp_path)])


def check_answer_on_page(page, expected: dict) -> None:
    """The answer box says what ``Prediction.to_dict()["answer"]`` says: state, model and probability, in words."""
    from cxrdistill.triage import display_label

    box = page.locator("#cxr-answer")
    assert box.get_attribute("data-state") == expected["state"]
    assert box.get_attribute("data-model") == expected["model"]
    assert float(box.get_attribute("data-probability")) == pytest.approx(expected["probability"], abs=1e-4)
    text = box.inner_text()
    assert f"{display_label(expected['label'])}: {expected['state']}" in text
    assert f"probability {expected['probability']:.3f}" in text and expected["model"] in text
    assert f"rule-out cut {expected['rule_out']:.3f}, rule-in cut {expected['rule_in']:.3f}" in text


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_browser_upload_shows_one_answer_comparisons_attention_and_boxes(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, predictor = served
    xray = shared_path("tbx11k", "imgs", "tb", "tb0005.png")  # a TB film: lungs to find, boxes to draw
    screenshots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    screenshots.mkdir(parents=True, exist_ok=True)
    expected = predictor.predict(xray.read_bytes())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(url)
        expect(page.locator("#cxr-disclaimer")).to_contain_text("not a medical device")
        page.set_input_files("#cxr-upload input[type=file]", str(xray))
        answer = page.locator("#cxr-answer")
        expect(answer).to_be_visible(timeout=60_000)
        check_answer_on_page(page, expected.to_dict()["answer"])
        # beneath it, each model once, the answering one first; each with its own state and validation AUROC
        table = page.locator("#cxr-probabilities")
        rows = table.locator("tr[data-model]")
        assert [rows.nth(k).get_attribute("data-model") for k in range(rows.count())] == [
            r.source for r in expected.results
        ]
        for k, result in enumerate(expected.results):
            assert rows.nth(k).get_attribute("data-state") == result.decision.state
        assert "answers" in rows.nth(0).inner_text() and "comparison" in rows.nth(1).inner_text()
        assert "not_tb" not in table.inner_text()
        expect(page.locator("#cxr-student-attention img")).to_be_visible()
        expect(page.locator("#cxr-student-view img")).to_be_visible()
        page.screenshot(path=str(screenshots / "app.png"), full_page=True)

        page.get_by_role("tab", name="TB localisation").click()
        expect(page.locator("#cxr-tb-boxes img")).to_be_visible()
        note = page.locator("#cxr-tb-note")
        expect(note).to_contain_text("box(es)")
        # the TB tab says which model draws the boxes and gives no second TB answer
        assert expected.tb.source in note.inner_text() and "probability" not in note.inner_text()
        page.screenshot(path=str(screenshots / "app-tb.png"), full_page=True)
        assert expected.lungs_found and expected.tb.boxes
        assert f"{len(expected.tb.boxes)} box(es)" in note.inner_text()

        page.get_by_role("tab", name="How good is this model?").click()  # the cards' numbers
        panel = page.locator("#cxr-panel")
        for name, folder in (("teacher-224", "mlcak-teacher-224"), ("tb-224", "tb-boxes-224")):
            raw = json.loads((REPO_ROOT / "models" / folder / "metrics.json").read_text())["raw"]
            card = panel.locator(f'.cxr-card[data-model="{name}"]')
            expect(card).to_contain_text(f"AUROC {raw['same_hospital_auroc']:.3f}")
            expect(card).to_contain_text(f"All {raw['images']} validation films")
            signal = raw["triage"]["cross_fitted"]["rates"]["negative"]["signal"]
            low, high = signal["ci95"]
            expect(card).to_contain_text(f"signal {signal['share']:.0%} (95% CI {low:.2f}-{high:.2f})")
        expect(panel.locator(".cxr-card").first).to_contain_text("answers for this family")
        page.screenshot(path=str(screenshots / "app-panel.png"), full_page=True)

        page.locator("#cxr-upload button[aria-label=Clear]").click()
        fake = tmp_path / "notes.png"
        fake.write_text("not an image")  # passes the type filter, fails to decode: an error, not a crash
        page.set_input_files("#cxr-upload input[type=file]", str(fake))
        expect(page.locator("#cxr-status")).to_contain_text("Cannot use this file", timeout=30_000)
        expect(table).to_have_count(0, timeout=30_000)  # the previous image's results are gone
        expect(answer).to_have_count(0, timeout=30_000)
        browser.close()
    assert (screenshots / "app.png").stat().st_size > 50_000


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
@pytest.mark.parametrize("family", ["tbx11k", "nih1024"])
def test_browser_answer_text_equals_the_api_answer_for_tb_normal_and_dicom_films(served, client, tmp_path, family):
    """A TB film, a normal film from the same hospital and the example DICOM, in each family: the page's answer is
    the API's ``answer`` for the same file."""
    from gradio_client import handle_file
    from playwright.sync_api import expect, sync_playwright

    from cxrdistill.examples import example_path
    from cxrdistill.release import RELEASE_FAMILIES

    url, _ = served
    title = RELEASE_FAMILIES[family].title
    train = shared_path("tbx11k", "imgs", "extra", "mc+shenzhen", "train")
    films = {"tb": train / "CHNCXR_0331_1.png", "normal": train / "CHNCXR_0004_0.png", "dicom": Path(example_path())}
    screenshots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    screenshots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        page.get_by_label(title).check()
        for name, film in films.items():
            expected = client.predict(handle_file(str(film)), 28, title, api_name="/predict")["answer"]
            page.set_input_files("#cxr-upload input[type=file]", str(film))
            expect(page.locator("#cxr-answer")).to_have_attribute("data-model", expected["model"], timeout=60_000)
            expect(page.locator("#cxr-answer")).to_have_attribute(
                "data-probability", f"{expected['probability']:.4f}", timeout=60_000
            )
            check_answer_on_page(page, expected)
            page.screenshot(path=str(screenshots / f"app-{family}-{name}.png"))
            page.locator("#cxr-upload button[aria-label=Clear]").click()
            expect(page.locator("#cxr-answer")).to_have_count(0, timeout=30_000)
        browser.close()


def test_space_push_uploads_app_package_and_models(hub):
    from huggingface_hub import HfApi

    from cxrdistill.cli import main

    assert main(["space-push", "tester/demo", "--root", str(REPO_ROOT), "--model-repo", "tester/s28"]) == 0
    api = HfApi()
    files = set(api.list_repo_files("tester/demo", repo_type="space"))
    assert {"app.py", "README.md", "requirements.txt", "cxrdistill/inference.py"} <= files
    assert "models/mlcak-student-28/model.safetensors" in files
    assert not any(f.startswith("models/tb-teacher-224/") for f in files)  # released, but the app does not use it
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)
    card = Path(api.hf_hub_download("tester/demo", "README.md", repo_type="space")).read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["sdk"] == "gradio" and header["app_file"] == "app.py" and header["models"] == ["tester/s28"]
    uploaded_app = Path(api.hf_hub_download("tester/demo", "app.py", repo_type="space")).read_bytes()
    assert uploaded_app == (REPO_ROOT / "app.py").read_bytes()  # the root app itself, not a copy kept in git
    # a second push replaces the Space's content in one commit: what the app no longer has is deleted
    api.upload_file(
        path_or_fileobj=b"left over", path_in_repo="old_module.py", repo_id="tester/demo", repo_type="space"
    )
    assert "old_module.py" in api.list_repo_files("tester/demo", repo_type="space")
    commits_before = len(api.list_repo_commits("tester/demo", repo_type="space"))
    assert main(["space-push", "tester/demo", "--root", str(REPO_ROOT)]) == 0
    after = set(api.list_repo_files("tester/demo", repo_type="space"))
    assert "old_module.py" not in after and {"app.py", "models/mlcak-student-28/model.safetensors"} <= after
    assert len(api.list_repo_commits("tester/demo", repo_type="space")) == commits_before + 1


def test_space_push_outside_a_checkout_fails_clearly(hub, tmp_path, capsys):
    from cxrdistill.cli import main

    assert main(["space-push", "tester/nothing", "--root", str(tmp_path)]) == 1
    assert "not a cxrdistill checkout" in capsys.readouterr().err


def test_space_files_pin_what_the_package_needs():
    from packaging.requirements import Requirement

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    needed = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["app"]]
    lines = (REPO_ROOT / "spaces" / "requirements.txt").read_text().splitlines()
    pinned = {
        Requirement(line).name.lower(): Requirement(line) for line in lines if line and not line.startswith(("#", "-"))
    }
    constraints = {
        Requirement(line).name.lower(): Requirement(line)
        for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    header = yaml.safe_load((REPO_ROOT / "spaces" / "README.md").read_text().split("---")[1])
    for requirement in needed:
        name = requirement.name.lower()
        if name == "gradio":  # the Space's sdk_version installs it: the version the tests ran with
            assert f"=={header['sdk_version']}" == str(constraints["gradio"].specifier)
            assert requirement.specifier.contains(header["sdk_version"])
            continue
        assert name in pinned, f"spaces/requirements.txt misses {name}"
        (version,) = [spec.version for spec in pinned[name].specifier]
        assert requirement.specifier.contains(version), f"{name}=={version} is outside {requirement}"
        if name in constraints:
            assert pinned[name].specifier == constraints[name].specifier


def test_a_full_queue_answers_busy_and_recovers(tmp_path):
    """A crowd larger than the queue gets Gradio's "queue is full" answer, not a pile-up, and the app keeps serving."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    predictor = Predictor.from_release(REPO_ROOT / "models")
    demo = app.build_demo(predictor)
    demo.queue(max_size=2, default_concurrency_limit=1)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    path = write_png(tmp_path, "crowd.png", size=256)
    crowd = 12
    clients = [Client(url, verbose=False, download_files=False) for _ in range(crowd)]
    start = threading.Barrier(crowd)

    def one(client, wait=True):
        try:
            if wait:
                start.wait(timeout=60)  # everyone asks at the same moment
            return client.predict(handle_file(str(path)), 28, api_name="/predict")["student"]["name"]
        except Exception as error:  # the busy answer, whatever exception type the client wraps it in
            return str(error)

    try:
        with ThreadPoolExecutor(crowd) as pool:
            answers = list(pool.map(one, clients))
        served = answers.count("student-28")
        busy = [a for a in answers if a != "student-28"]
        assert served >= 1 and busy, answers
        assert all("queue is full" in a.lower() for a in busy), busy
        assert one(clients[0], wait=False) == "student-28"  # the crowd has gone: served again
    finally:
        demo.close()


def test_an_upload_over_the_size_limit_is_refused_and_the_app_keeps_serving(served, client, tmp_path):
    """Gradio itself refuses the file (the app's launch setting): the client before sending it, the server with HTTP
    413 before storing it. Without that setting the upload would be stored and the decoder's own "larger than the
    32 MiB limit" would answer, which these patterns do not match."""
    import httpx
    from gradio_client import handle_file

    huge = tmp_path / "huge.png"
    with huge.open("wb") as handle:  # a PNG signature, then more bytes than the app accepts
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.truncate(app.MAX_UPLOAD_MIB * 2**20 + 1024)
    with pytest.raises(Exception, match=rf"exceeds the maximum file size of {app.MAX_UPLOAD_MIB * 2**20} bytes"):
        client.predict(handle_file(str(huge)), 28, api_name="/predict")
    with huge.open("rb") as handle:  # a client that does not check first
        response = httpx.post(
            f"{served[0].rstrip('/')}/gradio_api/upload", files={"files": ("huge.png", handle)}, timeout=60
        )
    assert response.status_code == 413 and "maximum allowed size" in response.text, response.text[:300]
    assert client.predict(handle_file(str(write_png(tmp_path, "ok.png"))), 28, api_name="/predict")["student"]


def test_the_model_panel_shows_each_cards_numbers_and_its_roc_curve(tmp_path):
    """The "How good is this model?" panel reads the numbers from the card (metrics.json) that travels with each
    model; a model without a card is said to be unmeasured rather than shown with made-up numbers."""
    import json

    from cxrdistill.models import load_metrics

    predictor = Predictor.from_release(REPO_ROOT / "models")
    card = predictor.cards["tb-224"]
    assert card == json.loads((REPO_ROOT / "models" / "tb-boxes-224" / "metrics.json").read_text())
    raw = card["raw"]
    row = model_card_row("tb-224", predictor.tb_model, card, "tb-boxes-224")
    assert f"AUROC {raw['same_hospital_auroc']:.3f}" in row and f"({raw['same_hospital_images']})" in row
    assert row.index("Same-hospital") < row.index(f"All {raw['images']} validation films")
    triage = raw["triage"]
    assert (
        f"below {triage['rule_out']['threshold']:.3f}" in row and f"above {triage['rule_in']['threshold']:.3f}" in row
    )
    for where, rates in (("chosen on", triage["rates"]), ("cross-fitted", triage["cross_fitted"]["rates"])):
        for group, name in (("positive", "tb films"), ("negative", "films without tb")):
            line = next(x for x in row.split("<li>") if x.startswith(f"{name} (") and where in x)
            for state in ("low", "indeterminate", "signal"):
                rate = rates[group][state]
                low, high = rate["ci95"]  # a swapped interval would read high-low here
                assert f"{state} {rate['share']:.0%} (95% CI {low:.2f}-{high:.2f})" in line, (line, state)
                assert low <= rate["share"] <= high
    with_roc = {**card, "raw": {**raw, "roc": {"films": "same-hospital films", "fpr": [0, 0.5, 1], "tpr": [0, 0.9, 1]}}}
    assert 'src="data:image/png;base64,' in model_card_row("tb-224", predictor.tb_model, with_roc)
    assert "unmeasured" in model_card_row("student-28", predictor.students[28], None)
    panel = model_panel(predictor, 28)
    assert [name in panel for name in ("student-28", "teacher-224", "tb-224")] == [True] * 3
    from cxrdistill.release import RELEASE_FAMILIES

    answering = RELEASE_FAMILIES["tbx11k"].answer
    assert panel.index(answering) < panel.index("mlcak-student-28")  # the answering model first
    assert panel.index(answering) < panel.index("mlcak-teacher-224")
    bare = tmp_path / "bare"  # weights and config only
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).symlink_to(REPO_ROOT / "models" / "mlcak-student-28" / name)
    assert load_metrics(bare) is None and Predictor.from_sources([str(bare)]).cards == {}


def _browser_reduction(url: str, path: Path, size: int) -> str:
    """The low-bandwidth payload chromium makes for ``path`` with the app's own reduce.js."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url)
        page.get_by_role("tab", name="Low-bandwidth mode").click()  # tabs are rendered when first shown
        page.set_input_files("#cxr-lowbw-file", str(path))
        payload = page.evaluate(
            "async (size) => window.cxrReduce.payload(document.querySelector('#cxr-lowbw-file').files[0], size)", size
        )
        browser.close()
    return payload


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_the_browser_reduction_matches_the_servers_model_input(served, tmp_path):
    """reduce.js, run by chromium, makes the student's input as model_input does on the server (letterbox onto 224,
    area-average; larger films first brought to the 512-px display size), to within 8-bit rounding."""
    from PIL import Image

    from cxrdistill.data.transforms import model_input
    from cxrdistill.io import load_xray
    from cxrdistill.results import display_image

    film = shared_path("tbx11k", "imgs", "tb", "tb0005.png")
    gray = Image.open(film).convert("L")
    cases = {
        "square 512-px PNG": film,
        "1000 x 820 PNG": tmp_path / "wide.png",
        "600 x 700 colour PNG": tmp_path / "tall.png",
    }
    gray.resize((1000, 820)).save(cases["1000 x 820 PNG"])
    gray.convert("RGB").resize((600, 700)).save(cases["600 x 700 colour PNG"])
    for name, path in cases.items():
        for size in (28, 56):
            sent = reduced_view(_browser_reduction(served[0], path, size))
            server = model_input(display_image(load_xray(path).pixels), size)[0, 0].numpy()
            assert sent.shape == (size, size)
            assert np.abs(sent - server).max() <= 0.5 / 255 + 1e-4, (name, size, np.abs(sent - server).max() * 255)
    with pytest.raises(ValueError, match="more data"):
        reduced_view("28:" + "A" * 5000)
    with pytest.raises(ValueError, match="SIZE at most"):
        reduced_view("4096:AAAA")
    with pytest.raises(ValueError, match="pixels for a 28 x 28"):
        reduced_view("28:AAAA")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_browser_low_bandwidth_mode_sends_only_the_reduced_film(served, tmp_path):
    """The film never leaves the browser: the request for a 512-px PNG carries under 20 KB, and the answer is the
    server's own prediction on the same reduced input; a DICOM is explained, not sent."""
    from playwright.sync_api import expect, sync_playwright

    url, predictor = served
    film = shared_path("tbx11k", "imgs", "tb", "tb0005.png")  # 512 x 512 px, 127 KB
    screenshots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    screenshots.mkdir(parents=True, exist_ok=True)
    dicom = tmp_path / "film.dcm"
    dicom.write_bytes(make_dicom((synthetic_chest(256, 256) * 4095).astype(np.uint16)))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(url)
        page.get_by_role("tab", name="Low-bandwidth mode").click()
        expect(page.locator("#cxr-lowbw-note")).to_contain_text("no teacher")
        page.set_input_files("#cxr-lowbw-file", str(film))
        posts = []
        page.on("request", lambda request: request.method == "POST" and posts.append(request))
        page.locator("#cxr-lowbw-send").click()
        status = page.locator("#cxr-lowbw-status")
        expect(status).to_contain_text("The film itself stayed in your browser", timeout=60_000)
        sent = sum(len(request.post_data_buffer or b"") for request in posts)
        assert 0 < sent < 20_000 and sent < film.stat().st_size / 50, sent
        payload = next(json.loads(r.post_data)["data"][0] for r in posts if r.url.split("?")[0].endswith("/join"))
        assert f"Sent {len(payload):,} bytes" in status.inner_text()
        shown = float(page.locator("#cxr-lowbw-answer").get_attribute("data-probability"))
        same_input = predictor.predict_view(reduced_view(payload)).answer.decision.probability
        full_film = predictor.predict(film.read_bytes()).student.decision.probability
        assert shown == pytest.approx(same_input, abs=1e-4)  # the server's prediction on what was sent
        assert shown == pytest.approx(full_film, abs=0.02)  # and close to the full-upload path's
        expect(page.locator("#cxr-lowbw-view img")).to_be_visible()
        page.screenshot(path=str(screenshots / "app-lowbandwidth.png"), full_page=True)

        posts.clear()
        page.set_input_files("#cxr-lowbw-file", str(dicom))
        page.locator("#cxr-lowbw-send").click()
        expect(status).to_contain_text("cannot decode DICOM", timeout=30_000)
        assert all(b"DICM" not in (request.post_data_buffer or b"") for request in posts)
        browser.close()


def test_the_tb_tab_says_how_the_box_drawing_model_was_trained():
    """A model whose card's loss terms include the radiologists' boxes is labelled box-supervised, in the TB tab and
    on its model card; the others are weakly supervised."""
    import dataclasses

    from cxrdistill.models import render_model_card
    from cxrdistill.pages import tb_note

    predictor = Predictor.from_release(REPO_ROOT / "models")
    prediction = predictor.predict(png_bytes((synthetic_chest(300, 260) * 255).astype(np.uint8)))
    card = predictor.cards["tb-224"]  # the released box drawer: box-supervised, on lung crops, its log-odds map
    assert "boxes" in card["training"]["loss_terms"]
    note = tb_note(prediction, predictor.cards)
    assert "**box-supervised**" in note and "Box-supervised" in str(render_model_card(predictor.tb_model, card))
    assert "map of TB log-odds per region" in note and "read on the film cropped to its lungs" in note
    assert prediction.tb.input_crop == "lungs" and next(iter(prediction.tb.maps)).startswith("log-odds CAM (tb)")
    # the released box drawer also answers for the family (the highest reference AUROC): the note says so
    assert prediction.answer_result.name == "tb-224" and "the model that answers above" in note
    other = dataclasses.replace(prediction, answer_result=prediction.teacher)
    assert "the model that answers above" not in tb_note(other, predictor.cards)
    weak = {**card, "training": {**card["training"], "loss_terms": ["global_ce"]}}
    assert "weakly supervised" in tb_note(prediction, {"tb-224": weak})
    assert "Box-supervised" not in str(render_model_card(predictor.tb_model, weak))
    # a weakly supervised model on whole films: its class activation map, nothing said of crops
    tb = prediction.tb
    whole = dataclasses.replace(tb, maps={"CAM (tb)": next(iter(tb.maps.values()))}, input_crop="film")
    note = tb_note(dataclasses.replace(prediction, tb=whole), {"tb-224": weak})
    assert "class activation map" in note and "cropped" not in note
