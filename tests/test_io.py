"""cxrdistill.io.load_xray: formats, DICOM semantics, real files, and every kind of bad input."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from support.films import make_dicom, png_bytes, shared_path, synthetic_chest

from cxrdistill.io import ReadLimits, XRay, XRayReadError, load_xray

CHEST = synthetic_chest()
CHEST_U8 = np.round(CHEST * 255).astype(np.uint8)


def lungs_darker_than_mediastinum(pixels: np.ndarray) -> bool:
    """On a frontal chest film the lung fields are dark and the mediastinum / spine between them bright."""
    height, width = pixels.shape
    rows = slice(int(0.3 * height), int(0.6 * height))
    lungs = np.concatenate(
        [
            pixels[rows, int(0.2 * width) : int(0.35 * width)].ravel(),
            pixels[rows, int(0.65 * width) : int(0.8 * width)].ravel(),
        ]
    )
    mediastinum = pixels[rows, int(0.46 * width) : int(0.54 * width)]
    return lungs.mean() + 0.1 < mediastinum.mean()


# ------------------------------------------------------------------------------------------------- plain images


def _image_bytes(kind: str) -> bytes:
    gray = Image.fromarray(CHEST_U8)
    buffer = io.BytesIO()
    if kind == "png-gray8":
        gray.save(buffer, format="PNG")
    elif kind == "png-rgb":
        gray.convert("RGB").save(buffer, format="PNG")
    elif kind == "png-rgba":
        gray.convert("RGBA").save(buffer, format="PNG")
    elif kind == "png-la":
        gray.convert("LA").save(buffer, format="PNG")
    elif kind == "png-palette":
        gray.convert("P").save(buffer, format="PNG")
    elif kind == "jpeg-gray":
        gray.save(buffer, format="JPEG", quality=95)
    elif kind == "jpeg-rgb":
        gray.convert("RGB").save(buffer, format="JPEG", quality=95)
    elif kind == "tiff":
        gray.save(buffer, format="TIFF")
    elif kind == "bmp":
        gray.save(buffer, format="BMP")
    elif kind == "webp":
        gray.save(buffer, format="WEBP", lossless=True)
    else:
        raise AssertionError(kind)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "kind",
    ["png-gray8", "png-rgb", "png-rgba", "png-la", "png-palette", "jpeg-gray", "jpeg-rgb", "tiff", "bmp", "webp"],
)
def test_plain_formats_read_as_the_same_gray_picture(kind):
    xray = load_xray(_image_bytes(kind))
    assert xray.pixels.dtype == np.float32 and xray.pixels.shape == CHEST.shape
    assert 0.0 <= xray.pixels.min() and xray.pixels.max() <= 1.0
    lossy = kind.startswith("jpeg") or kind == "png-palette"
    np.testing.assert_allclose(xray.pixels, CHEST_U8 / 255.0, atol=0.05 if lossy else 1e-6)
    assert xray.meta.bit_depth == 8 and xray.meta.original_size == CHEST.shape
    assert xray.meta.modality is None


def test_sixteen_bit_png_uses_its_full_depth():
    data16 = np.round(CHEST * 65535).astype(np.uint16)
    xray = load_xray(png_bytes(data16))
    assert xray.meta.bit_depth == 16
    np.testing.assert_allclose(xray.pixels, CHEST, atol=1e-4)


def test_twelve_bit_data_in_a_sixteen_bit_png_is_scaled_by_its_used_bits():
    data12 = np.round(CHEST * 4095).astype(np.uint16)
    np.testing.assert_allclose(load_xray(png_bytes(data12)).pixels, CHEST, atol=1e-3)


def test_eight_bit_image_saved_as_sixteen_bit_reads_like_the_original():
    widened = CHEST_U8.astype(np.uint16) * 257
    np.testing.assert_allclose(load_xray(png_bytes(widened)).pixels, CHEST_U8 / 255.0, atol=1e-6)


def test_transparent_pixels_are_composited_on_black():
    rgba = np.dstack([CHEST_U8] * 3 + [np.full_like(CHEST_U8, 255)])
    rgba[:10, :10, 3] = 0
    pixels = load_xray(png_bytes(rgba)).pixels
    assert pixels[:10, :10].max() == 0.0
    np.testing.assert_allclose(pixels[20:, 20:], CHEST_U8[20:, 20:] / 255.0, atol=1 / 255)


@pytest.mark.parametrize(
    "orientation, expected",
    [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))],
)
def test_exif_orientation_is_applied(orientation, expected):
    image = Image.fromarray(CHEST_U8)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    np.testing.assert_allclose(load_xray(buffer.getvalue()).pixels, expected(CHEST_U8 / 255.0), atol=1e-6)


def test_sources_path_bytes_and_file_object_agree(tmp_path):
    data = _image_bytes("png-gray8")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    results = [
        load_xray(path),
        load_xray(str(path)),
        load_xray(data),
        load_xray(bytearray(data)),
        load_xray(memoryview(data)),
        load_xray(io.BytesIO(data)),
    ]
    for result in results:
        assert isinstance(result, XRay)
        np.testing.assert_array_equal(result.pixels, results[0].pixels)


# ------------------------------------------------------------------------------------------------- DICOM


def test_monochrome1_is_inverted_so_dense_tissue_is_bright():
    stored = np.round(CHEST * 4095).astype(np.uint16)
    mono2 = load_xray(make_dicom(stored, "MONOCHROME2")).pixels
    mono1 = load_xray(make_dicom(4095 - stored, "MONOCHROME1")).pixels
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)
    assert lungs_darker_than_mediastinum(mono1)


def test_modality_lut_and_window_follow_the_dicom_standard():
    stored = np.round(CHEST * 1000).astype(np.uint16)
    # rescale to [-500, 1500]; a window of centre 500 / width 1000 maps [0, 1000] onto [0, 1] (PS3.3 C.11.2.1.2)
    xray = load_xray(make_dicom(stored, RescaleSlope=2, RescaleIntercept=-500, WindowCenter=500, WindowWidth=1000))
    values = stored * 2.0 - 500
    expected = np.clip((values - 499.5) / 999 + 0.5, 0, 1)
    np.testing.assert_allclose(xray.pixels, expected, atol=1e-6)
    assert xray.meta.window == (500.0, 1000.0)


def test_sigmoid_voi_function():
    stored = np.round(CHEST * 1000).astype(np.uint16)
    xray = load_xray(make_dicom(stored, WindowCenter=500, WindowWidth=400, VOILUTFunction="SIGMOID"))
    np.testing.assert_allclose(xray.pixels, 1 / (1 + np.exp(-4 * (stored - 500.0) / 400)), atol=1e-6)


def test_voi_lut_sequence_is_preferred_over_min_max():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = np.round(CHEST * 255).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", [min(255, 2 * v) for v in range(256)])  # LUTData: doubles contrast
    data = make_dicom(stored, bits=8, VOILUTSequence=Sequence([item]))
    expected = np.minimum(255, 2 * stored) / 255.0
    np.testing.assert_allclose(load_xray(data).pixels, expected, atol=1e-6)


def test_dicom_without_window_uses_its_own_range_and_keeps_geometry_metadata():
    stored = (np.round(CHEST * 3000) + 500).astype(np.uint16)
    xray = load_xray(make_dicom(stored, ViewPosition="PA", BodyPartExamined="CHEST", PixelSpacing=[0.143, 0.15]))
    np.testing.assert_allclose(xray.pixels, (stored - 500.0 - stored.min() + 500) / np.ptp(stored), atol=1e-6)
    assert xray.meta.view == "PA" and xray.meta.body_part == "CHEST"
    assert xray.meta.pixel_spacing_mm == (0.143, 0.15)


def test_patient_data_never_reaches_the_result():
    stored = np.round(CHEST * 4095).astype(np.uint16)
    data = make_dicom(
        stored,
        PatientName="Doe^Jane",
        PatientID="SECRET-123",
        PatientBirthDate="19500101",
        StudyDate="20240101",
        InstitutionName="General Hospital",
        AccessionNumber="ACC999",
    )
    xray = load_xray(data)
    text = repr(xray) + repr(xray.meta.to_dict())
    for secret in ("Doe", "Jane", "SECRET-123", "19500101", "20240101", "General Hospital", "ACC999"):
        assert secret not in text
    assert not hasattr(xray, "dataset")


def test_raw_dicom_dataset_without_preamble_is_read():
    stored = np.round(CHEST * 4095).astype(np.uint16)
    data = make_dicom(stored)
    import pydicom
    from pydicom.filebase import DicomBytesIO

    dataset = pydicom.dcmread(io.BytesIO(data))
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    pydicom.filewriter.write_dataset(buffer, dataset)  # no preamble, no file meta: starts with tag (0008,xxxx)
    raw = buffer.getvalue()
    assert raw[:2] == b"\x08\x00"
    np.testing.assert_allclose(load_xray(raw).pixels, load_xray(data).pixels)


# ---------------------------------------------------------------------------------------------- real DICOMs


@pytest.fixture(scope="module")
def rg1_uncompressed():
    return load_xray(shared_path("dicom_samples", "RG1_UNCR.dcm"))


def test_real_uncompressed_and_lossless_jpeg2000_are_identical(rg1_uncompressed):
    lossless = load_xray(shared_path("dicom_samples", "RG1_J2KR.dcm"))
    assert lossless.meta.transfer_syntax.startswith("JPEG 2000")
    np.testing.assert_array_equal(lossless.pixels, rg1_uncompressed.pixels)


def test_real_lossy_jpeg2000_matches_within_codec_error(rg1_uncompressed):
    lossy = load_xray(shared_path("dicom_samples", "RG1_J2KI.dcm"))
    difference = np.abs(lossy.pixels - rg1_uncompressed.pixels)
    assert difference.mean() < 0.005 and np.percentile(difference, 99) < 0.03


def test_real_monochrome1_chest_has_dark_lungs(rg1_uncompressed):
    meta = rg1_uncompressed.meta
    assert (meta.modality, meta.photometric, meta.body_part, meta.bit_depth) == ("CR", "MONOCHROME1", "CHEST", 15)
    assert meta.original_size == (1955, 1841)
    assert meta.pixel_spacing_mm is None  # the file says 0\0, which means unknown
    assert lungs_darker_than_mediastinum(rg1_uncompressed.pixels)


def test_real_monochrome2_chest_has_dark_lungs():
    xray = load_xray(shared_path("dicom_samples", "NIH_DX_mono2_1024_nofinding.dcm"))
    assert (xray.meta.modality, xray.meta.photometric, xray.meta.original_size) == ("DX", "MONOCHROME2", (1024, 1024))
    assert lungs_darker_than_mediastinum(xray.pixels)


@pytest.mark.parametrize("name, reason", [("kcr2019d1_anon_apct_CT.dcm", "CT image"), ("RG3_J2KI.dcm", "extremity")])
def test_real_non_chest_radiographs_are_refused(name, reason):
    with pytest.raises(XRayReadError, match=reason):
        load_xray(shared_path("dicom_samples", name))


def test_body_part_check_can_be_switched_off():
    xray = load_xray(shared_path("dicom_samples", "RG3_J2KI.dcm"), limits=ReadLimits(chest_only=False))
    assert xray.meta.body_part == "EXTREMITY"


def test_real_tbx11k_png():
    xray = load_xray(shared_path("tbx11k", "imgs", "tb", "tb0005.png"))
    assert xray.meta.format == "PNG" and xray.meta.original_size == (512, 512)
    assert lungs_darker_than_mediastinum(xray.pixels)


# ---------------------------------------------------------------------------------------------- bad input


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` but whose data is tiny (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"hello, this is a text file, not an X-ray" * 10, "not an image"),
        (b"%PDF-1.7\n" + b"0" * 500, "not an image"),
        (_image_bytes("png-gray8")[:200], "corrupt or truncated"),
        (_image_bytes("jpeg-gray")[: len(_image_bytes("jpeg-gray")) // 2], "corrupt or truncated"),
        (png_bytes(np.zeros((8, 8), np.uint8)), "too small"),
        (png_bytes(np.zeros((20, 500), np.uint8)), "too small"),
        (_png_with_declared_size(100_000, 100_000), "too large"),
        (_png_with_declared_size(30_000, 30_000), "too large"),
    ],
    ids=["empty", "text", "pdf", "truncated-png", "truncated-jpeg", "tiny", "thin", "bomb-huge", "bomb"],
)
def test_bad_images_raise_one_clear_error(data, message):
    with pytest.raises(XRayReadError, match=message) as raised:
        load_xray(data)
    assert isinstance(raised.value, ValueError)


def test_gif_is_refused_even_though_pillow_reads_it():
    buffer = io.BytesIO()
    Image.fromarray(CHEST_U8).save(buffer, format="GIF")
    with pytest.raises(XRayReadError, match="PNG, JPEG, TIFF, BMP, WebP or DICOM"):
        load_xray(buffer.getvalue())


def test_multi_page_tiff_is_refused():
    buffer = io.BytesIO()
    pages = [Image.fromarray(CHEST_U8)] * 3
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    with pytest.raises(XRayReadError, match="3 frames"):
        load_xray(buffer.getvalue())


def test_file_size_limit_is_checked_before_reading(tmp_path, monkeypatch):
    import cxrdistill.io as xray_io

    path = tmp_path / "big.png"
    path.write_bytes(_image_bytes("png-gray8") + b"\0" * 5000)
    limits = ReadLimits(max_file_bytes=4096)

    def no_open(*args, **kwargs):
        raise AssertionError("the file was opened although its size is over the limit")

    with monkeypatch.context() as patched:  # a path: refused from its size, never opened
        patched.setattr(xray_io, "open", no_open, raising=False)
        with pytest.raises(XRayReadError, match="larger than the 4,096 bytes limit"):
            load_xray(path, limits=limits)

    class CountingStream(io.BytesIO):
        def __init__(self, data: bytes) -> None:
            super().__init__(data)
            self.requested: list[int] = []

        def read(self, size=-1):
            self.requested.append(size)
            return super().read(size)

    stream = CountingStream(path.read_bytes())  # a stream: one bounded read, never the whole of it
    with pytest.raises(XRayReadError, match="larger than"):
        load_xray(stream, limits=limits)
    assert stream.requested == [4097] and stream.tell() == 4097
    with pytest.raises(XRayReadError, match="larger than"):
        load_xray(path.read_bytes(), limits=limits)


def test_pixel_limit_is_configurable():
    with pytest.raises(XRayReadError, match="too large"):
        load_xray(_image_bytes("png-gray8"), limits=ReadLimits(max_pixels=1000))


@pytest.mark.parametrize(
    "tags, message",
    [
        (dict(modality="CT"), "CT image"),
        (dict(modality="MR"), "MR image"),
        (dict(modality="US"), "US image"),
        (dict(BodyPartExamined="KNEE"), "knee"),
        (dict(frames=3), "3 frames"),
    ],
)
def test_dicoms_that_are_not_a_single_chest_radiograph(tags, message):
    frames = tags.get("frames", 1)
    stored = np.round(np.stack([CHEST] * frames) * 4095).astype(np.uint16)
    with pytest.raises(XRayReadError, match=message):
        load_xray(make_dicom(stored if frames > 1 else stored[0], **tags))


def test_dicom_without_pixel_data():
    data = make_dicom(np.zeros((64, 64), np.uint16))
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(data))
    del dataset.PixelData
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    with pytest.raises(XRayReadError, match="no pixel data"):
        load_xray(buffer.getvalue())


def test_dicom_whose_header_claims_a_huge_image():
    data = make_dicom(np.zeros((64, 64), np.uint16), Rows=60000, Columns=60000)
    with pytest.raises(XRayReadError, match="too large"):
        load_xray(data)


def _declared_as(syntax_name: str) -> bytes:
    """A DICOM whose header declares ``syntax_name`` while its pixel data stays raw (encapsulated if compressed)."""
    import pydicom
    from pydicom import uid
    from pydicom.encaps import encapsulate

    dataset = pydicom.dcmread(io.BytesIO(make_dicom(np.round(CHEST * 4095).astype(np.uint16))))
    dataset.file_meta.TransferSyntaxUID = syntax = getattr(uid, syntax_name)
    if syntax.is_compressed:
        dataset.PixelData = encapsulate([dataset.PixelData])
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("syntax", "message"),
    [
        ("JPEGBaseline8Bit", r"declared encoding \(JPEG Baseline"),
        ("JPEGLosslessSV1", r"declared encoding \(JPEG Lossless"),
        ("JPEGLSLossless", r"declared encoding \(JPEG-LS Lossless"),
        ("JPEG2000Lossless", r"declared encoding \(JPEG 2000"),
        ("RLELossless", r"declared encoding \(RLE Lossless"),
        ("MPEG2MPML", r"unsupported compression \(MPEG2"),
    ],
)
def test_dicom_whose_transfer_syntax_lies_about_its_pixel_data(syntax, message):
    with pytest.raises(XRayReadError, match=message):
        load_xray(_declared_as(syntax))


def test_dicom_with_an_unknown_or_wrong_endian_transfer_syntax():
    data = make_dicom(np.round(CHEST * 4095).astype(np.uint16))
    explicit_little = b"1.2.840.10008.1.2.1\0"  # the UIDs below have the same padded length: offsets stay valid
    assert explicit_little in data
    with pytest.raises(XRayReadError, match=r"unsupported compression \(1\.2\.3"):
        load_xray(data.replace(explicit_little, b"1.2.3.4.5.6.7.8.9.10"))
    with pytest.raises(XRayReadError, match="no pixel data"):  # read big-endian, the elements make no sense
        load_xray(data.replace(explicit_little, b"1.2.840.10008.1.2.2\0"))
    mislabelled_implicit = load_xray(data.replace(explicit_little, b"1.2.840.10008.1.2\0\0\0"))
    np.testing.assert_allclose(mislabelled_implicit.pixels, load_xray(data).pixels)  # pydicom sees through it


def test_dicom_with_truncated_pixel_data():
    data = make_dicom(np.round(CHEST * 4095).astype(np.uint16))
    with pytest.raises(XRayReadError):
        load_xray(data[: len(data) - 4000])


def test_missing_file_directory_and_wrong_types(tmp_path):
    with pytest.raises(XRayReadError, match="no such file"):
        load_xray(tmp_path / "absent.png")
    with pytest.raises(XRayReadError, match="directory"):
        load_xray(tmp_path)
    with pytest.raises(XRayReadError, match="binary mode"):
        load_xray(io.StringIO("text"))
    with pytest.raises(XRayReadError, match="expected a path"):
        load_xray(12345)


def test_nan_in_a_float_tiff_is_refused():
    array = CHEST.astype(np.float32)
    array[5, 5] = np.nan
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="TIFF")
    with pytest.raises(XRayReadError, match="NaN"):
        load_xray(buffer.getvalue())


def test_read_limits_validate_themselves():
    with pytest.raises(ValueError, match="max_pixels"):
        ReadLimits(max_pixels=0)


def test_pydicom_warnings_quoting_header_values_never_reach_the_logs(caplog):
    import pydicom

    data = make_dicom(np.round(CHEST * 4095).astype(np.uint16))
    # An invalid UID makes pydicom warn and log, quoting the value (header values can be patient data).
    data = data.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.SECRET")
    with caplog.at_level("DEBUG"), pytest.warns(UserWarning, match="SECRET"):
        pydicom.dcmread(io.BytesIO(data))  # outside cxrdistill the value is logged...
    assert "SECRET" in caplog.text
    caplog.clear()
    with caplog.at_level("DEBUG"), pytest.raises(XRayReadError, match="unsupported compression"):
        load_xray(data)  # ...inside load_xray it is not
    assert "SECRET" not in caplog.text
