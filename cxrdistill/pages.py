"""The app's HTML and text, as pure functions of a :class:`~cxrdistill.inference.Prediction` or a model's card.

No Gradio here: each builder takes results and returns a string, so the words a visitor reads are tested without a
server. The family's one answer comes first (:func:`answer_html`); the models that did not answer are listed
beneath it as comparisons (:func:`comparisons_html`), each with its own validation AUROC.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from cxrdistill.inference import Predictor
from cxrdistill.io import XRayMeta
from cxrdistill.models.card import CardMetrics, box_supervised
from cxrdistill.render import draw_boxes, draw_outline, gray_to_rgb, overlay, roc_picture
from cxrdistill.results import Prediction
from cxrdistill.triage import STATES, display_label, reference_auroc

CSS = """
.cxr-table {width: 100%; border-collapse: collapse; font-size: 0.95em}
.cxr-table th, .cxr-table td {padding: 4px 8px; border-bottom: 1px solid var(--border-color-primary)}
.cxr-bar {display: inline-block; height: 0.8em; background: #3b528b; vertical-align: middle; margin-right: 6px}
.cxr-answer {border-radius: 6px; padding: 10px 14px; margin-bottom: 10px; border-left: 8px solid #777}
.cxr-answer-head {font-size: 1.35em; margin-bottom: 4px}
.cxr-state-low {border-left-color: #2e7d32}
.cxr-state-indeterminate {border-left-color: #e6a100}
.cxr-state-signal {border-left-color: #b00020}
.cxr-low {color: #2e7d32; font-weight: 600}
.cxr-indeterminate {color: #9a6700; font-weight: 600}
.cxr-signal {color: #b00020; font-weight: 600}
.cxr-disclaimer {border-left: 4px solid #e65100; padding-left: 10px}
.cxr-card {display: inline-block; vertical-align: top; width: 31%; min-width: 260px; margin: 0 1% 12px 0}
.cxr-card ul {padding-left: 18px; font-size: 0.9em}
"""

DISCLAIMER = (
    "**Research demo, not a medical device.** It must not be used to diagnose, treat or triage anyone. The "
    "models were trained on a few hundred public images and are often wrong. Uploads are decoded in memory and "
    "deleted from the server right after; nothing is stored or logged, and DICOM patient fields are never read "
    "into the app."
)
LOW_BANDWIDTH_NOTE = (
    "**Low-bandwidth mode.** Your browser reduces the X-ray to the student's input (28 x 28 pixels by default, "
    "as chosen above) and sends only that: a few hundred bytes instead of the whole file, and the full-resolution "
    "film never reaches the server. What it gives up: no teacher, no lung outline, no TB boxes and no "
    "full-resolution maps (all need the whole film); the student's attention is shown over what was sent. DICOM "
    "files cannot be decoded by a browser: export them as PNG or JPG first."
)


def introduction(smallest: int) -> str:
    """The page's heading and what it does."""
    return (
        "# cxrdistill: chest X-ray AI at low resolution\n"
        f"A ViT student that sees the X-ray at **{smallest} x {smallest} pixels**, distilled from a 224-px "
        "teacher (MLCAK), and a CNN that draws TB boxes. Upload an X-ray: one answer "
        "(**low**, **indeterminate** or **signal**) from the family's best-validated model, then what each "
        "model sees, what it says and where it looks."
    )


def describe_read(meta: XRayMeta, seconds: float, uploaded: bool = True) -> str:
    """The status line after a film is read: its format, size and depth (never a patient field)."""
    height, width = meta.original_size
    parts = [f"{meta.format}", f"{width} x {height} px", f"{meta.bit_depth}-bit"]
    parts += [x for x in (meta.modality, meta.view) if x]
    note = " The uploaded file is already deleted from the server." if uploaded else ""
    return f"Read {' · '.join(parts)} in {seconds * 1000:.0f} ms.{note}"


def models_note(families: dict[str, Predictor]) -> str:
    """The side panel's list of the loaded models, by family."""

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


def heat_picture(prediction: Prediction, result, index: int) -> np.ndarray | None:
    """``result``'s ``index``-th map over the display image (``None`` where it has no such map)."""
    if result is None or len(result.maps) <= index:
        return None
    return overlay(prediction.image, list(result.maps.values())[index])


def tb_pictures(prediction: Prediction, cards: dict[str, dict]) -> tuple[Any, Any, str]:
    """The TB tab: the boxes (and the lung outline, in blue) over the film, the class activation map, and the
    words (:func:`tb_note`)."""
    tb = prediction.tb
    if tb is None:
        return None, None, tb_note(prediction, cards)
    boxes = [[v / prediction.scale for v in b.box] for b in tb.boxes]
    picture = gray_to_rgb(prediction.image)
    if prediction.lungs is not None:
        picture = draw_outline(picture, prediction.lungs)
    picture = draw_boxes(picture, boxes, [f"{b.score:.2f}" for b in tb.boxes])
    return picture, overlay(prediction.image, next(iter(tb.maps.values()))), tb_note(prediction, cards)


STATE_HEADLINE = {"low": "low", "indeterminate": "indeterminate", "signal": "signal"}


def _bar(probability: float) -> str:
    return f'<span class="cxr-bar" style="width:{60 * probability:.0f}px"></span>{probability:.3f}'


def _state(state: str | None) -> str:
    if state is None:
        return "<span title='no calibrated cuts'>(no answer: uncalibrated)</span>"
    return f'<span class="cxr-{state}">{html.escape(STATE_HEADLINE[state])}</span>'


def interval(values) -> str:
    """`` (95% CI a-b)`` or nothing."""
    return f" (95% CI {values[0]:.2f}-{values[1]:.2f})" if values else ""


def answer_html(prediction: Prediction, title: str = "", element_id: str = "cxr-answer") -> str:
    """The family's one answer, first and in words: the state, what it means, the probability against the two
    cuts, and which model gave it with its validation AUROC."""
    answer = prediction.answer
    d = answer.decision
    shown = answer.to_dict()  # the numbers the API returns, so the page never rounds them differently
    label = html.escape(display_label(d.label))
    head = f"{label}: <b>{_state(d.state)}</b>"
    if d.state is None:
        body = f"{label} probability {shown['probability']:.3f}; the answering model has no calibrated cuts."
    else:
        body = (
            f"{html.escape(d.explanation)}<br>{label} probability <b>{shown['probability']:.3f}</b>; "
            f"rule-out cut {shown['rule_out']:.3f}, rule-in cut {shown['rule_in']:.3f}."
        )
    result = prediction.answer_result
    auroc = "" if answer.auroc is None else f", validation AUROC {answer.auroc:.3f}"
    who = (
        f"Answered by <b>{html.escape(answer.model)}</b> ({result.image_size} px{auroc}) for "
        f"{html.escape(title or answer.family)}: {html.escape(answer.why)}."
    )
    return (
        f'<div id="{element_id}" class="cxr-answer cxr-state-{d.state or "none"}" data-state="{d.state or ""}" '
        f'data-model="{html.escape(answer.model)}" data-probability="{d.probability:.4f}">'
        f'<div class="cxr-answer-head">{head}</div><div>{body}</div><div><small>{who} Not a medical device: '
        "never use it to diagnose anyone.</small></div></div>"
    )


def comparisons_html(prediction: Prediction, cards: dict[str, dict] | None = None) -> str:
    """Every model that ran, the answering one first and marked, then the others as comparisons: input size,
    probability of the positive class, that model's own state and its validation AUROC."""
    cards = cards or {}
    answer = prediction.answer_result
    label = html.escape(display_label(answer.positive_label))
    rows = []
    for result in prediction.results:
        d = result.decision
        auroc = reference_auroc(cards.get(result.name))
        role = "<b>answers</b>" if result is answer else "comparison"
        rows.append(
            f'<tr data-model="{html.escape(result.source)}" data-state="{d.state or ""}"><td>'
            f"{html.escape(result.source)} <small>({role})</small></td><td>{result.image_size} px</td>"
            f"<td>{_bar(d.probability)}</td><td>{_state(d.state)}</td>"
            f"<td>{'-' if auroc is None else f'{auroc:.3f}'}</td>"
            f"<td><small>model {result.forward_ms:.1f} ms, maps {result.maps_ms:.1f} ms</small></td></tr>"
        )
    return (
        '<table class="cxr-table" id="cxr-probabilities"><tr><th>model</th><th>input</th>'
        f"<th>{label} probability</th><th>its state</th><th>validation AUROC</th><th>time</th></tr>"
        + "".join(rows)
        + "</table><small>Each model reads its probability against its own two cuts, chosen on its validation "
        "films. Only the first row answers; the others are shown to compare (a smaller input sees less).</small>"
        + findings_html(prediction)
    )


def findings_html(prediction: Prediction) -> str:
    """Per finding and model: the probability, and the call where the finding is trusted enough to be called
    (else why not). Empty when no model has findings."""
    models = [r for r in prediction.results if r.local_probs]
    if not models:
        return ""
    labels = list(dict.fromkeys(label for r in models for label in r.local_probs))
    head = "".join(f"<th>{html.escape(r.source)}</th>" for r in models)
    rows = []
    for label in labels:
        cells = []
        for result in models:
            p, call = result.local_probs.get(label), result.local_calls.get(label)
            if p is None:
                cells.append("<td>-</td>")
            elif call is None:
                reason = result.local_reasons.get(label, "not calibrated")
                cells.append(
                    f'<td>{p:.3f} <small title="{html.escape(reason)}">not called: {html.escape(reason)}</small></td>'
                )
            else:
                verdict = "above its threshold" if call else "below its threshold"
                cells.append(f"<td>{p:.3f} <small>{verdict}</small></td>")
        rows.append(f"<tr><td>{html.escape(label)}</td>{''.join(cells)}</tr>")
    return (
        '<details id="cxr-findings"><summary>Findings (separate outputs, one per finding)</summary>'
        f'<table class="cxr-table"><tr><th>finding</th>{head}</tr>{"".join(rows)}</table><small>A finding is called '
        "only where its validation AUROC's lower 95% bound is at least 0.70 with at least 20 positive validation "
        "films; the others are shown as probabilities.</small></details>"
    )


def lung_sentence(prediction: Prediction) -> str:
    """What the lung model saw: the outline drawn, or a warning that this upload shows no lungs."""
    if prediction.lungs is None:
        return ""
    if not prediction.lungs_found:
        return (
            f"**No lungs found** (the lung model marks {prediction.lung_fraction:.0%} of the image): is this a "
            "frontal chest X-ray? No TB boxes are drawn, and the TB map below is not kept inside lungs. "
        )
    return (
        f"Blue: the lungs as the lung model outlines them ({prediction.lung_fraction:.0%} of the image); the TB map "
        "and boxes are kept inside them. "
    )


def tb_note(prediction: Prediction, cards: dict[str, dict] | None = None) -> str:
    """The TB tab's words: which model draws the boxes, how it was trained and what the boxes are (never a second
    TB answer)."""
    tb = prediction.tb
    if tb is None:
        return "No TB localisation model is loaded."
    trained = (
        "trained with the radiologists' boxes of the training films (**box-supervised**)"
        if box_supervised((cards or {}).get(tb.name))
        else "trained with image labels only (weakly supervised)"
    )
    first = next(iter(tb.maps), "")
    kind = "map of TB log-odds per region" if "log-odds" in first else "class activation map"
    read = " read on the film cropped to its lungs" if tb.input_crop == "lungs" else ""
    whose = (
        "It is the model that answers above: the boxes show where it looks for TB, whatever its answer;"
        if prediction.answer_result.name == tb.name
        else "Boxes show where that model looks, whatever the answer above;"
    )
    boxes = (
        f"{len(tb.boxes)} box(es) around the regions where the {kind} of **{tb.source}** "
        f"({tb.image_size} px{read}; {trained}) is above half its maximum; the number on a box is the mean map "
        f"value inside it. {whose} how well they overlap the radiologists' boxes on validation films is in "
        "docs/tb_maps.md. "
        if prediction.lungs is None or prediction.lungs_found
        else ""
    )
    return f"{lung_sentence(prediction)}{boxes}(maps {tb.maps_ms:.1f} ms.)"


def _png_data_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _rate(rate: dict[str, Any]) -> str:
    if rate.get("share") is None:
        return "-"
    return f"{rate['share']:.0%}{interval(rate.get('ci95'))}"


def triage_lines(triage: dict[str, Any], positive: str) -> list[str]:
    """The panel's lines on a card's two cuts: the cuts, then each state's share among the validation positive and
    negative films, on the films the cuts were chosen on and cross-fitted."""
    rule_out, rule_in = triage["rule_out"], triage["rule_in"]
    lines = [
        f"Cuts: <b>low</b> below {rule_out['threshold']:.3f} (keeps {rule_out['sensitivity_target']:.0%} of "
        f"{positive} films above it), <b>signal</b> at or above {rule_in['threshold']:.3f} (keeps "
        f"{rule_in['specificity_target']:.0%} of films without {positive} below it), <b>indeterminate</b> between"
    ]
    for where, rates in (
        ("on the films the cuts were chosen on", triage["rates"]),
        (
            f"on films they were not chosen on ({triage['cross_fitted']['folds']}-fold cross-fitted)",
            triage["cross_fitted"]["rates"],
        ),
    ):
        for group, name in (("positive", f"{positive} films"), ("negative", f"films without {positive}")):
            shares = ", ".join(f"{state} {_rate(rates[group][state])}" for state in STATES)
            lines.append(f"{name} ({rates[group]['low']['films']}), {where}: {shares}")
    return lines


def model_card_row(name: str, model, card: dict | None, source: str = "", answers: bool = False) -> str:
    """One model of the "How good is this model?" panel, from its card: validation AUROC with its CI (the
    same-hospital films first where the dataset has them), the two cuts and each state's share among validation
    positive and negative films (with CIs), the validation set, and the ROC curve with the two cuts marked."""
    shown = html.escape(source or name)
    role = " &mdash; answers for this family" if answers else ""
    title = f"<h4>{shown} ({model.config.image_size} px){role}</h4>"
    if not card:
        return (
            f'<div class="cxr-card" data-model="{html.escape(name)}">{title}<p>No measurements travel with this '
            "model: treat it as unmeasured.</p></div>"
        )
    metrics = CardMetrics.from_dict(card)
    positive = html.escape(model.positive_label)
    lines = []
    same, everything = metrics.same_hospital_auroc, metrics.global_auroc
    if same:
        lines.append(
            f"Same-hospital validation films ({same.films}): <b>AUROC {same.value:.3f}</b>{interval(same.ci95)}"
        )
    if everything:
        lines.append(
            f"All {everything.films or '?'} validation films: AUROC {everything.value:.3f}{interval(everything.ci95)}"
            + (" (includes films whose source alone gives TB away)" if same else "")
        )
    points = []
    if metrics.triage:
        lines += triage_lines(metrics.triage, positive)
        calls = metrics.reference_calls
        points = [(1 - p["specificity"], p["sensitivity"]) for p in calls.values() if p.get("sensitivity") is not None]
    else:
        lines.append("No answer cuts on its card: it gives probabilities only.")
    lines.append(f"Validation set: {html.escape(metrics.dataset.name)}, {html.escape(metrics.dataset.split)}")
    roc = metrics.roc
    picture = (
        f'<img class="cxr-roc" alt="ROC curve of {shown}" src="'
        + _png_data_uri(roc_picture(roc["fpr"], roc["tpr"], points, f"{positive}: ROC, {roc['films']}"))
        + '">'
        if roc
        else "<p><small>(no ROC points on this card)</small></p>"
    )
    items = "".join(f"<li>{line}</li>" for line in lines)
    return f'<div class="cxr-card" data-model="{html.escape(name)}">{title}{picture}<ul>{items}</ul></div>'


def model_panel(predictor: Predictor, size: int) -> str:
    """The "How good is this model?" panel: the answering model first, then the student of ``size``, the teacher
    and the TB model."""
    models = {predictor.answer_name: predictor.classifiers[predictor.answer_name]}
    for role, model in (
        ("student", predictor.students[size]),
        ("teacher", predictor.teacher),
        ("tb", predictor.tb_model),
    ):
        if model is not None:
            models.setdefault(predictor.name_of(role, model), model)
    rows = [
        model_card_row(
            name, model, predictor.cards.get(name), predictor.sources.get(name, name), name == predictor.answer_name
        )
        for name, model in models.items()
    ]
    return (
        '<div id="cxr-model-panel">'
        + "".join(rows)
        + "<p><small>Measured by us on our validation split (numbers from each model's card, metrics.json); held-out "
        "films may score lower. The red dots are the two cuts (rule-out, rule-in).</small></p></div>"
    )
