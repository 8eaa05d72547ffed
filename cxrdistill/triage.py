"""Three answers instead of a binary call: ``low`` / ``indeterminate`` / ``signal``, and which model answers.

A cut that keeps 90% sensitivity on a model of AUROC 0.8-0.9 calls most normal films positive; shown as a red
"positive" that is an honest number with a misleading presentation. TB screening tools (CAD4TB, qXR) give a score
and two operating points instead. Here each classifier's positive class gets two thresholds chosen on its
validation films (the reference films of :func:`cxrdistill.evaluation.reference_films`: the same-hospital films of
TBX11K, every film of a one-hospital dataset):

- the **rule-out** cut: the highest threshold that keeps at least ``RULE_OUT_SENSITIVITY`` (0.95) of the positive
  films at or above it. Below it the answer is ``low``.
- the **rule-in** cut: the lowest threshold that leaves at least ``RULE_IN_SPECIFICITY`` (0.95) of the negative
  films below it. At or above it the answer is ``signal``.
- between the two: ``indeterminate`` (a reader should look).

Should the rule-in cut fall below the rule-out cut (a model that separates its validation films almost
perfectly), ``signal`` wins where both apply.

This module is the one place that turns a probability into a state (:func:`state_of`), measures how often each
state happens among validation positives and negatives (:func:`state_rates`, with Wilson 95% intervals, and
:func:`cross_fitted_state_rates`, on films the cuts were not chosen on), decides whether a multi-label finding is
trusted enough to be called (:func:`finding_trust`) and picks the model that answers for a family
(:func:`answer_model`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrdistill.metrics import auroc, bootstrap_ci, threshold_for_sensitivity, threshold_for_specificity
from cxrdistill.models.card import CardMetrics

STATES = ("low", "indeterminate", "signal")
RULE_OUT_SENSITIVITY = 0.95
RULE_IN_SPECIFICITY = 0.95
# A multi-label finding is called only where its validation AUROC's lower 95% bound reaches this and its validation
# split had at least this many positive films; every other finding is shown as a probability, uncalled.
FINDING_MIN_AUROC_LOWER = 0.70
FINDING_MIN_POSITIVES = 20

# what each state means, in a visitor's words: Decision.explanation in the API, the answer in the app
STATE_WORDS = {
    "low": "The probability is below the rule-out cut: on our validation films at most {miss:.0%} of {label} films "
    "fell this low. It does not exclude {label}.",
    "indeterminate": "The probability is between the rule-out and the rule-in cuts: the model cannot tell, and a "
    "reader should look at the film.",
    "signal": "The probability is at or above the rule-in cut, which at most {false:.0%} of our validation films "
    "without {label} reached. A reader should look at the film; this is not a diagnosis.",
}


def display_label(label: str) -> str:
    """``tb`` -> ``TB``, ``pneumonia`` -> ``Pneumonia``: a class name as a sentence shows it."""
    return label.upper() if len(label) <= 3 else label[:1].upper() + label[1:]


def state_of(probability: float, rule_out: float, rule_in: float) -> str:
    """``signal`` at or above ``rule_in``, else ``low`` below ``rule_out``, else ``indeterminate``."""
    if probability >= rule_in:
        return "signal"
    if probability < rule_out:
        return "low"
    return "indeterminate"


def explain_state(state: str, label: str, rule_out_sensitivity: float, rule_in_specificity: float) -> str:
    """The state in plain words: what it means and what the cuts promise."""
    return STATE_WORDS[state].format(
        label=display_label(label), miss=1 - rule_out_sensitivity, false=1 - rule_in_specificity
    )


@dataclass(frozen=True)
class Cuts:
    """The two cuts of one classifier's positive class and what they were chosen for."""

    rule_out: float
    rule_in: float
    rule_out_sensitivity: float = RULE_OUT_SENSITIVITY
    rule_in_specificity: float = RULE_IN_SPECIFICITY

    @classmethod
    def choose(
        cls,
        targets: np.ndarray,
        scores: np.ndarray,
        rule_out_sensitivity: float = RULE_OUT_SENSITIVITY,
        rule_in_specificity: float = RULE_IN_SPECIFICITY,
    ) -> Cuts:
        """Both cuts on ``targets`` (``(N,)`` 0/1) and ``scores`` (``(N,)`` probabilities of the positive class)."""
        return cls(
            threshold_for_sensitivity(targets, scores, rule_out_sensitivity),
            threshold_for_specificity(targets, scores, rule_in_specificity),
            rule_out_sensitivity,
            rule_in_specificity,
        )

    def states(self, scores: np.ndarray) -> np.ndarray:
        """``(N,)`` state names of ``scores``."""
        return np.array([state_of(float(p), self.rule_out, self.rule_in) for p in np.asarray(scores)], dtype=object)


