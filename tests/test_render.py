"""Pictures: overlays, colour bars, boxes and enlarged model views."""

import numpy as np
import pytest

from cxrdistill.render import BOX_COLOUR, colourise, draw_boxes, enlarge, gray_to_rgb, overlay


def test_overlay_colours_the_hot_region_and_adds_a_colour_bar():
    image = np.full((64, 80), 0.5)
    heat = np.zeros((64, 80))
    heat[10:20, 30:40] = 1.0
    picture = overlay(image, heat)
    assert picture.dtype == np.uint8 and picture.shape[0] == 64 and picture.shape[1] > 80
    hot, cold = picture[15, 35].astype(int), picture[50, 5].astype(int)
    # the hot pixel moves towards viridis yellow; the cold one stays close to the gray X-ray
    assert np.abs(hot - 128).sum() > 3 * np.abs(cold - 128).sum()
    bar = picture[:, 80:]
    assert not np.array_equal(bar[5], bar[-5])  # a gradient, high at the top
    assert np.array_equal(overlay(image, heat, colour_bar=False).shape, (64, 80, 3))


def test_overlay_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        overlay(np.zeros((10, 10)), np.zeros((10, 12)))


def test_colourise_ends_are_viridis():
    ends = colourise(np.array([0.0, 1.0]))
    assert ends[0].tolist() == [68, 1, 84] and ends[1].tolist() == [253, 231, 37]


def test_boxes_are_outlined_where_they_are():
    rgb = gray_to_rgb(np.zeros((100, 100)))
    drawn = draw_boxes(rgb, [(20, 30, 60, 80)], ["0.87"])
    assert tuple(drawn[50, 20]) == BOX_COLOUR and tuple(drawn[80, 40]) == BOX_COLOUR  # left and bottom edges
    assert tuple(drawn[55, 40]) == (0, 0, 0)  # the inside is left as it was
    assert (drawn[:30, 20:50] != 0).any()  # the score label sits above the box


def test_enlarge_repeats_pixels_without_blending():
    view = np.array([[0.0, 1.0], [1.0, 0.0]])
    big = enlarge(view, size=8)
    assert big.shape == (8, 8, 3)
    assert (big[:4, :4] == 0).all() and (big[:4, 4:] == 255).all() and (big[4:, :4] == 255).all()
