"""``hpcxt run`` end to end on the small simulated cluster, and the maps it writes."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import yaml
from astropy.io import fits

from hpcxt.io.checkpoint import read_results
from hpcxt.io.regions_table import read_regions
from hpcxt.maps import IMAGES, MAPS, written_maps

from conftest import run_hpcxt

# One group: the tests share one finished `hpcxt run` (module fixture).
pytestmark = [pytest.mark.mpi, pytest.mark.slow, pytest.mark.xdist_group("pipeline")]


@pytest.fixture(scope="module")
def finished_run(simulated_small, tmp_path_factory):
    root = tmp_path_factory.mktemp("run_small") / "sim"
    shutil.copytree(simulated_small, root, ignore=shutil.ignore_patterns("work"))
    cfg_path = root / "config.yaml"
    data = yaml.safe_load(cfg_path.read_text())
    data["fit"]["errors"] = "covar"  # the pipeline, not the error method, is under test
    cfg_path.write_text(yaml.safe_dump(data))
    proc = run_hpcxt("run", cfg_path, "--np", "2", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg_path, proc


def test_run_writes_every_map_with_the_bundle_wcs(finished_run):
    cfg_path, _ = finished_run
    work = cfg_path.parent / "work"
    with fits.open(work / "prep" / "counts.fits") as h:
        ref = h[0].header
        shape = h[0].data.shape
    written = {name: MAPS[name] for name in written_maps(free=())}
    assert not (work / "maps" / "abundance.fits").exists()  # frozen abundance: no map
    for name, spec in {**written, **IMAGES, "coverage": None}.items():
        with fits.open(work / "maps" / f"{name}.fits") as h:
            hdr, data = h[0].header, h[0].data
        assert data.shape == shape, name
        for key in ("CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CDELT1",
                    "CDELT2", "LTV1", "LTV2", "LTM1_1"):
            assert hdr[key] == ref[key], (name, key)
        assert hdr.get("BUNIT", "") == (spec.bunit if spec else "")
    assert (work / "maps" / "regions.reg").stat().st_size > 1000
    for png in ("temperature.png", "temperature_frac_err.png", "pressure.png", "entropy.png",
                "overview.png", "flux.png", "flux_temperature.png"):
        assert (work / "maps" / png).stat().st_size > 10_000


def test_maps_hold_fitted_values_and_nan_elsewhere(finished_run):
    cfg_path, _ = finished_run
    work = cfg_path.parent / "work"
    res = read_results(work / "fit" / "results.h5")
    table = read_regions(work / "acb" / "regions.h5")
    kT = fits.getdata(work / "maps" / "temperature.fits")
    frac = fits.getdata(work / "maps" / "temperature_frac_err.fits")
    mask = fits.getdata(work / "prep" / "mask.fits").astype(bool)
    assert res.complete
    ok = res.status == 1
    assert ok.sum() > 0.8 * len(res)
    for i in range(len(res)):
        v = kT[table.row[i], table.col[i]]
        if ok[i]:
            assert v == np.float32(res.kT[i])
        else:
            assert np.isnan(v)
    assert not np.any(kT == 0.0)
    assert np.all(np.isnan(kT[~mask]))
    # the fractional error is finite wherever the temperature is
    assert np.array_equal(np.isfinite(kT), np.isfinite(frac))
    summary = json.loads((work / "maps" / "summary.json").read_text())
    assert summary["mapped_regions"] == int(ok.sum())
    assert summary["dropped"]["failed"] == int(np.count_nonzero(res.status == 2))


def test_rerun_does_no_work_again(finished_run):
    cfg_path, _ = finished_run
    work = cfg_path.parent / "work"
    outputs = [work / "prep" / "bundle.h5", work / "acb" / "regions.h5",
               work / "acb" / "scalemap.fits", work / "fit" / "results.h5",
               work / "maps" / "temperature.fits"]
    before = [p.stat().st_mtime_ns for p in outputs]
    again = run_hpcxt("run", cfg_path, "--np", "2", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in outputs] == before
    for phrase in ("bundle: up to date", "up to date", "maps: up to date"):
        assert phrase in again.stderr


def _copy_project(cfg_path, dest):
    """A copy of the project folder with fresh mtimes (as cp without -a gives)."""
    shutil.copytree(cfg_path.parent, dest, copy_function=shutil.copy)
    return dest / cfg_path.name


def test_a_copied_project_resumes_without_redoing_any_stage(finished_run, tmp_path):
    cfg_path, _ = finished_run
    copy = _copy_project(cfg_path, tmp_path / "copied")
    work = copy.parent / "work"
    outputs = [work / "prep" / "bundle.h5", work / "acb" / "regions.h5",
               work / "fit" / "results.h5", work / "maps" / "temperature.fits"]
    before = [p.stat().st_mtime_ns for p in outputs]
    again = run_hpcxt("run", copy, "--np", "2", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in outputs] == before
    assert "bundle: up to date" in again.stderr and "maps: up to date" in again.stderr


def test_fit_after_a_changed_scale_map_setting_is_refused(finished_run, tmp_path):
    cfg_path, _ = finished_run
    copy = _copy_project(cfg_path, tmp_path / "changed")
    data = yaml.safe_load(copy.read_text())
    old = data["acb"]["target_sn"]
    data["acb"]["target_sn"] = old + 5
    copy.write_text(yaml.safe_dump(data))
    results = copy.parent / "work" / "fit" / "results.h5"
    before = results.read_bytes()
    proc = run_hpcxt("fit", copy, "--resume")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("hpcxt: error: ") and "regions.h5" in last
    assert f"acb.target_sn ({old!r} -> {old + 5!r}) changed since the scale map" in last
    assert results.read_bytes() == before


def _zone_rows(text: str) -> dict:
    """Zone name -> (true kT, median kT, pixels, verdict) from a comparison table."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)\s+([\d.]+) keV\s+([\d.]+|nan) keV\s+([\d.]+|nan)\s+(\d+)\s+"
                     r"(yes|NO) ", line)
        if m:
            out[m.group(1)] = (float(m.group(2)), float(m.group(3)), int(m.group(5)),
                               m.group(6))
    return out


