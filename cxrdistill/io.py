"""Read chest X-rays from PNG, JPEG, TIFF, BMP, WebP and DICOM into one float image.

Every reader returns an :class:`XRay`: ``pixels`` is a ``float32`` array of shape ``(H, W)`` with values in
``[0, 1]``, bright meaning dense (bone white, lungs dark), the right way up; ``meta`` holds the few technical
facts a model may need (modality, view, body part, pixel spacing, original size, bit depth) and nothing that
identifies a patient: the DICOM header is read, a whitelist of tags copied out, and the dataset dropped.

Anything that cannot be read as a single 2-D radiograph raises :class:`XRayReadError` (a ``ValueError``) with a
message a person uploading a file can act on. No other exception type escapes :func:`load_xray`.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

XRaySource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

# Pillow formats we accept. Anything else Pillow could open (GIF, ICO, PSD, ...) is refused: they are not how
# radiographs are exchanged, and every extra decoder is extra attack surface for a public upload form.
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")  # multi-picture JPEGs (MPO) open through JPEG
SUPPORTED_TEXT = "PNG, JPEG, TIFF, BMP, WebP or DICOM"

# DICOM modalities that are projection radiographs. CR/DX are the standard ones; "DR" and "RG" appear in the wild;
# "OT" (other) is what many converters write for a digitised film.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "OT"})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_LAT", "CHEST PA", "CHEST AP", "TORSO"})

_DICOM_MAGIC = b"DICM"


class XRayReadError(ValueError):
    """The input is not a single 2-D chest radiograph this project can read. The message says why."""


@dataclass(frozen=True)
class ReadLimits:
    """Limits that keep a hostile or mistaken upload from exhausting memory or time.

    Args:
        max_file_bytes: largest accepted file, in bytes (default 64 MiB: a 16-bit 4k x 4k DICOM is 32 MiB).
        max_pixels: largest accepted image, in pixels, checked from the header before anything is decoded
            (default 40 megapixels: 6,300 x 6,300).
        min_side: smallest accepted image side, in pixels (default 28: the smallest input a student model sees).
        chest_only: refuse DICOM files whose ``BodyPartExamined`` names a body part other than the chest.
    """

    max_file_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 28
    chest_only: bool = True

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_pixels", "min_side"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ReadLimits.{name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = ReadLimits()


@dataclass(frozen=True)
class XRayMeta:
    """Technical facts about an X-ray. Never holds patient name, id, birth date, study date or any other PHI.

    Attributes:
        format: container format, e.g. ``"PNG"``, ``"JPEG"``, ``"DICOM"``.
        original_size: ``(height, width)`` of the stored image, in pixels.
        bit_depth: bits per sample as stored (DICOM ``BitsStored``; 8 or 16 for PNG, ...).
        modality: DICOM modality (``"CR"``, ``"DX"``, ...) or ``None`` for plain image files.
        view: view position (``"PA"``, ``"AP"``, ``"LL"``, ...) where the file says it.
        body_part: DICOM ``BodyPartExamined`` where present.
        pixel_spacing_mm: ``(row, column)`` spacing in millimetres where the file says it.
        photometric: DICOM photometric interpretation or the Pillow mode the file was stored in.
        window: ``(center, width)`` of the VOI window applied, if one was.
        transfer_syntax: DICOM transfer syntax name, e.g. ``"JPEG 2000 Image Compression (Lossless Only)"``.
    """

    format: str
    original_size: tuple[int, int]
    bit_depth: int
    modality: str | None = None
    view: str | None = None
    body_part: str | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    photometric: str | None = None
    window: tuple[float, float] | None = None
    transfer_syntax: str | None = None

    def to_dict(self) -> dict:
        """Plain, JSON-friendly dict of the fields."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class XRay:
    """A decoded radiograph: ``pixels`` is ``float32`` ``(H, W)`` in ``[0, 1]``, dense = bright."""

    pixels: np.ndarray = field(repr=False)
    meta: XRayMeta


