"""What ``hpcxt maps``, ``hpcxt export`` and ``hpcxt regions`` write, on the small simulation.

The scale map runs for real (one rank, in this process); the fit results
are made up with known values (a fit is not under test here), written to
results.h5 as ``hpcxt fit`` would write them.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table

from hpcxt.cli import main
from hpcxt.io.checkpoint import FitResults, fit_inputs, read_results, write_results
from hpcxt.io.config import load_config
from hpcxt.io.regions_table import read_regions
from hpcxt.io.workdir import WorkDir
from hpcxt.maps import ABUNDANCE_MAPS, IMAGES, MAPS, Coverage, written_maps
from hpcxt.schema import COLUMNS, Status

FAILED_EVERY = 17   # region ids divisible by this failed (made up)


def made_up_results(cfg) -> FitResults:
    """Results for every region of the table: known values, some failed."""
    wd = WorkDir.of(cfg)
    table = read_regions(wd.regions)
    n, nobs = len(table), len(table.obsids)
    res = FitResults.new(n, table.obsids, fit_inputs(cfg),
                         region_table_hash=table.content_hash())
    ids = np.arange(n)
    failed = ids % FAILED_EVERY == 0
    res.kT[:] = np.where(failed, np.nan, 3.0 + (ids % 11) * 0.5)
    res.kT_lo[:] = res.kT * 0.9
    res.kT_hi[:] = res.kT * 1.2
    res.norm[:] = np.where(failed, np.nan, 1e-4 * (1.0 + ids / n))
    res.norm_lo[:] = res.norm * 0.95
    res.norm_hi[:] = res.norm * 1.05
    res.stat[:] = 100.0 + ids
    res.dof[:] = 90 + ids % 5
    res.counts[:] = (200 + ids[:, None] * (1 + np.arange(nobs)[None, :])).astype(np.int64)
    res.bkg_counts[:] = 10 + ids[:, None] % 7
    res.status[:] = np.where(failed, Status.FAILED, Status.OK)
    res.reason[:] = np.where(failed, "made up: fit did not converge, for the test", "")
    res.fit_seconds[:] = 0.25
    res.worker[:] = 1 + ids % 2
    return res


@pytest.fixture(scope="module")
def mapped_small(prepped_small, tmp_path_factory):
    """Config of a copy of the prepped small simulation with scalemap, results and maps."""
    from mpi4py import MPI

    from hpcxt.stages.maps import run_maps
    from hpcxt.stages.scalemap import run_scalemap

    root = tmp_path_factory.mktemp("outputs") / "sim"
    shutil.copytree(prepped_small.parent, root)
    cfg_path = root / "config.yaml"
    data = yaml.safe_load(cfg_path.read_text())
    data.setdefault("maps", {})["png"] = False   # the PNGs are checked in test_pipeline
    cfg_path.write_text(yaml.safe_dump(data))
    cfg = load_config(cfg_path, check_files=False)
    run_scalemap(cfg, MPI.COMM_SELF)
    write_results(WorkDir.of(cfg).results, made_up_results(cfg))
    run_maps(cfg)
    return cfg_path


def _cfg(path):
    return load_config(path, check_files=False)


# --------------------------------------------------------------------------
# flux images


def test_flux_is_counts_over_exposure_with_wcs_and_bunit(mapped_small):
    work = WorkDir.of(_cfg(mapped_small))
    counts = fits.getdata(work.prep_image("counts")).astype(float)
    exposure = fits.getdata(work.prep_image("exposure")).astype(float)
    background = fits.getdata(work.prep_image("background")).astype(float)
    mask = fits.getdata(work.prep_image("mask")).astype(bool)
    with fits.open(work.map_file("flux")) as h:
        flux, hdr = h[0].data, h[0].header
    ref = fits.getheader(work.prep_image("counts"))
    for key in ("CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CDELT1",
                "CDELT2", "LTV1", "LTM1_1"):
        assert hdr[key] == ref[key], key
    assert hdr["BUNIT"] == "photon cm**-2 s**-1 pixel**-1" == IMAGES["flux"].bunit
    assert hdr["EXPTHRSH"] == 0.015
    kept = mask & (exposure >= 0.015 * exposure.max())
    assert kept.sum() > 0.9 * mask.sum()
    np.testing.assert_allclose(flux[kept], counts[kept] / exposure[kept], rtol=1e-6)
    assert np.all(np.isnan(flux[~kept]))
    assert np.all(np.isnan(flux[~mask]))      # point sources and outside the crop
    sub = fits.getdata(work.map_file("flux_bkgsub"))
    np.testing.assert_allclose(sub[kept], (counts[kept] - background[kept]) / exposure[kept],
                               rtol=1e-5, atol=1e-12)
    assert np.array_equal(np.isnan(sub), np.isnan(flux))


# --------------------------------------------------------------------------
# what the maps say about themselves, and their blanks


def test_every_map_says_what_it_is_and_how_it_was_fitted(mapped_small):
    cfg = _cfg(mapped_small)
    work = WorkDir.of(cfg)
    # the abundance maps only when the fit freed it (fit.free)
    assert written_maps(cfg.fit.free) == [n for n in MAPS if n not in ABUNDANCE_MAPS]
    assert not any(work.map_file(n).exists() for n in ABUNDANCE_MAPS)
    for name in written_maps(cfg.fit.free):
        spec = MAPS[name]
        hdr = fits.getheader(work.map_file(name))
        assert hdr.get("BUNIT", "") == spec.bunit
        assert hdr["MAPVALUE"] == "region circle"
        assert hdr["MODEL"] == cfg.fit.model
        assert hdr["STATISTC"] == cfg.fit.statistic
        assert hdr["ERRSIGMA"] == cfg.fit.error_sigma
        assert hdr["REDSHIFT"] == cfg.cluster.redshift
        assert hdr["NH"] == cfg.cluster.nh
        assert hdr["ABUND"] == cfg.cluster.abundance
        assert hdr["ABUNDTBL"]
        assert hdr["BLOCK"] == 5 and hdr["RESOLUT"] == "low"
        comments = " ".join(str(c) for c in hdr["COMMENT"])
        assert "coverage.fits" in comments
    assert "not per pixel" in " ".join(str(c) for c in
                                       fits.getheader(work.map_file("norm"))["COMMENT"])
    assert "flux_bkgsub.fits" in " ".join(str(c) for c in
                                          fits.getheader(work.map_file("density"))["COMMENT"])
    for name in IMAGES:
        assert fits.getheader(work.map_file(name))["MAPVALUE"] == "image pixel"
    import astropy.units as u
    for spec in list(MAPS.values()) + list(IMAGES.values()):
        u.Unit(spec.bunit, format="fits")     # every BUNIT parses


def test_coverage_keeps_the_kinds_of_blank_apart(mapped_small):
    cfg = _cfg(mapped_small)
    work = WorkDir.of(cfg)
    res = read_results(work.results)
    table = read_regions(work.regions)
    mask = fits.getdata(work.prep_image("mask")).astype(bool)
    with fits.open(work.map_file("coverage")) as h:
        cov, hdr = h[0].data, h[0].header
    kT = fits.getdata(work.map_file("temperature"))
    for c in Coverage:
        assert hdr[f"COVER{int(c)}"].startswith(c.name.lower())
    assert np.array_equal(np.isfinite(kT), (cov == Coverage.MAPPED) | (cov == Coverage.FILLED))
    assert np.array_equal(cov == Coverage.MASKED, ~mask)
    failed = res.status == Status.FAILED
    assert failed.any()
    for i in np.flatnonzero(failed):
        assert cov[table.row[i], table.col[i]] == Coverage.FIT_FAILED
    for i in np.flatnonzero(~failed):
        assert kT[table.row[i], table.col[i]] == np.float32(res.kT[i])
    # low resolution on a crop whose size is no multiple of 5: the blocks
    # miss edge strips, which now show the nearest region instead of NaN
    assert np.count_nonzero(cov == Coverage.FILLED) > 0
    summary = json.loads(work.maps_summary.read_text())
    assert summary["coverage_pixels"] == {c.name.lower(): int(np.count_nonzero(cov == c))
                                          for c in Coverage}


# --------------------------------------------------------------------------
# the ds9 region file


def _expected_circles(cfg):
    from astropy.coordinates import FK5, SkyCoord

    from hpcxt.export import region_sky
    from hpcxt.io.bundle import read_bundle_grid

    work = WorkDir.of(cfg)
    table = read_regions(work.regions)
    ra, dec, r_arcsec = region_sky(table, read_bundle_grid(work.bundle).wcs())
    centres = SkyCoord(ra, dec, unit="deg", frame="icrs").transform_to(FK5(equinox="J2000"))
    return table, centres, r_arcsec


def test_region_file_in_fk5_reads_back_as_the_same_circles(mapped_small):
    from regions import CircleSkyRegion, Regions

    cfg = _cfg(mapped_small)
    work = WorkDir.of(cfg)
    res = read_results(work.results)
    table, centres, r_arcsec = _expected_circles(cfg)
    text = work.region_file.read_text()
    assert "\nfk5\n" in text
    # sexagesimal centres, radii in arcsec, as ds9 writes them
    assert re.search(r'^circle\(\d\d:\d\d:\d\d\.\d+,[+-]\d\d:\d\d:\d\d\.\d+,[\d.]+"\)', text,
                     re.M)
    regs = Regions.parse(text, format="ds9")
    assert len(regs) == len(table)
    for i, reg in enumerate(regs):
        assert isinstance(reg, CircleSkyRegion)
        assert reg.center.separation(centres[i]).arcsec < 2e-3
        assert reg.radius.to_value("arcsec") == pytest.approx(r_arcsec[i], abs=1e-4)
        assert reg.meta["tag"] == [str(i)]
        if res.status[i] == Status.OK:
            assert reg.meta["text"] == f"{i}: {res.kT[i]:.2f} keV"
            assert reg.visual["edgecolor"] == "green"
        else:
            assert reg.meta["text"] == f"{i}: failed"
            assert reg.visual["edgecolor"] == "red"
    # the radius is the scale map's: image pixels times the image pixel size
    assert r_arcsec[0] == pytest.approx(table.radius[0] * 4 * 0.492, rel=1e-9)


def test_region_file_in_physical_coordinates_is_sky_pixels(mapped_small, tmp_path):
    from regions import CirclePixelRegion, Regions

    from hpcxt.stages.maps import run_maps

    root = tmp_path / "sim"
    shutil.copytree(mapped_small.parent, root)
    cfg = _cfg(root / "config.yaml")
    summary = run_maps(cfg, coords="physical")
    assert summary["region_coords"] == "physical"
    table = read_regions(WorkDir.of(cfg).regions)
    text = WorkDir.of(cfg).region_file.read_text()
    assert "\nphysical\n" in text and "image" not in text
    # astropy regions reads no "physical" frame; with the frame renamed it
    # reads the same numbers, which are CIAO's physical (sky) pixels
    regs = Regions.parse(text.replace("\nphysical\n", "\nimage\n"), format="ds9")
    assert len(regs) == len(table)
    for i, reg in enumerate(regs):
        assert isinstance(reg, CirclePixelRegion)
        assert reg.center.x + 1 == pytest.approx(table.x[i], abs=1e-6)
        assert reg.center.y + 1 == pytest.approx(table.y[i], abs=1e-6)
        assert reg.radius == pytest.approx(table.radius_sky[i], abs=1e-6)
        assert reg.meta["tag"] == [str(i)]


# --------------------------------------------------------------------------
# the table export


def _text(column) -> list[str]:
    """A text column as str: FITS gives bytes, csv readers a masked or NaN empty cell."""
    out = []
    for v in column:
        if v is np.ma.masked or (isinstance(v, float) and np.isnan(v)):
            v = ""
        out.append(v.decode() if isinstance(v, bytes) else str(v))
    return out


def _check_rows(t, res, table, obsids):
    """Every column of the schema, and the positions, match results.h5 row for row."""
    assert len(t) == len(res)
    assert np.array_equal(np.asarray(t["region_id"]), res.region_id)
    assert np.array_equal(np.asarray(t["region"]), res.region_id)
    for c in COLUMNS:
        names = [f"{c.name}_{o}" for o in obsids] if c.per_obs else [c.name]
        expect = np.asarray(res.columns[c.name])
        for j, name in enumerate(names):
            got = np.asarray(t[name])
            want = expect[:, j] if c.per_obs else expect
            if c.is_text:
                assert _text(t[name]) == [str(v) for v in want], name
            elif want.dtype.kind == "f":
                np.testing.assert_array_equal(got, want, err_msg=name)
            else:
                assert np.array_equal(got, want), name
    np.testing.assert_array_equal(np.asarray(t["x"]), table.x)
    np.testing.assert_array_equal(np.asarray(t["radius_sky"]), table.radius_sky)
    np.testing.assert_array_equal(np.asarray(t["T"]), res.kT)
    np.testing.assert_allclose(np.asarray(t["T_err_+"]), res.kT_hi - res.kT)
    assert _text(t["status_text"]) == [
        {1: "ok", 2: "failed"}[int(s)] for s in res.status]


@pytest.mark.parametrize("fmt", ["fits", "ecsv", "csv"])
def test_export_reads_back_with_astropy_and_matches_results(mapped_small, fmt):
    cfg = _cfg(mapped_small)
    work = WorkDir.of(cfg)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["export", str(mapped_small), "--format", fmt]) == 0
    path = work.export_table(fmt)
    assert str(path) in out.getvalue()
    res = read_results(work.results)
    table = read_regions(work.regions)
    t = Table.read(path, format="fits" if fmt == "fits" else "ascii.ecsv")
    _check_rows(t, res, table, res.obsids)
    # units and descriptions from the schema, in the file's header
    assert t["kT"].unit == "keV" and t["norm"].unit == "cm**-5"
    assert t[f"counts_{res.obsids[0]}"].unit == "count"
    assert t["kT"].description == "best-fit temperature"
    assert t["ra"].unit == "deg" and t["radius_arcsec"].unit == "arcsec"
    if fmt == "fits":
        hdr = fits.getheader(path, "REGIONS")
        i = t.colnames.index("kT") + 1
        assert hdr[f"TUNIT{i}"] == "keV" and hdr[f"TCOMM{i}"] == "best-fit temperature"
        assert hdr["MODEL"] == cfg.fit.model and hdr["OBSIDS"] == ",".join(res.obsids)


@pytest.mark.parametrize("fmt", ["csv", "ecsv"])
def test_export_reads_back_with_pandas(mapped_small, fmt):
    pd = pytest.importorskip("pandas", reason="pandas is an optional test dependency")
    cfg = _cfg(mapped_small)
    path = WorkDir.of(cfg).export_table(fmt)
    if not path.exists():
        assert main(["export", str(mapped_small), "--format", fmt]) == 0
    df = pd.read_csv(path, comment="#", sep="," if fmt == "csv" else " ",
                     keep_default_na=False, na_values=["nan"])
    res = read_results(WorkDir.of(cfg).results)
    table = read_regions(WorkDir.of(cfg).regions)
    _check_rows(Table.from_pandas(df), res, table, res.obsids)


def test_regions_prints_one_region(mapped_small, capsys):
    res = read_results(WorkDir.of(_cfg(mapped_small)).results)
    i = 3
    assert main(["regions", str(mapped_small), "--id", str(i)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"region {i}: ok")
    assert re.search(rf"kT \(lo, hi\)\s+{res.kT[i]:.6g} keV\s+{res.kT_lo[i]:.6g} keV"
                     rf"\s+{res.kT_hi[i]:.6g} keV", text)
    assert f"{res.norm[i]:.6g} cm-5" in text
    for j, obsid in enumerate(res.obsids):
        assert re.search(rf"^  {obsid}\s+{res.counts[i, j]}\s+{res.bkg_counts[i, j]}\s", text,
                         re.M)
    assert main(["regions", str(mapped_small), "--id", "0"]) == 0
    assert "failed (made up: fit did not converge" in capsys.readouterr().out
    assert main(["regions", str(mapped_small), "--id", str(len(res))]) == 2
    assert "--id: no region" in capsys.readouterr().err


def test_sexagesimal_matches_astropy_and_never_writes_60():
    from astropy.coordinates import Angle

    from hpcxt.export import sexagesimal

    dec = np.random.default_rng(3).uniform(-90, 90, 5000)
    assert sexagesimal(dec, 3, sign=True) == list(Angle(dec, unit="deg").to_string(
        unit="deg", sep=":", precision=3, alwayssign=True, pad=True))
    ra_hours = np.random.default_rng(4).uniform(0, 360, 5000) / 15.0
    assert sexagesimal(ra_hours, 4, wrap=24) == list(Angle(ra_hours, unit="hourangle").to_string(
        unit="hourangle", sep=":", precision=4, pad=True))
    assert sexagesimal([59.99999999 / 3600, 359.99999999 / 15], 4, wrap=24) == [
        "00:01:00.0000", "00:00:00.0000"]
