"""The ``products`` prep backend: from cleaned CIAO products to the bundle.

Steps for each observation (in this order; an event removed by one step is
counted under that step's reason only, so ``input = kept + sum(removed)``):

``ccd``            ccd_id not in ``prep.ccds`` (ACIS-I by default)
``gti``            time outside the chip's good-time intervals
``flare``          time in a light-curve bin rejected by ``prep.deflare``'s rule
                   (CIAO deflare's ``clean`` or ``sigma``: :mod:`hpcxt.prep.deflare`)
``point_source``   inside a shape of ``prep.point_sources``
``energy``         energy outside the spectral range 0.3-11 keV (the RMF's)
``outside_crop``   outside ``prep.crop_region`` or the image grid

The background-scaling counts (``prep.background_scale_band``, 9.5-12 keV)
are taken just before the energy filter, so the band is not cut at 11 keV,
and outside the crop region when enough counts lie there: ClusterPyXT
counts the whole field, where a hot cluster's own 9.5-12 keV emission
inflates the ratio by a few per cent (3-4% in the demo) and biases hot
regions low.

Then events are reprojected onto a common sky frame (the first observation's
tangent point), binned into images (``prep.bin`` sky pixels per image pixel)
in ``prep.energy_band``, and the background is scaled by the ratio of
source to background counts in ``prep.background_scale_band`` (9.5-12 keV,
where the particle background dominates).

Event files are filtered a chunk of rows at a time (``prep.chunk_rows``),
so memory is set by the events kept and the chunk, not by the file: every
filter is a test of one event, and what needs the whole observation is
accumulated over the chunks first (the deflaring light curve is a
histogram on bins fixed by the GTIs; the removed and background-scaling
counts are sums), so the result is the same for any chunk size.

The functions that do science take arrays and return arrays; reading files
and choosing what to do lives in :mod:`hpcxt.driver`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..data import ImageGrid
from ..io.fitsio import ChunkStats, EventFile, SkyFrame
from . import intervals
from .deflare import DeflareError, DeflareRule, good_bins, kept_fraction, low_kept_message

log = logging.getLogger("hpcxt.prep")

#: Energies kept for spectra, keV: the range of ACIS responses.
SPECTRAL_RANGE_KEV = (0.3, 11.0)
#: Background-scaling counts needed outside the crop region to use only them.
MIN_SCALE_COUNTS = 400
REASONS = ("ccd", "gti", "flare", "point_source", "energy", "outside_crop")
#: Rows of an event file filtered at a time (``prep.chunk_rows``): about 70 MB of a
#: Chandra evt2 file's rows and 70 MB of the columns prep converts.
DEFAULT_CHUNK_ROWS = 2_000_000


# --------------------------------------------------------------------------
# kernels


def light_curve_bins(good, bin_seconds: float):
    """Bin edges and good time per bin of a light curve; they depend on the GTIs alone.

    Parameters
    ----------
    good : (starts, stops)
        Good-time intervals, s.
    bin_seconds : float
        Bin width, s (CIAO/ClusterPyXT use 259.28 s, 80 ACIS frames).

    Returns
    -------
    edges : ndarray (m+1,)   bin edges, s
    exposure : ndarray (m,)  good time in each bin, s
    """
    starts, stops = intervals.normalise(*good)
    if starts.size == 0:
        return np.zeros(1), np.zeros(0)
    t0, t1 = starts[0], stops[-1]
    nbin = max(1, int(np.ceil((t1 - t0) / bin_seconds)))
    edges = t0 + bin_seconds * np.arange(nbin + 1)
    # good time per bin: integrate the GTI indicator between edges
    cum_edges = np.concatenate([[0.0], np.cumsum(stops - starts)])
    def covered(t):
        idx = np.searchsorted(starts, t, side="right") - 1
        base = np.where(idx >= 0, cum_edges[np.clip(idx, 0, None)], 0.0)
        within = np.where(idx >= 0, np.clip(t - starts[np.clip(idx, 0, None)], 0.0,
                                            (stops - starts)[np.clip(idx, 0, None)]), 0.0)
        return base + within
    return edges, np.diff(covered(edges))


def light_curve_counts(time, edges) -> np.ndarray:
    """Events per light-curve bin (m,), int64; sums over chunks of ``time`` add up exactly."""
    if edges.size < 2:
        return np.zeros(0, np.int64)
    return np.histogram(time, bins=edges)[0].astype(np.int64)


def light_curve(time, good, bin_seconds: float):
    """Counts and exposure per time bin of events at ``time`` (s), restricted to good time.

    :func:`light_curve_bins` and :func:`light_curve_counts` in one call;
    returns ``edges`` (m+1,), ``counts`` (m,) and ``exposure`` (m,).
    """
    edges, exposure = light_curve_bins(good, bin_seconds)
    return edges, light_curve_counts(time, edges).astype(float), exposure


def flare_bins(counts, exposure, rule: DeflareRule, path=None, obsid: str = "") -> np.ndarray:
    """Light-curve bins to reject, by the rule of CIAO's ``deflare`` (``rule.method``).

    The same rule the ``ciao`` backend hands to ``deflare``; see
    :mod:`hpcxt.prep.deflare`. Warns when less than
    :data:`~hpcxt.prep.deflare.LOW_KEPT_FRACTION` of the exposure is kept.

    Parameters
    ----------
    counts, exposure : ndarray (m,)
        Counts and good time (s) per bin.
    rule : DeflareRule
    path : Path, optional
        The event file, named in errors.

    Returns
    -------
    ndarray (m,) bool
        True for bins to reject.

    Raises
    ------
    InputError
        When deflare would fail on this light curve (``prep.deflare``).
    """
    try:
        good = good_bins(counts, exposure, rule)
    except DeflareError as exc:
        raise InputError(f"deflare method {rule.method}: {exc}", path=path,
                         field="prep.deflare") from None
    message = low_kept_message(kept_fraction(exposure, good), rule)
    if message:
        log.warning("observation %s: %s", obsid, message)
    return ~good


def background_scale(src_counts: int, bkg_counts: int, path=None) -> float:
    """Factor turning background counts into expected source-file background.

    The ratio of counts in a band where the particle background dominates
    (9.5-12 keV), as ClusterPyXT and the CIAO blank-sky recipe do.
    """
    if bkg_counts <= 0:
        raise InputError("background file has no events in the background-scaling band",
                         path=path, field="prep.background_scale_band")
    if src_counts <= 0:
        raise InputError("source file has no events in the background-scaling band",
                         path=path, field="prep.background_scale_band")
    return float(src_counts) / float(bkg_counts)


def scale_counts(src: "CleanEvents", bkg: "CleanEvents") -> tuple[int, int, str]:
    """Source and background counts for the background scale, and where from.

    Outside the crop region when both files have :data:`MIN_SCALE_COUNTS`
    there (a hot cluster's own 9.5-12 keV emission inside it would inflate
    the source count), else the whole field, as ClusterPyXT does. Both
    counts always come from the same area.
    """
    if min(src.scale_band_counts_outside, bkg.scale_band_counts_outside) >= MIN_SCALE_COUNTS:
        return src.scale_band_counts_outside, bkg.scale_band_counts_outside, "outside_crop"
    return src.scale_band_counts, bkg.scale_band_counts, "whole_field"


#: Events per block of the whole-observation steps (binning, crop): their
#: temporaries (~50 bytes an event) stay small beside the events themselves.
EVENT_BLOCK = 1 << 20


def _blocks(n: int):
    for start in range(0, n, EVENT_BLOCK):
        yield slice(start, min(start + EVENT_BLOCK, n))


def bin_events(x, y, grid: ImageGrid, select=None) -> np.ndarray:
    """Counts image (ny, nx) of events at sky x, y (sky pixels) on ``grid``.

    ``select`` (bool, like ``x``) bins only those events, without copying them.
    """
    ny, nx = grid.shape
    img = np.zeros(ny * nx, np.int64)
    for b in _blocks(len(x)):
        row, col = grid.sky_to_pixel(x[b], y[b])
        r = np.floor(row).astype(np.int64)
        c = np.floor(col).astype(np.int64)
        ok = (r >= 0) & (r < ny) & (c >= 0) & (c < nx)
        if select is not None:
            ok &= select[b]
        img += np.bincount(r[ok] * nx + c[ok], minlength=ny * nx)
    return img.reshape(ny, nx).astype(np.float64)


def grid_for_box(xmin, xmax, ymin, ymax, bin: int) -> tuple[float, float, tuple[int, int]]:
    """Image grid covering a sky box, aligned as CIAO bins (edges at 0.5 + k*bin).

    Returns x0, y0 (sky pixels, lower-left edge) and shape (ny, nx).
    """
    x0 = 0.5 + bin * np.floor((xmin - 0.5) / bin)
    y0 = 0.5 + bin * np.floor((ymin - 0.5) / bin)
    nx = int(np.ceil((xmax - x0) / bin))
    ny = int(np.ceil((ymax - y0) / bin))
    return float(x0), float(y0), (max(ny, 1), max(nx, 1))


def sample_image_on_grid(image, image_wcs, grid: ImageGrid, grid_frame: SkyFrame) -> np.ndarray:
    """Nearest-pixel resampling of a sky image (e.g. an exposure map) onto ``grid``.

    Pixels of ``grid`` whose centres fall outside ``image`` get 0.
    """
    ny, nx = grid.shape
    rows, cols = np.mgrid[0:ny, 0:nx]
    x, y = grid.pixel_to_sky(rows, cols)
    ra, dec = grid_frame.to_radec(x.ravel(), y.ravel())
    px, py = image_wcs.all_world2pix(ra, dec, 0)
    ix = np.floor(px + 0.5).astype(np.int64)
    iy = np.floor(py + 0.5).astype(np.int64)
    h, w = image.shape
    ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    out = np.zeros(ny * nx, float)
    out[ok] = image[iy[ok], ix[ok]]
    return out.reshape(ny, nx)


# --------------------------------------------------------------------------
# one observation


@dataclass
class CleanEvents:
    """Events after ccd/energy/GTI/flare/point-source filtering, in the common frame."""

    x: np.ndarray
    y: np.ndarray
    pi: np.ndarray
    energy: np.ndarray
    exposure: float
    removed: dict = field(default_factory=dict)
    n_input: int = 0
    scale_band_counts: int = 0
    scale_band_counts_outside: int = -1
    good_time: tuple = ((), ())
    flare_intervals: tuple = ((), ())

    def select(self, keep: np.ndarray) -> "CleanEvents":
        return CleanEvents(x=self.x[keep], y=self.y[keep], pi=self.pi[keep],
                           energy=self.energy[keep], exposure=self.exposure,
                           removed=dict(self.removed), n_input=self.n_input,
                           scale_band_counts=self.scale_band_counts,
                           scale_band_counts_outside=self.scale_band_counts_outside,
                           good_time=self.good_time, flare_intervals=self.flare_intervals)

    def as_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "pi": self.pi, "energy": self.energy}


def _in_gti(c: dict, gti: dict, ccds) -> np.ndarray:
    """Events (columns ``c``) inside their chip's good-time intervals (or all chips' if not per chip)."""
    n = c["time"].shape[0]
    if "ccd_id" not in c or not any(k >= 0 for k in gti):
        return intervals.contains(c["time"], _all_chip_gti_of(gti, ccds))
    in_gti = np.zeros(n, bool)
    for chip, (s, e) in gti.items():
        sel = c["ccd_id"] == chip if chip >= 0 else np.ones(n, bool)
        in_gti[sel] = intervals.contains(c["time"][sel], (s, e))
    return in_gti


def _all_chip_gti_of(gti: dict, ccds):
    chips = [c for c in gti if c in ccds] or list(gti)
    start = np.concatenate([gti[c][0] for c in chips])
    stop = np.concatenate([gti[c][1] for c in chips])
    return intervals.normalise(start, stop)


@dataclass
class _Plan:
    """What :func:`clean_events` applies to every chunk of one event file."""

    ev: EventFile
    ccds: np.ndarray
    deflare_cfg: object
    point_sources: object
    frame: SkyFrame
    use_time: bool
    scale_band: tuple
    scale_exclude: object
    flare_iv: tuple = ((), ())


def _flare_light_curve_chunk(c: dict, plan: _Plan, edges) -> np.ndarray:
    """Counts per light-curve bin of one chunk's events that would enter deflare's light curve.

    Those that pass the ccd and GTI filters, in ``prep.deflare.band``,
    outside the point sources.
    """
    keep = np.ones(c["x"].shape[0], bool)
    if "ccd_id" in c:
        keep &= np.isin(c["ccd_id"], plan.ccds)
    keep &= _in_gti(c, plan.ev.gti, plan.ccds)
    lo, hi = plan.deflare_cfg.band
    e_kev = c["energy"] / 1000.0
    keep &= (e_kev >= lo) & (e_kev < hi)
    idx = np.flatnonzero(keep)
    if plan.point_sources is not None and idx.size:
        keep[idx] = ~plan.point_sources.contains(c["x"][idx], c["y"][idx], plan.ev.frame)
    return light_curve_counts(c["time"][keep], edges)


def _filter_chunk(c: dict, plan: _Plan, removed: dict, scale: list):
    """The events of one chunk that pass every filter, reprojected; counts added in place.

    ``removed`` gains the chunk's removed events per reason, ``scale`` its
    [in-band, in-band outside ``scale_exclude``] background-scaling counts.
    Returns x, y (sky pixels of ``plan.frame``), pi, energy of the kept events.
    """
    keep = np.ones(c["x"].shape[0], bool)

    def drop(reason, bad):
        bad &= keep
        removed[reason] += int(np.count_nonzero(bad))
        keep[bad] = False

    if "ccd_id" in c:
        drop("ccd", ~np.isin(c["ccd_id"], plan.ccds))
    if plan.use_time:
        drop("gti", ~_in_gti(c, plan.ev.gti, plan.ccds))
        if len(plan.flare_iv[0]):
            drop("flare", intervals.contains(c["time"], plan.flare_iv))
    if plan.point_sources is not None and keep.size:
        drop("point_source", plan.point_sources.contains(c["x"], c["y"], plan.ev.frame))
    e_kev = c["energy"] / 1000.0
    in_scale_band = keep & (e_kev >= plan.scale_band[0]) & (e_kev < plan.scale_band[1])
    scale[0] += int(np.count_nonzero(in_scale_band))
    idx = np.flatnonzero(in_scale_band)
    if plan.scale_exclude is not None and idx.size:
        scale[1] += int(np.count_nonzero(
            ~plan.scale_exclude.contains(c["x"][idx], c["y"][idx], plan.ev.frame)))
    drop("energy", (e_kev < SPECTRAL_RANGE_KEV[0]) | (e_kev >= SPECTRAL_RANGE_KEV[1]))
    x, y = plan.ev.frame.reproject_to(plan.frame, c["x"][keep], c["y"][keep])
    return (np.asarray(x, np.float64), np.asarray(y, np.float64), c["pi"][keep],
            c["energy"][keep])


def clean_events(ev: EventFile, ccds, deflare_cfg, point_sources, frame: SkyFrame,
                 is_background: bool = False, scale_band=(9.5, 12.0),
                 scale_exclude=None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 stats: ChunkStats | None = None) -> CleanEvents:
    """Apply ccd, energy, GTI, flare and point-source filters to one event file.

    The events are filtered ``chunk_rows`` at a time (read from the file
    when ``ev`` came from :func:`~hpcxt.io.fitsio.open_events`), so memory
    holds the kept events and one chunk; with deflaring, a first pass over
    the chunks builds the light curve. The result does not depend on
    ``chunk_rows``.

    Parameters
    ----------
    ev : EventFile
        Events as read, or opened for reading in chunks.
    ccds : list of int
        Chips to keep.
    deflare_cfg : Section or None
        ``prep.deflare`` (None or enabled false: no deflaring). Not applied
        to blank-sky backgrounds, which are already cleaned.
    point_sources : RegionSet or None
        Shapes to exclude.
    frame : SkyFrame
        Common sky frame to reproject onto.
    scale_band : (float, float)
        keV; events in it that pass every filter but the energy one are
        counted for the background scaling.
    scale_exclude : RegionSet, optional
        Area also left out of a second count, ``scale_band_counts_outside``
        (the crop region: see :func:`scale_counts`).
    chunk_rows : int
        Rows filtered at a time (``prep.chunk_rows``).
    stats : ChunkStats, optional
        Records every chunk read (tests and benchmarks watch memory with it).

    Returns
    -------
    CleanEvents
        With ``removed`` counts per reason, the deflared exposure (s) and
        ``scale_band_counts``.
    """
    n = len(ev)
    removed = {r: 0 for r in REASONS}
    use_time = not is_background and "time" in _column_names(ev) and bool(ev.gti)
    plan = _Plan(ev=ev, ccds=np.asarray(ccds), deflare_cfg=deflare_cfg,
                 point_sources=point_sources, frame=frame, use_time=use_time,
                 scale_band=tuple(scale_band), scale_exclude=scale_exclude)

    exposure = ev.exposure
    good_time = ((), ())
    if use_time:
        good_time, exposure = _deflare(ev, plan, ccds, deflare_cfg, chunk_rows, stats)
    scale = [0, 0]
    x, y, pi, energy = _filter_chunks(ev, plan, removed, scale, chunk_rows, stats)
    return CleanEvents(x=x, y=y, pi=pi, energy=energy, exposure=float(exposure),
                       removed=removed, n_input=n, good_time=good_time,
                       flare_intervals=plan.flare_iv, scale_band_counts=scale[0],
                       scale_band_counts_outside=scale[1] if scale_exclude is not None else -1)


def _deflare(ev: EventFile, plan: _Plan, ccds, deflare_cfg, chunk_rows: int,
             stats: ChunkStats | None):
    """Good time of the chips after deflaring, and the exposure left (s).

    With deflaring enabled, one pass over the chunks builds the light curve;
    flare intervals found in it are set on ``plan.flare_iv`` for the
    filtering pass.

    Returns
    -------
    good_time : (starts, stops) of float
        Good time intervals (s, mission time).
    exposure : float
        ``ev.exposure`` (s) scaled by the good time kept after deflaring.
    """
    total = _all_chip_gti_of(ev.gti, ccds)
    if deflare_cfg is None or not deflare_cfg.enabled:
        return total, ev.exposure
    good_time = total
    edges, expo = light_curve_bins(total, deflare_cfg.bin_seconds)
    counts = np.zeros(max(edges.size - 1, 0), np.int64)
    for c in ev.chunks(chunk_rows, stats):
        counts += _flare_light_curve_chunk(c, plan, edges)
        del c
    bad = flare_bins(counts.astype(float), expo, DeflareRule.from_config(deflare_cfg),
                     path=ev.path, obsid=str(ev.header.get("OBS_ID", "")))
    if bad.any():
        plan.flare_iv = intervals.normalise(edges[:-1][bad], edges[1:][bad])
        good_time = intervals.subtract(total, plan.flare_iv)
    before = intervals.length(total)
    return good_time, ev.exposure * (intervals.length(good_time) / before if before > 0 else 1.0)


def _filter_chunks(ev: EventFile, plan: _Plan, removed: dict, scale: list, chunk_rows: int,
                   stats: ChunkStats | None) -> list[np.ndarray]:
    """Filter the events chunk by chunk; the kept ``[x, y, pi, energy]`` concatenated.

    ``removed`` (events per reason) and ``scale`` (scale-band counts, all
    and outside ``scale_exclude``) are added to in place.
    """
    kept = []
    for c in ev.chunks(chunk_rows, stats):
        kept.append(_filter_chunk(c, plan, removed, scale))
        del c
    # one column at a time, so the kept events are never held twice over
    columns = []
    for i in range(4):
        columns.append(np.concatenate([k[i] for k in kept]))
        kept = [k[:i] + (None,) + k[i + 1:] for k in kept]
    return columns


def _column_names(ev: EventFile) -> set:
    if ev.columns:
        return set(ev.columns)
    return {low for low, *_ in ev.table.columns}


def crop_events(ce: CleanEvents, crop, grid: ImageGrid, frame: SkyFrame,
                in_place: bool = False) -> CleanEvents:
    """Keep events inside the crop shapes and the image grid (reason ``outside_crop``).

    ``in_place`` replaces ``ce``'s columns one at a time, so that the events
    are never held twice (prep's peak memory is the bundle's events plus
    one column), and returns ``ce``.
    """
    ny, nx = grid.shape
    inside = np.empty(len(ce.x), bool)
    for b in _blocks(len(ce.x)):
        row, col = grid.sky_to_pixel(ce.x[b], ce.y[b])
        inside[b] = (row >= 0) & (row < ny) & (col >= 0) & (col < nx)
        if crop is not None:
            inside[b] &= crop.contains(ce.x[b], ce.y[b], frame)
    if in_place:
        for name in ("x", "y", "pi", "energy"):
            setattr(ce, name, getattr(ce, name)[inside])
        out = ce
    else:
        out = ce.select(inside)
    out.removed["outside_crop"] += int((~inside).sum())
    return out


def pixel_mask(shapes, grid: ImageGrid, frame: SkyFrame) -> np.ndarray:
    """(ny, nx) bool: image pixel centres inside a region set."""
    ny, nx = grid.shape
    rows, cols = np.mgrid[0:ny, 0:nx]
    x, y = grid.pixel_to_sky(rows, cols)
    return shapes.contains(x.ravel(), y.ravel(), frame).reshape(ny, nx)
