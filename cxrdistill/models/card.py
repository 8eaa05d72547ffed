"""Model cards: the metrics that travel with a model (``metrics.json``) as a typed record, and the card rendered from
it and the model's config.

A card is never edited by hand: :func:`render_model_card` fills ``cxrdistill/model_cards/model_card.md`` from the
model's config and its :class:`CardMetrics`, and its YAML header carries the Hub metadata (``library_name``,
``pipeline_tag``, tags, datasets and a ``model-index`` with the metric values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from string import Template
from typing import Any, Protocol

from huggingface_hub import EvalResult, ModelCard, ModelCardData


class DescribedModel(Protocol):
    """What a card reads from a model (every ``CXRModel`` has it; models import this module, never the reverse)."""

    config: Any
    card_summary: str
    card_citation: str

    def card_tags(self) -> list[str]: ...
    def architecture_summary(self) -> str: ...
    def outputs_summary(self) -> str: ...
    def usage_example(self) -> str: ...
    def parameters(self): ...


@dataclass(frozen=True)
class CardDataset:
    """The data a model was measured on: ``name`` (shown), ``type`` (a dataset id), ``split``, ``licence``."""

    name: str
    type: str
    split: str
    licence: str | None = None


@dataclass(frozen=True)
class CardResult:
    """One measured figure: a Hub metric ``type`` (e.g. ``roc_auc``), its ``name``, ``value`` and 95% CI."""

    type: str
    name: str
    value: float
    ci95: tuple[float, float] | None = None


@dataclass(frozen=True)
class MeasuredAUROC:
    """An AUROC on a set of validation films, with its 95% CI."""

    value: float
    ci95: tuple[float, float] | None
    films: int | None


@dataclass(frozen=True)
class CardMetrics:
    """What ``metrics.json`` holds, typed. ``training`` has the command, machine and loss terms of the run that made
    the weights; ``raw`` the structured measurements the cards and the app show (``triage``, ``findings``,
    ``map_sanity``, ...), kept as the JSON they were written as.
    """

    dataset: CardDataset
    results: tuple[CardResult, ...]
    training: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, metrics: dict[str, Any]) -> CardMetrics:
        """Parse and check a ``metrics.json`` dict (see :func:`validate_metrics` for its shape)."""
        validate_metrics(metrics)
        dataset = metrics["dataset"]
        return cls(
            dataset=CardDataset(dataset["name"], dataset["type"], dataset["split"], dataset.get("licence")),
            results=tuple(
                CardResult(r["type"], r["name"], float(r["value"]), tuple(r["ci95"]) if r.get("ci95") else None)
                for r in metrics["results"]
            ),
            training=dict(metrics.get("training", {})),
            raw=dict(metrics.get("raw", {})),
        )

    @property
    def box_supervised(self) -> bool:
        """Whether the training used the radiologists' boxes (its loss terms include ``boxes``)."""
        return "boxes" in (self.training.get("loss_terms") or [])

    def result(self, name: str) -> CardResult | None:
        """The result called ``name``, or ``None``."""
        return next((result for result in self.results if result.name == name), None)

    def _auroc(self, key: str, films_key: str) -> MeasuredAUROC | None:
        value = self.raw.get(key)
        if not isinstance(value, (int, float)) or value != value:  # absent or NaN
            return None
        ci = self.raw.get(f"{key}_ci95")
        return MeasuredAUROC(float(value), tuple(ci) if ci else None, self.raw.get(films_key))

    @property
    def same_hospital_auroc(self) -> MeasuredAUROC | None:
        """AUROC on the same-hospital validation films (TBX11K's extra sets), where the dataset has them."""
        return (
            self._auroc("same_hospital_auroc", "same_hospital_images") if self.raw.get("same_hospital_images") else None
        )

    @property
    def global_auroc(self) -> MeasuredAUROC | None:
        """AUROC on every validation film."""
        return self._auroc("global_auroc", "images")

    @property
    def reference_auroc(self) -> MeasuredAUROC | None:
        """AUROC on the reference films: the same-hospital ones where there are some, else all."""
        return self.same_hospital_auroc or self.global_auroc

    @property
    def triage(self) -> dict[str, Any] | None:
        """The two answer cuts and each state's share among validation films (see the card's Answers table)."""
        return self.raw.get("triage")

    @property
    def reference_calls(self) -> dict[str, dict[str, Any]]:
        """Sensitivity and specificity at each cut on the reference films."""
        return self.raw.get("reference_calls") or {}

    @property
    def roc(self) -> dict[str, Any] | None:
        """ROC points on the reference films (``fpr``, ``tpr``, ``films``)."""
        return self.raw.get("roc")


# metric key -> its name in model cards and metrics.json for the TB label spaces (the release maps names back with
# card_result_names, so the names of released cards stay stable)
CARD_RESULTS = {
    "global_auroc": "AUROC, TB vs not TB (all validation images)",
    "same_hospital_auroc": "AUROC, TB vs not TB (same-hospital extra-set images)",
    "local_macro_auroc": "macro AUROC, TB type (local labels)",
}


