"""The answer-state table of docs/answers.md, read from the released cards (metrics.json), never re-typed.

    python train/experiments/answers_report.py --models models --json docs/results/answers.json

For every classifier of every release family: its reference-film AUROC, its two cuts and, on the films the cuts
were chosen on and cross-fitted (5 folds), the share of positive films answered ``low`` and of negative films
answered ``signal`` (the two errors the cuts bound), and the ``indeterminate`` shares, with Wilson 95% intervals.
The family's answering model (cxrdistill.release.RELEASE_FAMILIES) is marked, and checked against the rule that picks
it (cxrdistill.triage.answer_model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cxrdistill.release import RELEASE_FAMILIES, family_cards
from cxrdistill.triage import answer_model, reference_auroc


def _share(rate: dict) -> str:
    low, high = rate["ci95"]
    return f"{rate['share']:.2f} ({low:.2f}-{high:.2f})"


def family_rows(models: Path, family: str) -> list[dict]:
    """One record per classifier of ``family`` that is in ``models`` and has cuts on its card."""
    release = RELEASE_FAMILIES[family]
    rows = []
    for name, (size, card) in family_cards(models, family).items():
        triage = card["raw"]["triage"]
        rows.append(
            {
                "family": family,
                "model": name,
                "image_size": size,
                "answers": name == release.answer,
                "auroc": reference_auroc(card),
                "auroc_ci95": card["raw"].get(
                    "same_hospital_auroc_ci95" if triage["films"].startswith("same") else "global_auroc_ci95"
                ),
                "films": triage["films"],
                "images": triage["images"],
                "positives": triage["positives"],
                "rule_out": triage["rule_out"]["threshold"],
                "rule_in": triage["rule_in"]["threshold"],
                "rates": triage["rates"],
                "cross_fitted": triage["cross_fitted"]["rates"],
                "card": card,
            }
        )
    chosen = answer_model({row["model"]: (row["image_size"], row["card"]) for row in rows})
    if rows and chosen != release.answer:
        raise SystemExit(f"{family}: the rule picks {chosen}, but RELEASE_FAMILIES names {release.answer}")
    for row in rows:
        row.pop("card")
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| family | model | px | AUROC (95% CI) | cuts: rule-out / rule-in | cuts chosen on | positives `low` | "
        "positives `indeterminate` | negatives `signal` | negatives `indeterminate` |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = f"**{row['model']}** (answers)" if row["answers"] else row["model"]
        ci = row["auroc_ci95"]
        auroc = f"{row['auroc']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
        for where, rates in (("same films", row["rates"]), ("other films (5-fold)", row["cross_fitted"])):
            lines.append(
                f"| {row['family']} | {name} | {row['image_size']} | {auroc} | {row['rule_out']:.3f} / "
                f"{row['rule_in']:.3f} | {where} | {_share(rates['positive']['low'])} | "
                f"{_share(rates['positive']['indeterminate'])} | {_share(rates['negative']['signal'])} | "
                f"{_share(rates['negative']['indeterminate'])} |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="models", help="the release folder (default: models)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    rows = [row for family in RELEASE_FAMILIES for row in family_rows(Path(args.models), family)]
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
