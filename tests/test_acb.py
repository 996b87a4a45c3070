"""The scale-map kernel (hpcxt.acb) against a brute-force reference.

The reference follows the definition literally: for each mapped pixel and
each radius on the grid in increasing order, the circle is every pixel
centre with di**2 + dj**2 <= r*r inside the image and the mask, its counts
and background are summed with math.fsum (exactly rounded), and the first
radius whose S/N reaches the target is the answer.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from hpcxt import acb
from hpcxt.parallel import balance


def brute_force_index(counts, background, mask, target, max_radius, step, mode):
    ny, nx = counts.shape
    nk = int(math.floor(max_radius / step))
    while (nk + 1) * step <= max_radius:
        nk += 1
    while nk * step > max_radius:
        nk -= 1
    ii, jj = np.mgrid[0:ny, 0:nx]
    out = np.zeros((ny, nx), dtype=np.int64)
    for i in range(ny):
        for j in range(nx):
            if not mask[i, j]:
                continue
            d2 = (ii - i) ** 2 + (jj - j) ** 2
            for k in range(1, nk + 1):
                r = Fraction(k * step)
                inside = (d2 <= math.floor(r * r)) & mask
                c = math.fsum(counts[inside].tolist())
                if mode == "counts":
                    sn = math.sqrt(c)
                else:
                    b = math.fsum(background[inside].tolist())
                    s = c + b
                    sn = (c - b) / math.sqrt(s) if s > 0 else 0.0
                if sn >= target:
                    out[i, j] = k
                    break
    return out


def random_case(rng, mode, shape=None):
    ny, nx = shape or tuple(int(v) for v in rng.integers(7, 19, 2))
    yy, xx = np.mgrid[0:ny, 0:nx]
    cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
    rate = 12.0 / (1.0 + ((yy - cy) ** 2 + (xx - cx) ** 2) / 9.0) + 0.3
    rate[-6:] = 0.05  # a faint band where circles of radius 5 stay short of the target
    counts = rng.poisson(rate).astype(np.float64)
    background = rng.uniform(0.0, 0.8, (ny, nx))
    mask = rng.random((ny, nx)) > 0.25
    return counts, background, mask


@pytest.mark.parametrize("mode", ["counts", "background_subtracted"])
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_kernel_equals_brute_force(mode, seed):
    rng = np.random.default_rng(seed)
    counts, background, mask = random_case(rng, mode)
    target = float(rng.uniform(4.0, 9.0))
    params = acb.ScaleMapParams(target_sn=target, max_radius=5.0, radius_step=0.25, mode=mode)
    got = acb.scale_map_index(counts, background, mask, params, tile_size=int(rng.integers(3, 8)))
    want = brute_force_index(counts, background, mask, target, 5.0, 0.25, mode)
    assert np.array_equal(got, want)
    # the case exercises what it should: edges, masks, some pixels without a radius
    assert (want > 0).sum() > 10
    assert ((want == 0) & mask).any()
    assert (got[~mask] == 0).all()
    edge = np.zeros_like(mask)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    assert (want[edge & mask] > 0).any()


def test_kernel_equals_brute_force_default_step_and_float_background():
    # radius step 0.125 as in production, background non-integer
    rng = np.random.default_rng(11)
    counts, background, mask = random_case(rng, "background_subtracted", shape=(12, 15))
    params = acb.ScaleMapParams(target_sn=6.0, max_radius=4.0, radius_step=0.125,
                                mode="background_subtracted")
    problem = acb.prepare_scale_map(counts, background, mask, params)
    assert not problem.exact
    got = acb.scale_map_index(counts, background, mask, params, tile_size=5)
    want = brute_force_index(counts, background, mask, 6.0, 4.0, 0.125,
                             "background_subtracted")
    assert np.array_equal(got, want)
    assert (want > 0).sum() > 20


def test_no_mask_and_no_background_in_counts_mode():
    rng = np.random.default_rng(5)
    counts = rng.poisson(2.0, (9, 11)).astype(np.float64)
    params = acb.ScaleMapParams(target_sn=5.0, max_radius=4.0, radius_step=0.5)
    got = acb.scale_map_index(counts, None, None, params)
    want = brute_force_index(counts, None, np.ones((9, 11), bool), 5.0, 4.0, 0.5, "counts")
    assert np.array_equal(got, want)
    assert (want > 0).all()


@pytest.mark.parametrize("mode", ["counts", "background_subtracted"])
def test_large_starting_circles_equal_brute_force(mode):
    # faint enough that whole tiles need radii of several pixels: circles
    # start large there; one bright pixel makes its tile start from scratch
    rng = np.random.default_rng(21)
    ny, nx = 30, 34
    counts = rng.poisson(1.2, (ny, nx)).astype(np.float64)
    counts[22, 25] = 400.0
    background = rng.uniform(0.0, 0.3, (ny, nx))
    mask = rng.random((ny, nx)) > 0.1
    params = acb.ScaleMapParams(target_sn=9.0, max_radius=11.0, radius_step=0.5, mode=mode)
    problem = acb.prepare_scale_map(counts, background, mask, params)
    tiles = acb.make_tiles((ny, nx), 10)
    results = [acb.solve_tile(problem, *tile) for tile in tiles]
    got = np.zeros((ny, nx), dtype=np.int64)
    for (r0, r1, c0, c1), res in zip(tiles, results):
        got[r0:r1, c0:c1] = res.index
    starts = {tile: res.start_index for tile, res in zip(tiles, results)}
    assert sum(v > 0 for v in starts.values()) >= 4
    assert starts[(20, 30, 20, 30)] == 0  # the bright pixel's tile
    want = brute_force_index(counts, background, mask, 9.0, 11.0, 0.5, mode)
    assert np.array_equal(got, want)
    assert (want > 0).sum() > 500


def test_result_does_not_depend_on_tiling():
    rng = np.random.default_rng(7)
    counts, background, mask = random_case(rng, "background_subtracted", shape=(23, 31))
    params = acb.ScaleMapParams(target_sn=6.0, max_radius=6.0, radius_step=0.125,
                                mode="background_subtracted")
    ref = acb.scale_map_index(counts, background, mask, params, tile_size=64)
    for ts in (1, 4, 7, 16):
        assert np.array_equal(acb.scale_map_index(counts, background, mask, params, ts), ref)
    problem = acb.prepare_scale_map(counts, background, mask, params)
    one = acb.solve_tile(problem, 5, 6, 9, 10).index
    assert one[0, 0] == ref[5, 9]


def test_masked_pixels_contribute_nothing_and_get_no_radius():
    rng = np.random.default_rng(3)
    counts, background, mask = random_case(rng, "counts", shape=(14, 14))
    params = acb.ScaleMapParams(target_sn=5.0, max_radius=5.0, radius_step=0.25)
    ref = acb.scale_map_index(counts, background, mask, params)
    loud = counts.copy()
    loud[~mask] = 1e6  # a bright point source under the mask
    assert np.array_equal(acb.scale_map_index(loud, background, mask, params), ref)
    radius = acb.scale_map(loud, background, mask, params)
    assert np.isnan(radius[~mask]).all()
    np.testing.assert_array_equal(radius[ref > 0], ref[ref > 0] * 0.25)


def test_uniform_image_edges_need_larger_circles():
    # known answer: one count per pixel, S/N = sqrt(pixels in the circle)
    counts = np.ones((21, 21))
    params = acb.ScaleMapParams(target_sn=math.sqrt(13), max_radius=10.0, radius_step=0.125)
    index = acb.scale_map_index(counts, None, None, params)
    # 13 pixels: d2 <= 4 in the middle, radius 2 is grid index 16
    assert index[10, 10] == 16
    # a corner holds a quarter circle: 13 pixels need d2 <= 10 (radius sqrt(10))
    k_corner = math.ceil(math.sqrt(10) / 0.125)
    assert index[0, 0] == k_corner == index[20, 20]


def test_exact_path_corrects_float_rounding():
    # 1 + four times 2**-53: running float sums lose the small terms, the
    # exactly rounded sum is 1 + 2**-51, which reaches the target exactly
    eps = 2.0 ** -53
    counts = np.zeros((5, 5))
    counts[2, 2] = 1.0
    counts[1, 2] = counts[3, 2] = counts[2, 1] = counts[2, 3] = eps
    naive = ((((1.0 + eps) + eps) + eps) + eps)
    exact = math.fsum([1.0, eps, eps, eps, eps])
    assert naive != exact  # the trap is real
    target = math.sqrt(exact)
    params = acb.ScaleMapParams(target_sn=target, max_radius=2.0, radius_step=1.0)
    problem = acb.prepare_scale_map(counts, None, None, params)
    assert not problem.exact
    res = acb.solve_tile(problem, 0, 5, 0, 5)
    want = brute_force_index(counts, None, np.ones((5, 5), bool), target, 2.0, 1.0, "counts")
    assert want[2, 2] == 1
    assert np.array_equal(res.index, want)
    assert res.n_exact >= 1


def test_exact_sums_equal_fsum():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(0, 1, 500), 10.0 ** rng.uniform(-20, 20, 500),
                             np.zeros(10), [2.0 ** -60, 1e16, 3.0]])
    rng.shuffle(values)
    ends = [0, 1, 2, 17, 333, 999, values.size]
    got = acb.exact_sums(values, ends)
    want = [math.fsum(values[:e].tolist()) for e in ends]
    assert got.tolist() == want


def test_exact_first_index_equals_fast_path():
    rng = np.random.default_rng(9)
    counts, background, mask = random_case(rng, "background_subtracted", shape=(16, 12))
    params = acb.ScaleMapParams(target_sn=4.0, max_radius=5.0, radius_step=0.25,
                                mode="background_subtracted")
    problem = acb.prepare_scale_map(counts, background, mask, params)
    fast = acb.solve_tile(problem, 0, 16, 0, 12).index
    slow = np.array([[acb.exact_first_index(problem, i, j) for j in range(12)]
                     for i in range(16)])
    assert np.array_equal(fast, slow)
    assert (slow > 0).sum() > 10


@pytest.mark.parametrize("max_radius, step", [(100.0, 0.125), (7.3, 0.3), (5.0, 1.0)])
def test_disk_table_counts_the_integer_points(max_radius, step):
    table = acb.disk_table(max_radius, step)
    radii = table.radii
    assert radii[0] == step and radii[-1] <= max_radius < radii[-1] + step
    for k in sorted({1, 2, 3, min(8, len(radii)), len(radii) // 2, len(radii)}):
        r = Fraction(float(radii[k - 1]))
        m = int(r) + 1
        n = sum(1 for a in range(-m, m + 1) for b in range(-m, m + 1) if a * a + b * b <= r * r)
        assert table.n_inside[k - 1] == n
        terms = table.term_end[k - 1]
        assert int(np.sum(np.where(table.term_dj[:terms] > 0, 2, 1))) == n
    # circles only change at the checked radii
    changed = np.flatnonzero(np.diff(table.n_inside)) + 2
    assert np.array_equal(table.eval_k[1:], changed)
    assert np.all(np.diff(table.off_d2) >= 0)


def test_inputs_are_checked():
    params = acb.ScaleMapParams(target_sn=5.0, max_radius=3.0, radius_step=0.5,
                                mode="background_subtracted")
    good = np.ones((4, 4))
    with pytest.raises(ValueError, match="background"):
        acb.prepare_scale_map(good, None, None, params)
    with pytest.raises(ValueError, match="negative"):
        acb.prepare_scale_map(-good, good, None, params)
    with pytest.raises(ValueError, match="non-finite"):
        acb.prepare_scale_map(good, good * np.nan, None, params)
    with pytest.raises(ValueError, match="shape"):
        acb.prepare_scale_map(good, np.ones((3, 4)), None, params)
    with pytest.raises(ValueError, match="mode"):
        acb.ScaleMapParams(mode="sqrt")
    with pytest.raises(ValueError, match="target_sn"):
        acb.ScaleMapParams(target_sn=0.0)


def test_resolve_sn_mode():
    assert acb.resolve_sn_mode("auto", True) == "background_subtracted"
    assert acb.resolve_sn_mode("auto", False) == "counts"
    assert acb.resolve_sn_mode("counts", True) == "counts"
    with pytest.raises(ValueError, match="needs a background"):
        acb.resolve_sn_mode("background_subtracted", False)


def test_region_pixels_are_strided_row_major_and_need_a_radius():
    index = np.arange(1, 8 * 9 + 1).reshape(8, 9)
    index[3, 3] = 0
    mask = np.ones((8, 9), bool)
    mask[0, 6] = False
    rows, cols = acb.region_pixels(index, mask, 3)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 0), (0, 3), (3, 0), (3, 6),
                                                        (6, 0), (6, 3), (6, 6)]
    rows, cols = acb.region_pixels(index, mask, 1)
    assert rows.size == 8 * 9 - 2
    assert np.all(np.diff(rows * 9 + cols) > 0)


def test_region_coverage_equals_direct_sums():
    rng = np.random.default_rng(4)
    ny, nx = 17, 20
    mask = rng.random((ny, nx)) > 0.2
    fovs = np.stack([np.add.outer(np.arange(ny), np.zeros(nx)) < 11,
                     np.add.outer(np.zeros(ny), np.arange(nx)) >= 6]) & mask
    expmaps = rng.uniform(1e6, 3e7, (2, ny, nx)).astype(np.float32)
    table = acb.disk_table(9.0, 0.125)
    rows, cols = np.nonzero(mask)
    index = rng.integers(1, table.radii.size + 1, rows.size)
    frac, eff = acb.region_coverage(mask, fovs, expmaps, rows, cols, index, table)
    ii, jj = np.mgrid[0:ny, 0:nx]
    for n in range(rows.size):
        r = Fraction(float(table.radii[index[n] - 1]))
        circle = ((ii - rows[n]) ** 2 + (jj - cols[n]) ** 2 <= math.floor(r * r)) & mask
        for o in range(2):
            inside = circle & fovs[o]
            assert frac[n, o] == inside.sum() / circle.sum()
            want = expmaps[o][inside].astype(np.float64).mean() if inside.any() else 0.0
            assert eff[n, o] == pytest.approx(want, rel=1e-12, abs=0.0)
    assert (frac > 0).any() and (frac < 1).any() and (frac == 0).any()
    # a circle's sums do not depend on the others computed with it
    frac1, eff1 = acb.region_coverage(mask, fovs, expmaps, rows[5:6], cols[5:6], index[5:6],
                                      table)
    assert frac1[0].tolist() == frac[5].tolist() and eff1[0].tolist() == eff[5].tolist()


def test_balance_is_complete_and_deterministic():
    costs = [5.0, 1.0, 1.0, 9.0, 3.0, 3.0, 0.0, 2.0]
    parts = balance(costs, 3)
    assert sorted(i for p in parts for i in p) == list(range(len(costs)))
    loads = [sum(costs[i] for i in p) for p in parts]
    assert max(loads) - min(loads) <= max(costs)
    assert parts == balance(costs, 3)
    assert balance(costs, 1) == [list(range(len(costs)))]


def test_tile_costs_favour_the_outskirts():
    yy, xx = np.mgrid[0:64, 0:64] - 31.5
    counts = np.rint(200.0 / (1 + (xx ** 2 + yy ** 2) / 25.0) + 0.5)
    params = acb.ScaleMapParams(target_sn=20.0, max_radius=30.0)
    problem = acb.prepare_scale_map(counts, None, None, params)
    tiles = acb.make_tiles((64, 64), 16)
    costs = acb.estimate_tile_costs(problem, tiles)
    centre = tiles.index((16, 32, 16, 32))
    corner = tiles.index((0, 16, 0, 16))
    assert costs[corner] > 3 * costs[centre]


def test_effective_time_corrects_fraction_for_the_exposure_map():
    from hpcxt.acb import effective_time, exposure_reference

    expmap = np.full((10, 10), 4.0e6)
    expmap[:, 5] = 2.0e6  # a dithered chip gap at half exposure
    fov = np.ones((10, 10), bool)
    ref = exposure_reference(expmap, fov)
    assert ref == 4.0e6
    fraction = np.array([[1.0, 0.5]])
    effective = np.array([[4.0e6, 2.0e6]])
    t = effective_time(fraction, effective, np.array([1000.0, 1000.0]), np.array([ref, ref]))
    np.testing.assert_allclose(t, [[1000.0, 250.0]])
    # an observation with no field gets no time rather than a division error
    t0 = effective_time(np.array([[0.0]]), np.array([[0.0]]), np.array([1000.0]), np.array([0.0]))
    assert t0[0, 0] == 0.0
