"""The instrument: ACIS-I chips in the focal plane, dither, vignetting, frames, background.

Pure functions of arrays (no files, no global state). Positions are in
sky pixels (0.492 arcsec, 1-based as in evt2 files) or in focal-plane chip
pixels ``(p, q)`` from the centre of the ACIS-I array.
"""

from __future__ import annotations

import numpy as np

from ...io.fitsio import SKY_PIXEL_DEG
from ..response import ACIS_CHANNEL_WIDTH_KEV, ACIS_CHANNELS, fwhm_keV

#: Chandra sky pixel, arcsec.
SKY_PIXEL_ARCSEC = SKY_PIXEL_DEG * 3600.0
CHIP_PIXELS = 1024
#: Gap between the ACIS-I chips, chip pixels.
CHIP_GAP = 20.0
#: ACIS full-frame time (s) and the live fraction of it (3.2 s of 3.24104 s).
FRAME_TIME = 3.24104
DTCOR = 3.2 / 3.24104
#: Chandra's time origin, MJD (TT): 1998-01-01T00:00:00.
MJDREF = 50814.0
#: ACIS-I dither: amplitude (sky pixels, 8 arcsec), periods in x and y (s).
DITHER_AMPLITUDE = 8.0 / SKY_PIXEL_ARCSEC
DITHER_PERIODS = (1000.0, 707.0)
#: Energy (keV) at which the exposure map's effective area is taken, the
#: effective energy of fluximage's 'broad' band.
EXPMAP_ENERGY_KEV = 2.3
#: Sky pixels per exposure-map and truth-image pixel (fluximage binsize=4).
IMAGE_BIN = 4
#: Share of the effective area lost at the chip corner farthest from the aim point.
VIGNETTING_AT_CORNER = 0.2
#: ACIS grades kept in level-2 files, and their shares.
GRADES = np.array([0, 2, 3, 4, 6], dtype=np.int16)
GRADE_SHARES = np.array([0.50, 0.15, 0.12, 0.13, 0.10])
#: Particle-background energy range, keV.
PARTICLE_RANGE_KEV = (0.3, 12.0)
#: Chip origins in the focal plane (chip pixels from the array centre):
#: (p of chipx = 0, q of chipy = 0). ccd 0 1 on top, 2 3 below; 6 is ACIS-S2.
_HALF_GAP = CHIP_GAP / 2.0
CHIP_ORIGINS = {
    0: (-_HALF_GAP - CHIP_PIXELS, _HALF_GAP),
    1: (_HALF_GAP, _HALF_GAP),
    2: (-_HALF_GAP - CHIP_PIXELS, -_HALF_GAP - CHIP_PIXELS),
    3: (_HALF_GAP, -_HALF_GAP - CHIP_PIXELS),
    6: (-CHIP_PIXELS / 2.0, -_HALF_GAP - 2.0 * CHIP_PIXELS - 400.0),
}
ACIS_I = (0, 1, 2, 3)
#: The aim point in the focal plane: on I3, 300 pixels (2.5 arcmin) from both
#: gaps, so that with the presets' pointings and rolls the gaps cross neither
#: the cool core nor the shock (they still cross the demo's outer crop).
AIM_PLANE = (_HALF_GAP + 300.0, -_HALF_GAP - 300.0)