def wilson_interval(count: int, total: int, level: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion ``count / total`` (``None`` without films; scipy's ``binomtest``).
    Unlike a bootstrap it is not stuck at [0, 0] when nothing in the sample fell in a state."""
    if total == 0:
        return None
    from scipy.stats import binomtest

    interval = binomtest(count, total).proportion_ci(confidence_level=level, method="wilson")
    return float(interval.low), float(interval.high)


def _rates(targets: np.ndarray, states: np.ndarray) -> dict[str, dict[str, dict[str, Any]]]:
    positive = np.asarray(targets) > 0.5
    rates: dict[str, dict[str, dict[str, Any]]] = {}
    for group, members in (("positive", positive), ("negative", ~positive)):
        total = int(members.sum())
        rates[group] = {}
        for state in STATES:
            count = int(np.sum(states[members] == state))
            rates[group][state] = {
                "count": count,
                "films": total,
                "share": count / total if total else None,
                "ci95": wilson_interval(count, total),
            }
    return rates


def state_rates(targets: np.ndarray, scores: np.ndarray, cuts: Cuts) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"positive" | "negative": {state: {"count", "films", "share", "ci95"}}}`` of ``scores`` at ``cuts``, on
    the films the cuts were chosen on (so ``low`` among positives is at most 1 - the rule-out sensitivity by
    construction: see :func:`cross_fitted_state_rates` for the honest estimate)."""
    return _rates(targets, cuts.states(scores))


def cross_fitted_state_rates(
    targets: np.ndarray,
    scores: np.ndarray,
    ids: np.ndarray,
    folds: int = 5,
    rule_out_sensitivity: float = RULE_OUT_SENSITIVITY,
    rule_in_specificity: float = RULE_IN_SPECIFICITY,
) -> dict[str, Any]:
    """How the two-cut rule does on films it was not tuned on: the films are split into ``folds`` (stratified by
    class, every ``folds``-th film by id), each fold gets the states of the cuts chosen on the other folds, and the
    rates are pooled over all films (Wilson 95% intervals)."""
    targets, scores, ids = np.asarray(targets) > 0.5, np.asarray(scores), np.asarray(ids)
    fold = np.empty(len(targets), dtype=int)
    for cls in (False, True):
        members = np.flatnonzero(targets == cls)
        members = members[np.argsort(ids[members], kind="stable")]
        fold[members] = np.arange(len(members)) % folds
    states = np.empty(len(targets), dtype=object)
    fold_cuts = []
    for k in range(folds):
        fit = fold != k
        cuts = Cuts.choose(targets[fit], scores[fit], rule_out_sensitivity, rule_in_specificity)
        fold_cuts.append([cuts.rule_out, cuts.rule_in])
        states[fold == k] = cuts.states(scores[fold == k])
    return {"folds": folds, "fold_cuts": fold_cuts, "rates": _rates(targets, states)}


def finding_trust(targets: np.ndarray, scores: np.ndarray, samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Whether one multi-label finding may be called: its validation AUROC (bootstrap 95% CI) and positive count
    against :data:`FINDING_MIN_AUROC_LOWER` and :data:`FINDING_MIN_POSITIVES`. Returns
    ``{"auroc", "auroc_ci95", "positives", "called", "reason"}`` (``reason``: why it is not called, or ``""``)."""
    targets, scores = np.asarray(targets), np.asarray(scores)
    positives = int(np.sum(targets > 0.5))
    negatives = len(targets) - positives
    value = auroc(targets, scores) if positives and negatives else math.nan
    interval = bootstrap_ci(auroc, targets, scores, samples=samples, seed=seed) if positives and negatives else None
    if positives < FINDING_MIN_POSITIVES:
        reason = f"too few validation cases ({positives} positive films, {FINDING_MIN_POSITIVES} needed)"
    elif interval is None or not math.isfinite(interval[0]) or interval[0] < FINDING_MIN_AUROC_LOWER:
        lower = "unknown" if interval is None else f"{interval[0]:.2f}"
        reason = f"not reliable enough (validation AUROC's lower 95% bound {lower} < {FINDING_MIN_AUROC_LOWER:.2f})"
    else:
        reason = ""
    return {
        "auroc": value if math.isfinite(value) else None,
        "auroc_ci95": None if interval is None else [float(v) for v in interval],
        "positives": positives,
        "called": not reason,
        "reason": reason,
    }


def reference_auroc(card: Mapping[str, Any] | None) -> float | None:
    """A card's validation AUROC on its reference films: the same-hospital films where it has them (TBX11K), else
    all its validation films (one-hospital datasets). ``None`` without one."""
    if not card:
        return None
    measured = CardMetrics.from_dict(dict(card)).reference_auroc
    return measured.value if measured else None


def answer_model(candidates: Mapping[str, tuple[int, Mapping[str, Any] | None]]) -> str | None:
    """The model that answers for a family, by a rule fixed before the numbers it reads: **the highest validation
    AUROC on the reference films** (:func:`reference_auroc`); an exact tie goes to the smaller input.

    Args:
        candidates: name -> (input size, card) of every classifier of the family that has triage cuts.

    Returns:
        the chosen name, or ``None`` when no candidate has a measured AUROC.
    """
    measured = [(name, size, reference_auroc(card)) for name, (size, card) in candidates.items()]
    measured = [entry for entry in measured if entry[2] is not None]
    if not measured:
        return None
    return min(measured, key=lambda entry: (-entry[2], entry[1]))[0]
