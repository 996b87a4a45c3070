"""Adaptive circular binning (ACB): the scale-map kernel.

For every mapped pixel of the merged image, find the smallest circle radius
on the grid ``r_k = k * radius_step`` (k = 1, 2, ..., up to ``max_radius``,
image pixels) whose circle reaches the target signal-to-noise ratio.

Definitions (the brute-force reference in ``tests/test_acb.py`` follows them
literally):

- The circle of radius ``r`` around pixel ``(i, j)`` holds the pixels
  ``(i + di, j + dj)`` with ``di*di + dj*dj <= r*r``, compared exactly
  (``r*r`` as an exact rational of the float64 ``r``). Pixels beyond the
  image edge do not exist, and pixels outside the mask (point sources, off
  the field, outside the crop) contribute nothing.
- ``C`` and ``B`` are the sums of the counts and the scaled background over
  the circle, each rounded once to float64 (exactly what :func:`math.fsum`
  returns).
- S/N is ``sqrt(C)`` (``mode="counts"``, ClusterPyXT's behaviour) or
  ``(C - B) / sqrt(C + B)`` (``mode="background_subtracted"``, 0 when
  ``C + B == 0``), evaluated in float64 in that order of operations.
- The answer is the smallest ``k`` with ``S/N >= target_sn``. With a
  background the S/N need not grow with the radius, so no bisection: every
  radius below the answer is checked. A pixel that never reaches the target
  gets no radius (index 0, NaN radius).

Algorithm (why it is fast). Circles on the grid only change when ``r*r``
passes an integer ``d2 = di*di + dj*dj``, so the offsets within
``max_radius`` are sorted by ``d2`` once, and each pixel's circle grows ring
by ring. The image is cut into tiles; a tile grows the circles of all its
pixels at once by adding whole shifted sub-images (contiguous numpy slices,
no gathers), the offsets ``(di, dj)`` and ``(di, -dj)`` in one step from a
pre-summed pair of columns. After each distinct circle the tile's S/N is
checked, finished pixels leave, and the work shrinks to the span of the
pixels still growing. Tiles whose pixels all need large circles do not grow
them from one pixel: the circle sums at a starting radius below a rough
guess come from column-wise cumulative sums, and are used only when no
pixel of the tile reaches ``C >= target**2`` there (S/N <= sqrt(C) and C
grows with the radius, so no smaller circle can reach the target). The cost
is about the area between the tile's smallest and largest circles, and a
pixel's result depends only on the image, never on the tiling or on which
MPI rank computed it.

Exactness. Counts and integer-valued backgrounds sum exactly in float64
(every partial sum is an integer below 2**53), so the fast path is the
definition itself. When a channel is not integer-valued the running sums
carry rounding; a pixel whose S/N at any checked radius lies within a
rigorous rounding bound of the target is recomputed with exact integer
arithmetic (:func:`exact_first_index`), so the answer is always the one the
definition gives.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

SN_MODES = ("counts", "background_subtracted")

#: Unit roundoff of float64.
_U = 2.0 ** -53
#: Smallest radius (image pixels) a tile's circles start at; below it,
#: growing from one pixel is as cheap.
_WARM_START_RADIUS = 3.0
#: Starting radii tried, as fractions of the smallest guessed radius of a
#: tile, largest first (a failed try costs a few percent of a sweep).
_WARM_START_FACTORS = (0.95, 0.8, 0.6, 0.4)


@dataclass(frozen=True)
class ScaleMapParams:
    """What defines a scale map.

    Parameters
    ----------
    target_sn : float
        S/N each circle must reach (> 0).
    max_radius : float
        Largest radius tried, image pixels.
    radius_step : float
        Radius grid spacing, image pixels; radii are ``k * radius_step``.
    mode : {'counts', 'background_subtracted'}
        How S/N is computed (see the module docstring).
    """

    target_sn: float = 50.0
    max_radius: float = 100.0
    radius_step: float = 0.125
    mode: str = "counts"

    def __post_init__(self):
        if not self.target_sn > 0:
            raise ValueError(f"target_sn must be > 0, got {self.target_sn}")
        if not self.radius_step > 0:
            raise ValueError(f"radius_step must be > 0, got {self.radius_step}")
        if not self.max_radius >= self.radius_step:
            raise ValueError(f"max_radius ({self.max_radius}) must be >= radius_step "
                             f"({self.radius_step})")
        if self.mode not in SN_MODES:
            raise ValueError(f"mode must be one of {', '.join(SN_MODES)}, got {self.mode!r}")


def resolve_sn_mode(sn: str, has_background: bool) -> str:
    """Turn the config's ``acb.sn`` (auto|counts|background_subtracted) into a mode.

    ``auto`` subtracts the background when there is one.

    Raises
    ------
    ValueError
        ``background_subtracted`` without a background, or an unknown value.
    """
    if sn == "auto":
        return "background_subtracted" if has_background else "counts"
    if sn == "background_subtracted" and not has_background:
        raise ValueError("background_subtracted needs a background image, and there is none")
    if sn not in SN_MODES:
        raise ValueError(f"unknown S/N mode {sn!r}")
    return sn


def radius_grid(max_radius: float, radius_step: float) -> np.ndarray:
    """The radius grid ``r_k = k * radius_step`` for k = 1..K with ``r_K <= max_radius``.

    Returns
    -------
    ndarray, shape (K,), float64
        Radii in image pixels; element ``k - 1`` is ``r_k``.
    """
    n = int(math.floor(max_radius / radius_step))
    while (n + 1) * radius_step <= max_radius:
        n += 1
    while n > 0 and n * radius_step > max_radius:
        n -= 1
    return np.arange(1, n + 1, dtype=np.float64) * radius_step


@dataclass(frozen=True)
class DiskTable:
    """Offsets within the largest circle, in the order circles grow.

    Attributes
    ----------
    radii : ndarray (K,) float64
        ``r_k``, image pixels.
    d2_max : ndarray (K,) int64
        ``floor(r_k**2)``: an offset is in circle k when ``di**2 + dj**2 <= d2_max[k-1]``.
    reach : int
        Largest ``|di|`` (= largest ``|dj|``) of any offset.
    off_di, off_dj, off_d2 : ndarray (n,) int64
        All offsets of the largest circle, sorted by (d2, di, dj).
    n_inside : ndarray (K,) int64
        Number of offsets in circle k.
    term_di, term_dj : ndarray (m,) int64
        The offsets with ``dj >= 0`` in the same order; a term with ``dj > 0``
        stands for the pair ``(di, dj)`` and ``(di, -dj)``.
    term_end : ndarray (K,) int64
        Number of terms in circle k.
    eval_k : ndarray int64
        The k (1-based) at which the circle differs from circle k - 1 (k = 1
        included): the only radii whose S/N needs checking.
    half_width : ndarray (K, reach + 1) int64
        ``w`` such that row offset ``a`` of circle k spans ``dj in [-w, w]``;
        -1 where the row is outside the circle.
    """

    radii: np.ndarray
    d2_max: np.ndarray
    reach: int
    off_di: np.ndarray
    off_dj: np.ndarray
    off_d2: np.ndarray
    n_inside: np.ndarray
    term_di: np.ndarray
    term_dj: np.ndarray
    term_end: np.ndarray
    eval_k: np.ndarray
    half_width: np.ndarray


def disk_table(max_radius: float, radius_step: float) -> DiskTable:
    """Build the :class:`DiskTable` of a radius grid (a few ms for 800 radii)."""
    radii = radius_grid(max_radius, radius_step)
    if radii.size == 0:
        raise ValueError(f"no radius on the grid: max_radius {max_radius} < step {radius_step}")
    # floor of the exact square of each float64 radius
    d2_max = np.array([math.floor(Fraction(float(r)) ** 2) for r in radii], dtype=np.int64)
    reach = math.isqrt(int(d2_max[-1]))
    a = np.arange(-reach, reach + 1, dtype=np.int64)
    di, dj = np.meshgrid(a, a, indexing="ij")
    di, dj = di.ravel(), dj.ravel()
    d2 = di * di + dj * dj
    keep = d2 <= d2_max[-1]
    di, dj, d2 = di[keep], dj[keep], d2[keep]
    order = np.lexsort((dj, di, d2))
    di, dj, d2 = di[order], dj[order], d2[order]
    n_inside = np.searchsorted(d2, d2_max, side="right").astype(np.int64)
    is_term = dj >= 0
    term_di, term_dj, term_d2 = di[is_term], dj[is_term], d2[is_term]
    term_end = np.searchsorted(term_d2, d2_max, side="right").astype(np.int64)
    changed = np.ones(radii.size, dtype=bool)
    changed[1:] = n_inside[1:] != n_inside[:-1]
    eval_k = np.flatnonzero(changed).astype(np.int64) + 1
    rows = np.arange(reach + 1, dtype=np.int64)
    rest = d2_max[:, None] - rows[None, :] ** 2
    half_width = np.full(rest.shape, -1, dtype=np.int64)
    inside = rest >= 0
    half_width[inside] = [math.isqrt(int(v)) for v in rest[inside]]
    return DiskTable(radii=radii, d2_max=d2_max, reach=reach, off_di=di, off_dj=dj, off_d2=d2,
                     n_inside=n_inside, term_di=term_di, term_dj=term_dj, term_end=term_end,
                     eval_k=eval_k, half_width=half_width)


@dataclass(frozen=True)
class ScaleMapProblem:
    """Validated, padded input of the scale map, shared by every tile.

    Built by :func:`prepare_scale_map`; treat as read-only.

    Attributes
    ----------
    params : ScaleMapParams
    table : DiskTable
    padded : ndarray (nch, ny + 2*reach, nx + 2*reach) float64
        Counts (and, with ``mode='background_subtracted'``, background)
        times the mask, zero-padded by ``reach`` pixels on every side.
    mask : ndarray (ny, nx) bool
        Pixels that get a radius.
    exact_channels : tuple of bool
        Per channel: integer-valued with a total below 2**53, so every sum
        of its pixels, in any order, is exact.
    c_skip : float
        While every growing pixel has ``C < c_skip`` no pixel can be at or
        near the target (S/N <= sqrt(C)), so the S/N check is skipped and
        circles may start large (0 disables both).
    radius_guess : ndarray (ny, nx) float64
        Rough radius each pixel needs (image pixels) from the local mean
        counts; it only picks where a tile's circles start growing, and a
        start that is too large is detected and not used.
    """

    params: ScaleMapParams
    table: DiskTable
    padded: np.ndarray
    mask: np.ndarray
    exact_channels: tuple
    c_skip: float
    radius_guess: np.ndarray

    @property
    def exact(self) -> bool:
        """Every running sum is exact (the fast path is the definition)."""
        return all(self.exact_channels)

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape


def _check_image(name: str, arr, shape=None) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image, got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, counts has {shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite pixels")
    if np.any(a < 0):
        raise ValueError(f"{name} has negative pixels")
    return a


def prepare_scale_map(counts, background, mask, params: ScaleMapParams,
                      table: DiskTable | None = None) -> ScaleMapProblem:
    """Validate and pad the inputs once, for any number of :func:`solve_tile` calls.

    Parameters
    ----------
    counts : array_like (ny, nx)
        Counts per image pixel (>= 0, finite).
    background : array_like (ny, nx) or None
        Scaled background counts per image pixel; needed for
        ``mode='background_subtracted'``, ignored otherwise.
    mask : array_like (ny, nx) bool or None
        Mapped pixels (None: every pixel).
    params : ScaleMapParams
    table : DiskTable, optional
        Reuse a table built for the same ``max_radius`` and ``radius_step``.

    Raises
    ------
    ValueError
        Wrong shapes, negative or non-finite pixels, or a missing background.
    """
    c = _check_image("counts", counts)
    shape = c.shape
    m = np.ones(shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != shape:
        raise ValueError(f"mask has shape {m.shape}, counts has {shape}")
    channels = [c]
    if params.mode == "background_subtracted":
        if background is None:
            raise ValueError("mode 'background_subtracted' needs a background image")
        channels.append(_check_image("background", background, shape))
    if table is None:
        table = disk_table(params.max_radius, params.radius_step)
    R = table.reach
    padded = np.zeros((len(channels), shape[0] + 2 * R, shape[1] + 2 * R))
    for ch, img in enumerate(channels):
        padded[ch, R:R + shape[0], R:R + shape[1]] = np.where(m, img, 0.0)
    inner = padded[:, R:R + shape[0], R:R + shape[1]]
    exact_channels = tuple(bool(np.all(inner[ch] == np.floor(inner[ch]))
                                and inner[ch].sum() < 2.0 ** 53) for ch in range(len(channels)))
    target = float(params.target_sn)
    # Skipping uses S/N <= sqrt(C) with a 1e-6 margin, which covers the
    # relative rounding (n u) of any circle sum by orders of magnitude.
    c_skip = (target * (1.0 - 1e-6)) ** 2 if table.n_inside[-1] * _U < 1e-9 else 0.0
    area = _area_estimate(inner, m, target, float(table.n_inside[-1]))
    return ScaleMapProblem(params=params, table=table, padded=padded, mask=m,
                           exact_channels=exact_channels, c_skip=c_skip,
                           radius_guess=np.sqrt(area / np.pi))


def _tolerance(n_terms, s, target, start_error=0.0):
    """Bound on |S/N(fast sums) - S/N(exactly rounded sums)|.

    Running float64 sums of ``n`` non-negative terms are within
    ``(n - 1) u S`` of the exact sum, exactly rounded sums within ``u S``;
    ``start_error`` bounds the error of a tile's starting circle sums (C and
    B together). Both S/N formulas change by at most ``1.5 |dC + dB| /
    sqrt(S)``, plus a few roundings of the formula itself; S/N near the
    target needs ``S >= target**2``. Factors of 2-4 of slack on top.
    """
    tol = 4.0 * (n_terms + 2) * _U * np.sqrt(s) + 32.0 * _U * target
    if start_error:
        tol = tol + 2.0 * start_error / np.sqrt(np.maximum(s, 0.25 * target * target))
    return tol


def _sn(c, b, mode):
    """S/N of circle sums, float64, in the operation order of the definition."""
    if mode == "counts":
        return np.sqrt(c)
    s = c + b
    out = np.zeros(np.shape(s))
    np.divide(c - b, np.sqrt(s), out=out, where=s > 0)
    return out


def _span(todo):
    """First and one-past-last True of a flat boolean array, or None."""
    hit = np.flatnonzero(todo)
    if hit.size == 0:
        return None
    return int(hit[0]), int(hit[-1]) + 1


@dataclass
class TileResult:
    """Scale-map indices of one tile.

    Attributes
    ----------
    index : ndarray (r1 - r0, c1 - c0) int32
        ``k`` of the radius ``r_k`` (1-based); 0 where none (masked, or the
        target is never reached).
    n_exact : int
        Pixels recomputed with exact arithmetic because a float S/N was
        within rounding of the target.
    start_index : int
        The circles started at radius index ``start_index + 1`` (0: from one
        pixel); every radius below was proven short of the target.
    """

    index: np.ndarray
    n_exact: int = 0
    start_index: int = 0


class _TileColumns:
    """The padded image's columns around one tile, pre-summed in pairs.

    A circle centred in the tile covers the offsets ``(di, dj)`` and
    ``(di, -dj)`` together, so columns ``+dj`` and ``-dj`` are summed once
    (:meth:`pair`) and every ring term is one contiguous slice of a pair.

    Parameters
    ----------
    problem : ScaleMapProblem
    r0, r1, c0, c1 : int
        The tile: image rows ``r0:r1`` and columns ``c0:c1`` (image pixels).

    Attributes
    ----------
    pairs : dict of int to ndarray (nch, (h + 2*reach) * w) float64
        Summed column pairs already built, keyed by ``dj`` (image pixels);
        read directly in the hot loop, filled by :meth:`pair`.
    """

    def __init__(self, problem: ScaleMapProblem, r0: int, r1: int, c0: int, c1: int):
        self.pad = problem.padded
        self.half_width = problem.table.half_width
        self.exact_channels = list(problem.exact_channels)
        self.reach = problem.table.reach
        self.nch = self.pad.shape[0]
        self.h, self.w = r1 - r0, c1 - c0
        self.c0, self.c1 = c0, c1
        self.rows = slice(r0, r1 + 2 * self.reach)
        self.pairs: dict[int, np.ndarray] = {}

    def pair(self, dj: int) -> np.ndarray:
        """Columns +dj and -dj of the padded image summed, tile rows +- reach, flat."""
        v = self.pairs.get(dj)
        if v is None:
            R, c0, c1 = self.reach, self.c0, self.c1
            v = self.pad[:, self.rows, c0 + R + dj:c1 + R + dj]
            v = v + self.pad[:, self.rows, c0 + R - dj:c1 + R - dj] if dj else v.copy()
            v = self.pairs[dj] = v.reshape(self.nch, -1)
        return v

    def circle_sums(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """All channels' sums over circle k for every tile pixel, and error bounds.

        One column pair (dj, -dj) at a time: a difference of cumulative sums
        down the pair array. Exact for integer-valued channels.

        Returns
        -------
        sums : ndarray (nch, h * w) float64
        errors : ndarray (nch,) float64
            Bound on each channel's rounding error (counts); 0 for exact
            channels.
        """
        nch, h, w, R = self.nch, self.h, self.w, self.reach
        hw = self.half_width[k - 1]
        out = np.zeros((nch, h * w))
        band = np.zeros(nch)
        for dj in range(int(np.count_nonzero(hw >= 0))):
            hh = int(hw[dj])
            seg = self.pair(dj).reshape(nch, h + 2 * R, w)[:, R - hh:R + hh + h]
            cs = np.zeros((nch, 2 * hh + h + 1, w))
            np.cumsum(seg, axis=1, out=cs[:, 1:])
            out += (cs[:, 2 * hh + 1:] - cs[:, :h]).reshape(nch, -1)
            band += cs[:, -1].sum(axis=1)
        # cumulative sums of <= h + 2R terms, differences, then <= R + 1 adds
        errors = (4.0 * (h + 2 * R) + 2.0 * R + 8.0) * _U * band
        errors[self.exact_channels] = 0.0
        return out, errors


def _warm_start(problem: ScaleMapProblem, cols: _TileColumns, todo: np.ndarray,
                r0: int, r1: int, c0: int, c1: int):
    """Largest proven-short circle a tile's circles may start from.

    Start the circles large when every pixel of the tile surely needs
    more: then no smaller circle can reach the target (S/N <= sqrt(C),
    C grows with the radius) and the rings inside need no growing.

    Returns
    -------
    start_k : int
        Radius index the circles start at (0: from one pixel).
    sums : ndarray (nch, h * w) float64 or None
        Circle sums at ``start_k``; None when ``start_k`` is 0.
    errors : ndarray (nch,) float64
        Rounding bound of ``sums`` per channel (counts); zeros without a start.
    """
    p = problem
    t = p.table
    step = float(p.params.radius_step)
    if p.c_skip > 0.0:
        guess = float(np.min(p.radius_guess[r0:r1, c0:c1], where=todo.reshape(r1 - r0, c1 - c0),
                             initial=np.inf))
        for factor in _WARM_START_FACTORS:
            k = min(int(factor * guess / step), t.radii.size)
            if k * step < _WARM_START_RADIUS:
                break
            sums, errors = cols.circle_sums(k)
            if np.max(sums[0], where=todo, initial=0.0) + errors[0] < p.c_skip:
                return k, sums, errors
    return 0, None, np.zeros(cols.nch)


def _grow_circles(problem: ScaleMapProblem, cols: _TileColumns, acc: np.ndarray,
                  todo: np.ndarray, start_k: int, start_error: np.ndarray):
    """Grow every tile pixel's circle ring by ring until it reaches the target.

    Parameters
    ----------
    problem : ScaleMapProblem
    cols : _TileColumns
    acc : ndarray (nch, h * w) float64
        Circle sums at ``start_k``; updated in place.
    todo : ndarray (h * w,) bool
        Pixels still growing; updated in place.
    start_k : int
        Radius index the sums in ``acc`` belong to (0: empty circles).
    start_error : ndarray (nch,) float64
        Rounding bound of ``acc`` per channel (counts).

    Returns
    -------
    index : ndarray (h * w,) int32
        Radius index reached per pixel (0: none).
    flagged : ndarray (h * w,) bool
        Pixels whose float S/N came within rounding of the target at some
        checked radius, to be recomputed exactly.
    """
    p = problem
    t = p.table
    R, w, nch = cols.reach, cols.w, cols.nch
    mode = p.params.mode
    target = float(p.params.target_sn)
    index = np.zeros(todo.size, dtype=np.int32)
    flagged = np.zeros(todo.size, dtype=bool)
    c_skip = p.c_skip - start_error[0]
    e_start = float(start_error.sum())
    # a term (di, dj) reads the pair array dj shifted by di rows: one
    # contiguous slice of the flattened arrays
    term_off = ((t.term_di + R) * w).tolist()
    term_dj = t.term_dj.tolist()
    term_end = t.term_end.tolist()
    n_inside = t.n_inside.tolist()
    exact = p.exact
    pairs = cols.pairs
    f0, f1 = _span(todo)
    start = term_end[start_k - 1] if start_k else 0
    for k in t.eval_k.tolist():
        if k <= start_k:
            continue
        end = term_end[k - 1]
        acc_s = acc[:, f0:f1]
        for i in range(start, end):
            o = term_off[i]
            v = pairs.get(term_dj[i])
            if v is None:
                v = cols.pair(term_dj[i])
            acc_s += v[:, o + f0:o + f1]
        start = end
        c = acc_s[0]
        todo_s = todo[f0:f1]
        if c_skip > 0.0 and np.max(c, where=todo_s, initial=0.0) < c_skip:
            continue
        sn = _sn(c, acc_s[1] if nch > 1 else None, mode)
        reached = todo_s & (sn >= target)
        if not exact:
            s_tot = c + acc_s[1] if nch > 1 else c
            near = np.abs(sn - target) <= _tolerance(n_inside[k - 1], s_tot, target, e_start)
            flagged[f0:f1] |= todo_s & near
        if reached.any():
            index[f0:f1][reached] = k
            todo_s &= ~reached
            span = _span(todo)
            if span is None:
                break
            f0, f1 = span
    return index, flagged


def solve_tile(problem: ScaleMapProblem, r0: int, r1: int, c0: int, c1: int) -> TileResult:
    """Scale-map indices of the pixels in rows ``r0:r1``, columns ``c0:c1``.

    Every pixel's result is the definition's answer (module docstring),
    whatever tile it is solved in: where float rounding could decide a
    comparison with the target, the pixel is recomputed exactly.

    Returns
    -------
    TileResult
    """
    p = problem
    h, w = r1 - r0, c1 - c0
    todo = p.mask[r0:r1, c0:c1].ravel()  # a copy (the slice is not contiguous)
    if todo.base is not None:
        todo = todo.copy()
    if _span(todo) is None:
        return TileResult(np.zeros((h, w), dtype=np.int32))
    cols = _TileColumns(p, r0, r1, c0, c1)
    acc = np.zeros((cols.nch, h * w))
    start_k, start_sums, start_error = _warm_start(p, cols, todo, r0, r1, c0, c1)
    if start_sums is not None:
        acc[:] = start_sums
    index, flagged = _grow_circles(p, cols, acc, todo, start_k, start_error)
    index = index.reshape(h, w)
    n_exact = 0
    if flagged.any():
        for i, j in zip(*np.nonzero(flagged.reshape(h, w))):
            index[i, j] = exact_first_index(p, r0 + int(i), c0 + int(j))
            n_exact += 1
    return TileResult(index, n_exact, start_k)


def exact_sums(values, ends) -> np.ndarray:
    """Exactly rounded sums ``sum(values[:e])`` for each ``e`` in ``ends``.

    The same float64 as :func:`math.fsum` of each prefix, computed with one
    pass of Python integers (each float is ``m * 2**e`` with integer ``m``).

    Parameters
    ----------
    values : array_like (n,) float64
        Finite values.
    ends : array_like of int
        Prefix lengths, 0..n.
    """
    v = np.asarray(values, dtype=np.float64)
    ends = [int(e) for e in ends]
    mant, expo = np.frexp(v)
    mint = (mant * 2.0 ** 53).astype(np.int64)
    expo = expo.astype(np.int64) - 53
    nz = mint != 0
    if not nz.any():
        return np.zeros(len(ends))
    base = int(expo[nz].min())
    shifts = np.where(nz, expo - base, 0)
    ints = [m << s for m, s in zip(mint.tolist(), shifts.tolist())]
    cum = [0, *itertools.accumulate(ints)]
    out = np.empty(len(ends))
    for i, e in enumerate(ends):
        total = cum[e]
        # int -> float and int / int are correctly rounded in CPython
        out[i] = float(total << base) if base >= 0 else total / (1 << -base)
    return out


def exact_first_index(problem: ScaleMapProblem, row: int, col: int) -> int:
    """The answer for one pixel from exactly rounded circle sums (slow, exact).

    Returns
    -------
    int
        ``k`` of the smallest radius reaching the target, 0 if none or masked.
    """
    p = problem
    if not p.mask[row, col]:
        return 0
    t = p.table
    R = t.reach
    ks = t.eval_k
    ends = t.n_inside[ks - 1]
    sums = [exact_sums(p.padded[ch, R + row + t.off_di, R + col + t.off_dj], ends)
            for ch in range(p.padded.shape[0])]
    sn = _sn(sums[0], sums[1] if len(sums) > 1 else None, p.params.mode)
    hit = np.flatnonzero(sn >= float(p.params.target_sn))
    return int(ks[hit[0]]) if hit.size else 0


# --------------------------------------------------------------------------
# tiling and cost


def default_tile_size(shape) -> int:
    """Tile side for an image: about 64 tiles or more, sides 16..64 pixels.

    Depends on the image shape only, never on the number of ranks.
    """
    ny, nx = shape
    return int(min(64, max(16, round(math.sqrt(ny * nx / 64.0)))))


def make_tiles(shape, tile_size: int = 64) -> list[tuple[int, int, int, int]]:
    """Row-major tiles ``(r0, r1, c0, c1)`` covering an image of ``shape``."""
    ny, nx = shape
    if tile_size < 1:
        raise ValueError("tile_size must be >= 1")
    return [(r, min(r + tile_size, ny), c, min(c + tile_size, nx))
            for r in range(0, ny, tile_size) for c in range(0, nx, tile_size)]


def _box_mean(img: np.ndarray, weight: np.ndarray, size: int) -> np.ndarray:
    """Mean of ``img`` over ``weight`` in a ``size``-pixel box around each pixel."""
    half = size // 2
    ny, nx = img.shape

    def box_sum(a):
        s = np.zeros((ny + 1, nx + 1))
        s[1:, 1:] = a.cumsum(axis=0).cumsum(axis=1)
        r = np.arange(ny)
        c = np.arange(nx)
        r_lo, r_hi = np.clip(r - half, 0, ny), np.clip(r + half + 1, 0, ny)
        c_lo, c_hi = np.clip(c - half, 0, nx), np.clip(c + half + 1, 0, nx)
        return (s[np.ix_(r_hi, c_hi)] - s[np.ix_(r_lo, c_hi)]
                - s[np.ix_(r_hi, c_lo)] + s[np.ix_(r_lo, c_lo)])

    return box_sum(img) / np.maximum(box_sum(weight), 1e-12)


def _area_estimate(inner, mask, target, max_area, smooth: int = 15) -> np.ndarray:
    """Circle area (pixels) each pixel needs, from box means of the channels.

    ``target**2 / C`` per pixel area without a background,
    ``target**2 (C + B) / (C - B)**2`` with one; capped at ``max_area``;
    0 outside the mask.
    """
    m = mask.astype(np.float64)
    rho_c = _box_mean(inner[0], m, smooth)
    t2 = target * target
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if inner.shape[0] > 1:
            rho_b = _box_mean(inner[1], m, smooth)
            area = t2 * (rho_c + rho_b) / (rho_c - rho_b) ** 2
            area[rho_c <= rho_b] = max_area
        else:
            area = t2 / rho_c
    area = np.where(np.isfinite(area), np.minimum(area, max_area), max_area)
    return np.where(mask, area, 0.0)


def estimate_tile_costs(problem: ScaleMapProblem, tiles) -> np.ndarray:
    """Relative cost of solving each tile, for load balancing.

    A pixel costs about the area of its circle (from
    :attr:`ScaleMapProblem.radius_guess`); the per-radius checks cost the
    tile's area times the number of radii. Only the balance depends on this.

    Returns
    -------
    ndarray (len(tiles),) float64
    """
    radius = problem.radius_guess
    area = np.pi * radius * radius
    costs = np.empty(len(tiles))
    for n, (r0, r1, c0, c1) in enumerate(tiles):
        a = area[r0:r1, c0:c1]
        r = radius[r0:r1, c0:c1]
        costs[n] = a.sum() + 4.0 * a.size * (r.max() if a.size else 0.0)
    return costs


def scale_map_index(counts, background, mask, params: ScaleMapParams,
                    tile_size: int | None = None) -> np.ndarray:
    """Scale-map radius indices of a whole image, on one core.

    ``tile_size`` defaults to :func:`default_tile_size`; the result does not
    depend on it.

    Returns
    -------
    ndarray (ny, nx) int32
        ``k`` of the radius ``k * radius_step``; 0 where none.
    """
    problem = prepare_scale_map(counts, background, mask, params)
    index = np.zeros(problem.shape, dtype=np.int32)
    tile_size = tile_size or default_tile_size(problem.shape)
    for r0, r1, c0, c1 in make_tiles(problem.shape, tile_size):
        index[r0:r1, c0:c1] = solve_tile(problem, r0, r1, c0, c1).index
    return index


def index_to_radius(index, radius_step: float) -> np.ndarray:
    """Radii (image pixels, float64) of scale-map indices; NaN where the index is 0."""
    index = np.asarray(index)
    return np.where(index > 0, index.astype(np.float64) * radius_step, np.nan)


def scale_map(counts, background, mask, params: ScaleMapParams,
              tile_size: int | None = None) -> np.ndarray:
    """Scale map: circle radius of every pixel, image pixels (NaN where none).

    Parameters
    ----------
    counts : array_like (ny, nx)
        Counts per image pixel.
    background : array_like (ny, nx) or None
        Scaled background counts per image pixel.
    mask : array_like (ny, nx) bool or None
        Mapped pixels; the others get NaN and contribute nothing to circles.
    params : ScaleMapParams

    Returns
    -------
    ndarray (ny, nx) float64
    """
    return index_to_radius(scale_map_index(counts, background, mask, params, tile_size),
                           params.radius_step)


# --------------------------------------------------------------------------
# regions


RESOLUTION_STEP = {"high": 1, "medium": 3, "low": 5}


def region_pixels(index, mask, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Fitted pixels: every ``step``-th row and column, mapped, with a radius.

    Returns
    -------
    rows, cols : ndarray (n,) int64
        Row-major order; the region id is the position in these arrays.
    """
    index = np.asarray(index)
    pick = np.zeros(index.shape, dtype=bool)
    pick[::step, ::step] = True
    pick &= np.asarray(mask, dtype=bool) & (index > 0)
    rows, cols = np.nonzero(pick)
    return rows.astype(np.int64), cols.astype(np.int64)


