"""cxrdistill demo: low-resolution chest X-ray classification, attention maps and TB boxes (Gradio).

    python app.py                                  # the released models in ./models, no network needed
    python app.py --student user/cxr-student-28 --teacher user/cxr-teacher --revision v1   # from the Hub

UI code only: every result comes from ``cxrdistill.inference.Predictor``. Models load once at start and serve
every request. Uploads are decoded in memory and the uploaded file is deleted as soon as it is read; only a
display-size copy of the pixels stays in the visitor's session (dropped after 10 minutes). DICOM patient fields
are never read into the app, shown or logged.

Options can also come from the environment (handy for a Space): CXRDISTILL_STUDENTS (comma-separated),
CXRDISTILL_TEACHER, CXRDISTILL_TB_MODEL, CXRDISTILL_REVISION, CXRDISTILL_MODELS_DIR; HF_ENDPOINT and HF_TOKEN are
read by huggingface_hub as usual.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
import numpy as np

from cxrdistill.examples import EXAMPLES, example_path
from cxrdistill.inference import ModelChoice, Prediction, Predictor
from cxrdistill.inference import load_predictor as load_models
from cxrdistill.io import XRay, XRayMeta, XRayReadError
from cxrdistill.models import ModelLoadError
from cxrdistill.pages import CSS, answer_html, comparisons_html, model_panel, tb_note
from cxrdistill.release import RELEASE_FAMILIES
from cxrdistill.render import draw_boxes, draw_outline, enlarge, gray_to_rgb, overlay

logger = logging.getLogger("cxrdistill.app")

HERE = Path(__file__).resolve().parent
MAX_UPLOAD_MIB = 32
FILE_TYPES = [".png", ".jpg", ".jpeg", ".dcm", ".dicom"]

DISCLAIMER = (
    "**Research demo, not a medical device.** It must not be used to diagnose, treat or triage anyone. The "
    "models were trained on a few hundred public images and are often wrong. Uploads are decoded in memory and "
    "deleted from the server right after; nothing is stored or logged, and DICOM patient fields are never read "
    "into the app."
)

REDUCE_JS = (resources.files("cxrdistill") / "static" / "reduce.js").read_text()
# what the low-bandwidth button runs in the browser before the server is called: the payload replaces the
# (hidden) payload input, so the server receives the reduced pixels and never the file
REDUCE_CALL = """async (payload, family, resolution, layer) => {
  const picker = document.querySelector("#cxr-lowbw-file");
  const file = picker && picker.files ? picker.files[0] : null;
  return [await window.cxrReduce.payload(file, Number(resolution)), family, resolution, layer];
}"""
MAX_REDUCED_SIZE = 112  # the largest student input the low-bandwidth mode accepts (112 x 112 bytes)
LOW_BANDWIDTH_NOTE = (
    "**Low-bandwidth mode.** Your browser reduces the X-ray to the student's input (28 x 28 pixels by default, "
    "as chosen above) and sends only that: a few hundred bytes instead of the whole file, and the full-resolution "
    "film never reaches the server. What it gives up: no teacher, no lung outline, no TB boxes and no "
    "full-resolution maps (all need the whole film); the student's attention is shown over what was sent. DICOM "
    "files cannot be decoded by a browser: export them as PNG or JPG first."
)


# ---------------------------------------------------------------------------------------------- options


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """The app's options; each defaults to an environment variable where a Space sets one."""
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--student",
        action="append",
        default=[s for s in env("CXRDISTILL_STUDENTS", "").split(",") if s] or None,
        help="a student model (folder or Hub repo id); repeat for several input sizes (default: the release)",
    )
    parser.add_argument("--teacher", default=env("CXRDISTILL_TEACHER"), help="the teacher shown for comparison")
    parser.add_argument("--tb-model", default=env("CXRDISTILL_TB_MODEL"), help="the CNN that draws TB boxes")
    parser.add_argument("--revision", default=env("CXRDISTILL_REVISION"), help="Hub revision (tag, branch, commit)")
    parser.add_argument(
        "--models-dir",
        default=env("CXRDISTILL_MODELS_DIR", str(HERE / "models")),
        help="folder of released models, used when no --student is given",
    )
    parser.add_argument(
        "--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to serve on ($GRADIO_SERVER_NAME)"
    )
    parser.add_argument(
        "--port", type=int, default=int(env("GRADIO_SERVER_PORT", "7860")), help="port ($GRADIO_SERVER_PORT, 7860)"
    )
    parser.add_argument("--concurrency", type=int, default=2, help="requests computed at once (default: 2)")
    parser.add_argument("--queue-size", type=int, default=64, help="requests waiting before 'busy' (default: 64)")
    return parser


