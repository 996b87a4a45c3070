"""Recovered temperatures against a simulation's truth: the kernel, and its refusals.

The end-to-end comparison of the small simulated cluster is in
tests/test_pipeline.py (it reuses that module's finished run).
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS

from conftest import run_hpcxt
from hpcxt.compare import TOLERANCE, compare_with_truth, format_comparison


def _wcs(crpix, cdelt_deg, crval=(165.0, 40.0)) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = list(crpix)
    w.wcs.cdelt = [-cdelt_deg, cdelt_deg]
    return w


def test_zones_are_looked_up_through_both_wcs():
    """A map on a grid twice as fine and shifted against the zone image."""
    pix = 2.0 / 3600.0
    zones = np.zeros((20, 20), int)
    zones[2:8, 2:8] = 1          # "core": zone pixels 2..7
    zones[12:18, 12:18] = 2      # "shock"
    zones_wcs = _wcs((10.5, 10.5), pix)
    # map pixel (c, r) lies at zone pixel (c/2 + 3.25, r/2 + 3.25) (0-based):
    # 9.5 + (c - 12.5)/2, a finer grid, shifted (never on a pixel edge)
    map_wcs = _wcs((13.5, 13.5), pix / 2)
    ny = nx = 40
    rr, cc = np.mgrid[0:ny, 0:nx]
    zy = np.floor(rr / 2 + 3.25 + 0.5).astype(int)
    zx = np.floor(cc / 2 + 3.25 + 0.5).astype(int)
    inside = (zx < 20) & (zy < 20)
    zone_here = np.where(inside, zones[np.minimum(zy, 19), np.minimum(zx, 19)], 0)
    rng = np.random.default_rng(1)
    kT = np.where(zone_here == 1, 3.0, np.where(zone_here == 2, 12.0, 7.0))
    kT = kT * (1 + 0.02 * rng.standard_normal(kT.shape))
    kT[np.nonzero(zone_here == 1)[0][:3], np.nonzero(zone_here == 1)[1][:3]] = np.nan
    kT[0, :] = np.nan            # blank pixels are left out
    rows = compare_with_truth(kT, map_wcs, zones, zones_wcs,
                              {"core": 3.0, "shock": 12.0, "cold": 1.0},
                              {"core": 1, "shock": 2, "cold": 9})
    core, shock, cold = rows
    expected_core = np.count_nonzero((zone_here == 1) & np.isfinite(kT))
    assert core.n_pixels == expected_core > 0
    assert shock.n_pixels == np.count_nonzero((zone_here == 2) & np.isfinite(kT)) > 0
    assert abs(core.median_kT - 3.0) < 0.03 and abs(shock.median_kT - 12.0) < 0.12
    assert 0.02 * 3.0 * 0.7 < core.scatter < 0.02 * 3.0 * 1.3
    assert core.ok and shock.ok
    assert cold.n_pixels == 0 and not cold.ok and np.isnan(cold.median_kT)
    table = format_comparison(rows).splitlines()
    assert table[0].split()[:3] == ["zone", "true", "kT"] and f"{TOLERANCE:.0%}" in table[0]
    assert table[2].startswith("core") and "yes (" in table[2]
    assert table[4].startswith("cold") and table[4].endswith("NO (no pixels)")


def test_a_zone_off_by_more_than_the_tolerance_fails():
    pix = 2.0 / 3600.0
    zones = np.ones((10, 10), int)
    w = _wcs((5.5, 5.5), pix)
    rows = compare_with_truth(np.full((10, 10), 3.0 * (1 + TOLERANCE) * 1.01), w, zones, w,
                              {"core": 3.0}, {"core": 1})
    assert rows[0].n_pixels == 100 and not rows[0].ok
    assert "NO (+11.1%)" in format_comparison(rows)


def test_compare_without_truth_or_maps_says_what_is_missing(simulated_small, tmp_path):
    import shutil

    import yaml

    # a project that is not a simulation: no truth beside the config
    cfg = tmp_path / "plain" / "c.yaml"
    cfg.parent.mkdir()
    data = yaml.safe_load((simulated_small / "config.yaml").read_text())
    data["observations"] = [{"obsid": o["obsid"]} for o in data["observations"]]
    data["prep"] = {}
    cfg.write_text(yaml.safe_dump(data))
    proc = run_hpcxt("compare", cfg, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hpcxt: error: {cfg}: no simulator truth")
    # a simulation whose maps are not made yet
    sim = tmp_path / "sim"
    shutil.copytree(simulated_small, sim, ignore=shutil.ignore_patterns("work"))
    proc = run_hpcxt("compare", sim / "config.yaml", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"hpcxt: error: {sim / 'work' / 'maps' / 'temperature.fits'}: not found; "
        "run 'hpcxt maps' first"]
