"""The released models in models/: each loads with from_pretrained, carries its measured card, fits the budget,
and survives a push to the (loopback) Hub and a pull by tag."""

from __future__ import annotations

import json
import uuid

import pytest
import torch
from support.films import REPO_ROOT

from cxrdistill.hub import push_folder
from cxrdistill.models import LungSegmenter, load_model

RELEASES = sorted(p for p in (REPO_ROOT / "models").glob("*") if (p / "config.json").is_file())
BUDGET_MB = 40  # decimal megabytes: 40,000,000 bytes for the whole models/ folder


def test_release_fits_the_size_budget():
    total = sum(f.stat().st_size for f in (REPO_ROOT / "models").rglob("*") if f.is_file()) if RELEASES else 0
    assert total / 10**6 < BUDGET_MB


@pytest.mark.skipif(not RELEASES, reason="no released models in models/ yet")
@pytest.mark.parametrize("folder", RELEASES, ids=[p.name for p in RELEASES])
def test_released_model_loads_with_measured_metrics_and_calibrated_thresholds(folder):
    model = load_model(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["results"] and all(isinstance(r["value"], float) for r in metrics["results"])
    card = (folder / "README.md").read_text()
    assert "Not a medical device" in card and metrics["training"]["command"] in card
    size = model.config.image_size
    images = torch.rand(2, 1, size, size)
    if isinstance(model, LungSegmenter):  # measured by Dice on held-out outlines, not calibrated
        assert metrics["results"][0]["type"] == "dice" and metrics["results"][0]["value"] > 0.9
        assert model.lung_probability(images).shape == (2, size, size)
        return
    # the cuts and finding calls the model answers with are the ones its card reports, chosen as the card says
    config, raw = model.config, metrics["raw"]
    assert config.global_thresholds is not None
    triage = raw["triage"]
    assert (config.rule_out_threshold, config.rule_in_threshold) == (
        triage["rule_out"]["threshold"],
        triage["rule_in"]["threshold"],
    )
    assert (config.rule_out_sensitivity, config.rule_in_specificity) == (0.95, 0.95)
    for group, state in (("positive", "low"), ("negative", "signal")):  # the promise the cuts were chosen to keep
        rate = triage["rates"][group][state]
        assert rate["share"] <= 0.05 + 1e-9 and rate["ci95"][0] <= rate["share"] <= rate["ci95"][1]
    findings = raw.get("findings", {})
    for label, threshold in zip(config.local_labels, config.local_thresholds, strict=True):
        assert (threshold is not None) == findings[label]["called"], label


@pytest.mark.skipif(not RELEASES, reason="no released models in models/ yet")
def test_a_released_model_round_trips_through_the_hub_by_tag(hub):
    folder = RELEASES[0]
    repo_id = f"cxr-org/{folder.name}-{uuid.uuid4().hex[:6]}"
    push_folder(folder, repo_id, tag="v1.0")
    pulled = load_model(repo_id, revision="v1.0")
    local = load_model(folder)
    for (key, a), (_, b) in zip(local.state_dict().items(), pulled.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=key)


CLASSIFIERS = [
    p for p in RELEASES if json.loads((p / "config.json").read_text())["model_type"] != "cxrdistill-lung-unet"
]


@pytest.mark.parametrize("folder", CLASSIFIERS, ids=[p.name for p in CLASSIFIERS])
def test_each_released_classifier_scores_on_its_validation_films_what_its_card_says(folder):
    """Re-score the released weights on the films the card was measured on (the training scripts' split: 25% of
    the training films, split seed 0) and compare every AUROC on the card, within its 4-decimal rounding."""
    from support.films import shared_path

    from cxrdistill.evaluation import EvalData, classification_metrics, load_dataset, predict_dataset
    from cxrdistill.models.card import card_result_names

    card = json.loads((folder / "metrics.json").read_text())
    dataset = card["dataset"]["type"]
    split = card["dataset"]["split"]
    assert split.startswith("validation (25% of") and "split seed 0" in split, split
    model = load_model(folder)
    crop = str(folder.parent / "lung-unet-256") if model.config.input_crop == "lungs" else None  # as it was measured
    films = load_dataset(EvalData(dataset, str(shared_path(dataset)), None, "val", 0.25, 0, crop))
    config = model.config
    metrics = classification_metrics(predict_dataset(model, films), config.global_labels, config.local_labels)
    keys = {name: key for key, name in card_result_names(config.global_labels).items()}
    aurocs = [r for r in card["results"] if r["type"] == "roc_auc"]
    assert aurocs, "a released classifier's card reports its AUROC"
    for result in aurocs:
        assert metrics[keys[result["name"]]] == pytest.approx(result["value"], abs=6e-5), result["name"]


@pytest.mark.skipif(not RELEASES, reason="no released models in models/ yet")
def test_each_family_is_answered_by_the_model_the_rule_picks_from_the_released_cards():
    """``RELEASE_FAMILIES`` names the answering model; the rule fixed before the numbers (the highest validation
    AUROC on the reference films, among the family's classifiers with cuts) must pick the same one from the cards
    in models/, so re-releasing a model can never leave the app answering with a weaker one."""
    from cxrdistill.release import RELEASE_FAMILIES, family_cards
    from cxrdistill.triage import answer_model

    for family, release in RELEASE_FAMILIES.items():
        candidates = family_cards(REPO_ROOT / "models", family)
        assert release.answer in candidates, family
        assert answer_model(candidates) == release.answer, family