def load_predictor(args: argparse.Namespace) -> Predictor:
    """The models of ``--student`` / ``--teacher`` / ``--tb-model``, or else the default release family (with the
    teacher or TB model replaced where one of those is given): what ``cxrdistill predict`` loads for the same
    options."""
    family = next(iter(RELEASE_FAMILIES))
    return load_models(ModelChoice(args.student, args.teacher, args.tb_model, args.revision, args.models_dir, family))


def load_predictors(args: argparse.Namespace) -> dict[str, Predictor]:
    """Title -> predictor of every model family the app offers: the given models alone, or each release family
    (cxrdistill.release.RELEASE_FAMILIES) whose students are in ``--models-dir``."""
    if args.student:
        return {"Your models": load_predictor(args)}
    families = iter(RELEASE_FAMILIES.items())
    _, first = next(families)
    predictors = {first.title: load_predictor(args)}
    for name, family in families:
        try:
            predictors[family.title] = Predictor.from_release(args.models_dir, name)
        except FileNotFoundError:
            logger.info("release family %s is not in %s: not offered", name, args.models_dir)
    return predictors


# ------------------------------------------------------------------------------------------ request handling


_SHA256_NAME = re.compile(r"[0-9a-f]{64}")


class _ConsumedUploads:
    """Bytes of uploads read (and deleted) in the last ``ttl_s`` seconds, keyed by their path, in memory only.

    Gradio stores an upload under a hash of its content, so two visitors sending the same file at once share one
    path: the first request deletes it, and the second finds its bytes here instead of failing. Bounded in count
    and bytes; nothing is written anywhere.

    The file goes at once; the empty folder Gradio made for it (named by the content's SHA-256) stays for
    ``folder_ttl_s``: removing it at once raced Gradio's upload of an identical file, which creates the folder and
    then renames the file into it, and that upload failed with HTTP 500. Older empty upload folders are swept at
    most once a minute.
    """

    def __init__(self, ttl_s: float = 30.0, max_bytes: int = 128 * 2**20, folder_ttl_s: float = 600.0) -> None:
        self.ttl_s, self.max_bytes, self.folder_ttl_s = ttl_s, max_bytes, folder_ttl_s
        self._entries: dict[Path, tuple[float, bytes]] = {}
        self._lock = threading.Lock()
        self._last_sweep = 0.0

    def consume(self, path: str | os.PathLike) -> bytes:
        """The upload's bytes; the file Gradio stored is deleted at once (only files in Gradio's upload folder)."""
        resolved = Path(path).resolve()
        upload_root = Path(gr.utils.get_upload_folder()).resolve()
        with self._lock:
            now = time.monotonic()
            self._entries = {p: e for p, e in self._entries.items() if now - e[0] < self.ttl_s}
            try:
                data = resolved.read_bytes()
            except FileNotFoundError:
                if resolved in self._entries:
                    return self._entries[resolved][1]
                raise gr.Error("The upload is no longer on the server; please upload the file again.") from None
            if upload_root not in resolved.parents:
                return data  # not an upload (e.g. a local path given to the API): never delete it
            resolved.unlink(missing_ok=True)
            self._entries[resolved] = (now, data)
            while sum(len(e[1]) for e in self._entries.values()) > self.max_bytes and self._entries:
                del self._entries[min(self._entries, key=lambda p: self._entries[p][0])]
            if now - self._last_sweep > 60.0:
                self._last_sweep = now
                self.sweep_folders(upload_root)
            return data

    def sweep_folders(self, upload_root: Path) -> None:
        """Remove the empty upload folders (SHA-256 names) not modified for ``folder_ttl_s`` seconds."""
        cutoff = time.time() - self.folder_ttl_s
        for folder in upload_root.iterdir():
            try:
                if _SHA256_NAME.fullmatch(folder.name) and folder.stat().st_mtime < cutoff:
                    folder.rmdir()  # refuses a folder that is not empty
            except OSError:
                pass


