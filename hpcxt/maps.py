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

Which region a pixel shows, and why a pixel is blank, is decided once by
:func:`assign_pixels` and :func:`coverage_map` (codes :class:`Coverage`,
written as ``coverage.fits``): every map and the summary use that answer.
The exposure-corrected images (:func:`flux_image`) follow CIAO's
``fluximage``: counts over the exposure map, photon cm^-2 s^-1 per image
pixel, with the exposure map thresholded at a fraction of its peak.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from .schema import Status

#: CIAO fluximage's default ``expmapthresh``: pixels whose exposure is below
#: this fraction of the exposure map's peak are left out of the flux image.
FLUXIMAGE_THRESHOLD = 0.015


class Coverage(enum.IntEnum):
    """The codes of ``coverage.fits``: what each image pixel of the maps shows.

    0 and 1 carry a value; every other code is a blank (NaN) pixel of a
    different kind.
    """

    MAPPED = 0       #: the value of the region whose block holds the pixel
    FILLED = 1       #: edge strip missed by the blocks: the nearest region's value
    FIT_FAILED = 2   #: the region's fit failed (no usable kT)
    LOW_SN = 3       #: the block's centre never reached the target S/N: no region
    NO_REGION = 4    #: outside every region's block and too far from any to fill
    MASKED = 5       #: point source, outside the crop, or unexposed
    PENDING = 6      #: the region is not fitted yet
    DROPPED = 7      #: fitted, but dropped by maps.max_frac_error

    @property
    def meaning(self) -> str:
        return _COVERAGE_MEANING[self]

    @property
    def has_value(self) -> bool:
        return self in (Coverage.MAPPED, Coverage.FILLED)


_COVERAGE_MEANING = {
    Coverage.MAPPED: "value of the region whose block holds the pixel",
    Coverage.FILLED: "edge strip outside every block: nearest region's value",
    Coverage.FIT_FAILED: "blank: the region's fit failed",
    Coverage.LOW_SN: "blank: never reached the target S/N (no region)",
    Coverage.NO_REGION: "blank: outside every region's block",
    Coverage.MASKED: "blank: point source, outside the crop or unexposed",
    Coverage.PENDING: "blank: the region is not fitted yet",
    Coverage.DROPPED: "blank: dropped by maps.max_frac_error",
}


# --------------------------------------------------------------------------
# kernels


def block_slices(row: int, col: int, step: int, shape):
    """Rows and columns of the ``step x step`` block centred on a fitted pixel."""
    half = step // 2
    r0, r1 = max(row - half, 0), min(row + half + 1, shape[0])
    c0, c1 = max(col - half, 0), min(col + half + 1, shape[1])
    return slice(r0, r1), slice(c0, c1)


def assign_pixels(rows, cols, step: int, mask) -> tuple[np.ndarray, np.ndarray]:
    """Which region each image pixel shows, and why where none.

    A region owns the ``step x step`` block centred on its fitted pixel
    (clipped to the image and the mask), as in ClusterPyXT. At low and
    medium resolution the blocks miss pixels: strips along the image edges
    beyond the last block, and pixels of blocks whose centre is masked (a
    point source, the crop edge). Those take the outcome of the nearest
    block centre in the mask when it lies within one and a half blocks
    (``step + step//2`` image pixels, chessboard distance): its region's
    value, or no value if that centre never reached the target S/N.

    Parameters
    ----------
    rows, cols : ndarray (n,) int
        Fitted pixel of each region (0-based image pixels); every ``step``-th
        row and column, as :func:`hpcxt.acb.region_pixels` picks them.
    step : int
        1, 3 or 5 (resolution high, medium, low), image pixels.
    mask : ndarray (ny, nx) bool
        Mapped pixels.

    Returns
    -------
    owner : ndarray (ny, nx) int64
        Index of the region each pixel shows; -1 for none.
    how : ndarray (ny, nx) uint8
        :class:`Coverage` code: ``MAPPED`` (in a block), ``FILLED`` (from the
        nearest region), ``LOW_SN``, ``NO_REGION`` or ``MASKED``.
    """
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(mask, dtype=bool)
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    ny, nx = mask.shape
    half = step // 2
    owner = np.full(mask.shape, -1, dtype=np.int64)
    for i, (r, c) in enumerate(zip(rows, cols)):
        rs, cs = block_slices(int(r), int(c), step, mask.shape)
        owner[rs, cs] = i
    owner[~mask] = -1
    how = np.full(mask.shape, Coverage.MASKED, dtype=np.uint8)
    how[owner >= 0] = Coverage.MAPPED
    todo = mask & (owner < 0)
    if not todo.any():
        return owner, how
    # Block centres in the mask; those without a region never reached the
    # target S/N (region_pixels keeps every mapped centre with a radius).
    centre = np.zeros(mask.shape, dtype=bool)
    centre[::step, ::step] = True
    centre &= mask
    region_at = np.full(mask.shape, -1, dtype=np.int64)
    region_at[rows, cols] = np.arange(rows.size)
    rr, cc = np.nonzero(todo)
    own_r = (rr + half) // step * step
    own_c = (cc + half) // step * step
    in_image = (own_r < ny) & (own_c < nx)
    low = np.zeros(rr.size, dtype=bool)
    low[in_image] = centre[own_r[in_image], own_c[in_image]]
    how[rr[low], cc[low]] = Coverage.LOW_SN
    rr, cc = rr[~low], cc[~low]
    how[rr, cc] = Coverage.NO_REGION
    if rr.size == 0 or not centre.any():
        return owner, how
    _, (near_r, near_c) = distance_transform_edt(~centre, return_indices=True)
    nr, nc = near_r[rr, cc], near_c[rr, cc]
    close = np.maximum(np.abs(rr - nr), np.abs(cc - nc)) <= step + half
    region = region_at[nr, nc]
    fill = close & (region >= 0)
    owner[rr[fill], cc[fill]] = region[fill]
    how[rr[fill], cc[fill]] = Coverage.FILLED
    how[rr[close & (region < 0)], cc[close & (region < 0)]] = Coverage.LOW_SN
    return owner, how


