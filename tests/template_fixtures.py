"""Simulated regions for the template engine's tests and benchmark.

Regions are drawn with :mod:`fit_fixtures` (``xsphabs*xsbremss`` folded
through :func:`hpcxt.prep.response.acis_i_response`), at a chosen number of
source counts in the fitted band, and both engines are given the statistic
and grouping :class:`hpcxt.fit.RegionFitter` plans for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fit_fixtures import ABUNDANCE, MODEL, NH, REDSHIFT, background_rate, draw_spectra, model_rate
from hpcxt.fit import FitRecord, FitSettings, ObsSpectrum

#: Exposures (s) and background scales of up to two observations.
EXPOSURES = (40e3, 25e3)
BKG_SCALES = (0.8, 1.25)
#: Background levels, counts s^-1 per channel in the source spectrum
#: (about 60 and 600 background counts in the band of a 40 ks observation).
BACKGROUNDS = {"sparse": 3e-6, "rich": 3e-5}


def settings(**kw) -> FitSettings:
    """FitSettings of the offline model with ``kw`` overrides."""
    base = dict(model=MODEL, nh=NH, abundance=ABUNDANCE, redshift=REDSHIFT)
    base.update(kw)
    return FitSettings(**base)


def responses(n_obs: int = 2):
    """ACIS-I-like responses, the second one with 20% more contaminant."""
    from hpcxt.prep.response import acis_i_response
    return [acis_i_response(contamination=c) for c in (1.0, 1.2)[:n_obs]]


@dataclass
class Region:
    """One simulated region: its spectra and the truth."""

    spectra: list
    kT: float
    norm: float
    counts: int


def simulate_region(rng, resps, band, kT: float, counts: float, background: str = "sparse",
                    n_obs: int | None = None) -> Region:
    """Spectra of one region with about ``counts`` source counts in the band.

    Parameters
    ----------
    rng : numpy.random.Generator
    resps : list of Response
        One per observation.
    band : ndarray (n_channel,) bool
        The fitted channels.
    kT : float
        True temperature, keV.
    counts : float
        Expected source counts in the band, all observations.
    background : {"sparse", "rich"}
        Background level (:data:`BACKGROUNDS`).
    n_obs : int, optional
        Observations used (default: all responses).
    """
    n_obs = len(resps) if n_obs is None else n_obs
    per_norm = sum(t * model_rate(r, kT, 1.0)[band].sum()
                   for r, t in zip(resps[:n_obs], EXPOSURES))
    norm = counts / per_norm
    out = []
    for k in range(n_obs):
        brate = background_rate(resps[k], BACKGROUNDS[background])
        src, bkg = draw_spectra(rng, resps[k], kT, norm, EXPOSURES[k], BKG_SCALES[k], brate)
        out.append(ObsSpectrum(k, src, bkg, EXPOSURES[k], BKG_SCALES[k]))
    total = int(sum(s.counts[band].sum() for s in out))
    return Region(out, kT, norm, total)


def sherpa_plan(fitter, spectra):
    """The statistic and groupings :class:`hpcxt.fit.RegionFitter` fits ``spectra`` with."""
    plan = fitter.prepare(spectra, FitRecord(fitter.nobs))
    return (None, None) if plan is None else (plan.statistic, plan.groupings)


def sigma_differences(rec, res) -> dict:
    """Differences template - Sherpa in units of Sherpa's conf sigma (half-interval).

    Keys kT, kT_lo, kT_hi, norm, norm_lo, norm_hi.
    """
    out = {}
    for par in ("kT", "norm"):
        lo, hi = getattr(rec, par + "_lo"), getattr(rec, par + "_hi")
        sigma = 0.5 * (hi - lo)
        for name in (par, par + "_lo", par + "_hi"):
            out[name] = (getattr(res, name) - getattr(rec, name)) / sigma \
                if sigma > 0 else math.nan
    return out


def sherpa_dataset(resp, counts, bkg, exposure, bkg_scale, energy_range, grouping=None,
                   subtract=False):
    """A DataPHA set up as RegionFitter's (see hpcxt/fit.py, "Background scaling")."""
    from sherpa.astro.data import DataPHA

    from hpcxt.template_fit import _probe

    probe, channel = _probe(resp)
    pha = DataPHA("src", channel, np.asarray(counts, float), exposure=exposure, backscal=1.0)
    pha.set_arf(probe.get_arf())
    pha.set_rmf(probe.get_rmf())
    if bkg is not None:
        b = DataPHA("bkg", channel, np.asarray(bkg, float), exposure=exposure,
                    backscal=1.0 / bkg_scale)
        pha.set_background(b)
        if subtract:
            pha.subtract()
        if grouping is not None:
            b.grouping = grouping
            b.grouped = True
    if grouping is not None:
        pha.grouping = grouping
        pha.grouped = True
    pha.set_analysis("energy")
    pha.notice(*energy_range)
    return pha


def sherpa_stat_at(fitter, resps, spectra, kT: float, norm: float) -> float:
    """Sherpa's own statistic of a region at given parameters.

    The data sets are set up as RegionFitter's, with the statistic and
    grouping it plans for the region.
    """
    from sherpa.astro.instrument import Response1D
    from sherpa.data import DataSimulFit
    from sherpa.models.model import SimulFitModel
    from sherpa.stats import Chi2Gehrels, CStat, WStat

    from hpcxt.models import make_model

    s = fitter.settings
    statistic, groupings = sherpa_plan(fitter, spectra)
    model, _, _ = make_model(s.model, s.nh, s.abundance, s.redshift, kT=kT, norm=norm)
    datasets = [sherpa_dataset(resps[sp.obs_index], sp.counts,
                               sp.bkg_counts if statistic != "cstat" else None, sp.exposure,
                               sp.bkg_scale, s.energy_range, g, statistic == "chi2gehrels")
                for sp, g in zip(spectra, groupings)]
    stat = {"wstat": WStat, "cstat": CStat, "chi2gehrels": Chi2Gehrels}[statistic]()
    return float(stat.calc_stat(DataSimulFit("r", datasets),
                                SimulFitModel("r", [Response1D(d)(model) for d in datasets]))[0])


def sherpa_shown_wrong(fitter, resps, spectra, rec, res, tol: float = 0.1) -> bool:
    """Whether Sherpa's own statistic refutes it wherever the engines differ by > tol sigma.

    Best fit: Sherpa's statistic at the template's best fit is lower than at
    Sherpa's (by more than 1e-3). Norm bound: the template's is further out
    and Sherpa's statistic at (norm_hi_kT, norm_hi) (or the lower one) is
    within Sherpa's own level ``stat + error_sigma**2`` (to 1e-3), so
    Sherpa's conf bound is not the extreme of that level set. Differences in
    the kT bounds are never excused.
    """
    d = sigma_differences(rec, res)
    level = rec.stat + fitter.settings.error_sigma ** 2 + 1e-3
    off = {q for q, v in d.items() if not abs(v) <= tol}
    if off & {"kT_lo", "kT_hi"}:
        return False
    if off & {"kT", "norm"}:
        if not sherpa_stat_at(fitter, resps, spectra, res.kT, res.norm) < rec.stat - 1e-3:
            return False
    for side, sign in (("norm_lo", -1.0), ("norm_hi", 1.0)):
        if side in off:
            beyond = sign * (getattr(res, side) - getattr(rec, side)) > 0
            at = sherpa_stat_at(fitter, resps, spectra, getattr(res, side + "_kT"),
                                getattr(res, side))
            if not (beyond and at <= level):
                return False
    return True