_consumed_uploads = _ConsumedUploads()
_consume_upload = _consumed_uploads.consume


def _read(predictor: Predictor, data: bytes | os.PathLike) -> XRay:
    """Decode within the predictor's limits (a display-size copy: all any model or map needs)."""
    try:
        return predictor.read(data)
    except XRayReadError as error:
        raise gr.Error(f"Cannot use this file: {error}", title="Not a readable chest X-ray") from None


def _describe(meta: XRayMeta, seconds: float, uploaded: bool = True) -> str:
    height, width = meta.original_size
    parts = [f"{meta.format}", f"{width} x {height} px", f"{meta.bit_depth}-bit"]
    parts += [x for x in (meta.modality, meta.view) if x]
    note = " The uploaded file is already deleted from the server." if uploaded else ""
    return f"Read {' · '.join(parts)} in {seconds * 1000:.0f} ms.{note}"


def _heat(prediction: Prediction, result, index: int) -> np.ndarray | None:
    if result is None or len(result.maps) <= index:
        return None
    return overlay(prediction.image, list(result.maps.values())[index])


def _tb_outputs(prediction: Prediction, cards: dict[str, dict]):
    tb = prediction.tb
    if tb is None:
        return None, None, tb_note(prediction, cards)
    boxes = [[v / prediction.scale for v in b.box] for b in tb.boxes]
    labels = [f"{b.score:.2f}" for b in tb.boxes]
    picture = gray_to_rgb(prediction.image)
    if prediction.lungs is not None:
        picture = draw_outline(picture, prediction.lungs)  # the lung model's outline, in blue
    picture = draw_boxes(picture, boxes, labels)
    return picture, overlay(prediction.image, next(iter(tb.maps.values()))), tb_note(prediction, cards)


def _results_html(prediction: Prediction, predictor: Predictor, title: str, answer_id: str) -> tuple[str, str]:
    """The answer (first, in words) and the comparisons beneath it."""
    return answer_html(prediction, title, answer_id), comparisons_html(prediction, predictor.cards)


def reduced_view(payload: str) -> np.ndarray:
    """``(size, size)`` in ``[0, 1]`` from the low-bandwidth mode's ``"SIZE:base64"`` payload (8 bits a pixel).

    Raises:
        ValueError: a malformed payload, a size over :data:`MAX_REDUCED_SIZE`, or a pixel count that is not
            ``SIZE * SIZE``.
    """
    import base64
    import binascii

    size_text, separator, data = payload.partition(":")
    if not separator or not size_text.isdigit() or not 1 <= int(size_text) <= MAX_REDUCED_SIZE:
        raise ValueError(f"expected 'SIZE:base64 pixels' with SIZE at most {MAX_REDUCED_SIZE}")
    size = int(size_text)
    if len(data) > 4 * (size * size + 2) // 3 + 4:
        raise ValueError(f"more data than a {size} x {size} view holds")
    try:
        pixels = np.frombuffer(base64.b64decode(data, validate=True), dtype=np.uint8)
    except binascii.Error as error:
        raise ValueError(f"the pixels are not valid base64 ({error})") from None
    if pixels.size != size * size:
        raise ValueError(f"{pixels.size} pixels for a {size} x {size} view")
    return pixels.reshape(size, size).astype(np.float32) / 255.0


