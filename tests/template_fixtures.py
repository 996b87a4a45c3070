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
    rec = FitRecord(fitter.nobs)
    for sp in spectra:
        rec.counts[sp.obs_index], rec.bkg_counts[sp.obs_index] = fitter.band_counts(sp)
    return fitter._plan_statistic(spectra, rec)


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
