"""CLEAR pictures (Kumar et al.): dominant class as hue, its response as value, on hand-made class maps."""
from __future__ import annotations

import numpy as np
import pytest

from miner.clear import clear_picture, dominant, finding_hues, hue_hex, legend
from miner.show import Panel, render


def two_class_maps() -> np.ndarray:
    """4 x 6 maps of two classes: class 0 dominates the left half (responses 1, 0.5, 0.25 by column), class 1
    the right half (2, 1, 0.5); in the bottom row neither responds positively."""
    maps = np.zeros((2, 4, 6), np.float32)
    maps[0, :, :3] = [1.0, 0.5, 0.25]
    maps[1, :, :3] = 0.1
    maps[0, :, 3:] = -1.0
    maps[1, :, 3:] = [2.0, 1.0, 0.5]
    maps[:, 3, :] = [[-0.5] * 6, [-0.2] * 6]
    return maps


def test_two_classes_hue_per_region_and_value_per_response():
    pic = clear_picture(two_class_maps())
    assert pic.shape == (4, 6, 3) and pic.dtype == np.uint8
    # F(c) = 360 c / C: class 0 red (0 deg), class 1 cyan (180 deg); V = response / 2 (the image's strongest)
    def v(response: float) -> int:
        return int(np.floor(response / 2.0 * 255 + 0.5))

    for col, response in enumerate([1.0, 0.5, 0.25]):  # left: red, BGR (0, 0, V)
        np.testing.assert_array_equal(pic[:3, col], [[0, 0, v(response)]] * 3)
    for col, response in enumerate([2.0, 1.0, 0.5]):  # right: cyan, BGR (V, V, 0)
        np.testing.assert_array_equal(pic[:3, 3 + col], [[v(response), v(response), 0]] * 3)
    assert v(2.0) == 255 and v(1.0) == 128 and v(0.25) == 32
    np.testing.assert_array_equal(pic[3], np.zeros((6, 3), np.uint8))  # no positive response: black


def test_dominant_class_and_response_eq4_eq5():
    cls, response = dominant(two_class_maps())
    np.testing.assert_array_equal(cls[:3], [[0, 0, 0, 1, 1, 1]] * 3)
    np.testing.assert_allclose(response[0], [1.0, 0.5, 0.25, 2.0, 1.0, 0.5])
    np.testing.assert_array_equal(cls[3], [1] * 6)  # -0.2 > -0.5
    # a tie goes to the lower class index
    cls, _ = dominant(np.ones((3, 2, 2), np.float32))
    assert (cls == 0).all()


def test_hues_are_evenly_spaced_and_convert_back():
    np.testing.assert_allclose(finding_hues(3), [0, 120, 240])
    np.testing.assert_allclose(finding_hues(8), np.arange(8) * 45)
    assert (hue_hex(0), hue_hex(120), hue_hex(240)) == ("#ff0000", "#00ff00", "#0000ff")
    maps = np.zeros((3, 1, 3), np.float32)
    for c in range(3):
        maps[c, 0, c] = 1.0
    pic = clear_picture(maps)
    np.testing.assert_array_equal(pic[0], [[0, 0, 255], [0, 255, 0], [255, 0, 0]])  # BGR red, green, blue
    with pytest.raises(ValueError):
        finding_hues(0)
    with pytest.raises(ValueError):
        clear_picture(maps, hues=[0, 90])


def test_resized_picture_keeps_sharp_class_borders():
    """Upsampling the maps before the argmax gives only the two classes' hues, never a blend of them."""
    pic = clear_picture(two_class_maps()[:, :3], size=(24, 36))
    assert pic.shape == (24, 36, 3)
    b, g, r = (pic[..., k].astype(int) for k in range(3))
    red = (b == 0) & (g == 0) & (r > 0)
    cyan = (r == 0) & (b == g) & (b > 0)
    assert (red | cyan | (pic.max(axis=-1) == 0)).all()  # red, cyan or black: never a third hue
    assert red[:, :15].all() and cyan[:, 21:].all()  # each class keeps its own side


def test_clear_panel_in_render_with_legend():
    image = np.full((60, 120), 0.5, np.float32)
    names = ("Mass", "Nodule")
    pic = render(image, [Panel("Mass"), Panel("CLEAR", clear=two_class_maps(), clear_names=names)], panel_size=120)
    strip = legend(names, width=120)
    # both panels 120 x 60 under a 26-px header, the CLEAR one with its legend, the other padded to match
    assert pic.shape == (26 + 60 + strip.shape[0], 120 + 4 + 120, 3)
    clear_tile = pic[26:86, 124:]
    np.testing.assert_array_equal(clear_tile, clear_picture(two_class_maps(), size=(60, 120)))
    assert (pic[86:, :120] == 0).all()  # padding under the plain panel
    # one swatch per class in its hue
    assert (strip == (0, 0, 255)).all(axis=-1).any() and (strip == (255, 255, 0)).all(axis=-1).any()