@dataclass(frozen=True)
class CircleSummer:
    """Row-prefix sums of images, for sums over circles of any pixel and radius.

    Built by :func:`prepare_circle_sums`. Each circle row is one difference
    of cumulative sums; rows are added in increasing ``di`` whatever the
    batch, so a circle's sum does not depend on which other circles are
    computed with it. Integer-valued images sum exactly.

    Attributes
    ----------
    prefix : ndarray (nch, ny + 2*reach, nx + 2*reach + 1) float64
        Cumulative sums along each zero-padded row.
    table : DiskTable
    shape : (ny, nx)
    """

    prefix: np.ndarray
    table: DiskTable
    shape: tuple

    def sums(self, rows, cols, index, batch: int = 8192) -> np.ndarray:
        """Sums over the circles of radius index ``index`` centred on ``(rows, cols)``.

        Parameters
        ----------
        rows, cols : array_like (n,) int
            Circle centres (image pixels).
        index : array_like (n,) int
            Radius index ``k`` (1-based) of each circle.

        Returns
        -------
        ndarray (nch, n) float64
        """
        table = self.table
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        index = np.asarray(index, dtype=np.int64)
        nch = self.prefix.shape[0]
        n = rows.size
        out = np.zeros((nch, n))
        if n == 0:
            return out
        if index.min() < 1 or index.max() > table.radii.size:
            raise ValueError("radius index out of range")
        ny, nx = self.shape
        if rows.min() < 0 or rows.max() >= ny or cols.min() < 0 or cols.max() >= nx:
            raise ValueError("circle centre outside the image")
        R = table.reach
        width = self.prefix.shape[2]
        flat = self.prefix.reshape(nch, -1)
        hw = table.half_width
        lo_off = np.where(hw >= 0, -hw, 0)
        hi_off = np.where(hw >= 0, hw + 1, 0)
        order = np.argsort(index, kind="stable")
        for s in range(0, n, batch):
            sel = order[s:s + batch]
            k = index[sel] - 1
            reach = math.isqrt(int(table.d2_max[k.max()]))
            base = (rows[sel] + R) * width + cols[sel] + R
            acc = np.zeros((nch, sel.size))
            for di in range(-reach, reach + 1):
                a = abs(di)
                row_base = base + di * width
                acc += flat[:, row_base + hi_off[k, a]] - flat[:, row_base + lo_off[k, a]]
            out[:, sel] = acc
        return out


