"""Multi-resolution views: exact area downsampling, letterboxing, augmentation, and boxes that follow the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support.films import synthetic_chest

from cxrdistill.data import (
    AugmentConfig,
    AugmentedCopies,
    MultiResolutionViews,
    area_resize,
    collate_views,
    letterbox_matrix,
    transform_boxes,
    warp,
)


def _sample(image: np.ndarray, boxes=((0, 0, 1, 1),), box_labels=(0,)) -> dict:
    return {
        "id": "x",
        "group": "g",
        "source": "s",
        "image": image.astype(np.float32),
        "global": np.array([0.0, 1.0], np.float32),
        "local": np.array([1.0], np.float32),
        "local_mask": np.array([1.0], np.float32),
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "box_labels": np.asarray(box_labels, np.int64),
    }


def _mask_bbox(mask: torch.Tensor, level: float = 0.5) -> np.ndarray:
    """xyxy box of the pixels above ``level``, in continuous pixel coordinates (edges)."""
    rows = torch.nonzero(mask.max(1).values > level).flatten()
    columns = torch.nonzero(mask.max(0).values > level).flatten()
    return np.array([columns.min(), rows.min(), columns.max() + 1, rows.max() + 1], dtype=np.float64)


def test_area_resize_is_an_exact_block_mean():
    image = torch.rand(224, 224)
    expected = image.reshape(28, 8, 28, 8).mean(dim=(1, 3))
    torch.testing.assert_close(area_resize(image, 28), expected)


def test_letterbox_keeps_aspect_and_centres():
    matrix = letterbox_matrix(100, 50, 200)
    np.testing.assert_allclose(matrix @ [0, 0, 1], [50, 0, 1])
    np.testing.assert_allclose(matrix @ [50, 100, 1], [150, 200, 1])
    view = warp(torch.ones(100, 50), matrix, 200)
    assert view[:, :50].max() == 0 and view[:, 150:].max() == 0 and view[:, 50:150].min() == 1


def test_warp_identity_reproduces_the_image():
    image = torch.rand(32, 32)
    torch.testing.assert_close(warp(image, np.eye(3), 32), image)


def test_large_reduction_is_antialiased():
    # A one-pixel checkerboard averages to grey; plain bilinear sampling at stride 8 would alias to black or white.
    checker = torch.from_numpy((np.indices((448, 448)).sum(0) % 2).astype(np.float32))
    view = warp(checker, letterbox_matrix(448, 448, 28), 28)
    assert (view - 0.5).abs().max() < 0.05


def test_views_have_every_size_and_match_the_teacher_view_block_means():
    views = MultiResolutionViews(224, (28, 56, 112))(_sample(synthetic_chest(512, 512)))
    assert sorted(views["views"]) == [28, 56, 112, 224]
    for size, view in views["views"].items():
        assert view.shape == (1, size, size) and view.dtype == torch.float32
    teacher = views["views"][224][0]
    torch.testing.assert_close(views["views"][28][0], teacher.reshape(28, 8, 28, 8).mean(dim=(1, 3)))


def test_no_horizontal_flip_by_default():
    image = np.zeros((128, 128), np.float32)
    image[40:80, 10:40] = 1.0  # a bright mark on the image's left
    transform = MultiResolutionViews(64, (28,), augment=AugmentConfig())
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        view = transform(_sample(image), generator)["views"][64][0]
        assert (view[:, :32] > 0.5).sum() > 50 and (view[:, 32:] > 0.5).sum() == 0


def test_augmentation_is_reproducible_with_a_generator_and_stays_in_range():
    transform = MultiResolutionViews(64, (28,), augment=AugmentConfig())
    sample = _sample(synthetic_chest(200, 160))
    first = transform(sample, torch.Generator().manual_seed(5))["views"][64]
    again = transform(sample, torch.Generator().manual_seed(5))["views"][64]
    other = transform(sample, torch.Generator().manual_seed(6))["views"][64]
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)
    assert 0 <= first.min() and first.max() <= 1


def test_augmented_copies_are_fixed_per_item_and_agree_across_view_sizes():
    """Item j is the same view at every read, views with and without the student's size share the teacher's view
    (what lets a teacher cached on the teacher-only views serve the student's batches), copies differ."""
    films = [_sample(synthetic_chest(200, 160)), _sample(synthetic_chest(180, 220))]
    teacher_only = AugmentedCopies(films, MultiResolutionViews(64, (), augment=AugmentConfig()), copies=3, seed=1)
    with_student = AugmentedCopies(films, MultiResolutionViews(64, (16,), augment=AugmentConfig()), copies=3, seed=1)
    assert len(teacher_only) == 6
    assert [teacher_only[j]["film"] for j in range(6)] == [0, 1, 0, 1, 0, 1]
    for j in range(6):
        item = with_student[j]
        assert item["index"] == j
        torch.testing.assert_close(item["views"][64], teacher_only[j]["views"][64], rtol=0, atol=0)
        torch.testing.assert_close(item["views"][64], with_student[j]["views"][64], rtol=0, atol=0)
        torch.testing.assert_close(item["views"][16][0], item["views"][64][0].reshape(16, 4, 16, 4).mean(dim=(1, 3)))
    assert not torch.equal(teacher_only[0]["views"][64], teacher_only[2]["views"][64])  # two copies of film 0
    other_seed = AugmentedCopies(films, MultiResolutionViews(64, (), augment=AugmentConfig()), copies=3, seed=2)
    assert not torch.equal(teacher_only[0]["views"][64], other_seed[0]["views"][64])
    with pytest.raises(IndexError):
        teacher_only[6]
    with pytest.raises(ValueError, match="augment"):
        AugmentedCopies(films, MultiResolutionViews(64, ()), copies=2)
    with pytest.raises(ValueError, match="copies"):
        AugmentedCopies(films, MultiResolutionViews(64, (), augment=AugmentConfig()), copies=0)


def test_augment_config_validates():
    with pytest.raises(ValueError, match="zoom"):
        AugmentConfig(zoom=(1.2, 0.9))
    with pytest.raises(ValueError, match="hflip_p"):
        AugmentConfig(hflip_p=2)


def test_collate_stacks_views_and_keeps_box_lists():
    transform = MultiResolutionViews(56, (28,))
    batch = collate_views(
        [
            transform(_sample(synthetic_chest(64, 64), boxes=[(1, 1, 9, 9), (20, 20, 30, 30)], box_labels=[0, 0])),
            transform(_sample(synthetic_chest(80, 64), boxes=np.zeros((0, 4)), box_labels=[])),
        ]
    )
    assert batch["views"][28].shape == (2, 1, 28, 28) and batch["global"].shape == (2, 2)
    assert [len(b) for b in batch["boxes"][28]] == [2, 0] and batch["id"] == ["x", "x"]


# ----------------------------------------------------------------------------------- boxes follow the pixels

box_and_image = st.integers(24, 160).flatmap(
    lambda height: st.integers(24, 160).flatmap(
        lambda width: st.tuples(
            st.just(height),
            st.just(width),
            st.integers(0, width - 8),
            st.integers(0, height - 8),
            st.integers(6, width),
            st.integers(6, height),
        )
    )
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(box_and_image, st.sampled_from([28, 56]))
def test_letterbox_views_move_boxes_with_the_pixels(geometry, student_size):
    """A box drawn around a bright rectangle still bounds that rectangle in every view, to within a pixel."""
    height, width, x0, y0, box_width, box_height = geometry
    x1, y1 = min(width, x0 + box_width), min(height, y0 + box_height)
    image = np.zeros((height, width), np.float32)
    image[y0:y1, x0:x1] = 1.0
    views = MultiResolutionViews(112, (student_size,))(_sample(image, boxes=[(x0, y0, x1, y1)]))
    for size in (112, student_size):
        view = views["views"][size][0]
        (box,) = views["boxes"][size].numpy()
        # Area-averaged edge pixels are partly covered, so compare at a low level; where the source is enlarged,
        # bilinear upsampling spreads each edge of the lesion by half a source pixel.
        enlargement = max(1.0, size / max(height, width))
        np.testing.assert_allclose(_mask_bbox(view, level=0.02), box, atol=1.01 + 0.5 * enlargement)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(box_and_image, st.integers(0, 2**31 - 1))
def test_augmented_views_keep_the_lesion_inside_its_box(geometry, seed):
    """With zoom, shift and rotation the moved box must still contain every bright pixel of the lesion."""
    height, width, x0, y0, box_width, box_height = geometry
    x1, y1 = min(width, x0 + box_width), min(height, y0 + box_height)
    image = np.zeros((height, width), np.float32)
    image[y0:y1, x0:x1] = 1.0
    config = AugmentConfig(gamma=(1, 1), contrast=(1, 1), brightness=0, min_box_visibility=0.0, hflip_p=0.5)
    views = MultiResolutionViews(112, (28,), augment=config)(
        _sample(image, boxes=[(x0, y0, x1, y1)]), torch.Generator().manual_seed(seed)
    )
    view = views["views"][112][0]
    if view.max() <= 0.5:  # the lesion was shifted or zoomed out of view: its box must be gone too
        assert len(views["boxes"][112]) == 0 or view.max() > 0.02
        return
    (box,) = views["boxes"][112].numpy()
    inside = _mask_bbox(view, level=0.5)
    assert inside[0] >= box[0] - 1 and inside[1] >= box[1] - 1 and inside[2] <= box[2] + 1 and inside[3] <= box[3] + 1


def test_boxes_pushed_out_of_view_are_dropped_with_their_labels():
    matrix = np.array([[1.0, 0, -100], [0, 1, 0], [0, 0, 1]])  # shift everything 100 px left
    boxes, keep = transform_boxes(
        np.array([[10, 10, 50, 50], [90, 10, 150, 50]], np.float32), matrix, 64, min_visibility=0.25
    )
    assert keep.tolist() == [False, True]
    np.testing.assert_allclose(boxes, [[0, 10, 50, 50]])


def test_to_view_matrix_maps_source_boxes_onto_view_boxes():
    sample = _sample(synthetic_chest(300, 200), boxes=[(50, 60, 120, 200)])
    views = MultiResolutionViews(224, (28,), augment=AugmentConfig())(sample, torch.Generator().manual_seed(1))
    moved, _ = transform_boxes(sample["boxes"], views["to_view"].numpy(), 224)
    np.testing.assert_allclose(moved, views["boxes"][224].numpy(), atol=1e-4)


def test_model_input_matches_the_evaluation_views():
    from cxrdistill.data import model_input

    image = synthetic_chest(300, 240)
    expected = MultiResolutionViews(224, (28,))(_sample(image))["views"][28]
    torch.testing.assert_close(model_input(image, 28), expected[None])


# ---------------------------------------------------------------------------------------------- harmonisation


def test_histogram_equalisation_flattens_the_intensity_distribution_and_keeps_order():
    from cxrdistill.data.transforms import equalize_histogram

    image = torch.rand(128, 128) ** 4  # a dark film: most values near 0
    equalised = equalize_histogram(image)
    counts = torch.histc(equalised, bins=4, min=0, max=1)
    assert counts.min() > 0.15 * image.numel()  # each quarter of the range holds about a quarter of the pixels
    flat = image.flatten()
    order = flat.argsort()
    assert (equalised.flatten()[order].diff() >= 0).all()  # monotone: brighter stays brighter


def test_resolution_and_jpeg_round_trips_lose_detail_but_keep_the_film():
    from cxrdistill.data.transforms import jpeg_round_trip, resample_round_trip

    image = torch.from_numpy(synthetic_chest(128, 128)).float()
    image = (0.9 * image + 0.1 * torch.rand_like(image)).clamp(0, 1)  # fine detail the round trips must lose
    for changed in (resample_round_trip(image, 0.25), jpeg_round_trip(image, 20)):
        assert changed.shape == image.shape and -0.01 <= changed.min() and changed.max() <= 1.01
        assert 0.005 < (changed - image).abs().mean() < 0.1


def test_harmonisation_is_off_by_default_and_then_draws_no_random_numbers():
    from cxrdistill.data.transforms import harmonise

    image = torch.rand(64, 64)
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    assert torch.equal(harmonise(image, AugmentConfig(), generator), image)
    assert torch.equal(generator.get_state(), state)  # existing augmentation streams are unchanged
    config = AugmentConfig.harmonising(equalize_p=1.0, resample_p=0.0, jpeg_p=0.0)
    views = MultiResolutionViews(64, (), augment=config)
    sample = _sample(np.asarray(image))
    first, again = (views(sample, torch.Generator().manual_seed(0))["views"][64] for _ in range(2))
    assert torch.equal(first, again) and torch.histc(first, bins=4, min=0, max=1).min() > 0.15 * first.numel()


def test_harmonisation_settings_are_validated():
    with pytest.raises(ValueError, match="jpeg_p"):
        AugmentConfig(jpeg_p=1.5)
    with pytest.raises(ValueError, match="resample_scale"):
        AugmentConfig(resample_scale=(0.5, 2.0))
    with pytest.raises(ValueError, match="jpeg_quality"):
        AugmentConfig(jpeg_quality=(0, 50))