def coverage_map(owner, how, region_codes) -> np.ndarray:
    """The coverage code of every pixel: the pixel's geometry and its region's outcome.

    Parameters
    ----------
    owner, how : ndarray (ny, nx)
        From :func:`assign_pixels`.
    region_codes : ndarray (n,) uint8
        :class:`Coverage` code of each region: ``MAPPED`` for a region with a
        value, else ``FIT_FAILED``, ``PENDING`` or ``DROPPED``
        (:attr:`Selection.codes`).

    Returns
    -------
    ndarray (ny, nx) uint8
    """
    out = np.asarray(how, dtype=np.uint8).copy()
    owned = owner >= 0
    outcome = np.asarray(region_codes, dtype=np.uint8)[owner[owned]]
    out[owned] = np.where(outcome == Coverage.MAPPED, out[owned], outcome)
    return out


def paint(values, owner, coverage) -> np.ndarray:
    """Image of each pixel's region value where the coverage has a value, NaN elsewhere.

    Parameters
    ----------
    values : ndarray (n,)
        One value per region.
    owner, coverage : ndarray (ny, nx)
        From :func:`assign_pixels` and :func:`coverage_map`.

    Returns
    -------
    ndarray (ny, nx) float64
    """
    img = np.full(owner.shape, np.nan)
    show = (coverage == Coverage.MAPPED) | (coverage == Coverage.FILLED)
    img[show] = np.asarray(values, dtype=float)[owner[show]]
    return img


def count_coverage(coverage) -> dict[str, int]:
    """Pixels of each coverage code, by lower-case name (every code listed)."""
    counts = np.bincount(np.asarray(coverage, dtype=np.int64).ravel(),
                         minlength=len(Coverage))
    return {c.name.lower(): int(counts[c]) for c in Coverage}


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


def flux_image(counts, exposure, mask, threshold: float = FLUXIMAGE_THRESHOLD,
               background=None) -> np.ndarray:
    """Exposure-corrected image, as CIAO's ``fluximage`` makes it.

    ``(counts - background) / exposure`` per image pixel, where pixels whose
    exposure is below ``threshold`` times the exposure map's peak are left
    out (fluximage's ``expmapthresh``, default 1.5%: at chip edges the steep
    exposure gradient would otherwise dominate the image). With the
    exposure map in cm**2 s count/photon, as ``fluximage`` and ``mkexpmap``
    write it, the result is photon cm^-2 s^-1 per image pixel. For several
    observations, counts and exposure maps are sums, as in ``merge_obs``.

    Parameters
    ----------
    counts : ndarray (ny, nx)
        Counts per image pixel (point sources already removed).
    exposure : ndarray (ny, nx)
        Exposure map, cm**2 s count/photon.
    mask : ndarray (ny, nx) bool
        Mapped pixels.
    threshold : float
        Fraction of the peak exposure below which a pixel is left out; 0
        keeps every exposed pixel.
    background : ndarray (ny, nx), optional
        Scaled background counts per image pixel, subtracted.

    Returns
    -------
    ndarray (ny, nx) float64
        NaN where masked, unexposed or below the threshold (``fluximage``
        writes 0 there; NaN cannot be mistaken for a measurement).
    """
    exposure = np.asarray(exposure, dtype=float)
    counts = np.asarray(counts, dtype=float)
    out = np.full(counts.shape, np.nan)
    peak = float(exposure.max()) if exposure.size else 0.0
    ok = np.asarray(mask, dtype=bool) & (exposure > 0) & (exposure >= threshold * peak)
    num = counts if background is None else counts - np.asarray(background, dtype=float)
    out[ok] = num[ok] / exposure[ok]
    return out