def load_xray(source: XRaySource, *, limits: ReadLimits = DEFAULT_LIMITS) -> XRay:
    """Read one chest X-ray.

    Args:
        source: a path, the file's bytes, or a binary file object (read from its current position).
        limits: size limits; see :class:`ReadLimits`.

    Returns:
        An :class:`XRay` with ``pixels`` of shape ``(H, W)``, ``float32``, in ``[0, 1]``.

    Raises:
        XRayReadError: the input is not a readable single-frame chest radiograph (the message says why).
    """
    data = _read_bytes(source, limits)
    try:
        if _looks_like_dicom(data):
            xray = _load_dicom(data, limits)
        else:
            xray = _load_image(data, limits)
    except XRayReadError:
        raise
    except MemoryError as error:
        raise XRayReadError("the image is too large to decode in the memory available") from error
    except Exception as error:
        # Decoders raise a zoo of types (OSError, SyntaxError, struct.error, RuntimeError, ...) on corrupt data.
        # The type, not the message, is logged: a DICOM decoder's message could quote header values.
        logger.debug("decoder failed with %s", type(error).__name__)
        raise XRayReadError(
            f"the file is corrupt or truncated and could not be decoded ({type(error).__name__})"
        ) from error
    _check_pixels(xray.pixels)
    return xray


def _read_bytes(source: XRaySource, limits: ReadLimits) -> bytes:
    """Return the whole input as bytes, refusing it before reading if it is over the size limit."""
    limit = limits.max_file_bytes
    shown = f"{limit / 2**20:g} MiB" if limit >= 2**20 else f"{limit:,} bytes"
    too_big = f"the file is larger than the {shown} limit"
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            if os.path.getsize(path) > limits.max_file_bytes:
                raise XRayReadError(too_big)
            with open(path, "rb") as handle:
                data = handle.read(limits.max_file_bytes + 1)
        except FileNotFoundError as error:
            raise XRayReadError(f"no such file: {path}") from error
        except IsADirectoryError as error:
            raise XRayReadError(f"{path} is a directory, not an X-ray file") from error
        except OSError as error:
            raise XRayReadError(f"could not read {path}: {error.strerror or type(error).__name__}") from error
    elif hasattr(source, "read"):
        try:
            data = source.read(limits.max_file_bytes + 1)
        except Exception as error:
            raise XRayReadError(f"could not read the uploaded stream ({type(error).__name__})") from error
        if not isinstance(data, (bytes, bytearray)):
            raise XRayReadError("the file object must be opened in binary mode ('rb')")
        data = bytes(data)
    else:
        raise XRayReadError(f"expected a path, bytes or a binary file object, got {type(source).__name__}")
    if len(data) > limits.max_file_bytes:
        raise XRayReadError(too_big)
    if not data:
        raise XRayReadError("the file is empty")
    return data


