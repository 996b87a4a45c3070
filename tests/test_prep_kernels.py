"""Prep kernels on hand-made arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from hpcxt.errors import InputError
from hpcxt.io.bundle import ImageGrid
from hpcxt.io.fitsio import SkyFrame
from hpcxt.prep import intervals
from hpcxt.prep.products import background_scale, bin_events, grid_for_box, light_curve


def test_interval_algebra():
    a = (np.array([0.0, 10.0]), np.array([5.0, 20.0]))
    b = (np.array([3.0, 12.0]), np.array([11.0, 13.0]))
    s, e = intervals.intersect(a, b)
    np.testing.assert_array_equal(s, [3.0, 10.0, 12.0])
    np.testing.assert_array_equal(e, [5.0, 11.0, 13.0])
    s, e = intervals.subtract(a, b)
    np.testing.assert_array_equal(s, [0.0, 11.0, 13.0])
    np.testing.assert_array_equal(e, [3.0, 12.0, 20.0])
    assert intervals.length(a) == 15.0
    assert intervals.length(intervals.union(a, b)) == 20.0
    np.testing.assert_array_equal(intervals.contains([0.0, 4.99, 5.0, 15.0, 25.0], a),
                                  [True, True, False, True, False])


def test_union_merges_overlaps():
    s, e = intervals.union((np.array([0.0]), np.array([5.0])), (np.array([3.0]), np.array([8.0])))
    np.testing.assert_array_equal(s, [0.0])
    np.testing.assert_array_equal(e, [8.0])


def test_light_curve_exposure_follows_gti():
    good = (np.array([0.0, 300.0]), np.array([200.0, 600.0]))
    times = np.array([10.0, 50.0, 150.0, 350.0, 550.0])
    edges, counts, expo = light_curve(times, good, 100.0)
    np.testing.assert_allclose(edges, np.arange(0.0, 601.0, 100.0))
    np.testing.assert_array_equal(counts, [2, 1, 0, 1, 0, 1])
    np.testing.assert_allclose(expo, [100, 100, 0, 100, 100, 100])


def test_known_sky_position_lands_in_right_pixel():
    x0, y0, shape = grid_for_box(3900.2, 4300.0, 3950.0, 4200.0, 4)
    assert (x0 - 0.5) % 4 == 0 and (y0 - 0.5) % 4 == 0
    assert x0 <= 3900.2 < x0 + 4 and y0 <= 3950.0 < y0 + 4
    grid = ImageGrid(shape=shape, x0=x0, y0=y0, bin=4)
    # an event 2.5 sky pixels right of the left edge of column 7, row 3
    x = np.array([x0 + 7 * 4 + 2.5])
    y = np.array([y0 + 3 * 4 + 0.1])
    img = bin_events(x, y, grid)
    assert img[3, 7] == 1 and img.sum() == 1
    cx, cy = grid.pixel_to_sky(3, 7)
    assert cx == x0 + 30.0 and cy == y0 + 14.0
    # the FITS header agrees: image pixel (1-based) of the tangent point
    frame = SkyFrame(ra0=239.58, dec0=27.23)
    h = frame.image_header(x0, y0, 4, shape)
    from astropy.wcs import WCS
    w = WCS(h)
    px, py = w.all_world2pix(239.58, 27.23, 1)
    assert px == pytest.approx((4096.5 - x0) / 4 + 0.5)
    assert py == pytest.approx((4096.5 - y0) / 4 + 0.5)
    ra, dec = frame.to_radec(cx, cy)
    qx, qy = w.all_world2pix(ra, dec, 0)
    assert (round(float(qy)), round(float(qx))) == (3, 7)


def test_reprojection_between_tangent_points_round_trips():
    a = SkyFrame(ra0=239.58, dec0=27.23)
    b = SkyFrame(ra0=239.60, dec0=27.25)
    x, y = np.array([4000.0, 4500.0]), np.array([4100.0, 3700.0])
    bx, by = a.reproject_to(b, x, y)
    assert np.all(np.abs(bx - x) > 50)  # 0.02 deg is ~130 sky pixels
    ax, ay = b.reproject_to(a, bx, by)
    np.testing.assert_allclose(ax, x, atol=1e-6)
    np.testing.assert_allclose(ay, y, atol=1e-6)
    same_x, _ = a.reproject_to(SkyFrame(ra0=239.58, dec0=27.23), x, y)
    assert np.array_equal(same_x, x)


def test_background_scale_needs_counts():
    assert background_scale(30, 120) == 0.25
    with pytest.raises(InputError, match="background file has no events"):
        background_scale(30, 0, path="bkg.fits")


def test_background_scale_counts_come_from_one_area_for_both_files():
    from hpcxt.prep.products import MIN_SCALE_COUNTS, CleanEvents, scale_counts

    def ce(whole, outside):
        e = np.zeros(0)
        return CleanEvents(x=e, y=e, pi=e.astype(np.int32), energy=e.astype(np.float32),
                           exposure=1.0, scale_band_counts=whole,
                           scale_band_counts_outside=outside)

    # enough counts outside the crop in both files: use only those
    assert scale_counts(ce(5000, 3000), ce(20000, 15000)) == (3000, 15000, "outside_crop")
    # too few in the source file outside: both fall back to the whole field
    few = MIN_SCALE_COUNTS - 1
    assert scale_counts(ce(5000, few), ce(20000, 15000)) == (5000, 20000, "whole_field")
    # no crop region: whole field
    assert scale_counts(ce(5000, -1), ce(20000, -1)) == (5000, 20000, "whole_field")
