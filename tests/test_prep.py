"""``hpcxt prep`` with the products backend on the simulated small cluster."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.wcs import WCS

from hpcxt.stages.prep import run_prep
from hpcxt.io.bundle import read_bundle
from hpcxt.io.config import load_config
from hpcxt.prep.products import REASONS

from conftest import run_hpcxt


@pytest.fixture(scope="module")
def prepped(prepped_small):
    cfg = load_config(prepped_small)
    bundle = read_bundle(cfg.stage_dir("prep") / "bundle.h5")
    summary = json.loads((cfg.stage_dir("prep") / "summary.json").read_text())
    truth = yaml.safe_load((prepped_small.parent / "truth" / "truth.yaml").read_text())
    return cfg, bundle, summary, truth


def _copy(simulated_small, tmp_path) -> Path:
    dst = tmp_path / "sim"
    shutil.copytree(simulated_small, dst, ignore=shutil.ignore_patterns("work"))
    return dst / "config.yaml"


def test_counts_are_conserved_per_reason(prepped):
    _, bundle, summary, truth = prepped
    for obs, tobs in zip(summary["observations"], truth["observations"]):
        assert obs["input_events"] == tobs["events"]
        assert set(obs["removed"]) == set(REASONS)
        assert obs["input_events"] == obs["kept_events"] + sum(obs["removed"].values())
        assert obs["removed"]["ccd"] > 0  # the simulator puts events on ACIS-S
        assert obs["removed"]["energy"] > 0
    kept = [len(o.events["x"]) for o in bundle.observations]
    assert kept == [o["kept_events"] for o in summary["observations"]]


def test_deflaring_removes_the_flare_and_keeps_quiet_time(prepped):
    cfg, _, summary, truth = prepped
    import h5py
    for tobs, sobs in zip(truth["observations"], summary["observations"]):
        path, = (cfg.stage_dir("prep") / "clean").glob(f"{tobs['obsid']}.*.h5")
        with h5py.File(path) as f:
            flare = f["source/flare_intervals"][()]
            good = f["source/good_time"][()]
        start, stop = tobs["flare"]["start"], tobs["flare"]["stop"]
        # every second of the injected flare lies in a rejected interval
        probe = np.linspace(start + 1, stop - 1, 200)
        in_rejected = ((probe[:, None] >= flare[0]) & (probe[:, None] < flare[1])).any(axis=1)
        assert in_rejected.all()
        # quiet time kept: more than 95 % of the time outside the flare
        quiet_total = (tobs["tstop"] - tobs["tstart"]) - (stop - start)
        rejected_quiet = np.sum(np.clip(np.minimum(flare[1], tobs["tstop"]) -
                                        np.maximum(flare[0], tobs["tstart"]), 0, None)) - (stop - start)
        assert rejected_quiet / quiet_total < 0.05
        assert good.shape[0] == 2
        # exposure shrinks by the rejected share
        assert sobs["exposure_s"] < tobs["exposure"]
        assert sobs["exposure_s"] > 0.85 * tobs["exposure"]


def test_point_sources_are_removed(prepped):
    cfg, bundle, _, truth = prepped
    sources = truth["point_sources"]
    assert len(sources) >= 3
    w = bundle.grid.wcs()
    for o in bundle.observations:
        for s in sources:
            # the truth gives RA/Dec; project into the bundle's common frame
            px, py = w.all_world2pix(s["ra"], s["dec"], 0)
            x, y = bundle.grid.pixel_to_sky(float(py), float(px))
            d = np.hypot(o.events["x"] - x, o.events["y"] - y)
            inside_crop = (0 <= px < bundle.grid.shape[1]) and (0 <= py < bundle.grid.shape[0])
            if inside_crop:
                assert np.count_nonzero(d < 4.0) == 0, s  # within 2 arcsec of the source
                row, col = int(np.floor(py + 0.5)), int(np.floor(px + 0.5))
                assert not bundle.mask[row, col]


def test_bundle_images_and_fits_share_the_wcs(prepped):
    cfg, bundle, _, truth = prepped
    prep = cfg.stage_dir("prep")
    with fits.open(prep / "counts.fits") as hdul:
        counts = hdul[0].data
        w = WCS(hdul[0].header)
        assert hdul[0].header["BUNIT"] == "count"
        assert hdul[0].header["LTM1_1"] == pytest.approx(0.25)
    np.testing.assert_allclose(counts, bundle.counts)
    # the cluster centre lands near the brightest part of the image
    px, py = w.all_world2pix(truth["cluster"]["ra"], truth["cluster"]["dec"], 0)
    from scipy.ndimage import gaussian_filter
    smooth = gaussian_filter(bundle.counts, 3)
    peak = np.unravel_index(np.argmax(smooth), smooth.shape)
    assert abs(peak[0] - py) < 6 and abs(peak[1] - px) < 6
    assert bundle.has_background
    assert bundle.background.sum() > 0
    for o in bundle.observations:
        assert o.fov.any() and not (o.fov & ~bundle.mask).any()
        assert 0.1 < o.bkg_scale < 0.3  # the blank sky is ~5x longer
        assert o.response.rmf_matrix.shape[1] == 1024


def test_observations_are_reprojected_onto_one_frame(prepped):
    _, bundle, _, truth = prepped
    # both observations' events trace the same cluster centre in the common frame
    centres = []
    for o in bundle.observations:
        e = o.events
        band = (e["energy"] > 700) & (e["energy"] < 8000)
        x, y = e["x"][band], e["y"][band]
        cx, cy = np.median(x), np.median(y)
        r = np.hypot(x - cx, y - cy) < 60
        centres.append((np.median(x[r]), np.median(y[r])))
    assert np.hypot(centres[0][0] - centres[1][0], centres[0][1] - centres[1][1]) < 6.0


def test_rerun_skips_and_config_change_reruns(simulated_small, tmp_path):
    cfg_path = _copy(simulated_small, tmp_path)
    first = run_hpcxt("prep", cfg_path, timeout=300)
    assert first.returncode == 0, first.stderr
    bundle = cfg_path.parent / "work" / "prep" / "bundle.h5"
    mtime = bundle.stat().st_mtime_ns
    again = run_hpcxt("prep", cfg_path, timeout=300)
    assert again.returncode == 0
    assert "bundle: up to date" in again.stderr
    assert bundle.stat().st_mtime_ns == mtime
    data = yaml.safe_load(cfg_path.read_text())
    data["prep"]["bin"] = 8
    cfg_path.write_text(yaml.safe_dump(data))
    third = run_hpcxt("prep", cfg_path, timeout=300)
    assert third.returncode == 0, third.stderr
    assert "clean 1001: up to date" in third.stderr  # binning does not touch cleaning
    assert bundle.stat().st_mtime_ns != mtime
    assert read_bundle(bundle, load_events=False).grid.bin == 8


def _assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("hpcxt: error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def finished_copy(simulated_small, tmp_path):
    cfg_path = _copy(simulated_small, tmp_path)
    run_prep(load_config(cfg_path))
    bundle = cfg_path.parent / "work" / "prep" / "bundle.h5"
    return cfg_path, bundle, bundle.read_bytes()


def test_corrupt_fits_is_a_one_line_error_and_keeps_earlier_outputs(finished_copy):
    cfg_path, bundle, before = finished_copy
    evt = cfg_path.parent / "obs1002" / "acisf1002_repro_evt2.fits"
    evt.write_bytes(b"SIMPLE  =  garbage" + os.urandom(5000))
    proc = run_hpcxt("prep", cfg_path, timeout=300)
    _assert_one_line_error(proc, str(evt), "truncated or corrupt FITS file")
    assert bundle.read_bytes() == before


def test_missing_column_names_file_and_column(finished_copy):
    cfg_path, bundle, before = finished_copy
    evt = cfg_path.parent / "obs1001" / "acisf1001_repro_evt2.fits"
    with fits.open(evt) as hdul:
        hdul["EVENTS"].columns.del_col("pi")
        # astropy needs the table rebuilt after deleting a column
        table = fits.BinTableHDU.from_columns(hdul["EVENTS"].columns, header=hdul["EVENTS"].header)
        new = fits.HDUList([hdul[0].copy(), table] + [h.copy() for h in hdul[2:]])
        new.writeto(evt, overwrite=True)
    proc = run_hpcxt("prep", cfg_path, timeout=300)
    _assert_one_line_error(proc, str(evt), "'pi'")
    assert bundle.read_bytes() == before


def test_crop_outside_the_data_is_an_error_that_keeps_the_finished_prep(finished_copy):
    cfg_path, bundle, before = finished_copy
    prep = bundle.parent
    kept = {p: p.read_bytes() for p in [prep / "stages.json", *(prep / "clean").glob("*.h5")]}
    crop = cfg_path.parent / "regions" / "crop.reg"
    good = crop.read_text()
    crop.write_text("# Region file format: DS9 version 4.1\nfk5\nbox(10.0,-30.0,60\",60\",0)\n")
    proc = run_hpcxt("prep", cfg_path, timeout=300)
    _assert_one_line_error(proc, "prep.crop_region")
    assert bundle.read_bytes() == before
    assert all(p.read_bytes() == data for p, data in kept.items())
    # Back to the old crop: everything is up to date again, nothing redone.
    crop.write_text(good)
    again = run_hpcxt("prep", cfg_path, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "clean 1001: up to date" in again.stderr and "bundle: up to date" in again.stderr
    assert sorted((prep / "clean").glob("*.h5")) == sorted(p for p in kept if p.suffix == ".h5")


def test_a_truncated_bundle_is_made_again(finished_copy):
    cfg_path, bundle, before = finished_copy
    bundle.write_bytes(before[: len(before) // 3])
    proc = run_hpcxt("prep", cfg_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "making it again" in proc.stderr and "bundle: up to date" not in proc.stderr
    assert read_bundle(bundle, load_events=False).counts.sum() > 0


def test_upper_case_columns_and_header_only_wcs_are_read(simulated_small, tmp_path):
    cfg_path = _copy(simulated_small, tmp_path)
    evt = cfg_path.parent / "obs1001" / "acisf1001_repro_evt2.fits"
    with fits.open(evt) as hdul:
        cols = hdul["EVENTS"].columns
        new_cols = fits.ColDefs([fits.Column(name=c.name.upper(), format=c.format, unit=c.unit,
                                             array=hdul["EVENTS"].data[c.name]) for c in cols])
        header = fits.Header()
        for key in ("EXPOSURE", "RA_NOM", "DEC_NOM", "OBS_ID", "TSTART", "TSTOP"):
            header[key] = hdul["EVENTS"].header[key]
        header["EXTNAME"] = "EVENTS"
        table = fits.BinTableHDU.from_columns(new_cols, header=header)
        fits.HDUList([hdul[0].copy(), table] + [h.copy() for h in hdul[2:]]).writeto(
            evt, overwrite=True)
    proc = run_hpcxt("prep", cfg_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    b = read_bundle(cfg_path.parent / "work" / "prep" / "bundle.h5")
    assert len(b.observations[0].events["x"]) > 1000