def rotation(roll_deg: float) -> np.ndarray:
    """2x2 matrix turning focal-plane offsets into sky-pixel offsets for a roll angle."""
    a = np.deg2rad(roll_deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def dither_offset(t, tstart: float):
    """Sky-pixel offsets of the dither at times ``t`` (s): a Lissajous pattern."""
    dt = np.asarray(t, dtype=float) - tstart
    dx = DITHER_AMPLITUDE * np.sin(2.0 * np.pi * dt / DITHER_PERIODS[0])
    dy = DITHER_AMPLITUDE * np.sin(2.0 * np.pi * dt / DITHER_PERIODS[1] + 0.7)
    return dx, dy


def sky_to_focal(x, y, aim_xy, roll_deg: float, dx=0.0, dy=0.0):
    """Sky pixels -> focal-plane chip pixels (p, q) from the array centre."""
    rot = rotation(roll_deg)
    ox = np.asarray(x, float) - aim_xy[0] - dx
    oy = np.asarray(y, float) - aim_xy[1] - dy
    # The inverse of a rotation is its transpose.
    p = AIM_PLANE[0] + rot[0, 0] * ox + rot[1, 0] * oy
    q = AIM_PLANE[1] + rot[0, 1] * ox + rot[1, 1] * oy
    return p, q


def focal_to_sky(p, q, aim_xy, roll_deg: float, dx=0.0, dy=0.0):
    """Focal-plane chip pixels (p, q) -> sky pixels."""
    rot = rotation(roll_deg)
    op = np.asarray(p, float) - AIM_PLANE[0]
    oq = np.asarray(q, float) - AIM_PLANE[1]
    return (aim_xy[0] + rot[0, 0] * op + rot[0, 1] * oq + dx,
            aim_xy[1] + rot[1, 0] * op + rot[1, 1] * oq + dy)


def locate_on_chips(p, q, ccds=tuple(CHIP_ORIGINS)):
    """Which chip each focal-plane position falls on.

    Returns
    -------
    ccd_id : numpy.ndarray of int16
        Chip, or -1 off every chip in ``ccds``.
    chipx, chipy : numpy.ndarray of float
        Position on that chip, 0-1024 chip pixels (meaningless off chip).
    """
    p = np.asarray(p, float)
    q = np.asarray(q, float)
    ccd = np.full(p.shape, -1, dtype=np.int16)
    cx = np.zeros(p.shape)
    cy = np.zeros(p.shape)
    for k in ccds:
        p0, q0 = CHIP_ORIGINS[k]
        u, v = p - p0, q - q0
        on = (u >= 0) & (u < CHIP_PIXELS) & (v >= 0) & (v < CHIP_PIXELS)
        ccd[on] = k
        cx[on] = u[on]
        cy[on] = v[on]
    return ccd, cx, cy


def vignetting(offset_px) -> np.ndarray:
    """Achromatic vignetting: 1 on axis, 1 - VIGNETTING_AT_CORNER at the farthest chip corner.

    Parameters
    ----------
    offset_px : array_like
        Off-axis distance, sky pixels.
    """
    corner = max(np.hypot(cp - AIM_PLANE[0], cq - AIM_PLANE[1])
                 for k in ACIS_I for cp in (CHIP_ORIGINS[k][0], CHIP_ORIGINS[k][0] + CHIP_PIXELS)
                 for cq in (CHIP_ORIGINS[k][1], CHIP_ORIGINS[k][1] + CHIP_PIXELS))
    r = np.asarray(offset_px, float) / corner
    return np.clip(1.0 - VIGNETTING_AT_CORNER * r ** 2, 0.0, 1.0)


def near_chips(p, q, margin: float, ccds=ACIS_I) -> np.ndarray:
    """Whether focal-plane points lie on a chip of ``ccds`` grown by ``margin`` chip pixels."""
    p = np.asarray(p, float)
    q = np.asarray(q, float)
    near = np.zeros(p.shape, dtype=bool)
    for k in ccds:
        p0, q0 = CHIP_ORIGINS[k]
        u, v = p - p0, q - q0
        near |= ((u >= -margin) & (u < CHIP_PIXELS + margin)
                 & (v >= -margin) & (v < CHIP_PIXELS + margin))
    return near


def chip_coverage(p, q, shifts_p, shifts_q, ccds=ACIS_I) -> np.ndarray:
    """Fraction of dither positions at which focal-plane points lie on a chip.

    Parameters
    ----------
    p, q : numpy.ndarray
        Undithered focal-plane positions, chip pixels.
    shifts_p, shifts_q : numpy.ndarray, shape (n,)
        Focal-plane shift of each dither sample, chip pixels.
    """
    p = np.asarray(p, float)
    q = np.asarray(q, float)
    reach = float(np.max(np.hypot(shifts_p, shifts_q))) + 1e-6
    # Only points within the dither's reach of a chip edge change with time:
    # inside a chip shrunk by the reach they are always on it.
    cover = near_chips(p, q, -reach, ccds).astype(float)
    edge = near_chips(p, q, reach, ccds) & (cover == 0.0)
    idx = np.flatnonzero(edge)
    if idx.size:
        pe, qe = p.ravel()[idx], q.ravel()[idx]
        hits = np.zeros(idx.size)
        for sp, sq in zip(shifts_p, shifts_q):
            ccd, _, _ = locate_on_chips(pe + sp, qe + sq, ccds)
            hits += ccd >= 0
        cover.ravel()[idx] = hits / len(shifts_p)
    return cover


def particle_pdf(energy_keV) -> np.ndarray:
    """Quiescent particle-background spectrum (relative counts per keV): rising continuum
    plus the Ni K-alpha (7.47 keV) and Au L (9.71, 11.44 keV) fluorescence lines."""
    e = np.asarray(energy_keV, float)
    pdf = 1.0 + 0.12 * e
    for line, amp in ((7.47, 0.6), (9.71, 1.2), (11.44, 0.6)):
        sig = fwhm_keV(line) / 2.3548
        pdf = pdf + amp * np.exp(-0.5 * ((e - line) / sig) ** 2)
    return pdf


def flare_pdf(energy_keV) -> np.ndarray:
    """Spectrum of the background flare (relative counts per keV): harder than quiescent."""
    e = np.asarray(energy_keV, float)
    return 0.5 + 0.3 * e


def sample_energies(rng, n: int, pdf, lo: float, hi: float) -> np.ndarray:
    """``n`` energies (keV) drawn from ``pdf`` on [lo, hi] by inverse transform."""
    grid = np.linspace(lo, hi, 4001)
    dens = pdf(grid)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    return np.interp(rng.random(n) * cdf[-1], cdf, grid)


def draw_from_spectrum(rng, rate, n: int) -> np.ndarray:
    """``n`` 0-based channel indices from one channel spectrum ``rate`` (n_channel,)."""
    cdf = np.cumsum(rate)
    idx = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return np.minimum(idx, rate.size - 1)


def channel_energy_eV(rng, channel_index, width_keV: float = ACIS_CHANNEL_WIDTH_KEV) -> np.ndarray:
    """Energies (eV) uniform inside 0-based channels ``[i*w, (i+1)*w)``."""
    i = np.asarray(channel_index, dtype=float)
    return (i + rng.random(i.shape)) * width_keV * 1000.0


def energy_to_pi(energy_eV, width_keV: float = ACIS_CHANNEL_WIDTH_KEV,
                 n_channels: int = ACIS_CHANNELS) -> np.ndarray:
    """ACIS PI channel (1-based) of energies in eV."""
    pi = np.floor(np.asarray(energy_eV, float) / (width_keV * 1000.0)).astype(np.int64) + 1
    return np.clip(pi, 1, n_channels).astype(np.int32)


def frame_times(rng, n: int, t0: float, t1: float, frame0: float | None = None) -> np.ndarray:
    """``n`` arrival times in [t0, t1]: mid-times of ACIS frames that start at ``frame0``
    (default ``t0``) and lie wholly inside the interval, drawn evenly."""
    origin = t0 if frame0 is None else frame0
    first = int(np.ceil((t0 - origin) / FRAME_TIME - 1e-9))
    last = int(np.floor((t1 - origin) / FRAME_TIME + 1e-9))  # exclusive
    k = rng.integers(first, max(last, first + 1), n)
    return origin + (k + 0.5) * FRAME_TIME

