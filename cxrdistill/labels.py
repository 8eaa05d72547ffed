"""Every label space the project knows, in one place.

A :class:`LabelSpace` is an ordered tuple of label names plus whether the labels are one-of-K (a *global* class,
as in MLCAK's MCCT task) or multi-label (*local* findings, MLCAK's MLCT task). Datasets encode their targets in
these spaces and models store the names in their config, so a probability vector can always be read back as
``dict(zip(space.names, probabilities))``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelSpace:
    """An ordered set of label names.

    Attributes:
        name: identifier of the space, e.g. ``"tbx11k-global"``.
        names: label names in output order.
        one_of_k: ``True`` for a global one-of-K class (softmax), ``False`` for multi-label findings (sigmoid).
    """

    name: str
    names: tuple[str, ...]
    one_of_k: bool

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            duplicates = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ValueError(f"label space {self.name!r} repeats names: {duplicates}")
        if self.one_of_k and len(self.names) < 2:
            raise ValueError(f"one-of-K label space {self.name!r} needs at least 2 names, got {self.names}")

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def index(self, name: str) -> int:
        """Position of ``name``; raises ``KeyError`` naming the space and its labels if unknown."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not a label of {self.name!r}; labels are {list(self.names)}") from None

    def encode(self, present: Iterable[str]) -> np.ndarray:
        """Indicator vector ``(len(self),)`` of ``float32`` with 1 at each name in ``present``.

        For a one-of-K space exactly one name must be given.
        """
        present = list(present)
        if self.one_of_k and len(set(present)) != 1:
            raise ValueError(f"one-of-K space {self.name!r} needs exactly one label, got {present}")
        vector = np.zeros(len(self.names), dtype=np.float32)
        for name in present:
            vector[self.index(name)] = 1.0
        return vector

    def decode(self, vector: np.ndarray, threshold: float | np.ndarray = 0.5) -> list[str]:
        """Names whose score is at or above ``threshold`` (the argmax for a one-of-K space)."""
        vector = np.asarray(vector)
        if vector.shape != (len(self.names),):
            raise ValueError(f"expected a vector of shape ({len(self.names)},) for {self.name!r}, got {vector.shape}")
        if self.one_of_k:
            return [self.names[int(np.argmax(vector))]]
        thresholds = np.broadcast_to(threshold, vector.shape)
        return [name for name, score, t in zip(self.names, vector, thresholds, strict=True) if score >= t]


# ---------------------------------------------------------------------------------------------------------- TBX11K
# Liu et al., "Rethinking computer-aided tuberculosis diagnosis", CVPR 2020. Five categories: healthy, sick but
# non-TB, and TB whose boxes are active, latent ("obsolete pulmonary TB" in the json) or uncertain.
TBX11K_GLOBAL = LabelSpace("tbx11k-global", ("healthy", "sick_non_tb", "tb"), one_of_k=True)
TB_BINARY = LabelSpace("tb-binary", ("not_tb", "tb"), one_of_k=True)
TBX11K_LOCAL = LabelSpace("tbx11k-local", ("active_tb", "latent_tb", "uncertain_tb"), one_of_k=False)
# Category names of the official COCO-style json, mapped to TBX11K_LOCAL.
TBX11K_JSON_CATEGORIES = {
    "ActiveTuberculosis": "active_tb",
    "ObsoletePulmonaryTuberculosis": "latent_tb",
    "PulmonaryTuberculosis": "uncertain_tb",
}
# TBX11K_GLOBAL class -> TB_BINARY class.
TBX11K_TO_TB_BINARY = {"healthy": "not_tb", "sick_non_tb": "not_tb", "tb": "tb"}

# ------------------------------------------------------------------------------------------------------- VinDr-CXR
# Nguyen et al., "VinDr-CXR: an open dataset of chest X-rays with radiologist's annotations", Sci. Data 2022:
# 22 local labels (findings with boxes) and 6 global labels (diagnoses), in the paper's order.
VINDR_LOCAL = LabelSpace(
    "vindr-local",
    (
        "Aortic enlargement",
        "Atelectasis",
        "Cardiomegaly",
        "Calcification",
        "Clavicle fracture",
        "Consolidation",
        "Edema",
        "Emphysema",
        "Enlarged PA",
        "ILD",
        "Infiltration",
        "Lung cavity",
        "Lung cyst",
        "Lung Opacity",
        "Mediastinal shift",
        "Nodule/Mass",
        "Pulmonary fibrosis",
        "Pneumothorax",
        "Pleural thickening",
        "Pleural effusion",
        "Rib fracture",
        "Other lesion",
    ),
    one_of_k=False,
)
VINDR_GLOBAL = LabelSpace(
    "vindr-global",
    ("Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "COPD", "No finding"),
    one_of_k=False,  # a patient can have several diagnoses at once
)
# The Kaggle "VinBigData Chest X-ray Abnormalities Detection" release (`vinbigdata-train.csv`): 14 local findings
# with ids 0..13 in this order, and class id 14 "No finding".
VINBIG_LOCAL = LabelSpace(
    "vinbig-local",
    (
        "Aortic enlargement",
        "Atelectasis",
        "Calcification",
        "Cardiomegaly",
        "Consolidation",
        "ILD",
        "Infiltration",
        "Lung Opacity",
        "Nodule/Mass",
        "Other lesion",
        "Pleural effusion",
        "Pleural thickening",
        "Pneumothorax",
        "Pulmonary fibrosis",
    ),
    one_of_k=False,
)
VINBIG_NO_FINDING = "No finding"
VINBIG_NO_FINDING_ID = 14

# --------------------------------------------------------------------------------------------- NIH ChestX-ray14
# Wang et al., "ChestX-ray8", CVPR 2017, in the order of the NIH release.
NIH14 = LabelSpace(
    "nih14",
    (
        "Atelectasis",
        "Cardiomegaly",
        "Effusion",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pneumonia",
        "Pneumothorax",
        "Consolidation",
        "Edema",
        "Emphysema",
        "Fibrosis",
        "Pleural_Thickening",
        "Hernia",
    ),
    one_of_k=False,
)
NIH_NO_FINDING = "No Finding"

# ------------------------------------------------------------------------------------------ shared global spaces
NORMAL_ABNORMAL = LabelSpace("normal-abnormal", ("normal", "abnormal"), one_of_k=True)
PNEUMONIA_BINARY = LabelSpace("pneumonia-binary", ("normal", "pneumonia"), one_of_k=True)
NO_LOCAL_LABELS = LabelSpace("none", (), one_of_k=False)

LABEL_SPACES: dict[str, LabelSpace] = {
    space.name: space
    for space in (
        TBX11K_GLOBAL,
        TB_BINARY,
        TBX11K_LOCAL,
        VINDR_LOCAL,
        VINDR_GLOBAL,
        VINBIG_LOCAL,
        NIH14,
        NORMAL_ABNORMAL,
        PNEUMONIA_BINARY,
        NO_LOCAL_LABELS,
    )
}


def get_label_space(name: str) -> LabelSpace:
    """Look a label space up by its ``name``."""
    try:
        return LABEL_SPACES[name]
    except KeyError:
        raise KeyError(f"unknown label space {name!r}; known: {sorted(LABEL_SPACES)}") from None