def test_compare_reports_every_truth_zone_of_the_simulation(finished_run):
    """hpcxt compare on the small preset: every zone of truth.yaml, against the map."""
    from hpcxt.compare import compare_with_truth
    from astropy.wcs import WCS

    cfg_path, run = finished_run
    truth = yaml.safe_load((cfg_path.parent / "truth" / "truth.yaml").read_text())
    proc = run_hpcxt("compare", cfg_path, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    rows = _zone_rows(proc.stdout)
    assert set(rows) == set(truth["zones"])
    # the same numbers as the kernel on the files themselves
    with fits.open(cfg_path.parent / "work" / "maps" / "temperature.fits") as h:
        kT, map_wcs = h[0].data.astype(float), WCS(h[0].header)
    with fits.open(cfg_path.parent / "truth" / "zones.fits") as h:
        zones, zones_wcs = h[0].data.astype(int), WCS(h[0].header)
    expected = compare_with_truth(kT, map_wcs, zones, zones_wcs,
                                  {k: v["kT"] for k, v in truth["zones"].items()},
                                  {k: v["id"] for k, v in truth["zones"].items()})
    for r in expected:
        true_kT, median, pixels, verdict = rows[r.zone]
        assert true_kT == r.true_kT and pixels == r.n_pixels > 0
        assert median == pytest.approx(r.median_kT, abs=0.006)
        assert verdict == ("yes" if r.ok else "NO")
        # at S/N 25 circles straddle zones and hot gas is poorly constrained,
        # but no zone is lost or swapped for another
        assert 0.5 < r.median_kT / r.true_kT < 2.0, r
    # the ambient gas, which fills most of the map, is recovered within 10%
    assert rows["ambient"][3] == "yes"
    assert proc.returncode == (0 if all(r.ok for r in expected) else 1)
    last = proc.stdout.strip().splitlines()[-1]
    assert last == "every zone within 10% of the truth" if proc.returncode == 0 else "off by" in last
    # hpcxt run (and hpcxt maps) printed the same table at its end
    assert "hpcxt maps: recovered kT against the simulator's truth (xsphabs*xsbremss spectra, " \
           "preset small)" in run.stdout
    assert _zone_rows(run.stdout) == rows
