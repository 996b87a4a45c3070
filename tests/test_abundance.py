"""Free abundance (``fit.free: [abundance]``) and XSPEC table models in ``fit.model``.

No abundance-sensitive plasma model evaluates here without AtomDB, so the
tests build a table model that stands in for APEC (tests/apec_standin.py:
bremsstrahlung plus line complexes near 1 and 6.7 keV scaled by the
abundance). The ``xsapec`` route runs only where AtomDB is present.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from apec_standin import table_rate, write_standin_table
from conftest import run_hpcxt
from fit_fixtures import background_rate, default_response, make_fit_workdir
from hpcxt.errors import ConfigError
from hpcxt.io.config import load_config
from hpcxt.schema import Engine, Status
from hpcxt.spectra import ObsSpectrum

NH, REDSHIFT = 0.03, 0.1


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return write_standin_table(tmp_path_factory.mktemp("table") / "apec_standin.fits")


@pytest.fixture(scope="module")
def response():
    return default_response()


def table_model(path) -> str:
    return f"xsphabs*atable{{{path}}}"


def draw(rng, response, table, kT, abundance, norm, exposure=50e3, bkg_scale=0.5):
    """One observation's source and background spectra from the stand-in table."""
    brate = background_rate(response, 5e-6)
    mu = table_rate(response, table, kT, abundance, norm, NH, REDSHIFT) * exposure
    src = rng.poisson(mu + brate * exposure).astype(np.int64)
    bkg = rng.poisson(brate * exposure / bkg_scale).astype(np.int64)
    return ObsSpectrum(0, src, bkg, exposure, bkg_scale)


def settings(table, **kw):
    from hpcxt.fit import FitSettings
    base = dict(model=table_model(table), nh=NH, abundance=0.3, redshift=REDSHIFT,
                kT_init=5.0, kT_range=(1.0, 20.0), errors="conf")
    base.update(kw)
    return FitSettings(**base)


# --------------------------------------------------------------------------
# the model and the config


def test_table_model_parameters_recognised_by_name(table):
    from hpcxt.models import build_model, read_table_parameters

    roles = [(p.name, p.role) for p in read_table_parameters(table)]
    assert roles == [("kT", "kT"), ("Abundanc", "abundance")]
    frozen = build_model(table_model(table), NH, 0.4, REDSHIFT, kT=6.0)
    assert frozen.abundance.frozen and frozen.abundance.val == pytest.approx(0.4)
    assert not frozen.kT.frozen and frozen.kT.val == pytest.approx(6.0)
    assert (frozen.kT.hard_min, frozen.kT.hard_max) == pytest.approx((1.0, 20.0))
    redshift = [p for p in frozen.model.pars if p.name == "redshift"]
    assert len(redshift) == 1 and redshift[0].frozen and redshift[0].val == pytest.approx(0.1)
    free = build_model(table_model(table), NH, 0.4, REDSHIFT, free_abundance=True)
    assert not free.abundance.frozen
    # at fixed kT the spectrum is linear in the abundance, and the lines carry it
    e = np.linspace(0.5, 8.0, 301)
    spec = {}
    for z in (0.0, 0.5, 1.0):
        free.abundance.val = z
        spec[z] = np.asarray(free.model(e[:-1], e[1:]))
    assert np.allclose(spec[1.0] - spec[0.0], 2 * (spec[0.5] - spec[0.0]), rtol=1e-4)
    assert not np.allclose(spec[1.0], spec[0.0])
    line = (e[:-1] > 5.8) & (e[1:] < 6.4)      # 6.7 keV at z = 0.1
    assert (spec[1.0][line].sum() / spec[0.0][line].sum()) > 1.5


def test_config_resolves_table_path_and_refuses_kT_range_outside_table(tmp_path, table):
    cfg = make_fit_workdir(tmp_path, n_side=2, extra_fit={
        "model": "xsphabs*atable{tables/standin.fits}", "free": ["abundance"],
        "kT_range": [1.0, 20.0], "kT_init": 5.0})
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "standin.fits").write_bytes(table.read_bytes())
    loaded = load_config(cfg)
    assert loaded.fit.model == f"xsphabs*atable{{{tmp_path / 'tables' / 'standin.fits'}}}"
    assert loaded.fit.free == ["abundance"]

    text = cfg.read_text().replace("- 1.0\n  - 20.0", "- 0.5\n  - 20.0")
    assert text != cfg.read_text()
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    lines = str(err.value).strip().splitlines()
    bad = [ln for ln in lines if "fit.kT_range" in ln]
    assert len(bad) == 1 and "outside the table model's kT grid 1-20 keV" in bad[0]


def test_config_refuses_free_abundance_without_one(tmp_path):
    cfg = make_fit_workdir(tmp_path, n_side=2, extra_fit={"free": ["abundance"]})
    with pytest.raises(ConfigError, match=r"fit\.free: xsbremss has no abundance to free"):
        load_config(cfg)


