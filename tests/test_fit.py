"""The one-region fit: extraction, responses, grouping, failures, accuracy.

The model is ``xsphabs*xsbremss`` (xsapec needs AtomDB, not installed here).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fit_fixtures import (MODEL, NH, ABUNDANCE, REDSHIFT, background_rate, default_response,
                          draw_spectra, model_rate)
from hpcxt.schema import Status
from hpcxt.fit import FitRecord, FitSettings, RecordBatch, RegionFitter, fit_region
from hpcxt.rmf import compress_rmf
from hpcxt.spectra import EventIndex, ObsSpectrum, RegionSpectra, group_min_counts
from hpcxt.io.bundle import ObsData
from hpcxt.io.config import validate
from hpcxt.io.regions_table import RegionTable


@pytest.fixture(scope="module")
def response():
    return default_response()


def settings(**kw) -> FitSettings:
    base = dict(model=MODEL, nh=NH, abundance=ABUNDANCE, redshift=REDSHIFT)
    base.update(kw)
    return FitSettings(**base)


@pytest.fixture(scope="module")
def fitter_covar(response):
    return RegionFitter(settings(errors="covar"), [response, response])


def region_spectra(rng, response, kT, norm=1.2e-4, exposures=(40e3, 25e3),
                   scales=(0.8, 1.25), bkg_level=5e-6):
    """Spectra of one region seen by two observations."""
    brate = background_rate(response, bkg_level)
    out = []
    for k, (t, s) in enumerate(zip(exposures, scales)):
        src, bkg = draw_spectra(rng, response, kT, norm, t, s, brate)
        out.append(ObsSpectrum(k, src, bkg, t, s))
    return out


# --------------------------------------------------------------------------
# extraction


def test_event_index_matches_brute_force():
    rng = np.random.default_rng(0)
    n = 20000
    x, y = rng.uniform(0, 200, n), rng.uniform(0, 200, n)
    pi = rng.integers(-3, 1030, n)
    # One event exactly on the circle, one just outside.
    x[:2], y[:2], pi[:2] = [110.0, 110.0], [100.0 + 7.5, 100.0 + 7.5 + 1e-9], [50, 50]
    index = EventIndex(x, y, pi)
    for xc, yc, r in [(110.0, 100.0, 7.5), (0.0, 0.0, 30.0), (150.3, 20.7, 12.25),
                      (100.0, 100.0, 0.0)]:
        got = index.spectrum(xc, yc, r, nchan=1024, offset=1)
        inside = (x - xc) ** 2 + (y - yc) ** 2 <= r * r
        chan = pi[inside] - 1
        chan = chan[(chan >= 0) & (chan < 1024)]
        want = np.bincount(chan, minlength=1024)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.int64 and got.shape == (1024,)
    assert index.spectrum(110.0, 100.0, 7.5, 1024)[49] >= 1


def _obs(events, bkg, response, scale=1.0, obsid="1"):
    shape = (4, 4)
    return ObsData(obsid=obsid, exposure=1e4, bkg_exposure=5e4, bkg_scale=scale,
                   events=events, bkg_events=bkg, exposure_map=np.ones(shape),
                   fov=np.ones(shape, bool), response=response)


def test_region_spectra_uses_only_used_observations(response):
    ev = {"x": np.array([10.0, 10.5, 30.0]), "y": np.array([10.0, 10.0, 30.0]),
          "pi": np.array([100, 101, 102], np.int32), "energy": np.zeros(3, np.float32)}
    bkg = {"x": np.array([10.2]), "y": np.array([9.9]), "pi": np.array([7], np.int32),
           "energy": np.zeros(1, np.float32)}
    obs = [_obs(ev, bkg, response, 0.5, "1"), _obs(ev, None, response, 2.0, "2")]
    table = RegionTable(
        region_id=np.arange(2), row=np.zeros(2, np.int32), col=np.zeros(2, np.int32),
        x=np.array([10.0, 30.0]), y=np.array([10.0, 30.0]), radius=np.ones(2),
        radius_sky=np.array([1.0, 1.0]), fraction=np.ones((2, 2)),
        effective_exposure=np.ones((2, 2)), exposure_time=np.array([[9e3, 8e3], [7e3, 0.0]]),
        used=np.array([[True, True], [True, True]]), obsids=["1", "2"])
    rs = RegionSpectra(obs, table)
    sp = rs.spectra(0)
    assert [s.obs_index for s in sp] == [0, 1]
    assert sp[0].counts.sum() == 2 and sp[0].counts[99] == 1 and sp[0].counts[100] == 1
    assert sp[0].bkg_counts.sum() == 1 and sp[0].bkg_counts[6] == 1
    assert sp[1].bkg_counts is None
    assert (sp[0].exposure, sp[0].bkg_scale, sp[1].exposure, sp[1].bkg_scale) == \
        (9e3, 0.5, 8e3, 2.0)
    # Zero exposure time leaves an observation out even when flagged used.
    assert [s.obs_index for s in rs.spectra(1)] == [0]


# --------------------------------------------------------------------------
# responses and grouping


def test_compress_rmf_round_trips(response):
    m = response.rmf_matrix.astype(np.float64)
    m[5] = 0.0  # a row without a group
    n_grp, f_chan, n_chan, values = compress_rmf(m, offset=1)
    assert n_grp[5] == 0 and n_grp.sum() == m.shape[0] - 1
    dense = np.zeros_like(m)
    pos = 0
    for row, (f, n) in zip(np.flatnonzero(n_grp), zip(f_chan, n_chan)):
        dense[row, f - 1:f - 1 + n] = values[pos:pos + n]
        pos += n
    assert pos == values.size
    np.testing.assert_array_equal(dense, m)


def test_folded_model_matches_direct_matrix_product(response):
    f = RegionFitter(settings(errors="none", kT_init=6.0), [response])
    rate = f.responses[0].rate_per_norm
    np.testing.assert_allclose(rate, model_rate(response, 6.0, 1.0), rtol=1e-10, atol=1e-12)
    band = f.responses[0].band
    e_mid = 0.5 * (response.e_min + response.e_max)
    assert band.any()
    assert e_mid[band].min() >= 0.7 - 0.0146 and e_mid[band].max() <= 8.0 + 0.0146
    assert np.all(np.diff(np.flatnonzero(band)) == 1)


def test_group_min_counts():
    rng = np.random.default_rng(4)
    src, bkg = rng.poisson(2.0, 300), rng.poisson(0.3, 300)
    band = np.zeros(300, bool)
    band[40:260] = True
    for criteria in [((bkg, 2),), ((src, 10), (bkg, 2))]:
        g = group_min_counts(band, *criteria)
        assert np.all(g[~band] == 1)
        starts = np.flatnonzero((g == 1) & band)
        assert starts[0] == 40
        edges = list(starts) + [260]
        for counts, minimum in criteria:
            sums = [counts[a:b].sum() for a, b in zip(edges[:-1], edges[1:])]
            assert min(sums) >= minimum
            assert sum(sums) == counts[band].sum()
        assert len(starts) > 10
    # Not enough counts for one group: the band is one group.
    g = group_min_counts(band, (np.zeros(300, int), 1))
    assert g[40] == 1 and np.all(g[41:260] == -1)
    assert np.all(group_min_counts(band, (bkg, 0)) == 1)


# --------------------------------------------------------------------------
# failures


def test_too_few_counts_and_no_observation(fitter_covar, response):
    rec = fitter_covar.fit([])
    assert rec.status == Status.FAILED
    assert rec.reason == "no observation covers >= min_obs_fraction (0.09)"
    assert math.isnan(rec.kT) and rec.dof == -1
    few = np.zeros(1024, np.int64)
    few[300:340] = 1
    rec = fitter_covar.fit([ObsSpectrum(1, few, np.zeros(1024, np.int64), 1e4, 1.0)])
    assert rec.status == Status.FAILED
    assert rec.reason == "too few counts (40 < 100)"
    assert rec.counts.tolist() == [0, 40]


def test_an_exception_becomes_a_failed_record(fitter_covar):
    bad = ObsSpectrum(5, np.ones(1024, np.int64), None, 1e4, 1.0)  # no such observation
    rec = fitter_covar.fit([bad])
    assert rec.status == Status.FAILED
    assert rec.reason.startswith("IndexError: ")
    assert "\n" not in rec.reason
    # The fitter still works afterwards and starts from kT_init again.
    assert fitter_covar.kT_par.val == fitter_covar.settings.kT_init


def test_fit_region_catches_extraction_errors(fitter_covar):
    class Broken:
        def spectra(self, region_id):
            raise KeyError(f"region {region_id} is broken")

    rec = fit_region(fitter_covar, Broken(), 12)
    assert rec.status == Status.FAILED and rec.reason == "KeyError: 'region 12 is broken'"


# --------------------------------------------------------------------------
# determinism and statistics


def test_same_region_gives_bit_identical_results_in_any_order(response):
    rng = np.random.default_rng(21)
    a = region_spectra(rng, response, 5.0)
    b = region_spectra(rng, response, 9.0)
    s = settings(errors="conf")
    f1 = RegionFitter(s, [response, response])
    first = f1.fit(a)
    f1.fit(b)
    again = f1.fit(a)
    fresh = RegionFitter(s, [response, response]).fit(a)
    assert first.status == Status.OK, first.reason
    for name in ("kT", "kT_lo", "kT_hi", "norm", "norm_lo", "norm_hi", "stat", "dof"):
        assert getattr(first, name) == getattr(again, name) == getattr(fresh, name), name


@pytest.mark.parametrize("statistic,bkg_level,min_dof", [
    ("wstat", 5e-6, 20), ("cstat", 1e-7, 400), ("chi2gehrels", 1e-7, 400)])
def test_statistics_recover_a_bright_region(response, statistic, bkg_level, min_dof):
    """Every statistic fits a bright region well.

    W-stat groups the band to 10 source and 2 background counts per bin, so
    it gets a real background; cstat ignores the background, so it gets
    almost none.
    """
    rng = np.random.default_rng(8)
    sp = region_spectra(rng, response, 6.0, norm=1e-3, bkg_level=bkg_level)
    rec = RegionFitter(settings(statistic=statistic, errors="covar"),
                       [response, response]).fit(sp)
    assert rec.status == Status.OK, rec.reason
    assert rec.kT_lo < rec.kT < rec.kT_hi
    sigma = 0.5 * (rec.kT_hi - rec.kT_lo)
    assert abs(rec.kT - 6.0) < 4 * sigma
    assert sigma < 0.1 * 6.0
    assert rec.dof > min_dof
    assert rec.counts.sum() > 10000


def test_sparse_negligible_background_falls_back_to_cstat(response):
    """An (almost) empty background spectrum leaves W-stat too few bins."""
    rng = np.random.default_rng(8)
    sp = region_spectra(rng, response, 6.0, norm=1e-3, bkg_level=1e-12)
    rec = RegionFitter(settings(errors="covar"), [response, response]).fit(sp)
    assert rec.status == Status.OK
    assert rec.reason == ("cstat: background spectrum too sparse for wstat (0 counts), "
                          "ignored")
    assert rec.dof > 400
    assert abs(rec.kT - 6.0) < 4 * 0.5 * (rec.kT_hi - rec.kT_lo)


def test_sparse_but_important_background_fails(response):
    rng = np.random.default_rng(8)
    sp = region_spectra(rng, response, 6.0, norm=3e-5, bkg_level=1e-12)
    for s in sp:
        s.bkg_counts[200:202] = 1
        s.bkg_scale = 100.0
    rec = RegionFitter(settings(errors="none"), [response, response]).fit(sp)
    assert rec.status == Status.FAILED
    assert rec.reason == ("background spectrum too sparse for wstat (4 counts, "
                          "400.0 expected in the source spectrum)")


def test_no_errors_leaves_bounds_nan(response):
    rng = np.random.default_rng(9)
    rec = RegionFitter(settings(errors="none"), [response, response]).fit(
        region_spectra(rng, response, 4.0))
    assert rec.status == Status.OK
    assert math.isnan(rec.kT_lo) and math.isnan(rec.norm_hi)
    assert 1.0 < rec.kT < 20.0 and rec.norm > 0


def test_settings_from_config():
    raw = {"cluster": {"name": "c", "redshift": 0.2, "nh": 0.05, "abundance": 0.4},
           "observations": [{"obsid": "1"}],
           "fit": {"model": "xsphabs*xsbremss", "statistic": "cstat", "errors": "covar",
                   "kT_init": 5.0, "kT_range": [0.5, 30], "min_counts": 50}}
    s = FitSettings.from_config(validate(raw, ".", check_files=False))
    assert (s.model, s.nh, s.abundance, s.redshift) == (MODEL, 0.05, 0.4, 0.2)
    assert (s.statistic, s.errors, s.method, s.kT_init) == ("cstat", "covar", "levmar", 5.0)
    assert s.kT_range == (0.5, 30.0) and s.energy_range == (0.7, 8.0)
    assert s.min_counts == 50 and s.error_sigma == 1.0


def test_records_start_unfitted_and_own_their_arrays():
    """Every record starts failed with every column unfitted; the
    per-observation arrays of one record are not another's."""
    a, b = FitRecord(2), FitRecord(2, kT=3.0)
    a.counts[0] = 7
    assert b.counts.tolist() == [0, 0] and a.counts.tolist() == [7, 0]
    assert a.status == b.status == Status.FAILED
    assert math.isnan(a.kT) and b.kT == 3.0 and FitRecord(3).counts.shape == (3,)
    with pytest.raises(TypeError, match="no column 'kt'"):
        FitRecord(2, kt=1.0)


