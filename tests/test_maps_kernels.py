"""Map kernels on hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from hpcxt.maps import (FLUXIMAGE_THRESHOLD, Coverage, assign_pixels, circle_mean,
                        count_coverage, coverage_map, flux_image, paint, select_regions,
                        surface_brightness, thermodynamics)
from hpcxt.schema import Status


def grid_regions(shape, step, skip=()):
    """Every step-th row and column as a region, except the (row, col) in ``skip``."""
    rows, cols = np.mgrid[0:shape[0]:step, 0:shape[1]:step]
    keep = [(r, c) not in set(skip) for r, c in zip(rows.ravel(), cols.ravel())]
    return rows.ravel()[keep], cols.ravel()[keep]


@pytest.mark.parametrize("step", [1, 3, 5])
def test_each_region_owns_its_block_and_every_pixel_is_accounted_for(step):
    mask = np.ones((18, 19), bool)
    rows, cols = grid_regions(mask.shape, step)
    owner, how = assign_pixels(rows, cols, step, mask)
    h = step // 2
    i = int(np.flatnonzero((rows == step) & (cols == step))[0]) if step > 1 else 0
    r, c = rows[i], cols[i]
    assert np.all(owner[max(r - h, 0):r + h + 1, max(c - h, 0):c + h + 1] == i)
    assert np.all(how[owner == i] == Coverage.MAPPED)
    # with a region at every block centre no mapped pixel is left without one
    assert np.all(owner >= 0)
    values = np.arange(rows.size, dtype=float) + 1.0
    img = paint(values, owner, coverage_map(owner, how, np.zeros(rows.size, np.uint8)))
    assert np.all(np.isfinite(img)) and not np.any(img == 0.0)


def test_edge_strips_take_the_nearest_region_at_low_resolution():
    # 5x5 blocks centred on rows/cols 0, 5, 10: rows/cols 13 and 14 are in no block
    mask = np.ones((15, 15), bool)
    rows, cols = grid_regions(mask.shape, 5)
    owner, how = assign_pixels(rows, cols, 5, mask)
    strip = np.zeros(mask.shape, bool)
    strip[13:, :] = True
    strip[:, 13:] = True
    assert np.all(how[strip] == Coverage.FILLED)
    assert np.all(how[~strip] == Coverage.MAPPED)
    corner = int(np.flatnonzero((rows == 10) & (cols == 10))[0])
    assert np.all(owner[11:, 11:] == corner)
    left = int(np.flatnonzero((rows == 10) & (cols == 0))[0])
    assert np.all(owner[13:, 0:3] == left)


def test_blanks_are_told_apart():
    mask = np.ones((15, 15), bool)
    mask[0:2, 10:15] = False             # outside the crop
    rows, cols = grid_regions(mask.shape, 5, skip=[(5, 5), (0, 10)])
    # (5, 5): mapped centre without a region = never reached the target S/N
    # (0, 10): masked centre; the rest of its block is in no region's block
    owner, how = assign_pixels(rows, cols, 5, mask)
    assert np.all(how[~mask] == Coverage.MASKED) and np.all(owner[~mask] == -1)
    assert np.all(how[3:8, 3:8] == Coverage.LOW_SN) and np.all(owner[3:8, 3:8] == -1)
    # the mapped rest of the masked centre's block is filled from a neighbour
    assert np.all(how[2, 8:13] == Coverage.FILLED)
    below = int(np.flatnonzero((rows == 5) & (cols == 10))[0])
    left = int(np.flatnonzero((rows == 0) & (cols == 5))[0])
    assert np.all(owner[2, 9:13] == below)
    assert owner[2, 8] in (below, left)   # as near to both centres
    # a pixel whose nearest block centre never reached the target S/N gets no value
    mask2 = np.ones((7, 7), bool)
    owner2, how2 = assign_pixels(np.array([0]), np.array([0]), 5, mask2)
    assert how2[5, 5] == Coverage.LOW_SN and owner2[5, 5] == -1
    # the regions' outcomes override the geometry
    codes = np.full(rows.size, Coverage.MAPPED, np.uint8)
    failed = int(np.flatnonzero((rows == 10) & (cols == 10))[0])
    pending = int(np.flatnonzero((rows == 0) & (cols == 0))[0])
    codes[failed], codes[pending] = Coverage.FIT_FAILED, Coverage.PENDING
    cov = coverage_map(owner, how, codes)
    assert np.all(cov[8:, 8:] == Coverage.FIT_FAILED)   # its block and its edge strips
    assert np.all(cov[0:3, 0:3] == Coverage.PENDING)
    img = paint(np.arange(rows.size, dtype=float), owner, cov)
    assert np.array_equal(np.isfinite(img), (cov == Coverage.MAPPED) | (cov == Coverage.FILLED))
    n = count_coverage(cov)
    assert sum(n.values()) == mask.size
    assert n["masked"] == 10 and n["low_sn"] == 25 and n["fit_failed"] == 49


def test_no_region_when_nothing_near_is_mapped():
    mask = np.zeros((12, 12), bool)
    mask[0, 0] = True                    # a centre with a region
    mask[11, 11] = True                  # far from every block centre
    owner, how = assign_pixels(np.array([0]), np.array([0]), 3, mask)
    assert how[0, 0] == Coverage.MAPPED
    assert how[11, 11] == Coverage.NO_REGION and owner[11, 11] == -1


def test_failed_regions_are_nan_not_zero():
    status = np.array([1, 2, 1, 0])
    kT = np.array([5.0, np.nan, 6.0, np.nan])
    frac = np.array([0.1, np.nan, 0.5, np.nan])
    sel = select_regions(status, kT, frac, drop_failed=True, max_frac_error=0.3)
    assert sel.keep.tolist() == [True, False, False, False]
    assert sel.dropped == {"pending": 1, "failed": 1, "frac_error_above_0.3": 1}
    assert sel.codes.tolist() == [Coverage.MAPPED, Coverage.FIT_FAILED, Coverage.DROPPED,
                                  Coverage.PENDING]
    rows, cols = np.array([0, 0, 2, 2]), np.array([0, 2, 0, 2])
    owner, how = assign_pixels(rows, cols, 1, np.ones((3, 3), bool))
    img = paint(kT, owner, coverage_map(owner, how, sel.codes))
    assert img[0, 0] == 5.0
    assert np.isnan(img[0, 2]) and np.isnan(img[2, 0]) and np.isnan(img[2, 2])
    assert not np.any(img == 0.0)


def test_failed_error_search_can_be_kept_when_asked():
    status = np.array([2, 2])
    kT = np.array([4.0, np.nan])  # first: fit ok, errors not found
    sel = select_regions(status, kT, np.array([np.nan, np.nan]), drop_failed=False)
    assert sel.keep.tolist() == [True, False]
    assert sel.codes.tolist() == [Coverage.MAPPED, Coverage.FIT_FAILED]
    assert Status.FAILED == 2


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


def test_flux_image_is_counts_over_exposure_above_fluximage_threshold():
    counts = np.array([[10.0, 4.0, 3.0, 0.0, 5.0]])
    bkg = np.array([[2.0, 1.0, 1.0, 0.0, 1.0]])
    expo = np.array([[1000.0, 500.0, 10.0, 0.0, 800.0]])   # 10 < 1.5% of 1000
    mask = np.array([[True, True, True, True, False]])
    flux = flux_image(counts, expo, mask)
    assert FLUXIMAGE_THRESHOLD == 0.015
    np.testing.assert_array_equal(flux[0, :2], [10.0 / 1000.0, 4.0 / 500.0])
    assert np.all(np.isnan(flux[0, 2:]))
    sub = flux_image(counts, expo, mask, background=bkg)
    np.testing.assert_array_equal(sub[0, :2], [8.0 / 1000.0, 3.0 / 500.0])
    # no threshold: every exposed mapped pixel
    assert flux_image(counts, expo, mask, threshold=0.0)[0, 2] == 3.0 / 10.0
