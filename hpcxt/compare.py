"""Recovered temperatures against a simulation's truth, zone by zone (a kernel).

A simulated project (``hpcxt simulate``) knows its answer: an image of
truth zones (zone interiors only, away from boundaries where a circle
would straddle two temperatures) and the true kT of each zone. Each pixel
of a temperature map is looked up in the zone image through both images'
celestial WCS, and the recovered temperatures are summarised per zone.
Pure functions of arrays and WCS: :mod:`hpcxt.stages.compare` reads the
files, :mod:`hpcxt.demo` and ``hpcxt compare``/``hpcxt maps`` print the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A zone passes when its median recovered kT is within this of the truth.
TOLERANCE = 0.10


@dataclass
class ZoneComparison:
    """One truth zone: its true kT and what the map recovered in it.

    Attributes
    ----------
    zone : str
    true_kT : float
        keV.
    n_pixels : int
        Map pixels with a temperature inside the zone's interior.
    median_kT : float
        keV, NaN without pixels.
    scatter : float
        Half the 16-84 percentile range of those pixels, keV.
    """

    zone: str
    true_kT: float
    n_pixels: int
    median_kT: float
    scatter: float

    @property
    def rel_error(self) -> float:
        return (self.median_kT - self.true_kT) / self.true_kT

    @property
    def ok(self) -> bool:
        return self.n_pixels > 0 and abs(self.rel_error) <= TOLERANCE


def compare_with_truth(kT_map, map_wcs, zones, zones_wcs, zone_kT: dict,
                       zone_ids: dict) -> list[ZoneComparison]:
    """Median recovered kT per truth zone.

    Parameters
    ----------
    kT_map : ndarray (ny, nx)
        Recovered temperature, keV, NaN where none.
    map_wcs, zones_wcs : astropy.wcs.WCS
        Celestial WCS of the map and of the zone image.
    zones : ndarray (my, mx) int
        Zone id of each truth pixel (0: not in a zone interior).
    zone_kT, zone_ids : dict
        True kT (keV) and id of each zone name.

    Returns
    -------
    list of ZoneComparison
        One per zone, in the order of ``zone_kT``.
    """
    kT_map = np.asarray(kT_map, dtype=float)
    zones = np.asarray(zones)
    rows, cols = np.nonzero(np.isfinite(kT_map))
    ra, dec = map_wcs.all_pix2world(cols, rows, 0)
    zx, zy = zones_wcs.all_world2pix(ra, dec, 0)
    zx = np.floor(zx + 0.5).astype(int)
    zy = np.floor(zy + 0.5).astype(int)
    ok = (zx >= 0) & (zx < zones.shape[1]) & (zy >= 0) & (zy < zones.shape[0])
    zone_of = np.zeros(rows.shape, int)
    zone_of[ok] = zones[zy[ok], zx[ok]]
    values = kT_map[rows, cols]
    out = []
    for name, kT in zone_kT.items():
        v = values[zone_of == zone_ids[name]]
        if v.size:
            p16, p50, p84 = np.percentile(v, [16, 50, 84])
            out.append(ZoneComparison(name, float(kT), int(v.size), float(p50),
                                      float((p84 - p16) / 2)))
        else:
            out.append(ZoneComparison(name, float(kT), 0, float("nan"), float("nan")))
    return out


def format_comparison(rows: list[ZoneComparison]) -> str:
    """The table: zone, true kT, median recovered kT, scatter, pixels, within tolerance."""
    lines = [f"{'zone':<9} {'true kT':>8} {'recovered (median)':>19} {'scatter':>8} "
             f"{'pixels':>7}  within {TOLERANCE:.0%}",
             "-" * 66]
    for r in rows:
        if r.n_pixels:
            verdict = f"{'yes' if r.ok else 'NO'} ({r.rel_error:+.1%})"
        else:
            verdict = "NO (no pixels)"
        lines.append(f"{r.zone:<9} {r.true_kT:>6.2f} keV {r.median_kT:>13.2f} keV "
                     f"{r.scatter:>6.2f} {r.n_pixels:>8}  {verdict}")
    return "\n".join(lines)
