"""Map assembly: fitted regions -> temperature, pressure, density, entropy maps.

Kernels here are pure functions of arrays; :func:`hpcxt.stages.maps.run_maps`
reads the bundle, the region table and the fit results, and writes
``<workdir>/maps/*.fits`` (image WCS, BUNIT, NaN where there is no valid
fit; ClusterPyXT left such pixels at 0, indistinguishable from a value) and
PNG quick-looks.

Thermodynamic maps follow ClusterPyXT's pseudo quantities, without its
0-1 normalisation, so they keep physical units:

* pseudo density ``n = sqrt(SB)``, with ``SB`` the background-subtracted,
  point-source-removed surface brightness (counts cm^-2 s^-1 per image
  pixel) averaged over the region's circle;
* pressure ``P = n kT``;
* entropy ``K = kT n^(-2/3)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .schema import Status



# --------------------------------------------------------------------------
# kernels


def block_slices(row: int, col: int, step: int, shape):
    """Rows and columns of the ``step x step`` block centred on a fitted pixel."""
    half = step // 2
    r0, r1 = max(row - half, 0), min(row + half + 1, shape[0])
    c0, c1 = max(col - half, 0), min(col + half + 1, shape[1])
    return slice(r0, r1), slice(c0, c1)


def paint_blocks(values, rows, cols, step: int, mask) -> np.ndarray:
    """Image with each region's value filling its block, clipped to the mask.

    Parameters
    ----------
    values : ndarray (n,)
        One value per region (NaN for no value).
    rows, cols : ndarray (n,) int
        Fitted pixel of each region (0-based image pixels).
    step : int
        1, 3 or 5 (resolution high, medium, low): block side, image pixels.
    mask : ndarray (ny, nx) bool
        Mapped pixels; everything else is NaN.

    Returns
    -------
    ndarray (ny, nx) float64
    """
    img = np.full(mask.shape, np.nan)
    for v, r, c in zip(np.asarray(values, float), rows, cols):
        rs, cs = block_slices(int(r), int(c), step, mask.shape)
        img[rs, cs] = v
    img[~mask] = np.nan
    return img


def _disk(radius: float) -> tuple[np.ndarray, np.ndarray]:
    n = int(np.floor(radius))
    d = np.arange(-n, n + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    inside = dy * dy + dx * dx <= radius * radius
    return dy[inside], dx[inside]


def circle_mean(image, mask, rows, cols, radii) -> np.ndarray:
    """Mean of ``image`` over each circle's pixels that are in ``mask``.

    A circle holds the pixels whose centres lie within ``radius`` (image
    pixels) of the region's pixel centre, as in the scale map.

    Returns
    -------
    ndarray (n,)
        NaN for a circle with no pixel in the mask.
    """
    ny, nx = image.shape
    out = np.full(len(rows), np.nan)
    cache = {}
    for i, (r, c, rad) in enumerate(zip(rows, cols, radii)):
        if not np.isfinite(rad):
            continue
        key = float(rad)
        if key not in cache:
            cache[key] = _disk(key)
        dy, dx = cache[key]
        yy, xx = dy + int(r), dx + int(c)
        ok = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
        yy, xx = yy[ok], xx[ok]
        m = mask[yy, xx]
        if m.any():
            out[i] = image[yy[m], xx[m]].mean()
    return out


def surface_brightness(counts, background, exposure, mask) -> np.ndarray:
    """Background-subtracted surface brightness, counts cm^-2 s^-1 per pixel.

    ``counts`` and ``background`` are counts per image pixel (the background
    already scaled), ``exposure`` cm**2 s; NaN where unexposed or masked.
    """
    sb = np.full(counts.shape, np.nan)
    ok = mask & (exposure > 0)
    sb[ok] = (counts[ok] - background[ok]) / exposure[ok]
    return sb


def thermodynamics(kT, sb_mean):
    """Pseudo density, pressure and entropy from kT (keV) and mean SB.

    Returns
    -------
    density : sqrt(SB), (counts cm^-2 s^-1 pixel^-1)^(1/2); NaN where SB <= 0
    pressure : density * kT
    entropy : kT * density^(-2/3)
    """
    sb_mean = np.asarray(sb_mean, float)
    kT = np.asarray(kT, float)
    density = np.full(sb_mean.shape, np.nan)
    pos = np.isfinite(sb_mean) & (sb_mean > 0)
    density[pos] = np.sqrt(sb_mean[pos])
    pressure = density * kT
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = kT * density ** (-2.0 / 3.0)
    return density, pressure, entropy


@dataclass
class Selection:
    """Which regions make it into the maps, and why the others did not."""

    keep: np.ndarray
    dropped: dict = field(default_factory=dict)


def select_regions(status, kT, frac_err, drop_failed: bool = True,
                   max_frac_error: float | None = None) -> Selection:
    """Regions with a usable temperature.

    A region without a finite kT never has a value. With ``drop_failed``
    false, a region whose fit finished but whose error search failed keeps
    its kT (its errors stay NaN).
    """
    status = np.asarray(status)
    kT = np.asarray(kT, float)
    keep = np.isfinite(kT)
    pending = status == Status.PENDING
    failed = status == Status.FAILED
    dropped = {"pending": int(np.count_nonzero(pending))}
    if drop_failed:
        dropped["failed"] = int(np.count_nonzero(failed))
        keep &= status == Status.OK
    else:
        dropped["failed"] = int(np.count_nonzero(failed & ~np.isfinite(kT)))
        keep &= ~pending
    if max_frac_error is not None:
        too_big = keep & ~(np.asarray(frac_err, float) <= max_frac_error)
        dropped["frac_error_above_%g" % max_frac_error] = int(np.count_nonzero(too_big))
        keep &= ~too_big
    return Selection(keep=keep, dropped=dropped)


# --------------------------------------------------------------------------
# files


#: name -> (BUNIT, description) of every map written.
MAPS = {
    "temperature": ("keV", "kT"),
    "temperature_lo": ("keV", "kT lower bound (1 sigma)"),
    "temperature_hi": ("keV", "kT upper bound (1 sigma)"),
    "temperature_err": ("keV", "symmetric kT error, (hi - lo)/2"),
    "temperature_frac_err": ("", "kT error / kT"),
    "norm": ("cm**-5", "XSPEC normalisation"),
    "fit_stat": ("", "fit statistic / degrees of freedom"),
    "counts": ("count", "source counts in the fit band, all observations"),
    "density": ("(count cm**-2 s**-1)**(1/2)", "pseudo density sqrt(SB)"),
    "pressure": ("keV (count cm**-2 s**-1)**(1/2)", "pseudo pressure n kT"),
    "entropy": ("keV (count cm**-2 s**-1)**(-1/3)", "pseudo entropy kT n**(-2/3)"),
}


def region_values(res, table, bundle, selection: Selection) -> dict:
    """Per-region values of every map (NaN where not kept)."""
    kT = np.asarray(res.kT, float)
    lo = np.asarray(res.kT_lo, float)
    hi = np.asarray(res.kT_hi, float)
    err = (hi - lo) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = err / kT
        stat = np.asarray(res.stat, float) / np.asarray(res.dof, float)
    counts = np.asarray(res.counts, float)
    if counts.ndim == 2:
        counts = counts.sum(axis=1)
    sb = surface_brightness(bundle.counts, bundle.background, bundle.exposure, bundle.mask)
    sb_mean = circle_mean(sb, bundle.mask & np.isfinite(sb), table.row, table.col, table.radius)
    density, pressure, entropy = thermodynamics(kT, sb_mean)
    values = {"temperature": kT, "temperature_lo": lo, "temperature_hi": hi,
              "temperature_err": err, "temperature_frac_err": frac,
              "norm": np.asarray(res.norm, float), "fit_stat": stat, "counts": counts,
              "density": density, "pressure": pressure, "entropy": entropy}
    return {k: np.where(selection.keep, v, np.nan) for k, v in values.items()}