# --------------------------------------------------------------------------
# engines


def test_unconstrained_abundance_keeps_kT_and_says_so(table, response):
    """A band without the lines: the abundance has no bound, kT stands."""
    from hpcxt.fit import RegionFitter

    rng = np.random.default_rng(5)
    sp = draw(rng, response, table, 5.0, 0.5, 4e-4)
    fitter = RegionFitter(settings(table, free_abundance=True, energy_range=(1.6, 5.5)),
                          [response])
    rec = fitter.fit([sp])
    assert rec.status == Status.OK, rec.reason
    assert "abundance unconstrained" in rec.reason and "(kT kept)" in rec.reason
    assert math.isnan(rec.abundance_lo) and math.isnan(rec.abundance_hi)
    assert np.isfinite(rec.abundance)
    assert rec.kT_lo < rec.kT < rec.kT_hi and abs(rec.kT - 5.0) < 3 * (rec.kT_hi - rec.kT_lo)


def test_template_with_free_abundance_falls_back_to_sherpa(table, response):
    from hpcxt.engines import TemplateEngine, engine_choice, make_engine
    from hpcxt.fit import RegionFitter

    s = settings(table, free_abundance=True, engine="template")
    name, why = engine_choice(s)
    assert name == "sherpa" and "fit.free [abundance]" in why
    engine = make_engine(s, [response])
    assert isinstance(engine, RegionFitter) and not isinstance(engine, TemplateEngine)
    rec = engine.fit([draw(np.random.default_rng(2), response, table, 5.0, 0.6, 4e-4)])
    assert rec.status == Status.OK and rec.engine == Engine.SHERPA
    assert rec.abundance_lo < rec.abundance < rec.abundance_hi


def test_template_engine_fits_table_model_like_sherpa(table, response):
    """Abundance frozen: the template engine tabulates the table model in kT."""
    from hpcxt.engines import TemplateEngine
    from hpcxt.engines import sigma_differences

    s = settings(table, engine="template", abundance=0.3)
    engine = TemplateEngine(s, [response])
    rng = np.random.default_rng(11)
    for kT in (3.0, 7.0):
        sp = [draw(rng, response, table, kT, 0.3, 4e-4)]
        fast = engine.fit(sp, verify=True)
        assert fast.engine == Engine.TEMPLATE and fast.status == Status.OK, fast.reason
        ref = engine.reference.fit(sp)
        d_kT, d_norm, d_bounds = sigma_differences(fast, ref)
        assert abs(d_kT) < 0.1 and abs(d_norm) < 0.1 and d_bounds < 0.1
        assert math.isnan(fast.abundance)   # frozen: not a result


def test_xsapec_free_abundance_where_atomdb_is_present(response):
    from hpcxt.fit import FitSettings, RegionFitter
    from hpcxt.models import check_model

    verdict = check_model("xsphabs*xsapec")
    if not verdict.usable:
        pytest.skip(f"needs AtomDB for xsapec (fit.apec_root or CIAO's Sherpa): {verdict}")
    s = FitSettings(model="xsphabs*xsapec", nh=NH, abundance=0.3, redshift=REDSHIFT,
                    kT_init=5.0, errors="conf", free_abundance=True)
    fitter = RegionFitter(s, [response])
    from hpcxt.models import build_model
    pm = build_model("xsphabs*xsapec", NH, 0.8, REDSHIFT, kT=5.0, norm=5e-4, name="truth")
    photons = np.asarray(pm.model(response.arf_energ_lo, response.arf_energ_hi))
    mu = (photons * response.specresp) @ response.rmf_matrix.astype(np.float64) * 50e3
    brate = background_rate(response, 5e-6) * 50e3
    rng = np.random.default_rng(4)
    sp = ObsSpectrum(0, rng.poisson(mu + brate), rng.poisson(brate / 0.5), 50e3, 0.5)
    rec = fitter.fit([sp])
    assert rec.status == Status.OK, rec.reason
    sigma = (rec.abundance_hi - rec.abundance_lo) / 2
    assert abs(rec.abundance - 0.8) < 2 * sigma


# --------------------------------------------------------------------------
# a cluster with two abundance zones, through hpcxt fit, maps and export

N_SIDE = 4
ZONE_ABUNDANCE = (0.3, 1.0)   # columns 0-1, columns 2-3 of the region grid