def _looks_like_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file has ``DICM`` after a 128-byte preamble; a bare dataset starts with a group 0002/0008 tag."""
    if data[128:132] == _DICOM_MAGIC:
        return True
    if len(data) < 8 or data[:2] not in (b"\x02\x00", b"\x08\x00") or data[3] != 0:
        return False
    value_representation = data[4:6]
    explicit = value_representation.isalpha() and value_representation.isupper()
    implicit = int.from_bytes(data[4:8], "little") < len(data)  # implicit VR: a 4-byte length follows the tag
    return explicit or implicit


# ---------------------------------------------------------------------------------------------------------- images


def _load_image(data: bytes, limits: ReadLimits) -> XRay:
    Image.init()  # register every plugin, so that ``formats=`` below can name them all
    with warnings.catch_warnings():
        # We enforce our own pixel limit below, and turn "cannot identify" into one clear error: Pillow's own
        # warnings (decompression bomb, each plugin's failure to open) would only repeat it.
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except UnidentifiedImageError as error:
            raise XRayReadError(f"not an image this app can read: expected {SUPPORTED_TEXT}") from error
        except Image.DecompressionBombError as error:
            raise XRayReadError(_too_many_pixels_message(None, limits)) from error
        width, height = image.size
        _check_size(height, width, limits)
        if getattr(image, "n_frames", 1) > 1:
            raise XRayReadError(f"the {image.format} file holds {image.n_frames} frames; upload a single 2-D X-ray")
        image_format = image.format
        stored_mode = image.mode
        image.load()
        # EXIF orientation: phone photos of a film or a screen often carry it.
        image = ImageOps.exif_transpose(image)

    pixels, bit_depth = _image_to_unit_float(image)
    height, width = pixels.shape
    return XRay(
        pixels=pixels,
        meta=XRayMeta(
            format=image_format,
            original_size=(height, width),
            bit_depth=bit_depth,
            photometric=stored_mode,
        ),
    )


def _image_to_unit_float(image: Image.Image) -> tuple[np.ndarray, int]:
    """Convert any Pillow mode to a gray ``float32`` image in ``[0, 1]``; return it and the stored bit depth.

    8-bit data is divided by 255 so pixel values are kept exactly. Deeper integer data is divided by the
    largest value its used bits can hold (a 12-bit image in a 16-bit PNG by 4095), so an 8-bit image saved as
    16-bit reads the same as the original. Colour is reduced to luminance (ITU-R 601); transparency is
    composited onto black.
    """
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba).convert("L")
    elif mode in ("1", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        image = image.convert("L")

    array = np.asarray(image)
    if array.ndim != 2:
        raise XRayReadError(f"unsupported image layout {image.mode!r} with shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0, 8
    if np.issubdtype(array.dtype, np.integer):
        stored_bits = 8 * array.dtype.itemsize
        return _scale_by_used_bits(array), stored_bits
    if np.issubdtype(array.dtype, np.floating):
        return _min_max(array.astype(np.float64)), 8 * array.dtype.itemsize
    raise XRayReadError(f"unsupported pixel type {array.dtype}")


def _scale_by_used_bits(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.int64)
    low = int(array.min())
    if low < 0:  # signed data with negatives carries no "zero = black" convention: use its own range
        return _min_max(array.astype(np.float64))
    used_bits = max(8, int(array.max()).bit_length())
    return (array / float(2**used_bits - 1)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------- DICOM


class _DropWhileReading(logging.Filter):
    """Drop pydicom's log records emitted by a thread that is inside :func:`_load_dicom`.

    pydicom warns about odd header values by quoting them, and those values can be a patient's name or id. Log
    records of other threads, and of pydicom used outside cxrdistill, pass untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_reading_dicom, "active", False)


_reading_dicom = threading.local()
_pydicom_filter = _DropWhileReading()


def _silence_pydicom_logs_while_reading() -> None:
    if getattr(_silence_pydicom_logs_while_reading, "done", False):
        return
    import pydicom.pixels  # noqa: F401 - imports the modules whose loggers we filter

    for name in ["pydicom", *[n for n in logging.root.manager.loggerDict if n.startswith("pydicom.")]]:
        logging.getLogger(name).addFilter(_pydicom_filter)
    _silence_pydicom_logs_while_reading.done = True


def _load_dicom(data: bytes, limits: ReadLimits) -> XRay:
    _silence_pydicom_logs_while_reading()
    _reading_dicom.active = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings quote header values, which may be PHI
            return _decode_dicom(data, limits)
    finally:
        _reading_dicom.active = False