def prepare_circle_sums(images, table: DiskTable) -> CircleSummer:
    """Build a :class:`CircleSummer` for ``images`` (nch, ny, nx)."""
    img = np.asarray(images, dtype=np.float64)
    nch, ny, nx = img.shape
    R = table.reach
    width = nx + 2 * R + 1
    prefix = np.zeros((nch, ny + 2 * R, width))
    prefix[:, R:R + ny, R + 1:R + 1 + nx] = np.cumsum(img, axis=2)
    prefix[:, R:R + ny, R + 1 + nx:] = prefix[:, R:R + ny, R + nx:R + nx + 1]
    return CircleSummer(prefix=prefix, table=table, shape=(ny, nx))


def circle_sums(images, rows, cols, index, table: DiskTable) -> np.ndarray:
    """Sums of ``images`` (nch, ny, nx) over circles; see :meth:`CircleSummer.sums`.

    Returns
    -------
    ndarray (nch, n) float64
    """
    return prepare_circle_sums(images, table).sums(rows, cols, index)


def coverage_images(mask, fovs, exposure_maps) -> np.ndarray:
    """The images whose circle sums give :func:`region_coverage`.

    Returns
    -------
    ndarray (1 + 2*nobs, ny, nx) float64
        The mask, each observation's field within the mask, and each
        exposure map (cm**2 s) on that field.
    """
    m = np.asarray(mask, dtype=bool)
    fovs = np.asarray(fovs, dtype=bool)
    expmaps = np.asarray(exposure_maps, dtype=np.float64)
    inside = fovs & m[None]
    return np.concatenate([m[None].astype(np.float64), inside.astype(np.float64),
                           np.where(inside, expmaps, 0.0)], axis=0)