def test_record_batch_columns():
    recs = [FitRecord(3, kT=float(i), status=Status.OK, reason="", fit_seconds=0.5)
            for i in range(4)]
    recs[2].counts[:] = [1, 2, 3]
    b = RecordBatch.from_records([7, 8, 9, 10], recs, nobs=3, worker=2)
    assert len(b) == 4 and b.counts.shape == (4, 3) and b.counts[2].tolist() == [1, 2, 3]
    assert b.kT.tolist() == [0.0, 1.0, 2.0, 3.0] and b.worker.tolist() == [2] * 4
    assert b.status.dtype == np.int8 and b.region_id.dtype == np.int64


def test_record_batch_crosses_mpi_packed_and_unchanged():
    """RecordBatch.__reduce__: one float64 array on the wire, every column back as it was."""
    import pickle

    from hpcxt.schema import differing_columns
    recs = [FitRecord(2, kT=1.5 * i, status=Status.OK, fit_seconds=0.1) for i in range(3)]
    recs[1].reason = "Sherpa: the template fit was not certified"
    recs[2].kT = math.nan
    recs[2].counts[:] = [2**52 + 1, 7]  # exact in float64 up to 2**53
    b = RecordBatch.from_records([4, 9, 2], recs, nobs=2, worker=3)
    packed = pickle.dumps(b, protocol=5)
    got = pickle.loads(packed)
    assert differing_columns(b.columns, got.columns) == []
    assert list(got.columns) == list(b.columns) and got.region_id.tolist() == [4, 9, 2]
    assert all(got.columns[k].dtype == v.dtype and got.columns[k].shape == v.shape
               for k, v in b.columns.items())
    assert got.reason.tolist() == ["", "Sherpa: the template fit was not certified", ""]
    # smaller than the columns pickled one by one
    assert len(packed) < len(pickle.dumps((b.region_id, b.columns), protocol=5))
    # a batch with other columns (a test's, a hook's) pickles as it is
    odd = RecordBatch([1], {"kT": np.array([2.0])})
    assert pickle.loads(pickle.dumps(odd)).kT.tolist() == [2.0]


