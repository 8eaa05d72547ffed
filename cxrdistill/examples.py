"""Example X-rays that install from PyPI, so demos and the quick-start work offline on a fresh clone.

The real chest radiograph comes from the ``pydicom-data`` package (MIT licence; part of the ``app`` and ``dev``
extras): a CR chest film, MONOCHROME1, 1955 x 1841, 15-bit, stored with JPEG 2000 lossless compression.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

EXAMPLES = {
    "chest-cr": ("data_store", "data/RG1_J2KR.dcm", "CR chest PA, MONOCHROME1, JPEG 2000 lossless (pydicom-data)"),
}


def example_path(name: str = "chest-cr") -> Path:
    """Path of the bundled example ``name`` (see :data:`EXAMPLES`)."""
    if name not in EXAMPLES:
        raise KeyError(f"unknown example {name!r}; available: {sorted(EXAMPLES)}")
    package, relative, _ = EXAMPLES[name]
    try:
        path = Path(str(resources.files(package) / relative))
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"example {name!r} needs the '{package}' files: pip install 'cxrdistill[app]' (or pydicom-data)"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"example file {path} is missing; reinstall pydicom-data")
    return path