def build_demo(predictors: Predictor | Mapping[str, Predictor]) -> gr.Blocks:
    """The Blocks app around one predictor or several model families (title -> predictor; the first is shown
    first). Launch it, or mount it in a FastAPI app."""
    if isinstance(predictors, Predictor):
        predictors = {"Models": predictors}
    families = dict(predictors)
    default = next(iter(families))
    vit_depths = [
        m.config.depth
        for predictor in families.values()
        for m in [*predictor.students.values(), predictor.teacher]
        if m is not None and hasattr(m.config, "depth")
    ]
    max_layer = min(vit_depths) if vit_depths else 1
    smallest = families[default].resolutions[0]

    def choose(family: str | None, resolution) -> tuple[Predictor, int]:
        """The family's predictor and the input size asked for (its smallest when it has no such student)."""
        predictor = families.get(family or default, families[default])
        size = int(resolution) if resolution else predictor.resolutions[0]
        return predictor, size if size in predictor.students else predictor.resolutions[0]

    def analyse(xray: XRay | None, family, resolution, layer):
        if xray is None:  # nothing readable uploaded: clear every result rather than show the last image's
            return ("",) + (None,) * 9 + ("", None)
        predictor, size = choose(family, resolution)
        try:
            prediction = predictor.predict(xray, resolution=size, layer=int(layer) - 1)
        except ValueError as error:
            raise gr.Error(str(error)) from None
        student, teacher = prediction.student, prediction.teacher
        tb_boxes, tb_heat, tb_text = _tb_outputs(prediction, predictor.cards)
        answer, comparisons = _results_html(prediction, predictor, family or default, "cxr-answer")
        return (
            answer,
            gray_to_rgb(prediction.image),
            enlarge(student.view),
            comparisons,
            _heat(prediction, student, 0),
            _heat(prediction, student, 1),
            _heat(prediction, teacher, 0),
            _heat(prediction, teacher, 1),
            tb_boxes,
            tb_heat,
            tb_text,
            prediction.to_dict(),
        )

    def family_sizes(family):
        """The input sizes the chosen family has (the radio's choices, the smallest selected) and its panel."""
        predictor, size = choose(family, None)
        return gr.update(choices=predictor.resolutions, value=size), model_panel(predictor, size)

    def panel_for(family, resolution):
        return model_panel(*choose(family, resolution))

    def read_upload(path):
        """``(xray or None, status)``: a bad file is reported in the status line (and a toast), not raised, so
        the results of the previous upload are cleared instead of staying on screen under the new file's name."""
        if not path:
            return None, ""
        started = time.perf_counter()
        try:
            xray = families[default].read(_consume_upload(path))
        except XRayReadError as error:
            gr.Warning(f"Cannot use this file: {error}", title="Not a readable chest X-ray")
            return None, f"**Cannot use this file:** {html.escape(str(error))}"
        return xray, _describe(xray.meta, time.perf_counter() - started)

    def read_example(name):
        started = time.perf_counter()
        xray = _read(families[default], example_path(name))
        return xray, f"Example: {EXAMPLES[name][2]}. " + _describe(xray.meta, time.perf_counter() - started, False)

    def analyse_reduced(payload: str, family, resolution, layer):
        """The low-bandwidth mode: ``payload`` is what the browser made (``"SIZE:base64 of SIZE*SIZE bytes"``, or
        ``"error:why"``); only it reached the server."""
        empty = (None, None, "")
        if not payload or payload.startswith("error:"):
            return (f"**Nothing sent:** {html.escape(payload.removeprefix('error:') or 'no file chosen')}", *empty)
        try:
            view = reduced_view(payload)
            predictor, _ = choose(family, None)
            prediction = predictor.predict_view(view, layer=int(layer) - 1)
        except ValueError as error:
            return (f"**Cannot use what was sent:** {html.escape(str(error))}", *empty)
        size = view.shape[0]
        status = (
            f"Sent **{len(payload):,} bytes** of image data: the {size} x {size} view, 8 bits a pixel (base64). "
            "The film itself stayed in your browser."
        )
        heat = next(iter(prediction.student.maps.values()))
        factor = max(1, 336 // size)
        big_view, big_heat = (np.kron(a, np.ones((factor, factor), dtype=np.float32)) for a in (view, heat))
        answer, comparisons = _results_html(prediction, predictor, family or default, "cxr-lowbw-answer")
        return status, enlarge(view), overlay(big_view, big_heat), answer + comparisons

    def predict_api(path, resolution=smallest, family=default):
        """JSON results for one X-ray: the family's answer (``answer``: model, probability, state and cuts), then
        each model's probabilities, states and finding calls, and the TB boxes."""
        if not path:
            raise gr.Error("No file received.")
        if family not in families:
            raise gr.Error(f"Unknown model family {family!r}; this app has: {', '.join(families)}.")
        predictor, size = choose(family, resolution)
        if int(resolution) != size:
            raise gr.Error(f"{family} has no {resolution}-px student; sizes: {predictor.resolutions}.")
        xray = _read(predictor, _consume_upload(path))
        try:
            return predictor.predict(xray, resolution=size).to_dict()
        except ValueError as error:
            raise gr.Error(str(error)) from None

    with gr.Blocks(title="cxrdistill: chest X-ray AI at low resolution", delete_cache=(60, 300)) as demo:
        gr.Markdown(
            "# cxrdistill: chest X-ray AI at low resolution\n"
            f"A ViT student that sees the X-ray at **{smallest} x {smallest} pixels**, distilled from a 224-px "
            "teacher (MLCAK), and a CNN that localises TB from image labels only. Upload an X-ray: one answer "
            "(**low**, **indeterminate** or **signal**) from the family's best-validated model, then what each "
            "model sees, what it says and where it looks."
        )
        gr.Markdown(DISCLAIMER, elem_classes="cxr-disclaimer", elem_id="cxr-disclaimer")
        xray_state = gr.State(None, time_to_live=600)
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                upload = gr.File(
                    label="X-ray: PNG, JPG or DICOM", file_types=FILE_TYPES, type="filepath", elem_id="cxr-upload"
                )
                example = gr.Button(f"Try the example X-ray ({next(iter(EXAMPLES))})", size="sm")
                family = gr.Radio(
                    list(families),
                    value=default,
                    label="Models (what they look for, and the films they learnt from)",
                    visible=len(families) > 1,
                    elem_id="cxr-family",
                )
                resolution = gr.Radio(
                    families[default].resolutions,
                    value=smallest,
                    label="Student input size (px)",
                    elem_id="cxr-resolution",
                )
                layer = gr.Slider(1, max_layer, value=max_layer, step=1, label="Attention layer (CLS attention)")
                status = gr.Markdown(elem_id="cxr-status")
                gr.Markdown(_models_note(families))
            with gr.Column(scale=2):
                answer_box = gr.HTML(elem_id="cxr-answer-box")
                with gr.Row():
                    original = gr.Image(label="Original (display size)", height=320, elem_id="cxr-original")
                    student_view = gr.Image(label="What the student sees", height=320, elem_id="cxr-student-view")
                probabilities = gr.HTML(elem_id="cxr-table")
        with gr.Tab("Attention maps"):
            with gr.Row():
                student_cls = gr.Image(label="Student: CLS attention (in the lungs)", elem_id="cxr-student-attention")
                student_rollout = gr.Image(label="Student: attention rollout (in the lungs)")
                teacher_cls = gr.Image(label="Teacher (224 px): CLS attention (in the lungs)")
                teacher_rollout = gr.Image(label="Teacher (224 px): attention rollout (in the lungs)")
        with gr.Tab("TB localisation"):
            tb_note = gr.Markdown(elem_id="cxr-tb-note")
            with gr.Row():
                tb_boxes = gr.Image(label="TB boxes", elem_id="cxr-tb-boxes")
                tb_heat = gr.Image(label="TB class activation map")
        with gr.Tab("How good is this model?"):
            panel = gr.HTML(model_panel(families[default], smallest), elem_id="cxr-panel")
        with gr.Tab("Low-bandwidth mode"):
            gr.Markdown(LOW_BANDWIDTH_NOTE, elem_id="cxr-lowbw-note")
            with gr.Row():
                gr.HTML(
                    '<label>X-ray (PNG or JPG), reduced in this browser: <input type="file" id="cxr-lowbw-file" '
                    'accept="image/png,image/jpeg,.dcm,.dicom"></label>'
                )
                reduce_button = gr.Button("Reduce in my browser and send", elem_id="cxr-lowbw-send")
            reduced_payload = gr.Textbox(visible=False)
            reduced_status = gr.Markdown(elem_id="cxr-lowbw-status")
            with gr.Row():
                reduced_image = gr.Image(label="What was sent (enlarged)", elem_id="cxr-lowbw-view")
                reduced_heat = gr.Image(label="Student: CLS attention over what was sent", elem_id="cxr-lowbw-map")
            reduced_table = gr.HTML(elem_id="cxr-lowbw-table")
        with gr.Accordion("Results as JSON", open=False):
            details = gr.JSON()
        outputs = [
            answer_box,
            original,
            student_view,
            probabilities,
            student_cls,
            student_rollout,
            teacher_cls,
            teacher_rollout,
            tb_boxes,
            tb_heat,
            tb_note,
            details,
        ]
        private = {"api_visibility": "undocumented", "show_progress": "minimal"}
        upload.upload(read_upload, upload, [xray_state, status], **private).then(
            analyse, [xray_state, family, resolution, layer], outputs, **private
        )
        upload.clear(lambda: (None, ""), None, [xray_state, status], **private).then(
            analyse, [xray_state, family, resolution, layer], outputs, **private
        )
        example.click(lambda: read_example(next(iter(EXAMPLES))), None, [xray_state, status], **private).success(
            analyse, [xray_state, family, resolution, layer], outputs, **private
        )
        # a family change sets the sizes; a size change (programmatic or the visitor's) re-runs the analysis
        family.change(family_sizes, family, [resolution, panel], **private).then(
            analyse, [xray_state, family, resolution, layer], outputs, **private
        )
        resolution.input(panel_for, [family, resolution], panel, **private)
        for control in (resolution.input, layer.release):
            control(analyse, [xray_state, family, resolution, layer], outputs, trigger_mode="always_last", **private)

        reduce_button.click(
            analyse_reduced,
            [reduced_payload, family, resolution, layer],
            [reduced_status, reduced_image, reduced_heat, reduced_table],
            js=REDUCE_CALL,
            api_name="predict_reduced",
        )

        # The named API endpoint: file + resolution in, JSON out (see the README for a gradio_client call).
        api_file = gr.File(visible=False, type="filepath")
        api_resolution = gr.Number(value=smallest, visible=False, precision=0)
        api_family = gr.Textbox(value=default, visible=False)
        api_result = gr.JSON(visible=False)
        api_button = gr.Button(visible=False)
        api_button.click(predict_api, [api_file, api_resolution, api_family], api_result, api_name="predict")
    return demo


def _models_note(families: Mapping[str, Predictor]) -> str:
    def describe(model) -> str:
        config = model.config
        calibrated = "answer cuts" if config.rule_out_threshold is not None else "no answer cuts"
        return f"{type(model).__name__} {config.image_size} px ({calibrated})"

    lines = []
    for title, predictor in families.items():
        if len(families) > 1:
            lines.append(f"- *{title}*")
        lines += [f"  - student: {describe(m)}" for m in predictor.students.values()]
        lines.append(f"  - teacher: {describe(predictor.teacher)}" if predictor.teacher else "  - teacher: not loaded")
        if predictor.tb_model:
            lines.append(f"  - TB boxes: {describe(predictor.tb_model)}")
    return "**Models**\n" + "\n".join(line.removeprefix("  ") if len(families) == 1 else line for line in lines)


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before Gradio's thread pool starts. With the default (8 per core) the server's
    memory grew 11.5% from the 100th to the 1,000th request of the load run and kept growing; with 2 arenas it grew
    1.5% and then stayed flat (bench/bench_app.py --reliability): fragmentation across threads, not a leak. Same
    effect as MALLOC_ARENA_MAX=2; a no-op where the C library is not glibc."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def main(argv=None) -> None:
    _limit_malloc_arenas()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no per-request lines: nothing about uploads is logged
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        predictors = load_predictors(args)
    except (ModelLoadError, FileNotFoundError) as error:
        raise SystemExit(f"cannot load the models: {error}") from None
    demo = build_demo(predictors)
    logger.info("models loaded and UI built in %.1f s", time.perf_counter() - started)
    demo.queue(**queue_options(args)).launch(**launch_options(args))


def queue_options(args: argparse.Namespace) -> dict:
    """What ``python app.py`` passes to ``Blocks.queue`` (the tests serve the app with these too)."""
    return dict(max_size=args.queue_size, default_concurrency_limit=args.concurrency)


def launch_options(args: argparse.Namespace) -> dict:
    """What ``python app.py`` passes to ``Blocks.launch``: Gradio refuses uploads over ``MAX_UPLOAD_MIB`` itself,
    before anything is stored or decoded (the tests serve the app with these too)."""
    return dict(
        server_name=args.host,
        server_port=args.port,
        max_file_size=f"{MAX_UPLOAD_MIB}mb",
        css=CSS,
        head=f"<script>{REDUCE_JS}</script>",  # the low-bandwidth mode's in-browser reduction
        footer_links=["api"],
        show_error=True,
    )


if __name__ == "__main__":
    main()