# --------------------------------------------------------------------------
# accuracy


@pytest.mark.slow
def test_fit_recovers_known_temperatures(response):
    """Pulls (fit - truth) / sigma over many simulated regions.

    45 regions at 3, 7 and 12 keV, two observations each, about 2000 source
    counts, a sparse background (a few tenths of a count per channel);
    default statistic (wstat) and errors (conf, 1 sigma). sigma is the
    bound on the side of the truth.
    """
    rng = np.random.default_rng(2024)
    fitter = RegionFitter(settings(), [response, response])
    truths, pulls, failed = [], [], 0
    for i in range(45):
        kT = (3.0, 7.0, 12.0)[i % 3]
        rec = fitter.fit(region_spectra(rng, response, kT))
        if rec.status != Status.OK:
            failed += 1
            continue
        sigma = rec.kT_hi - rec.kT if rec.kT < kT else rec.kT - rec.kT_lo
        truths.append(kT)
        pulls.append((rec.kT - kT) / sigma)
    pulls = np.array(pulls)
    assert failed <= 1
    assert abs(pulls.mean()) < 0.3, pulls.mean()
    assert np.mean(np.abs(pulls) < 2) >= 0.95, np.mean(np.abs(pulls) < 2)


def test_sherpa_computes_each_parameter_point_once_and_fits_the_same(monkeypatch):
    """hpcxt.fit.remember_statistic: conf's covariance matrix is not computed twice."""
    import sherpa.stats

    from hpcxt import template_fit as tf
    from template_fixtures import responses, settings, simulate_region

    resps = responses(1)
    band = tf.energy_band(settings(), resps[0])
    rng = np.random.default_rng(5)
    # one region of the usual kind, one whose upper bound meets xsbremss's jump at 13.6 keV
    regions = [simulate_region(rng, resps, band, kT, 1500, "rich", 1) for kT in (6.0, 12.5)]
    calls = [0]
    plain = sherpa.stats.WStat.calc_stat

    def counting(self, data, model):
        calls[0] += 1
        return plain(self, data, model)

    monkeypatch.setattr(sherpa.stats.WStat, "calc_stat", counting)
    fitter = RegionFitter(settings(errors="conf", statistic="wstat"), resps)
    names = ("kT", "kT_lo", "kT_hi", "norm", "norm_lo", "norm_hi", "stat", "status", "reason")
    out = {}
    for remember in (False, True):
        fitter.remember = remember
        calls[0] = 0
        recs = [fitter.fit(r.spectra) for r in regions]
        out[remember] = ([repr(getattr(rec, k)) for rec in recs for k in names], calls[0])
    assert out[True][0] == out[False][0]  # bit for bit
    assert all(rec.status == Status.OK for rec in recs)
    # covar on the norm finds every point of conf's covariance matrix computed already
    assert out[True][1] < 0.85 * out[False][1], out
