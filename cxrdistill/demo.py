"""The demo's request handlers, without the UI framework: each takes what the visitor gave (a file, the chosen family,
size and layer) and returns what the page shows, through the family's :class:`~cxrdistill.inference.Predictor`
(built once at start) and the pure page builders of :mod:`cxrdistill.pages`. ``app.py`` lays out the Gradio page
and turns a :class:`DemoError` into the message a visitor sees.
"""

from __future__ import annotations

import html
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping

import numpy as np

from cxrdistill import pages
from cxrdistill.examples import EXAMPLES, example_path
from cxrdistill.inference import Predictor
from cxrdistill.io import XRay, XRayReadError
from cxrdistill.render import enlarge, gray_to_rgb, overlay
from cxrdistill.serving import ConsumedUploads, UploadGone, reduced_view

logger = logging.getLogger("cxrdistill.app")


class DemoError(Exception):
    """What a visitor should read instead of a result (an unreadable file, an unknown family, ...)."""

    def __init__(self, message: str, title: str = "Error") -> None:
        super().__init__(message)
        self.title = title


class Handlers:
    """What the page's events call, one method each.

    Args:
        families: title -> predictor of each model family offered (the first is the default).
        upload_root: the server's upload folder (files read from it are deleted at once).
        warn: shows a short warning beside the status line (the app's toast).
    """

    def __init__(
        self,
        families: Mapping[str, Predictor],
        upload_root: Callable[[], str | os.PathLike] | None = None,
        warn: Callable[[str], None] = logger.info,
    ) -> None:
        self.families = dict(families)
        self.default = next(iter(self.families))
        self.smallest = self.families[self.default].resolutions[0]
        self.uploads = ConsumedUploads()
        self.upload_root = upload_root or tempfile.gettempdir  # the server's upload folder: its files are deleted
        self.warn = warn  # a toast beside the status line

    def choose(self, family: str | None, resolution) -> tuple[Predictor, int]:
        """The family's predictor and the input size asked for (its smallest when it has no such student)."""
        predictor = self.families.get(family or self.default, self.families[self.default])
        size = int(resolution) if resolution else predictor.resolutions[0]
        return predictor, size if size in predictor.students else predictor.resolutions[0]

    def consume(self, path) -> bytes:
        try:
            return self.uploads.consume(path, self.upload_root())
        except UploadGone:
            raise DemoError("The upload is no longer on the server; please upload the file again.") from None

    def analyse(self, xray: XRay | None, family, resolution, layer):
        """Everything the page shows for a film (:data:`OUTPUTS` order); all cleared when there is no film."""
        if xray is None:  # nothing readable uploaded: clear every result rather than show the last image's
            return ("",) + (None,) * 9 + ("", None)
        predictor, size = self.choose(family, resolution)
        try:
            prediction = predictor.predict(xray, resolution=size, layer=int(layer) - 1)
        except ValueError as error:
            raise DemoError(str(error)) from None
        student, teacher = prediction.student, prediction.teacher
        heat = [pages.heat_picture(prediction, result, i) for result in (student, teacher) for i in (0, 1)]
        return (
            pages.answer_html(prediction, family or self.default, "cxr-answer"),
            gray_to_rgb(prediction.image),
            enlarge(student.view),
            pages.comparisons_html(prediction, predictor.cards),
            *heat,
            *pages.tb_pictures(prediction, predictor.cards),
            prediction.to_dict(),
        )

    def family_sizes(self, family) -> tuple[list[int], int, str]:
        """The input sizes the chosen family has, the one selected (its smallest) and its model panel."""
        predictor, size = self.choose(family, None)
        return predictor.resolutions, size, pages.model_panel(predictor, size)

    def panel(self, family, resolution) -> str:
        return pages.model_panel(*self.choose(family, resolution))

    def read_upload(self, path):
        """``(xray or None, status)``: a bad file is reported in the status line (and a toast), not raised, so
        the results of the previous upload are cleared instead of staying on screen under the new file's name."""
        if not path:
            return None, ""
        started = time.perf_counter()
        try:
            xray = self.families[self.default].read(self.consume(path))
        except XRayReadError as error:
            self.warn(f"Cannot use this file: {error}")
            return None, f"**Cannot use this file:** {html.escape(str(error))}"
        return xray, pages.describe_read(xray.meta, time.perf_counter() - started)

    def read_example(self):
        name = next(iter(EXAMPLES))
        started = time.perf_counter()
        xray = self._read(self.families[self.default], example_path(name))
        seconds = time.perf_counter() - started
        return xray, f"Example: {EXAMPLES[name][2]}. " + pages.describe_read(xray.meta, seconds, False)

    def analyse_reduced(self, payload: str, family, resolution, layer):
        """The low-bandwidth mode: ``payload`` is what the browser made (``"SIZE:base64 of SIZE*SIZE bytes"``, or
        ``"error:why"``); only it reached the server."""
        empty = (None, None, "")
        if not payload or payload.startswith("error:"):
            return (f"**Nothing sent:** {html.escape(payload.removeprefix('error:') or 'no file chosen')}", *empty)
        try:
            view = reduced_view(payload)
            predictor, _ = self.choose(family, None)
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
        title = family or self.default
        results = pages.answer_html(prediction, title, "cxr-lowbw-answer") + pages.comparisons_html(
            prediction, predictor.cards
        )
        return status, enlarge(view), overlay(big_view, big_heat), results

    def predict_api(self, path, resolution=None, family=None):
        """JSON results for one X-ray: the family's answer (``answer``: model, probability, state and cuts), then
        each model's probabilities, states and finding calls, and the TB boxes."""
        family = family or self.default
        resolution = resolution or self.smallest
        if not path:
            raise DemoError("No file received.")
        if family not in self.families:
            raise DemoError(f"Unknown model family {family!r}; this app has: {', '.join(self.families)}.")
        predictor, size = self.choose(family, resolution)
        if int(resolution) != size:
            raise DemoError(f"{family} has no {resolution}-px student; sizes: {predictor.resolutions}.")
        xray = self._read(predictor, self.consume(path))
        try:
            return predictor.predict(xray, resolution=size).to_dict()
        except ValueError as error:
            raise DemoError(str(error)) from None

    @staticmethod
    def _read(predictor: Predictor, data) -> XRay:
        """Decode within the predictor's limits (a display-size copy: all any model or map needs)."""
        try:
            return predictor.read(data)
        except XRayReadError as error:
            raise DemoError(f"Cannot use this file: {error}", title="Not a readable chest X-ray") from None
