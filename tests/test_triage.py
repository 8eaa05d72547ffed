"""Three answer states, the two cuts they come from, which findings are called, and which model answers."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdistill.metrics import threshold_for_specificity
from cxrdistill.triage import (
    Cuts,
    answer_model,
    cross_fitted_state_rates,
    finding_trust,
    reference_auroc,
    state_of,
    state_rates,
    wilson_interval,
)


def test_a_probability_equal_to_a_cut_takes_the_state_above_it():
    assert state_of(0.40, rule_out=0.10, rule_in=0.40) == "signal"  # at the rule-in cut: signal
    assert state_of(np.nextafter(0.40, 0), rule_out=0.10, rule_in=0.40) == "indeterminate"
    assert state_of(0.10, rule_out=0.10, rule_in=0.40) == "indeterminate"  # at the rule-out cut: not low
    assert state_of(np.nextafter(0.10, 0), rule_out=0.10, rule_in=0.40) == "low"
    assert state_of(0.3, rule_out=0.5, rule_in=0.2) == "signal"  # crossed cuts: signal wins


def test_the_rule_in_cut_is_the_lowest_that_keeps_the_specificity():
    negatives = np.linspace(0.0, 0.95, 20)  # 20 negatives: 5% may reach the cut, so 1 of them
    targets = np.r_[np.zeros(20), np.ones(3)]
    scores = np.r_[negatives, [0.2, 0.5, 0.99]]
    cut = threshold_for_specificity(targets, scores, 0.95)
    assert np.sum(negatives >= cut) == 1  # only the highest negative reaches it
    assert cut > negatives[-2] and cut == pytest.approx(negatives[-2], abs=1e-12)  # just above the second highest
    assert threshold_for_specificity(targets, scores, 1.0) > negatives.max()
    assert threshold_for_specificity(np.ones(3), np.ones(3), 0.95) == 1.0  # no negatives: nothing to calibrate on
    with pytest.raises(ValueError, match="specificity"):
        threshold_for_specificity(targets, scores, 0.0)


def test_on_the_films_they_were_chosen_on_the_cuts_keep_their_promises():
    rng = np.random.default_rng(0)
    targets = (rng.random(300) < 0.4).astype(float)
    scores = np.clip(0.35 + 0.25 * targets + 0.2 * rng.standard_normal(300), 0, 1)
    cuts = Cuts.choose(targets, scores)
    assert cuts.rule_out < cuts.rule_in
    rates = state_rates(targets, scores, cuts)
    assert rates["positive"]["low"]["share"] <= 0.05 and rates["negative"]["signal"]["share"] <= 0.05
    for group in ("positive", "negative"):
        assert sum(rates[group][s]["count"] for s in ("low", "indeterminate", "signal")) == np.sum(
            (targets > 0.5) == (group == "positive")
        )
        low, high = rates[group]["indeterminate"]["ci95"]
        assert low < rates[group]["indeterminate"]["share"] < high
    states = cuts.states(scores)
    assert states[scores >= cuts.rule_in].tolist() == ["signal"] * int(np.sum(scores >= cuts.rule_in))


def test_cross_fitted_states_come_from_cuts_chosen_on_the_other_folds():
    rng = np.random.default_rng(1)
    targets = rng.random(120) < 0.5
    scores = np.where(targets, 0.3 + 0.7 * rng.random(120), 0.7 * rng.random(120))
    ids = np.array([f"{i:03d}" for i in range(120)])
    crossed = cross_fitted_state_rates(targets, scores, ids, folds=4)
    fold = np.empty(120, dtype=int)
    for cls in (False, True):
        members = np.flatnonzero(targets == cls)
        fold[members] = np.arange(len(members)) % 4
    states = np.empty(120, dtype=object)
    for k in range(4):
        cuts = Cuts.choose(targets[fold != k], scores[fold != k])
        assert crossed["fold_cuts"][k] == [cuts.rule_out, cuts.rule_in]
        states[fold == k] = cuts.states(scores[fold == k])
    for group, members in (("positive", targets), ("negative", ~targets)):
        for state in ("low", "indeterminate", "signal"):
            assert crossed["rates"][group][state]["count"] == np.sum(states[members] == state)


def test_wilson_intervals_match_the_textbook_values():
    assert wilson_interval(0, 38)[0] == 0.0 and wilson_interval(0, 38)[1] == pytest.approx(0.0918, abs=1e-4)
    low, high = wilson_interval(10, 20)
    assert (low, high) == pytest.approx((0.2993, 0.7007), abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_a_finding_is_called_only_with_enough_cases_and_a_reliable_auroc():
    rng = np.random.default_rng(2)
    targets = np.r_[np.ones(40), np.zeros(160)]
    strong = np.r_[rng.normal(2, 1, 40), rng.normal(0, 1, 160)]
    assert finding_trust(targets, strong, samples=200)["called"]
    weak = np.r_[rng.normal(0.3, 1, 40), rng.normal(0, 1, 160)]
    trust = finding_trust(targets, weak, samples=200)
    assert not trust["called"] and "lower 95% bound" in trust["reason"] and trust["auroc_ci95"][0] < 0.70
    few = finding_trust(np.r_[np.ones(19), np.zeros(181)], np.r_[np.full(19, 0.9), np.zeros(181)], samples=50)
    assert not few["called"] and few["reason"].startswith("too few validation cases (19 positive films")
    assert finding_trust(np.r_[np.ones(20), np.zeros(180)], np.r_[np.full(20, 0.9), np.zeros(180)], samples=50)[
        "called"
    ]


def card(same=None, overall=0.9):
    raw = {"global_auroc": overall, "same_hospital_images": 73 if same is not None else 0}
    if same is not None:
        raw["same_hospital_auroc"] = same
    return {
        "dataset": {"name": "TBX11K", "type": "tbx11k", "split": "validation"},
        "results": [{"type": "roc_auc", "name": "AUROC", "value": overall}],
        "raw": raw,
    }


def test_the_answering_model_is_the_best_on_the_reference_films_and_ties_go_to_the_smaller_input():
    assert reference_auroc(card(same=0.80, overall=0.97)) == 0.80  # the same-hospital films, not the shortcut
    assert reference_auroc(card(overall=0.93)) == 0.93  # one-hospital dataset: every film
    assert reference_auroc(None) is None
    candidates = {
        "student-28": (28, card(same=0.74, overall=0.93)),
        "teacher-224": (224, card(same=0.878, overall=0.97)),
        "tb-28": (28, card(same=0.877, overall=0.99)),
    }
    assert answer_model(candidates) == "teacher-224"
    candidates["tb-28"] = (28, card(same=0.878, overall=0.5))
    assert answer_model(candidates) == "tb-28"  # a tie: the smaller input
    assert answer_model({"x": (28, None)}) is None
