"""Lung crops: the box around a film's lungs, the cropped dataset, its cache and its use in training and evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.lungs import RectangleLungs

from cxrdistill.data import TBX11K
from cxrdistill.data.lung_crop import CropBox, LungCropped, film_lung_masks, lung_crop_boxes, mask_crop_box


def test_the_crop_box_surrounds_the_mask_widened_by_the_margin_and_stays_in_the_film():
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:24, 4:20] = True  # rows 8-23, columns 4-19 of a 32 grid over a 64 x 128 (height x width) film
    assert mask_crop_box(mask, (64, 128), margin=0.0) == CropBox((16, 16, 80, 48), (64, 128), True)
    widened = mask_crop_box(mask, (64, 128), margin=0.25)  # 64 x 32 px box: 16 and 8 px more on each side
    assert widened.box == (0, 8, 96, 56) and widened.size == (48, 96)
    tiny = np.zeros((32, 32), dtype=bool)
    tiny[0, 0] = True  # under MIN_LUNG_SHARE of the film: no lungs, the whole film
    assert mask_crop_box(tiny, (64, 128), 0.05) == CropBox((0, 0, 128, 64), (64, 128), False)


def test_film_masks_cut_the_letterbox_away():
    # a 40 x 80 film letterboxed onto 32 px: scale 0.4, 8 rows of padding above and below
    matrix = np.array([[0.4, 0, 0], [0, 0.4, 8], [0, 0, 1]])
    lungs = RectangleLungs(rows=(0.25, 0.5), cols=(0.0, 0.5))  # rows 8-15: the film's top half, left half
    (mask,) = film_lung_masks(lungs, torch.zeros(1, 1, 32, 32), matrix[None], [(40, 80)])
    assert mask.shape == (16, 32) and mask[:8, :16].all() and not mask[8:].any() and not mask[:, 16:].any()


def test_lung_cropped_films_and_boxes_are_the_films_and_boxes_moved_into_the_crop(tiny_tbx11k, tmp_path):
    films = TBX11K(tiny_tbx11k, "all_train")
    lungs = RectangleLungs()
    crops = lung_crop_boxes(lungs, films, margin=0.0, cache_dir=tmp_path)
    assert lungs.calls > 0 and set(crops) == {r.id for r in films.records}
    index = next(i for i, r in enumerate(films.records) if len(r.boxes))
    crop = crops[films.records[index].id]
    height, width = crop.film
    assert crop.box == (width // 8, height // 4, 5 * width // 8, 3 * height // 4) and crop.lungs_found
    cropped = LungCropped(films, crops)
    x0, y0, x1, y1 = crop.box
    np.testing.assert_array_equal(cropped.read_image(index), films.read_image(index)[y0:y1, x0:x1])
    sample = cropped[index]
    original = films[index]["boxes"]
    expected = np.clip(original - [x0, y0, x0, y0], 0, [x1 - x0, y1 - y0] * 2)
    expected = expected[(expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])]
    np.testing.assert_allclose(sample["boxes"], expected, atol=1e-4)
    assert 0.0 <= cropped.box_area_outside < 1.0
    # the boxes are cached: a second call does not run the lung model, and a subset keeps its crops
    calls = lungs.calls
    assert lung_crop_boxes(lungs, films, margin=0.0, cache_dir=tmp_path) == crops and lungs.calls == calls
    assert cropped.subset([index]).read_image(0).shape == (y1 - y0, x1 - x0)
    with pytest.raises(ValueError, match="no crop box"):
        LungCropped(films, {})


def test_a_cropped_dataset_gets_a_tensor_cache_of_its_own(tiny_tbx11k, tmp_path):
    from cxrdistill.data import CachedDataset

    films = TBX11K(tiny_tbx11k, "all_train")
    cropped = LungCropped(films, lung_crop_boxes(RectangleLungs(), films, cache_dir=tmp_path))
    whole, crops = CachedDataset(films, 32, tmp_path, False), CachedDataset(cropped, 32, tmp_path, False)
    assert whole.pixels_path != crops.pixels_path
    assert not np.array_equal(whole[0]["image"], crops[0]["image"])


def test_the_predictor_shows_a_lung_crop_model_the_crop_and_draws_its_map_back_onto_the_film():
    import dataclasses

    from support.films import chest_png
    from support.models import small_student, tb_model

    from cxrdistill.data import model_input
    from cxrdistill.inference import Predictor
    from cxrdistill.results import BASE_SIZE

    cropping = tb_model()
    cropping.config = dataclasses.replace(cropping.config, input_crop="lungs")
    with pytest.raises(ValueError, match="cropped to their lungs: give the lung model"):
        Predictor({28: small_student()}, tb_model=cropping)
    lungs = RectangleLungs(rows=(0.25, 0.75), cols=(0.125, 0.875), size=32)
    predictor = Predictor({28: small_student()}, tb_model=cropping, lung_model=lungs)
    film = predictor.read(chest_png(96)).pixels
    result = predictor.predict(chest_png(96)).tb
    mask = predictor.lungs(film)
    crop = mask_crop_box(mask, film.shape, 0.05)
    x0, y0, x1, y1 = crop.box
    assert crop.lungs_found and (x1 - x0, y1 - y0) != film.shape
    expected_view = model_input(film[y0:y1, x0:x1], 28, BASE_SIZE)[0, 0].numpy()
    np.testing.assert_allclose(result.view, expected_view, atol=1e-6)
    raw = result.maps["CAM (tb)"]
    outside = np.ones(film.shape, dtype=bool)
    outside[y0:y1, x0:x1] = False
    assert raw.shape == film.shape and np.allclose(raw[outside], raw[~outside].min())
    assert raw[~outside].max() > raw[~outside].min()