@pytest.fixture(scope="module")
def two_zones(tmp_path_factory, table):
    """16 regions, kT 4-6 keV, abundance 0.3 (left) and 1.0 (right), fitted on 2 ranks."""
    from astropy.wcs import WCS

    root = tmp_path_factory.mktemp("abundance_zones")
    n = N_SIDE * N_SIDE
    cols = np.arange(n) % N_SIDE
    abundance = np.where(cols < N_SIDE // 2, *ZONE_ABUNDANCE)
    kT = np.linspace(4.0, 6.0, n)

    def rate(resp, i, norm):
        return table_rate(resp, table, kT[i], abundance[i], norm, NH, REDSHIFT)

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 20.0]
    wcs.wcs.crpix = [15.0, 15.0]
    wcs.wcs.cdelt = [-0.000546, 0.000546]     # 1.968 arcsec image pixels
    cfg = make_fit_workdir(root, n_side=N_SIDE, seed=7, errors="conf", kT_true=kT,
                           source_rate=rate, norm_per_region=5e-4,
                           wcs_header=wcs.to_header().tostring(sep="\n"), extra_fit={
                               "model": table_model(table), "free": ["abundance"],
                               "kT_range": [1.0, 20.0], "kT_init": 5.0})
    fit = run_hpcxt("fit", cfg, nprocs=2, timeout=600)
    assert fit.returncode == 0, fit.stderr
    maps = run_hpcxt("maps", cfg, timeout=300)
    assert maps.returncode == 0, maps.stderr
    export = run_hpcxt("export", cfg, "--format", "fits", timeout=300)
    assert export.returncode == 0, export.stderr
    return cfg, abundance, kT, fit.stderr


def _results(cfg):
    from hpcxt.io.checkpoint import read_results
    return read_results(cfg.parent / "work" / "fit" / "results.h5")


@pytest.mark.mpi
def test_two_abundance_zones_recovered_within_2_sigma(two_zones):
    cfg, truth, kT_true, log = two_zones
    res = _results(cfg)
    assert "every region is fitted by the Sherpa engine" in log
    ok = res.status == Status.OK
    assert ok.sum() == N_SIDE * N_SIDE - 2   # region 0: too few counts, 1: no observation
    assert np.all(res.engine[ok] == Engine.SHERPA)
    constrained = ok & np.isfinite(res.abundance_lo) & np.isfinite(res.abundance_hi)
    assert constrained.sum() >= ok.sum() - 2
    # a region without an abundance bound sits at the table's limit, and says so
    loose = ok & ~constrained
    assert np.all(np.isin(np.round(res.abundance[loose], 6), (0.0, 2.0)))
    assert all("abundance unconstrained" in res.reason[i] for i in np.flatnonzero(loose))
    sigma = (res.abundance_hi - res.abundance_lo) / 2
    pulls = (res.abundance - truth) / sigma
    assert np.mean(np.abs(pulls[constrained]) < 2) >= 0.8
    for z in ZONE_ABUNDANCE:
        zone = constrained & (truth == z)
        w = 1 / sigma[zone] ** 2
        mean = np.sum(w * res.abundance[zone]) / w.sum()
        err = 1 / np.sqrt(w.sum())
        print(f"zone Z={z}: {zone.sum()} regions, weighted mean {mean:.3f} +- {err:.3f}")
        assert abs(mean - z) < 2 * err
    # the zones are told apart, and kT is still recovered
    kT_sigma = (res.kT_hi - res.kT_lo) / 2
    assert np.mean(np.abs((res.kT - kT_true) / kT_sigma)[ok] < 2) >= 0.8


@pytest.mark.mpi
def test_abundance_maps_results_and_export(two_zones):
    from astropy.io import fits
    from astropy.table import Table

    cfg, truth, _, _ = two_zones
    res = _results(cfg)
    maps = cfg.parent / "work" / "maps"
    images = {}
    for name in ("abundance", "abundance_lo", "abundance_hi", "abundance_err"):
        with fits.open(maps / f"{name}.fits") as hdul:
            images[name] = hdul[0].data.astype(float)
            assert "ABUND" in hdul[0].header and "free" in hdul[0].header.comments["MODEL"]
    temperature = fits.getdata(maps / "temperature.fits").astype(float)
    valued = np.isfinite(images["abundance"])
    assert valued.any() and np.array_equal(valued, np.isfinite(temperature))
    # every painted value is a region's abundance, and its bounds enclose it
    fitted = res.abundance[res.status == Status.OK].astype(np.float32).astype(float)
    painted = np.unique(images["abundance"][valued])
    assert np.all(np.min(np.abs(painted[:, None] - fitted[None, :]), axis=1) == 0)
    assert painted.size >= 10
    both = valued & np.isfinite(images["abundance_lo"])
    assert np.all(images["abundance_lo"][both] <= images["abundance"][both])
    assert np.all(images["abundance"][both] <= images["abundance_hi"][both])
    assert np.allclose(images["abundance_err"][both],
                       (images["abundance_hi"] - images["abundance_lo"])[both] / 2, rtol=1e-5)

    t = Table.read(cfg.parent / "work" / "export" / "results.fits")
    for col in ("abundance", "abundance_lo", "abundance_hi"):
        assert col in t.colnames
        np.testing.assert_array_equal(np.asarray(t[col], float), getattr(res, col))