def _decode_dicom(data: bytes, limits: ReadLimits) -> XRay:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != _DICOM_MAGIC)
    except InvalidDicomError as error:
        raise XRayReadError("the file is not a valid DICOM file") from error

    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is None or "TransferSyntaxUID" not in file_meta:
        # A bare dataset (no Part 10 header) is uncompressed by definition; record how it was encoded.
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit_vr = dataset.original_encoding[0] if dataset.original_encoding else True
        dataset.file_meta = file_meta if file_meta is not None else FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian

    if not any(tag in dataset for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise XRayReadError("the DICOM file has no image (no pixel data): it may be a report or a structured object")

    modality, body_part = _check_chest_radiograph(dataset, limits)
    rows, columns = _int(dataset, "Rows", 0), _int(dataset, "Columns", 0)
    _check_size(rows, columns, limits)
    samples = _int(dataset, "SamplesPerPixel", 1)
    bits_stored = _int(dataset, "BitsStored", _int(dataset, "BitsAllocated", 8))
    photometric = (_text(dataset, "PhotometricInterpretation") or "MONOCHROME2").upper()

    array = _pixel_array(dataset)
    if samples == 1 and array.ndim != 2:
        raise XRayReadError(f"the DICOM image has shape {array.shape}; expected a single 2-D image")
    if samples > 1:
        if array.ndim != 3:
            raise XRayReadError(f"the DICOM colour image has shape {array.shape}; expected one frame")
        # pydicom hands colour data over as RGB; reduce it to luminance like any other colour image.
        array = array[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        pixels, window = _min_max(array), None
    else:
        pixels, window = _dicom_grayscale(dataset, array, photometric)

    return XRay(
        pixels=pixels,
        meta=XRayMeta(
            format="DICOM",
            original_size=(int(pixels.shape[0]), int(pixels.shape[1])),
            bit_depth=bits_stored,
            modality=modality,
            view=_text(dataset, "ViewPosition"),
            body_part=body_part,
            pixel_spacing_mm=_spacing(dataset),
            photometric=photometric,
            window=window,
            transfer_syntax=_transfer_syntax_name(dataset),
        ),
    )


def _check_chest_radiograph(dataset, limits: ReadLimits) -> tuple[str | None, str | None]:
    """``(modality, body part)`` of a DICOM dataset that may be a single-frame chest radiograph, else an error."""
    modality = _text(dataset, "Modality")
    body_part = _text(dataset, "BodyPartExamined")
    if modality is not None and modality.upper() not in RADIOGRAPH_MODALITIES:
        raise XRayReadError(
            f"the DICOM file is a {modality} image, not a chest radiograph; upload a CR or DX chest X-ray"
        )
    if limits.chest_only and body_part is not None and body_part.upper() not in CHEST_BODY_PARTS:
        raise XRayReadError(f"the DICOM file shows the {body_part.lower()}, not the chest; upload a chest X-ray")

    frames = _int(dataset, "NumberOfFrames", 1)
    if frames > 1:
        raise XRayReadError(
            f"the DICOM file holds {frames} frames (a series or volume); upload a single 2-D chest X-ray"
        )
    return modality, body_part


def _pixel_array(dataset) -> np.ndarray:
    """The dataset's decoded pixels, with an error that names the encoding where they cannot be decoded."""
    try:
        return dataset.pixel_array
    except NotImplementedError as error:
        raise XRayReadError(
            f"the DICOM pixel data uses an unsupported compression ({_transfer_syntax_name(dataset)})"
        ) from error
    except (MemoryError, XRayReadError):
        raise
    except Exception as error:  # a header that lies about the encoding, or damaged compressed data
        logger.debug("DICOM pixel decoder failed with %s", type(error).__name__)  # never the message: header values
        raise XRayReadError(
            f"the DICOM pixel data could not be decoded as its declared encoding ({_transfer_syntax_name(dataset)}): "
            f"the file is corrupt or mislabelled ({type(error).__name__})"
        ) from error


def _dicom_grayscale(dataset, array: np.ndarray, photometric: str) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Modality LUT, then VOI (LUT or window), then MONOCHROME1 inversion; result in ``[0, 1]``.

    The VOI window is applied as the DICOM standard defines it (PS3.3 C.11.2.1.2), mapping the window onto
    ``[0, 1]``. Without any VOI information the image's own range is used.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(array, dataset).astype(np.float64)
    window = None
    if "VOILUTSequence" in dataset and len(dataset.VOILUTSequence) > 0:
        lut_item = dataset.VOILUTSequence[0]
        # LUT entries are indexed by integer values; after an integer rescale the values still are.
        lut_input = values.astype(np.int64) if np.array_equal(values, np.round(values)) else values
        values = apply_voi_lut(lut_input, dataset, index=0, prefer_lut=True).astype(np.float64)
        # A VOI LUT's output spans 0 .. 2**n - 1, n being the third value of its descriptor (PS3.3 C.11.2.1.1).
        output_bits = int(lut_item.LUTDescriptor[2])
        values = _scale_between(values, 0.0, float(2**output_bits - 1))
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        center, width = _first(dataset.WindowCenter), _first(dataset.WindowWidth)
        if width is not None and center is not None and width >= 1:
            function = (_text(dataset, "VOILUTFunction") or "LINEAR").upper()
            values = _WINDOW_FUNCTIONS.get(function, _window_linear)(values, center, width)
            window = (center, width)
        else:
            values = _min_max(values)
    else:
        values = _min_max(values)
    values = np.clip(values, 0.0, 1.0)
    if photometric == "MONOCHROME1":  # MONOCHROME1 stores dense tissue dark: invert so bone is white
        values = 1.0 - values
    return values.astype(np.float32), window


def _window_linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM LINEAR window onto [0, 1] (PS3.3 C.11.2.1.2.1)."""
    return (values - (center - 0.5)) / (width - 1.0) + 0.5


def _window_linear_exact(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM LINEAR_EXACT window onto [0, 1] (PS3.3 C.11.2.1.3.2)."""
    return (values - center) / width + 0.5


def _window_sigmoid(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM SIGMOID window onto [0, 1] (PS3.3 C.11.2.1.3.1)."""
    return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))


_WINDOW_FUNCTIONS = {
    "LINEAR": _window_linear,
    "LINEAR_EXACT": _window_linear_exact,
    "SIGMOID": _window_sigmoid,
}


def _text(dataset, keyword: str) -> str | None:
    value = dataset.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int(dataset, keyword: str, default: int) -> int:
    value = dataset.get(keyword)
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _first(value) -> float | None:
    """Window tags may be multi-valued (several presets): the first is the default one."""
    try:
        if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not isinstance(value, str)):
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _spacing(dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = dataset.get(keyword)
        try:
            if value is not None and len(value) == 2:
                row, column = float(value[0]), float(value[1])
                if row > 0 and column > 0:  # some writers put 0\0 for "unknown"
                    return row, column
        except (TypeError, ValueError):
            continue
    return None


def _transfer_syntax_name(dataset) -> str | None:
    meta = getattr(dataset, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return getattr(syntax, "name", None) or (str(syntax) if syntax else None)


# --------------------------------------------------------------------------------------------------------- helpers


def _min_max(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise XRayReadError("the image holds no finite pixel values")
    return _scale_between(values, float(finite.min()), float(finite.max()))


def _scale_between(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:  # a flat image: keep it flat rather than divide by zero
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def _too_many_pixels_message(shape: tuple[int, int] | None, limits: ReadLimits) -> str:
    size = f" ({shape[1]} x {shape[0]})" if shape else ""
    return (
        f"the image is too large{size}: at most {limits.max_pixels / 1e6:.0f} megapixels are accepted; "
        "downsize it first"
    )


def _check_size(height: int, width: int, limits: ReadLimits) -> None:
    if height * width > limits.max_pixels:
        raise XRayReadError(_too_many_pixels_message((height, width), limits))
    if min(height, width) < limits.min_side:
        raise XRayReadError(
            f"the image is too small to read ({width} x {height} pixels); at least "
            f"{limits.min_side} x {limits.min_side} is needed"
        )


def _check_pixels(pixels: np.ndarray) -> None:
    if pixels.ndim != 2:
        raise XRayReadError(f"expected a 2-D image, got shape {pixels.shape}")
    if not np.isfinite(pixels).all():
        raise XRayReadError("the image holds invalid (NaN or infinite) pixel values")
