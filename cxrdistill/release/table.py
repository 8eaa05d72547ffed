"""The README's table of released models, read from their cards (``metrics.json``) so it never drifts from them.

python -m cxrdistill.release.table models      # prints the Markdown table
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cxrdistill.models.card import CardMetrics
from cxrdistill.release import RELEASE_FAMILIES


def _ci(values) -> str:
    return f" ({values[0]:.3f}-{values[1]:.3f})" if values else ""


def _auroc(card: dict[str, Any]) -> str:
    """The reference-film AUROC with its CI: same-hospital films where the dataset has them, else all films."""
    metrics = CardMetrics.from_dict(card)
    auroc, where = metrics.reference_auroc, "same-hospital" if metrics.same_hospital_auroc else "all"
    return f"{auroc.value:.3f}{_ci(auroc.ci95)} | {auroc.films} {where}"


def _result(card: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in card["results"] if r["name"] == name), None)


def _localisation_note(card: dict[str, Any], config: dict[str, Any]) -> str:
    """The box-drawing model's own map (the first it explains with) against the boxes, beside the location prior
    over the same frame (the lung crops for a model that reads them), and its constancy check."""
    own_map = "log-odds CAM (tb)" if config.get("map_target") == "log-odds" else "CAM (tb)"
    own = _result(card, f"mIoU vs radiologists' TB boxes, {own_map} (threshold cross-fitted)")
    prior = _result(card, "mIoU vs radiologists' TB boxes, location prior (no model) (threshold cross-fitted)")
    if not own:
        return ""
    how = "box-supervised, " if CardMetrics.from_dict(card).box_supervised else ""
    how += "on lung crops, " if config.get("input_crop") == "lungs" else ""
    text = f"draws the TB boxes ({how}{own_map}): mIoU {own['value']:.3f}{_ci(own.get('ci95'))}"
    frame = " on the same crops" if config.get("input_crop") == "lungs" else ""
    text += f"; the location prior alone (no model){frame} {prior['value']:.3f}" if prior else ""
    sanity = card.get("raw", {}).get("map_sanity", {}).get(own_map, {}).get("positive films")
    if sanity and sanity.get("peak_cell_share") is not None:
        text += f"; its map peaks in one cell on {sanity['peak_cell_share']:.0%} of TB films"
    return text


def _row(family: str, name: str, role: str, card: dict[str, Any], config: dict[str, Any]) -> str:
    size = f"{config['image_size']} px"
    if config["model_type"] == "cxrdistill-lung-unet":
        dice = card["results"][0]
        return f"| {family} | `{name}` | {role} | {size} | Dice {dice['value']:.3f}{_ci(dice.get('ci95'))} | - | |"
    note = _localisation_note(card, config) if role.startswith("TB boxes") else ""
    return f"| {family} | `{name}` | {role} | {size} | {_auroc(card)} | {note} |"


def models_table(models_dir: str | Path) -> str:
    """One row per released folder in ``models_dir``: family, role, input size, validation AUROC on the reference
    films with its 95% CI and film count (Dice for the lung model), and the TB model's localisation beside the
    model-free location prior."""
    models_dir = Path(models_dir)
    lines = [
        "| family | model | role | input | validation AUROC (95% CI) | films | |",
        "|---|---|---|---|---|---|---|",
    ]
    seen = set()
    for key, family in RELEASE_FAMILIES.items():
        roles = {name: "student" for name in family.students}
        roles.update({family.teacher: "teacher"} if family.teacher else {})
        roles.update({family.tb: "TB boxes"} if family.tb else {})
        roles[family.answer] = f"{roles.get(family.answer, 'model')}, **answers**"
        roles.update({family.lungs: "lung outline"} if family.lungs else {})
        for name, role in roles.items():
            folder = models_dir / name
            if name in seen or not (folder / "metrics.json").is_file():
                continue
            seen.add(name)
            card = json.loads((folder / "metrics.json").read_text())
            config = json.loads((folder / "config.json").read_text())
            lines.append(_row(key, name, role, card, config))
    for folder in sorted(p for p in models_dir.iterdir() if (p / "metrics.json").is_file() and p.name not in seen):
        card = json.loads((folder / "metrics.json").read_text())
        config = json.loads((folder / "config.json").read_text())
        lines.append(_row(card["dataset"]["type"], folder.name, "not in the app", card, config))
    return "\n".join(lines)


if __name__ == "__main__":
    print(models_table(sys.argv[1] if len(sys.argv) > 1 else "models"))
