"""The pre-resized tensor cache: same pixels and boxes as decoding, built once, never half-written."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from support.films import png_bytes, shared_path, synthetic_chest

from cxrdistill.data import TBX11K, CachedDataset, CSVDataset, MultiResolutionViews, transform_boxes
from cxrdistill.data.transforms import letterbox_matrix, warp


@pytest.fixture
def small_dataset(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    lines = ["path,label"]
    for i, (height, width) in enumerate([(120, 100), (90, 140), (64, 64)]):
        image = synthetic_chest(height, width)
        image[10:20, 10 + i : 30 + i] = 1.0
        (images / f"{i}.png").write_bytes(png_bytes(np.round(image * 255).astype(np.uint8)))
        lines.append(f"images/{i}.png,{'ab' if i % 2 else 'normal'}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return CSVDataset(tmp_path / "labels.csv", global_column="label")


def test_cached_pixels_are_the_letterboxed_images(small_dataset, tmp_path):
    cached = CachedDataset(small_dataset, size=48, cache_dir=tmp_path / "cache", progress=False)
    assert len(cached) == 3
    for index in range(3):
        original = small_dataset[index]["image"]
        expected = warp(torch.from_numpy(original), letterbox_matrix(*original.shape, 48), 48).numpy()
        item = cached[index]
        assert item["image"].shape == (48, 48) and item["source_size"] == original.shape
        np.testing.assert_allclose(item["image"], expected, atol=1 / 65535)
        np.testing.assert_array_equal(item["global"], small_dataset[index]["global"])


def test_cache_is_reused_without_decoding(small_dataset, tmp_path, monkeypatch):
    CachedDataset(small_dataset, size=32, cache_dir=tmp_path / "cache", progress=False)

    def no_decoding(index):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(small_dataset, "read_image", no_decoding)
    again = CachedDataset(small_dataset, size=32, cache_dir=tmp_path / "cache", progress=False)
    assert again[1]["image"].shape == (32, 32)


def test_changed_file_or_size_gives_a_new_cache(small_dataset, tmp_path):
    first = CachedDataset(small_dataset, size=32, cache_dir=tmp_path / "cache", progress=False)
    other_size = CachedDataset(small_dataset, size=40, cache_dir=tmp_path / "cache", progress=False)
    assert other_size.pixels_path != first.pixels_path
    path = small_dataset.records[0].path
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    rebuilt = CachedDataset(small_dataset, size=32, cache_dir=tmp_path / "cache", progress=False)
    assert rebuilt.pixels_path != first.pixels_path


def test_interrupted_build_leaves_nothing_behind(small_dataset, tmp_path, monkeypatch):
    original = small_dataset.read_image

    def fail_on_third(index):
        if index == 2:
            raise KeyboardInterrupt
        return original(index)

    monkeypatch.setattr(small_dataset, "read_image", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        CachedDataset(small_dataset, size=32, cache_dir=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_views_from_the_cache_match_views_from_the_files_with_boxes(tmp_path):
    dataset = TBX11K(shared_path("tbx11k"), "all_train").subset(range(0, 600, 150))
    cached = CachedDataset(dataset, size=256, cache_dir=tmp_path, progress=False)
    transform = MultiResolutionViews(224, (28,))
    for index in range(len(dataset)):
        direct = transform(dataset[index])
        via_cache = transform(cached[index])
        difference = (direct["views"][224] - via_cache["views"][224]).abs()
        assert difference.mean() < 0.01
        torch.testing.assert_close(direct["views"][28], via_cache["views"][28], atol=0.02, rtol=0)
        torch.testing.assert_close(direct["boxes"][224], via_cache["boxes"][224], atol=1e-3, rtol=0)
        # the view's matrix maps boxes of the original 512-px image
        moved, _ = transform_boxes(dataset[index]["boxes"], via_cache["to_view"].numpy(), 224)
        np.testing.assert_allclose(moved, via_cache["boxes"][224].numpy(), atol=1e-3)
        assert via_cache["source_size"] == (512, 512)
