"""Films for tests: where the real shared data lives (skipping where it is absent), and small synthetic chest
X-rays, DICOMs and a TBX11K-layout folder built in code."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("CXRDISTILL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path under the shared data folder, or skip the test saying what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (set CXRDISTILL_SHARED_DATA to the shared/data folder)")
    return path


def synthetic_chest(height: int = 96, width: int = 80) -> np.ndarray:
    """A crude chest: bright body, two dark lung fields, a bright spine. float64 in [0, 1]."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.full((height, width), 0.75)
    for centre_x in (0.3 * width, 0.7 * width):
        lung = ((xx - centre_x) / (0.16 * width)) ** 2 + ((yy - 0.45 * height) / (0.3 * height)) ** 2 < 1
        image[lung] = 0.15
    image[:, int(0.47 * width) : int(0.53 * width)] = 0.95
    return image


def make_dicom(
    pixels: np.ndarray, photometric: str = "MONOCHROME2", modality: str = "CR", bits: int = 12, frames: int = 1, **tags
) -> bytes:
    """Write ``pixels`` (unsigned ints, (H, W) or (frames, H, W)) as a DICOM Part 10 file and return its bytes."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("synthetic.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = modality
    dataset.PhotometricInterpretation = photometric
    dataset.SamplesPerPixel = 1
    dataset.BitsAllocated = 16
    dataset.BitsStored = bits
    dataset.HighBit = bits - 1
    dataset.PixelRepresentation = 0
    dataset.Rows, dataset.Columns = pixels.shape[-2:]
    if frames > 1:
        dataset.NumberOfFrames = frames
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    dataset.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def png_bytes(array: np.ndarray, mode: str | None = None, **save) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format=save.pop("format", "PNG"), **save)
    return buffer.getvalue()


def write_synthetic_tbx11k(root: Path, tb: int = 12, extra: int = 12, size: int = 96) -> Path:
    """A TBX11K folder in the official layout: ``tb`` TB images with a bright lesion and a box, and ``extra``
    Shenzhen-named images, half TB (with a lesion, no box) and half normal. Learnable in a few steps."""
    import json

    rng = np.random.default_rng(0)
    (root / "imgs" / "tb").mkdir(parents=True)
    (root / "imgs" / "extra" / "mc+shenzhen" / "train").mkdir(parents=True)
    paths, images, annotations = [], [], []

    def chest(lesion: bool):
        image = synthetic_chest(size, size) + rng.normal(0, 0.03, (size, size))
        box = None
        if lesion:
            x, y = int(rng.integers(size // 5, size // 2)), int(rng.integers(size // 4, size // 2))
            image[y : y + size // 6, x : x + size // 6] = 1.0
            box = [x, y, size // 6, size // 6]
        return png_bytes(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)), box

    for i in range(tb):
        data, box = chest(True)
        path = f"tb/tb{i:04d}.png"
        (root / "imgs" / path).write_bytes(data)
        paths.append(path)
        images.append({"id": i + 1, "file_name": path, "width": size, "height": size})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 2, "bbox": box})
    for i in range(extra):
        data, _ = chest(i % 2 == 1)
        path = f"extra/mc+shenzhen/train/CHNCXR_{i:04d}_{i % 2}.png"
        (root / "imgs" / path).write_bytes(data)
        paths.append(path)
    (root / "lists").mkdir()
    (root / "lists" / "all_train.txt").write_text("\n".join(paths) + "\n")
    (root / "annotations" / "json").mkdir(parents=True)
    categories = [
        {"id": 1, "name": "ActiveTuberculosis"},
        {"id": 2, "name": "ObsoletePulmonaryTuberculosis"},
        {"id": 3, "name": "PulmonaryTuberculosis"},
    ]
    coco = {"categories": categories, "images": images, "annotations": annotations}
    (root / "annotations" / "json" / "all_train.json").write_text(json.dumps(coco))
    return root


def chest_png(size: int = 256) -> bytes:
    """A synthetic chest with a bright blob for the maps to find, as PNG bytes."""
    image = synthetic_chest(size, size)
    image[size // 4 : size // 3, size // 5 : size // 3] = 1.0
    return png_bytes((image * 255).astype(np.uint8))
