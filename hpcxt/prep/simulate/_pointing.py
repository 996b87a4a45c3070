"""Geometry of one observation: its sky frame, aim point, and dithered exposure map."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS

from ...io.fitsio import SkyFrame
from ..products import grid_for_box
from ._acis import (ACIS_I, AIM_PLANE, CHIP_ORIGINS, CHIP_PIXELS, DITHER_AMPLITUDE, DTCOR,
                    IMAGE_BIN, chip_coverage, dither_offset, focal_to_sky, sky_to_focal,
                    vignetting)
from ._presets import CLUSTER, ObservationSpec

#: Dither samples averaged by the exposure map.
EXPMAP_DITHER_SAMPLES = 128


@dataclass
class Pointing:
    """Where one observation looks, in its own sky frame (tangent at RA_NOM/DEC_NOM)."""

    spec: ObservationSpec
    frame: SkyFrame
    wcs: WCS            # the frame's: sky pixels (1-based) <-> RA/Dec
    ra_pnt: float
    dec_pnt: float
    aim_xy: tuple       # sky pixels
    exposure: float     # livetime, s

    @property
    def ra_nom(self) -> float:
        return self.frame.ra0

    @property
    def dec_nom(self) -> float:
        return self.frame.dec0

    @property
    def tstop(self) -> float:
        return self.spec.tstart + self.spec.ontime


def cluster_wcs() -> WCS:
    """Pixels of 1 arcsec about the cluster centre, 0-based pixel 0 at the centre, +x west."""
    return SkyFrame(CLUSTER["ra"], CLUSTER["dec"], crpix_x=1.0, crpix_y=1.0,
                    cdelt_x=-1.0 / 3600.0, cdelt_y=1.0 / 3600.0).wcs()


def offset_to_radec(cwcs: WCS, x, y):
    """Offsets from the cluster centre (arcsec) -> RA, Dec (deg)."""
    ra, dec = cwcs.wcs_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    return ra, dec


def radec_to_offset(cwcs: WCS, ra, dec):
    """RA, Dec (deg) -> offsets from the cluster centre (arcsec)."""
    x, y = cwcs.wcs_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0)
    return x, y


def offset_to_focal(cwcs: WCS, ptg: Pointing, x, y):
    """Offsets from the cluster centre (arcsec) -> this observation's sky pixels and
    undithered focal-plane chip pixels: ``(sky_x, sky_y, p, q)``."""
    ra, dec = offset_to_radec(cwcs, x, y)
    sx, sy = ptg.wcs.wcs_world2pix(ra, dec, 1)
    return (sx, sy) + sky_to_focal(sx, sy, ptg.aim_xy, ptg.spec.roll_deg)


def pointing(spec: ObservationSpec, cwcs: WCS) -> Pointing:
    """The sky frame and aim point of ``spec``."""
    ax, ay = spec.aim_offset
    ra_pnt, dec_pnt = (float(v) for v in offset_to_radec(cwcs, ax, ay))
    ra_nom, dec_nom = (float(v) for v in offset_to_radec(
        cwcs, ax + spec.nominal_offset[0], ay + spec.nominal_offset[1]))
    # Round as a header would hold them, so files and truth agree exactly.
    frame = SkyFrame(round(ra_nom, 8), round(dec_nom, 8))
    wcs = frame.wcs()
    x, y = wcs.wcs_world2pix(np.array([ra_pnt]), np.array([dec_pnt]), 1)
    return Pointing(spec=spec, frame=frame, wcs=wcs, ra_pnt=ra_pnt, dec_pnt=dec_pnt,
                    aim_xy=(float(x[0]), float(y[0])), exposure=spec.ontime * DTCOR)


def image_grid(xs, ys):
    """Lower-left edges (sky pixels) and shape (ny, nx) of the bin-:data:`IMAGE_BIN` grid,
    aligned as CIAO bins, that covers the sky points ``xs, ys``."""
    return grid_for_box(np.min(xs), np.max(xs), np.min(ys), np.max(ys), IMAGE_BIN)


def dither_shifts(ptg: Pointing, n: int = EXPMAP_DITHER_SAMPLES):
    """Focal-plane shifts (chip pixels) of ``n`` dither samples spread evenly over the
    observation: a sky shift d moves the focal-plane position by -R^T d."""
    t = ptg.spec.tstart + (np.arange(n) + 0.5) * ptg.spec.ontime / n
    dx, dy = dither_offset(t, ptg.spec.tstart)
    sp0, sq0 = sky_to_focal(ptg.aim_xy[0] + dx, ptg.aim_xy[1] + dy, ptg.aim_xy, ptg.spec.roll_deg)
    return -(sp0 - AIM_PLANE[0]), -(sq0 - AIM_PLANE[1])


def exposure_map(ptg: Pointing, area_cm2: float):
    """Dither-averaged, vignetted exposure map over ACIS-I.

    Returns
    -------
    emap : numpy.ndarray of float32, shape (ny, nx)
        cm**2 s on the bin-:data:`IMAGE_BIN` grid.
    x0, y0 : float
        Sky pixel of the grid's lower-left edge.
    """
    corners = []
    for k in ACIS_I:
        p0, q0 = CHIP_ORIGINS[k]
        for dp in (0, CHIP_PIXELS):
            for dq in (0, CHIP_PIXELS):
                corners.append(focal_to_sky(p0 + dp, q0 + dq, ptg.aim_xy, ptg.spec.roll_deg))
    cx = np.array([c[0] for c in corners])
    cy = np.array([c[1] for c in corners])
    pad = DITHER_AMPLITUDE + 2 * IMAGE_BIN
    x0, y0, shape = image_grid(np.r_[cx - pad, cx + pad], np.r_[cy - pad, cy + pad])
    ny, nx = shape
    xc = x0 + IMAGE_BIN * (np.arange(nx) + 0.5)
    yc = y0 + IMAGE_BIN * (np.arange(ny) + 0.5)
    xx, yy = np.meshgrid(xc, yc)
    p, q = sky_to_focal(xx, yy, ptg.aim_xy, ptg.spec.roll_deg)
    cover = chip_coverage(p, q, *dither_shifts(ptg))
    vign = vignetting(np.hypot(xx - ptg.aim_xy[0], yy - ptg.aim_xy[1]))
    emap = (ptg.exposure * area_cm2 * vign * cover).astype(np.float32)
    return emap, x0, y0