def coverage_from_sums(sums, nobs: int) -> tuple[np.ndarray, np.ndarray]:
    """Fraction in the field and mean exposure from circle sums of :func:`coverage_images`."""
    n_mask = sums[0]
    n_fov = sums[1:1 + nobs].T
    exp_sum = sums[1 + nobs:1 + 2 * nobs].T
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(n_mask[:, None] > 0, n_fov / n_mask[:, None], 0.0)
        effective = np.where(n_fov > 0, exp_sum / n_fov, 0.0)
    return fraction, effective


def region_coverage(mask, fovs, exposure_maps, rows, cols, index,
                    table: DiskTable) -> tuple[np.ndarray, np.ndarray]:
    """Per region and observation: share of the circle in the field, mean exposure.

    Parameters
    ----------
    mask : array_like (ny, nx) bool
        Mapped pixels.
    fovs : array_like (nobs, ny, nx) bool
        Each observation's field.
    exposure_maps : array_like (nobs, ny, nx)
        Each observation's exposure map, cm**2 s.
    rows, cols, index : array_like (n,) int
        Region pixels and radius indices.
    table : DiskTable

    Returns
    -------
    fraction : ndarray (n, nobs) float64
        (mapped circle pixels in the field) / (mapped circle pixels); exact
        ratio of integer counts.
    effective_exposure : ndarray (n, nobs) float64
        Mean exposure map over the mapped circle pixels in the field, cm**2 s
        (0 where there are none).
    """
    images = coverage_images(mask, fovs, exposure_maps)
    sums = circle_sums(images, rows, cols, index, table)
    return coverage_from_sums(sums, np.asarray(fovs).shape[0])


