"""The release: which folders of ``models/`` the app and the Space load, by family."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# folders of the repository's models/ release that the app loads (Predictor.from_release, the Space)
RELEASE_STUDENTS = ("mlcak-student-28", "mlcak-student-56", "mlcak-student-112")  # those present are loaded
RELEASE_TEACHER = "mlcak-teacher-224"
RELEASE_TB = "tb-boxes-224"  # box-supervised, reads lung crops: its map follows the lesion (docs/tb_maps.md)
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
        "Tuberculosis (TBX11K)", RELEASE_STUDENTS, RELEASE_TEACHER, answer=RELEASE_TB, tb=RELEASE_TB
    ),
    "nih1024": ReleaseFamily(
        "Pneumonia (NIH ChestX-ray14, 512-px films)",
        ("nih1024-student-28", "nih1024-student-56", "nih1024-student-112"),
        "nih1024-teacher-224",
        answer="nih1024-student-28",
    ),
}
APP_MODELS = tuple(dict.fromkeys(name for family in RELEASE_FAMILIES.values() for name in family.folders))


def family_cards(models_dir: str | Path, family: str) -> dict[str, tuple[int, dict[str, Any]]]:
    """name -> (input size, card) of each classifier of ``family`` in ``models_dir`` whose card has triage cuts,
    the answering model first: the candidates :func:`cxrdistill.triage.answer_model` chooses among."""
    release = RELEASE_FAMILIES[family]
    found = {}
    for name in dict.fromkeys((release.answer, *release.students, release.teacher, release.tb)):
        folder = Path(models_dir) / str(name)
        if not name or not (folder / "metrics.json").is_file():
            continue
        card = json.loads((folder / "metrics.json").read_text())
        if card.get("raw", {}).get("triage"):
            found[name] = (json.loads((folder / "config.json").read_text())["image_size"], card)
    return found
