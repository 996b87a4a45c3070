"""``hpcxt demo``: simulate a merging cluster, map it under MPI, compare with the truth.

The demo preset of :mod:`hpcxt.prep.simulate` has three temperature zones
(cool core 3 keV, ambient 7 keV, shock 12 keV). After the whole pipeline
has run, each temperature-map pixel is looked up in the truth's zone image
(zone interiors only, away from boundaries where circles straddle two
temperatures) and the recovered temperatures are summarised per zone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

log = logging.getLogger("hpcxt.demo")

#: A zone passes when its median recovered kT is within this of the truth.
TOLERANCE = 0.10


@dataclass
class ZoneComparison:
    zone: str
    true_kT: float
    n_pixels: int
    median_kT: float
    scatter: float  # half the 16-84 percentile range, keV

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
    """
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
    lines = [f"{'zone':<9} {'true kT':>8} {'recovered (median)':>19} {'scatter':>8} "
             f"{'pixels':>7}  within {TOLERANCE:.0%}",
             "-" * 66]
    for r in rows:
        lines.append(f"{r.zone:<9} {r.true_kT:>6.2f} keV {r.median_kT:>13.2f} keV "
                     f"{r.scatter:>6.2f} {r.n_pixels:>8}  "
                     f"{'yes' if r.ok else 'NO'} ({r.rel_error:+.1%})")
    return "\n".join(lines)


def run_demo(outdir: Path, nprocs: int | None = None, seed: int = 1) -> int:
    """Simulate (once), run the pipeline (resuming), print the comparison."""
    from astropy.io import fits
    from astropy.wcs import WCS

    from .pipeline import run_pipeline
    from .prep.simulate import simulate

    outdir = Path(outdir)
    cfg_path = outdir / "config.yaml"
    truth_path = outdir / "truth" / "truth.yaml"
    t0 = time.perf_counter()
    if cfg_path.exists() and truth_path.exists():
        log.info("demo: reusing the simulation in %s", outdir)
    else:
        summary = simulate(outdir, preset="demo", seed=seed)
        print(summary.describe())
    status = run_pipeline(cfg_path, nprocs=nprocs)
    if status != 0:
        return status
    truth = yaml.safe_load(truth_path.read_text())
    maps = outdir / "work" / "maps"
    with fits.open(maps / "temperature.fits") as h:
        kT_map, map_wcs = h[0].data.astype(float), WCS(h[0].header)
    with fits.open(outdir / "truth" / "zones.fits") as h:
        zones, zones_wcs = h[0].data.astype(int), WCS(h[0].header)
    zone_kT = {k: v["kT"] for k, v in truth["zones"].items()}
    zone_ids = {k: v["id"] for k, v in truth["zones"].items()}
    rows = compare_with_truth(kT_map, map_wcs, zones, zones_wcs, zone_kT, zone_ids)
    print()
    print(f"hpcxt demo: {truth['model']} fits of a simulated merging cluster "
          f"({time.perf_counter() - t0:.0f} s)")
    print(format_comparison(rows))
    print()
    print(f"maps (FITS, open in ds9): {maps}")
    pngs = sorted(p.name for p in maps.glob("*.png"))
    if pngs:
        print(f"quick-looks: {', '.join(pngs)} (overview: {maps / 'overview.png'})")
    return 0 if all(r.ok for r in rows) else 1