def exposure_reference(exposure_map, fov, percentile: float = 99.9) -> float:
    """The exposure-map value that stands for the ARF's full exposure, cm**2 s.

    A high percentile of the map over the observation's field: the
    on-axis, fully dithered exposure, robust to a few odd pixels.
    """
    values = np.asarray(exposure_map)[np.asarray(fov, bool)]
    return float(np.percentile(values, percentile)) if values.size else 0.0


def effective_time(fraction, effective_exposure, exposure_s, reference):
    """Effective exposure time of each region in each observation, s.

    ``EXPOSURE * fraction * <exposure map over the circle> / reference``:
    ClusterPyXT's ``fraction * EXPOSURE`` corrected for vignetting, dither
    and chip gaps inside the circle, so that observations fitted with one
    tied norm agree on how much of the region each saw.

    Parameters
    ----------
    fraction, effective_exposure : ndarray (n, nobs)
        Share of the circle in each field, and the exposure map (cm**2 s)
        averaged over the circle's pixels in the field.
    exposure_s, reference : ndarray (nobs,)
        EXPOSURE (s) and :func:`exposure_reference` (cm**2 s) of each
        observation.
    """
    reference = np.asarray(reference, float)
    scale = np.divide(np.asarray(exposure_s, float), reference,
                      out=np.zeros_like(reference), where=reference > 0)
    return np.asarray(fraction, float) * np.asarray(effective_exposure, float) * scale[None, :]
