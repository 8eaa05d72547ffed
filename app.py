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
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

from cxrdistill import pages
from cxrdistill.demo import DemoError, Handlers
from cxrdistill.examples import EXAMPLES
from cxrdistill.inference import ModelChoice, Predictor
from cxrdistill.inference import load_predictor as load_models
from cxrdistill.models import ModelLoadError
from cxrdistill.release import RELEASE_FAMILIES
from cxrdistill.serving import limit_malloc_arenas

logger = logging.getLogger("cxrdistill.app")

HERE = Path(__file__).resolve().parent
MAX_UPLOAD_MIB = 32
FILE_TYPES = [".png", ".jpg", ".jpeg", ".dcm", ".dicom"]

REDUCE_JS = (resources.files("cxrdistill") / "static" / "reduce.js").read_text()
# what the low-bandwidth button runs in the browser before the server is called: the payload replaces the
# (hidden) payload input, so the server receives the reduced pixels and never the file
REDUCE_CALL = """async (payload, family, resolution, layer) => {
  const picker = document.querySelector("#cxr-lowbw-file");
  const file = picker && picker.files ? picker.files[0] : null;
  return [await window.cxrReduce.payload(file, Number(resolution)), family, resolution, layer];
}"""


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


# -------------------------------------------------------------------------------------------------- layout


def _shown(handler: Callable) -> Callable:
    """``handler`` with its :class:`DemoError` shown to the visitor as a Gradio error (same signature)."""

    @functools.wraps(handler)
    def run(*args):
        try:
            return handler(*args)
        except DemoError as error:
            raise gr.Error(str(error), title=error.title) from None

    return run


def build_demo(predictors: Predictor | Mapping[str, Predictor]) -> gr.Blocks:
    """The Blocks app around one predictor or several model families (title -> predictor; the first is shown
    first). Launch it, or mount it in a FastAPI app."""
    families = {"Models": predictors} if isinstance(predictors, Predictor) else predictors
    handlers = Handlers(families, upload_root=gr.utils.get_upload_folder, warn=gr.Warning)
    on = {name: _shown(getattr(handlers, name)) for name in ("analyse", "read_upload", "read_example", "predict_api")}
    families, default, smallest = handlers.families, handlers.default, handlers.smallest
    depths = [m.config.depth for p in families.values() for m in p.vit_models() if hasattr(m.config, "depth")]
    max_layer = min(depths) if depths else 1
    private = {"api_visibility": "undocumented", "show_progress": "minimal"}
    with gr.Blocks(title="cxrdistill: chest X-ray AI at low resolution", delete_cache=(60, 300)) as demo:
        gr.Markdown(pages.introduction(smallest))
        gr.Markdown(pages.DISCLAIMER, elem_classes="cxr-disclaimer", elem_id="cxr-disclaimer")
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
                sizes = families[default].resolutions
                resolution = gr.Radio(sizes, value=smallest, label="Student input size (px)", elem_id="cxr-resolution")
                layer = gr.Slider(1, max_layer, value=max_layer, step=1, label="Attention layer (CLS attention)")
                status = gr.Markdown(elem_id="cxr-status")
                gr.Markdown(pages.models_note(families))
            with gr.Column(scale=2):
                outputs = [gr.HTML(elem_id="cxr-answer-box")]
                with gr.Row():
                    outputs.append(gr.Image(label="Original (display size)", height=320, elem_id="cxr-original"))
                    outputs.append(gr.Image(label="What the student sees", height=320, elem_id="cxr-student-view"))
                outputs.append(gr.HTML(elem_id="cxr-table"))
        outputs += _result_tabs()
        with gr.Tab("How good is this model?"):
            panel = gr.HTML(pages.model_panel(families[default], smallest), elem_id="cxr-panel")
        reduce_button, reduced_payload, reduced_outputs = _low_bandwidth_tab()
        with gr.Accordion("Results as JSON", open=False):
            outputs.append(gr.JSON())
        inputs = [xray_state, family, resolution, layer]
        for event, handler, given in (
            (upload.upload, on["read_upload"], upload),
            (upload.clear, lambda: (None, ""), None),
            (example.click, on["read_example"], None),
        ):
            event(handler, given, [xray_state, status], **private).success(on["analyse"], inputs, outputs, **private)

        def family_sizes(chosen):
            choices, size, text = handlers.family_sizes(chosen)
            return gr.update(choices=choices, value=size), text

        # a family change sets the sizes; a size change (programmatic or the visitor's) re-runs the analysis
        family.change(family_sizes, family, [resolution, panel], **private).then(
            on["analyse"], inputs, outputs, **private
        )
        resolution.input(handlers.panel, [family, resolution], panel, **private)
        for control in (resolution.input, layer.release):
            control(on["analyse"], inputs, outputs, trigger_mode="always_last", **private)
        reduce_button.click(
            handlers.analyse_reduced,
            [reduced_payload, family, resolution, layer],
            reduced_outputs,
            js=REDUCE_CALL,
            api_name="predict_reduced",
        )
        # The named API endpoint: file + resolution in, JSON out (see the README for a gradio_client call).
        api_inputs = [
            gr.File(visible=False, type="filepath"),
            gr.Number(value=smallest, visible=False, precision=0),
            gr.Textbox(value=default, visible=False),
        ]
        gr.Button(visible=False).click(on["predict_api"], api_inputs, gr.JSON(visible=False), api_name="predict")
    return demo


def _result_tabs() -> list:
    """The attention-map and TB tabs; returns their outputs in :meth:`Handlers.analyse`'s order."""
    with gr.Tab("Attention maps"), gr.Row():
        maps = [
            gr.Image(label="Student: CLS attention (in the lungs)", elem_id="cxr-student-attention"),
            gr.Image(label="Student: attention rollout (in the lungs)"),
            gr.Image(label="Teacher (224 px): CLS attention (in the lungs)"),
            gr.Image(label="Teacher (224 px): attention rollout (in the lungs)"),
        ]
    with gr.Tab("TB localisation"):
        note = gr.Markdown(elem_id="cxr-tb-note")
        with gr.Row():
            boxes = gr.Image(label="TB boxes", elem_id="cxr-tb-boxes")
            heat = gr.Image(label="TB map of the box-drawing model")
    return [*maps, boxes, heat, note]


def _low_bandwidth_tab():
    """The tab whose film is reduced in the browser: its button, the hidden payload and its outputs."""
    with gr.Tab("Low-bandwidth mode"):
        gr.Markdown(pages.LOW_BANDWIDTH_NOTE, elem_id="cxr-lowbw-note")
        with gr.Row():
            gr.HTML(
                '<label>X-ray (PNG or JPG), reduced in this browser: <input type="file" id="cxr-lowbw-file" '
                'accept="image/png,image/jpeg,.dcm,.dicom"></label>'
            )
            button = gr.Button("Reduce in my browser and send", elem_id="cxr-lowbw-send")
        payload = gr.Textbox(visible=False)
        status = gr.Markdown(elem_id="cxr-lowbw-status")
        with gr.Row():
            view = gr.Image(label="What was sent (enlarged)", elem_id="cxr-lowbw-view")
            heat = gr.Image(label="Student: CLS attention over what was sent", elem_id="cxr-lowbw-map")
        table = gr.HTML(elem_id="cxr-lowbw-table")
    return button, payload, [status, view, heat, table]


def main(argv=None) -> None:
    limit_malloc_arenas()
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
        css=pages.CSS,
        head=f"<script>{REDUCE_JS}</script>",  # the low-bandwidth mode's in-browser reduction
        footer_links=["api"],
        show_error=True,
    )


if __name__ == "__main__":
    main()