def surface_brightness(counts, background, exposure, mask) -> np.ndarray:
    """Background-subtracted surface brightness, photon cm^-2 s^-1 per pixel.

    ``counts`` and ``background`` are counts per image pixel (the background
    already scaled), ``exposure`` cm**2 s; NaN where unexposed or masked.
    :func:`flux_image` with no exposure threshold.
    """
    return flux_image(counts, exposure, mask, threshold=0.0, background=background)


def thermodynamics(kT, sb_mean):
    """Pseudo density, pressure and entropy from kT (keV) and mean SB.

    Returns
    -------
    density : sqrt(SB), (photon cm^-2 s^-1 pixel^-1)^(1/2); NaN where SB <= 0
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
    """Which regions make it into the maps, and why the others did not.

    ``codes`` is each region's :class:`Coverage` outcome: ``MAPPED`` when
    kept, else ``PENDING``, ``FIT_FAILED`` or ``DROPPED``.
    """

    keep: np.ndarray
    dropped: dict = field(default_factory=dict)
    codes: np.ndarray | None = None


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
    codes = np.full(status.shape, Coverage.FIT_FAILED, dtype=np.uint8)
    codes[pending] = Coverage.PENDING
    if max_frac_error is not None:
        too_big = keep & ~(np.asarray(frac_err, float) <= max_frac_error)
        dropped["frac_error_above_%g" % max_frac_error] = int(np.count_nonzero(too_big))
        keep &= ~too_big
        codes[too_big] = Coverage.DROPPED
    codes[keep] = Coverage.MAPPED
    return Selection(keep=keep, dropped=dropped, codes=codes)


# --------------------------------------------------------------------------
# what each map is


@dataclass(frozen=True)
class MapSpec:
    """One map: its unit and what a user needs to read it.

    Attributes
    ----------
    bunit : str
        FITS unit string (``BUNIT``), parseable by ``astropy.units``.
    title : str
        One line (FITS ``MAPTITLE``).
    value_of : str
        What one value describes: ``"region circle"`` (the fit or a mean over
        the region's circle, shown on every pixel the region owns) or
        ``"image pixel"``.
    detail : str
        How it is made, for the header's COMMENT cards and the README.
    """

    bunit: str
    title: str
    value_of: str
    detail: str


#: Units of the exposure-corrected surface brightness and what derives from it.
SB_UNIT = "photon cm**-2 s**-1 pixel**-1"
DENSITY_UNIT = "photon**(1/2) cm**-1 s**(-1/2) pixel**(-1/2)"
PRESSURE_UNIT = "keV photon**(1/2) cm**-1 s**(-1/2) pixel**(-1/2)"
ENTROPY_UNIT = "keV photon**(-1/3) cm**(2/3) s**(1/3) pixel**(1/3)"

_PSEUDO = ("<SB> is the mean of flux_bkgsub.fits (background-subtracted, "
           "point-source-masked, exposure-corrected surface brightness per image "
           "pixel) over the region's circle.")

#: name -> :class:`MapSpec` of every region map (painted by region).
MAPS = {
    "temperature": MapSpec("keV", "kT of the region's fit", "region circle",
                           "Best-fit kT of the absorbed thermal model fitted jointly to "
                           "the spectra of the region's circle in every observation."),
    "temperature_lo": MapSpec("keV", "kT lower bound", "region circle",
                              "Lower bound of kT at fit.error_sigma (ERRSIGMA)."),
    "temperature_hi": MapSpec("keV", "kT upper bound", "region circle",
                              "Upper bound of kT at fit.error_sigma (ERRSIGMA)."),
    "temperature_err": MapSpec("keV", "symmetric kT error (hi - lo)/2", "region circle",
                               "(kT_hi - kT_lo) / 2 at fit.error_sigma."),
    "temperature_frac_err": MapSpec("", "fractional kT error", "region circle",
                                    "(kT_hi - kT_lo) / 2 / kT."),
    "norm": MapSpec("cm**-5", "XSPEC norm of the whole region circle", "region circle",
                    "XSPEC normalisation of the whole circle, not per pixel: "
                    "1e-14 / (4 pi (D_A (1+z))**2) * integral of n_e n_H dV over "
                    "the circle's column."),
    "fit_stat": MapSpec("", "fit statistic / dof", "region circle",
                        "Fit statistic (STATISTC) at the best fit over the degrees of "
                        "freedom."),
    "counts": MapSpec("count", "source counts in the circle, all observations",
                      "region circle",
                      "Source counts in the fit band (FITBAND) in the region's circle, "
                      "summed over observations; not per pixel."),
    "abundance": MapSpec("", "abundance of the region's fit, solar", "region circle",
                         "Best-fit abundance (fit.free: [abundance]), solar units of "
                         "ABUNDTBL, one value tied over the observations."),
    "abundance_lo": MapSpec("", "abundance lower bound", "region circle",
                            "Lower bound of the abundance at fit.error_sigma (ERRSIGMA); "
                            "NaN where unconstrained (reason in the export)."),
    "abundance_hi": MapSpec("", "abundance upper bound", "region circle",
                            "Upper bound of the abundance at fit.error_sigma (ERRSIGMA); "
                            "NaN where unconstrained."),
    "abundance_err": MapSpec("", "symmetric abundance error (hi - lo)/2", "region circle",
                             "(abundance_hi - abundance_lo) / 2 at fit.error_sigma."),
    "density": MapSpec(DENSITY_UNIT, "pseudo density sqrt(<SB>)", "region circle",
                       "Pseudo density sqrt(<SB>). " + _PSEUDO),
    "pressure": MapSpec(PRESSURE_UNIT, "pseudo pressure kT sqrt(<SB>)", "region circle",
                        "Pseudo pressure kT * sqrt(<SB>). " + _PSEUDO),
    "entropy": MapSpec(ENTROPY_UNIT, "pseudo entropy kT <SB>**(-1/3)", "region circle",
                       "Pseudo entropy kT * sqrt(<SB>)**(-2/3). " + _PSEUDO),
}

#: Maps written only when the fit freed the abundance (``fit.free``).
ABUNDANCE_MAPS = ("abundance", "abundance_lo", "abundance_hi", "abundance_err")


def written_maps(free=()) -> list[str]:
    """Names of :data:`MAPS` a fit with these free parameters (``fit.free``) fills."""
    return [n for n in MAPS if n not in ABUNDANCE_MAPS or "abundance" in free]


#: name -> :class:`MapSpec` of the per-pixel images written beside the maps.
IMAGES = {
    "flux": MapSpec(SB_UNIT, "exposure-corrected image (fluximage)", "image pixel",
                    "Counts / exposure map per image pixel in the image band (IMGBAND), "
                    "as CIAO fluximage makes it: pixels below EXPTHRSH of the peak "
                    "exposure, point sources and pixels outside the crop are NaN."),
    "flux_bkgsub": MapSpec(SB_UNIT, "background-subtracted exposure-corrected image",
                           "image pixel",
                           "(counts - scaled blank-sky background) / exposure map per "
                           "image pixel; same blanks as flux.fits. The <SB> of the "
                           "pseudo density, pressure and entropy maps."),
}


def region_values(res, table, bundle, selection: Selection, sb=None) -> dict:
    """Per-region values of every map (NaN where not kept).

    ``sb`` is the background-subtracted flux image (:func:`flux_image`)
    whose circle means (bin means, for a table of user bins) make the
    pseudo density; default: no exposure threshold.
    """
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
    if sb is None:
        sb = surface_brightness(bundle.counts, bundle.background, bundle.exposure, bundle.mask)
    if getattr(table, "bin_map", None) is not None:
        from .bins import bin_mean
        sb_mean = bin_mean(sb, bundle.mask & np.isfinite(sb), table.bin_map, len(table))
    else:
        sb_mean = circle_mean(sb, bundle.mask & np.isfinite(sb), table.row, table.col,
                              table.radius)
    density, pressure, entropy = thermodynamics(kT, sb_mean)
    ab_lo = np.asarray(res.abundance_lo, float)
    ab_hi = np.asarray(res.abundance_hi, float)
    values = {"temperature": kT, "temperature_lo": lo, "temperature_hi": hi,
              "temperature_err": err, "temperature_frac_err": frac,
              "abundance": np.asarray(res.abundance, float), "abundance_lo": ab_lo,
              "abundance_hi": ab_hi, "abundance_err": (ab_hi - ab_lo) / 2.0,
              "norm": np.asarray(res.norm, float), "fit_stat": stat, "counts": counts,
              "density": density, "pressure": pressure, "entropy": entropy}
    return {k: np.where(selection.keep, v, np.nan) for k, v in values.items()}
