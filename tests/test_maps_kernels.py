"""Map kernels on hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from hpcxt.maps import (circle_mean, paint_blocks, select_regions, surface_brightness,
                        thermodynamics)


@pytest.mark.parametrize("step", [1, 3, 5])
def test_value_fills_its_block_for_each_resolution(step):
    mask = np.ones((20, 20), bool)
    rows = np.array([0, 10, 10]) // step * step
    cols = np.array([0, 5, 15]) // step * step
    img = paint_blocks(np.array([1.0, 2.0, 3.0]), rows, cols, step, mask)
    h = step // 2
    r, c = rows[1], cols[1]
    block = img[r - h:r + h + 1, c - h:c + h + 1]
    assert block.shape == (step, step)
    assert np.all(block == 2.0)
    assert np.count_nonzero(img == 2.0) == step * step
    # the corner region is clipped at the image edge
    assert np.count_nonzero(img == 1.0) == (h + 1) ** 2
    # everything not painted is NaN, never 0
    assert np.isnan(img).sum() == img.size - 2 * step * step - (h + 1) ** 2
    assert not np.any(img == 0.0)


def test_blocks_are_clipped_to_the_mask():
    mask = np.ones((9, 9), bool)
    mask[4, 5] = False
    img = paint_blocks(np.array([7.0]), np.array([3]), np.array([3]), 5, mask)
    assert np.isnan(img[4, 5])
    assert np.count_nonzero(img == 7.0) == 24


def test_failed_regions_are_nan_not_zero():
    status = np.array([1, 2, 1, 0])
    kT = np.array([5.0, np.nan, 6.0, np.nan])
    frac = np.array([0.1, np.nan, 0.5, np.nan])
    sel = select_regions(status, kT, frac, drop_failed=True, max_frac_error=0.3)
    assert sel.keep.tolist() == [True, False, False, False]
    assert sel.dropped == {"pending": 1, "failed": 1, "frac_error_above_0.3": 1}
    img = paint_blocks(np.where(sel.keep, kT, np.nan), np.array([0, 0, 2, 2]),
                       np.array([0, 2, 0, 2]), 1, np.ones((3, 3), bool))
    assert img[0, 0] == 5.0
    assert np.isnan(img[0, 2]) and np.isnan(img[2, 0]) and np.isnan(img[2, 2])


def test_failed_error_search_can_be_kept_when_asked():
    status = np.array([2, 2])
    kT = np.array([4.0, np.nan])  # first: fit ok, errors not found
    sel = select_regions(status, kT, np.array([np.nan, np.nan]), drop_failed=False)
    assert sel.keep.tolist() == [True, False]


def test_pressure_and_entropy_follow_their_formulas():
    kT = np.array([2.0, 8.0, 5.0])
    sb = np.array([4e-6, 1e-4, -1e-6])
    n, p, k = thermodynamics(kT, sb)
    np.testing.assert_allclose(n[:2], [2e-3, 1e-2])
    np.testing.assert_allclose(p[:2], [4e-3, 8e-2])
    np.testing.assert_allclose(k[:2], [2.0 * (2e-3) ** (-2 / 3), 8.0 * (1e-2) ** (-2 / 3)])
    assert np.isnan(n[2]) and np.isnan(p[2]) and np.isnan(k[2])


def test_circle_mean_uses_pixel_centres_within_radius_and_the_mask():
    img = np.arange(49, dtype=float).reshape(7, 7)
    mask = np.ones((7, 7), bool)
    # radius 1: the centre and its 4 neighbours
    m = circle_mean(img, mask, np.array([3]), np.array([3]), np.array([1.0]))
    assert m[0] == pytest.approx((24 + 17 + 31 + 23 + 25) / 5)
    # radius sqrt(2): plus the diagonals, i.e. the 3x3 block
    m = circle_mean(img, mask, np.array([3]), np.array([3]), np.array([1.5]))
    assert m[0] == pytest.approx(img[2:5, 2:5].mean())
    mask[2, 3] = False
    m = circle_mean(img, mask, np.array([3, 0]), np.array([3, 0]), np.array([1.0, 1.0]))
    assert m[0] == pytest.approx((24 + 31 + 23 + 25) / 4)
    assert m[1] == pytest.approx((0 + 1 + 7) / 3)  # truncated at the corner


def test_surface_brightness_is_background_subtracted_per_exposure():
    counts = np.array([[10.0, 4.0]])
    bkg = np.array([[2.0, 4.0]])
    expo = np.array([[4.0, 0.0]])
    sb = surface_brightness(counts, bkg, expo, np.ones((1, 2), bool))
    assert sb[0, 0] == 2.0 and np.isnan(sb[0, 1])
