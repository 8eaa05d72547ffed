"""Model cards rendered from metrics files, and push / pull helpers for the Hugging Face Hub.

A card is never edited by hand: :func:`render_model_card` fills ``cxrdistill/model_cards/model_card.md`` from the
model's config and a metrics dict (the ``metrics.json`` a training or evaluation run writes, see
:func:`validate_metrics`), and its YAML header carries the Hub metadata (``library_name``, ``pipeline_tag``, tags,
datasets and a ``model-index`` with the metric values).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, snapshot_download
from huggingface_hub.errors import HfHubHTTPError

from cxrdistill.models import CONFIG_NAME, MODEL_CLASSES, WEIGHTS_NAME, ModelLoadError
from cxrdistill.models.base import PICKLE_WEIGHTS, REPO_URL, CXRModel

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"
RELEASE_FILES = (CONFIG_NAME, WEIGHTS_NAME, "README.md", METRICS_NAME)
# folders of the repository's models/ release that the app loads (Predictor.from_release, the Space)
RELEASE_STUDENTS = ("mlcak-student-28", "mlcak-student-56", "mlcak-student-112")  # those present are loaded
RELEASE_TEACHER = "mlcak-teacher-224"
RELEASE_TB = "tb-student-28"
RELEASE_LUNGS = "lung-unet-256"


@dataclass(frozen=True)
class ReleaseFamily:
    """One family of released models the app offers: folders of ``models/`` trained on one dataset.

    Attributes:
        title: what the app calls it (the finding the models answer for, and the dataset).
        students: the low-resolution students, smallest input first.
        teacher: the 224-px teacher shown beside them.
        answer: the model that answers for the family, one of its folders: picked by
            :func:`cxrdistill.triage.answer_model` (the highest validation AUROC on the reference films; a test
            checks the name against the cards).
        tb: the CNN whose class activation map gives TB boxes (TB families only).
        lungs: the lung model that keeps maps inside the lungs.
    """

    title: str
    students: tuple[str, ...]
    teacher: str | None
    answer: str
    tb: str | None = None
    lungs: str | None = RELEASE_LUNGS

    @property
    def folders(self) -> tuple[str, ...]:
        return tuple(name for name in (*self.students, self.teacher, self.tb, self.lungs) if name)


# family name (a dataset of cxrdistill.data.registry) -> its released folders; the first is the app's default
RELEASE_FAMILIES = {
    "tbx11k": ReleaseFamily(
        "Tuberculosis (TBX11K)", RELEASE_STUDENTS, RELEASE_TEACHER, answer=RELEASE_TEACHER, tb=RELEASE_TB
    ),
    "nih1024": ReleaseFamily(
        "Pneumonia (NIH ChestX-ray14, 512-px films)",
        ("nih1024-student-28", "nih1024-student-56", "nih1024-student-112"),
        "nih1024-teacher-224",
        answer="nih1024-teacher-224",
    ),
}
APP_MODELS = tuple(dict.fromkeys(name for family in RELEASE_FAMILIES.values() for name in family.folders))


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
    return "boxes" in ((metrics or {}).get("training", {}).get("loss_terms") or [])


def render_model_card(model: CXRModel, metrics: dict[str, Any] | None = None) -> ModelCard:
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


# ------------------------------------------------------------------------------------------------ push / pull


def load_model(source: str | os.PathLike, revision: str | None = None, **kwargs) -> CXRModel:
    """Load any cxrdistill model from a folder or Hub repo, picking the class from ``config.json``."""
    config_path = CXRModel._resolve(
        str(source),
        CONFIG_NAME,
        revision,
        kwargs.get("cache_dir"),
        False,
        kwargs.get("local_files_only", False),
        kwargs.get("token"),
    )
    model_type = json.loads(Path(config_path).read_text()).get("model_type")
    if model_type not in MODEL_CLASSES:
        raise ModelLoadError(f"{source!r}: unknown model_type {model_type!r}; known: {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[model_type].from_pretrained(source, revision=revision, **kwargs)


def load_metrics(source: str | os.PathLike, revision: str | None = None, **kwargs) -> dict[str, Any] | None:
    """The ``metrics.json`` that travels with a model (folder or Hub repo), or ``None`` where it has none or it is
    not valid (a model may be shared without one; the app then says the model is unmeasured)."""
    try:
        path = CXRModel._resolve(
            str(source),
            METRICS_NAME,
            revision,
            kwargs.get("cache_dir"),
            False,
            kwargs.get("local_files_only", False),
            kwargs.get("token"),
        )
        return validate_metrics(json.loads(Path(path).read_text()))
    except (ModelLoadError, OSError, ValueError) as error:
        logger.info("no usable %s for %s: %s", METRICS_NAME, source, error)
        return None


def check_release_folder(folder: str | os.PathLike) -> list[str]:
    """Files of ``folder`` to publish; raises if a required one is missing or pickled weights are present."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is not a folder")
    present = {p.name for p in folder.iterdir() if p.is_file()}
    pickles = sorted(present & set(PICKLE_WEIGHTS))
    if pickles:
        raise ModelLoadError(f"{folder} holds pickled weights {pickles}; only safetensors are published")
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME, "README.md") if name not in present]
    if missing:
        raise ModelLoadError(f"{folder} lacks {missing}; save the model with save_pretrained first")
    load_model(folder)  # never publish something that does not load
    return [name for name in RELEASE_FILES if name in present]


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    branch: str | None = None,
    tag: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Publish a saved model folder to ``repo_id`` in one commit (optionally on ``branch``, then ``tag`` it).

    Returns the commit id.
    """
    files = check_release_folder(folder)
    api = HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if branch:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            allow_patterns=files,
            revision=branch,
            commit_message=commit_message or f"Upload {', '.join(files)} with cxrdistill",
        )
    except _transport_errors() as error:
        raise ModelLoadError(
            f"could not push {folder} to {repo_id} ({type(error).__name__}: {error}); nothing was published: "
            "a Hub commit is all or nothing, so the repo is as it was. Try again."
        ) from error
    if tag:
        try:
            api.create_tag(repo_id, tag=tag, revision=commit.oid)
        except _transport_errors() as error:
            raise ModelLoadError(
                f"pushed {folder} to {repo_id} as commit {commit.oid}, but tagging it {tag!r} failed "
                f"({type(error).__name__}: {error}); tag it with: huggingface-cli tag {repo_id} {tag} -r {commit.oid}"
            ) from error
    logger.info("pushed %s to %s at %s", folder, repo_id, commit.oid)
    return commit.oid


def pull(
    repo_id: str, *, revision: str | None = None, local_dir: str | os.PathLike | None = None, token: str | None = None
) -> Path:
    """Download a model repo (only the release files) and check that it loads; returns the folder."""
    if not os.path.isdir(repo_id):
        # Resolving config.json first turns a missing repo or revision into a clear ModelLoadError.
        CXRModel._resolve(repo_id, CONFIG_NAME, revision, None, False, False, token)
    folder = snapshot_download(
        repo_id, revision=revision, local_dir=local_dir, allow_patterns=list(RELEASE_FILES), token=token
    )
    load_model(folder)
    return Path(folder)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What a failed Hub call raises: HTTP errors, and the HTTP client's own connection / timeout errors (httpx,
    or httpx2 in newer huggingface_hub; requests' are OSErrors)."""
    import importlib

    errors: list[type[BaseException]] = [HfHubHTTPError, OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


SPACE_FILES = ("README.md", "requirements.txt")  # from the repository's spaces/ folder


def stage_space(
    repo_root: str | os.PathLike, destination: str | os.PathLike, model_repos: list[str] | None = None
) -> list[str]:
    """Lay out the Space in ``destination`` from a cxrdistill checkout at ``repo_root``; returns its files.

    The Space is the repository's own ``app.py``, the ``cxrdistill`` package source and the released ``models/``
    folders the app loads (not, e.g., the TB teacher), plus ``spaces/README.md`` (its YAML header gets
    ``models: model_repos``) and ``spaces/requirements.txt``. Nothing is kept in git twice: the Space is assembled
    at push time.
    """
    import shutil

    root, destination = Path(repo_root), Path(destination)
    required = [root / "app.py", root / "cxrdistill" / "__init__.py", *(root / "spaces" / f for f in SPACE_FILES)]
    missing = [str(p) for p in required if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{root} is not a cxrdistill checkout (missing {', '.join(missing)})")
    shutil.copy2(root / "app.py", destination / "app.py")
    shutil.copy2(root / "spaces" / "requirements.txt", destination / "requirements.txt")
    shutil.copytree(
        root / "cxrdistill", destination / "cxrdistill", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    for folder in sorted((root / "models").glob("*/")):
        if folder.name in APP_MODELS and (folder / CONFIG_NAME).is_file():  # only what the app loads
            files = check_release_folder(folder)
            (destination / "models" / folder.name).mkdir(parents=True)
            for name in files:
                shutil.copy2(folder / name, destination / "models" / folder.name / name)
    card = (root / "spaces" / "README.md").read_text()
    header, separator, body = card.removeprefix("---\n").partition("\n---\n")
    if not separator:
        raise ValueError("spaces/README.md must start with a YAML header between '---' lines")
    lines = [line for line in header.splitlines() if not line.startswith("models:")]
    lines.append("models: " + json.dumps(sorted(model_repos or [])))
    (destination / "README.md").write_text("---\n" + "\n".join(lines) + "\n---\n" + body)
    return sorted(str(p.relative_to(destination)) for p in destination.rglob("*") if p.is_file())


def push_space(
    repo_id: str,
    repo_root: str | os.PathLike = ".",
    *,
    model_repos: list[str] | None = None,
    private: bool = False,
    token: str | None = None,
) -> str:
    """Create (or update) the Gradio Space ``repo_id`` from the checkout at ``repo_root`` in one commit.

    Files the new Space no longer has are deleted in the same commit. Returns the commit id.
    """
    import tempfile

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory(prefix="cxrdistill-space-") as staging:
        files = stage_space(repo_root, staging, model_repos)
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="space",
            folder_path=staging,
            delete_patterns=["*"],  # a file removed from the app is removed from the Space
            commit_message=f"Deploy the cxrdistill demo ({len(files)} files)",
        )
    logger.info("pushed the Space %s at %s", repo_id, commit.oid)
    return commit.oid


__all__ = [
    "METRICS_NAME",
    "REPO_URL",
    "check_release_folder",
    "load_model",
    "pull",
    "push_folder",
    "push_space",
    "render_model_card",
    "stage_space",
    "validate_metrics",
]