def card_result_names(global_labels) -> dict[str, str]:
    """Metric key -> card name for a model with these global labels: the TB names for TB models, else names that
    say which class is positive (the last)."""
    labels = list(global_labels)
    if not labels or "tb" in labels:  # no labels known: the names cards have always had
        return CARD_RESULTS
    positive, others = labels[-1], " / ".join(labels[:-1])
    return {
        "global_auroc": f"AUROC, {positive} vs {others} (all validation images)",
        "same_hospital_auroc": f"AUROC, {positive} vs {others} (same-hospital images)",
        "local_macro_auroc": "macro AUROC, local findings",
    }


def card_result(kind: str, name: str, value: float, ci95=None) -> dict:
    """One entry of a card's ``results`` (see cxrdistill.models.card.validate_metrics), rounded to 4 decimals."""
    entry = {"type": kind, "name": name, "value": round(float(value), 4)}
    if ci95:
        entry["ci95"] = [round(float(v), 4) for v in ci95]
    return entry


def validate_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Check a metrics dict and return it. Expected shape::

    {
      "dataset": {"name": "TBX11K", "type": "tbx11k", "split": "validation (20% of all_train)",
                  "licence": "research use (Liu et al., CVPR 2020)"},
      "results": [{"type": "roc_auc", "name": "macro AUROC", "value": 0.91, "ci95": [0.88, 0.94]}],
      "training": {"command": "python train/...", "machine": "2-core CPU", "data": "TBX11K all_train, 80%"}
    }
    """
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics must be a dict, got {type(metrics).__name__}")
    dataset = metrics.get("dataset")
    if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), str) for k in ("name", "type", "split")):
        raise ValueError("metrics['dataset'] needs string 'name', 'type' and 'split'")
    results = metrics.get("results")
    if not isinstance(results, list) or not results:
        raise ValueError("metrics['results'] must be a non-empty list")
    for result in results:
        if (
            not isinstance(result, dict)
            or not isinstance(result.get("type"), str)
            or not isinstance(result.get("name"), str)
        ):
            raise ValueError(f"each result needs string 'type' and 'name', got {result!r}")
        if not isinstance(result.get("value"), (int, float)) or isinstance(result.get("value"), bool):
            raise ValueError(f"result {result.get('name')!r} needs a numeric 'value', got {result.get('value')!r}")
    training = metrics.get("training", {})
    if not isinstance(training, dict) or not isinstance(training.get("command", ""), str):
        raise ValueError("metrics['training'] must be a dict whose 'command' is a string")
    return metrics


BOX_SUPERVISED_NOTE = (
    "\n\n**Box-supervised.** Unlike the weakly supervised maps of this project, this model's TB map was trained "
    "against the radiologists' boxes of the training films (the `boxes` loss term): it is the reference the weakly "
    "supervised maps are measured against."
)


def box_supervised(metrics: dict[str, Any] | None) -> bool:
    """Whether a card's training used the radiologists' boxes (its loss terms include ``boxes``)."""
    return metrics is not None and CardMetrics.from_dict(metrics).box_supervised


def render_model_card(model: DescribedModel, metrics: dict[str, Any] | None = None) -> ModelCard:
    """The model card of ``model``: Hub YAML metadata + documentation, with ``metrics`` if there are any."""
    config = model.config
    title = f"cxrdistill {type(model).__name__} ({config.image_size} px)"
    if metrics is not None:
        validate_metrics(metrics)
    card_data = ModelCardData(
        library_name="cxrdistill",
        pipeline_tag=type(model)._hub_mixin_info.model_card_data.pipeline_tag or "image-classification",
        license="apache-2.0",
        tags=model.card_tags(),
        datasets=[metrics["dataset"]["type"]] if metrics else None,
        model_name=title,
        eval_results=_eval_results(metrics) if metrics else None,
    )
    values = {
        "yaml": card_data.to_yaml(),
        "title": title,
        "summary": model.card_summary + (BOX_SUPERVISED_NOTE if box_supervised(metrics) else ""),
        "class_name": type(model).__name__,
        "model_type": config.model_type,
        "architecture": model.architecture_summary(),
        "input": f"{config.image_size} x {config.image_size} px, {config.in_chans} channel, values in [0, 1]",
        "mean": f"{config.mean:g}",
        "std": f"{config.std:g}",
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "outputs": model.outputs_summary(),
        "how_to_load": model.usage_example(),
        "training_data": _training_data(metrics),
        "evaluation": _evaluation(metrics),
        "citation": model.card_citation,
    }
    template = resources.files("cxrdistill").joinpath("model_cards", "model_card.md").read_text()
    return ModelCard(Template(template).substitute(values))


def _eval_results(metrics: dict[str, Any]) -> list[EvalResult]:
    dataset = metrics["dataset"]
    return [
        EvalResult(
            task_type="image-classification",
            dataset_type=dataset["type"],
            dataset_name=dataset["name"],
            dataset_split=dataset["split"],
            metric_type=result["type"],
            metric_name=result["name"],
            metric_value=float(result["value"]),
        )
        for result in metrics["results"]
    ]


def _training_data(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "No training record travels with these weights: treat them as **untrained**."
    dataset, training = metrics["dataset"], metrics.get("training", {})
    lines = [f"- Dataset: {dataset['name']}" + (f" ({dataset['licence']})" if dataset.get("licence") else "")]
    for key, label in (
        ("data", "Training data"),
        ("command", "Command"),
        ("machine", "Machine"),
        ("wall_time_s", "Wall time (s)"),
    ):
        if key in training:
            value = f"`{training[key]}`" if key == "command" else training[key]
            lines.append(f"- {label}: {value}")
    return "\n".join(lines)


def _evaluation(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "Not evaluated: no metrics file was given when this card was rendered."
    dataset = metrics["dataset"]
    rows = [f"On {dataset['name']}, split: {dataset['split']}.", "", "| metric | value | 95% CI |", "|---|---|---|"]
    for result in metrics["results"]:
        ci = result.get("ci95")
        rows.append(f"| {result['name']} | {result['value']:.4f} | {f'{ci[0]:.4f} to {ci[1]:.4f}' if ci else ''} |")
    raw = metrics.get("raw", {})
    if raw.get("triage"):
        rows += ["", _triage_table(raw["triage"])]
    if raw.get("findings"):
        rows += ["", _findings_table(raw["findings"])]
    if raw.get("map_sanity"):
        rows += ["", _constancy_table(raw["map_sanity"])]
    return "\n".join(rows)


def _constancy_table(sanity: dict[str, Any]) -> str:
    """Does each explanation map change with the film? A constant map peaks in one cell on every film and
    correlates about 1 with its mean."""
    lines = [
        "### Does the map change with the film?",
        "",
        "| map | films | share peaking in the most common cell | median correlation with the mean map |",
        "|---|---|---|---|",
    ]
    for name, groups in sanity.items():
        for group, values in groups.items():
            correlation = values.get("median_correlation_with_mean")
            share = values.get("peak_cell_share")
            lines.append(
                f"| {name} | {values.get('films', 0)} {group} | {'-' if share is None else f'{share:.2f}'} | "
                f"{'-' if correlation is None else f'{correlation:.2f}'} |"
            )
    return "\n".join(lines)


def _share(rate: dict[str, Any]) -> str:
    if rate.get("share") is None:
        return "-"
    low, high = rate["ci95"]
    return f"{rate['share']:.0%} ({rate['count']}/{rate['films']}; {low:.0%}-{high:.0%})"


def _triage_table(triage: dict[str, Any]) -> str:
    """The card's "Answers" section: the two cuts and how often each state happens among validation films."""
    rule_out, rule_in = triage["rule_out"], triage["rule_in"]
    lines = [
        "### Answers: low / indeterminate / signal",
        "",
        f"Two cuts on the positive class's probability, chosen on the {triage['images']} validation "
        f"{triage['films']} ({triage['positives']} positive): below the rule-out cut **{rule_out['threshold']:.4f}** "
        f"(sensitivity >= {rule_out['sensitivity_target']:g}) the answer is `low`; at or above the rule-in cut "
        f"**{rule_in['threshold']:.4f}** (specificity >= {rule_in['specificity_target']:g}) it is `signal`; between "
        "them `indeterminate` (a reader should look). Share of films in each state (count; Wilson 95% CI):",
        "",
        "| films | cuts chosen on | low | indeterminate | signal |",
        "|---|---|---|---|---|",
    ]
    for where, rates in (
        ("the same films", triage["rates"]),
        ("other films (cross-fitted)", triage["cross_fitted"]["rates"]),
    ):
        for group in ("positive", "negative"):
            cells = " | ".join(_share(rates[group][state]) for state in ("low", "indeterminate", "signal"))
            lines.append(f"| {group} | {where} | {cells} |")
    return "\n".join(lines)


def _findings_table(findings: dict[str, Any]) -> str:
    """Which multi-label findings are called, and why the others are not."""
    lines = [
        "### Findings",
        "",
        "A finding is called only where its validation AUROC's lower 95% bound is at least 0.70 and the validation "
        "split had at least 20 positive films; the others are shown as probabilities, uncalled.",
        "",
        "| finding | validation AUROC (95% CI) | positive films | called |",
        "|---|---|---|---|",
    ]
    for label, trust in findings.items():
        value = "-" if trust["auroc"] is None else f"{trust['auroc']:.3f}"
        if trust.get("auroc_ci95"):
            value += f" ({trust['auroc_ci95'][0]:.3f}-{trust['auroc_ci95'][1]:.3f})"
        lines.append(
            f"| {label} | {value} | {trust['positives']} | {'yes' if trust['called'] else 'no: ' + trust['reason']} |"
        )
    return "\n".join(lines)
