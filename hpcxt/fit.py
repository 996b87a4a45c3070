"""The fit of one region: spectrum extraction and a joint Sherpa fit.

No MPI, no file I/O, no global state: :class:`RegionSpectra` turns a bundle's
event lists and a region table into per-region source and background
spectra, and :class:`RegionFitter` fits them with one tied model. Both are
built once per worker (sorting events and building responses is per run,
not per region); after that every region costs one extraction and one fit.

Statistics
----------
``wstat`` (default)
    Source and background spectra are both Poisson data (W-statistic); the
    background is neither subtracted nor modelled.
``cstat``
    Cash statistic on the source spectrum alone: the background spectrum is
    extracted and reported but not used in the fit (Sherpa does not allow a
    subtracted background with the Cash statistic). Use it only where the
    background is negligible.
``chi2gehrels``
    Background subtracted, Gehrels variance, ungrouped (ClusterPyXT's
    choice). Biased low with few counts per channel (kT pulls about -2.5
    at 1000-2500 counts in our simulations); kept for comparison.

W-stat is biased where the background spectrum has empty channels (its
profile background then soaks up source counts and drags kT down: 7 keV
fitted as 3-4 keV with a sparse background in our tests). The XSPEC manual
advises grouping to at least one background count per bin; in the pull
study (benchmarks/pull_study.py, README "Which statistic: the pull study":
1,000 regions per cell, 500-10,000 counts, 1-15 keV, backgrounds of 10% and
50% of the source counts) that alone leaves mean kT pulls of -0.15 to -0.86
at 1,000-5,000 counts and ungrouped W-stat -1 to -8.7 at 1,000 counts,
while groups of at least 10 source and 2 background counts keep the mean
pull within 0.15 and the 1-sigma coverage within 68% +- 5% in every cell of
at least 1,000 counts except 1,000 counts at 15 keV (pulls -0.20 and
-0.35, coverage up to 80%), where 5/1, 20/5 and 25/0 fail alike. So the
band is grouped that way (``FitSettings.wstat_min_src``, ``wstat_min_bkg``).
A region whose
background spectrum is (nearly) empty is fitted with ``cstat`` on the source
alone when that background is negligible (at most 2% of the source counts
expected; noted in ``reason``), and fails otherwise.

Errors
------
``conf``
    kT bounds from Sherpa's confidence method (profile likelihood,
    asymmetric, ``error_sigma``); norm bounds from the covariance matrix at
    the best fit, or from conf where that gives none. Conf on the norm
    costs about four times conf on kT (Sherpa's bound search falls back to
    bisection there) and the maps do not use it;
    ``FitSettings.conf_norm`` turns it on for every region.
``covar``
    Both from the covariance matrix (symmetric).
``none``
    No bounds (NaN).

A region whose bounds are not found (e.g. kT's upper bound beyond
``kT_range``) keeps its best fit but is marked failed with the reason.

Free abundance
--------------
With ``fit.free: [abundance]`` the emission's abundance is a third free
parameter, one value tied across the observations (the model is shared),
starting from ``cluster.abundance`` in every region and bounded by the
model's limits (a table model's grid). Its bounds come from the same error
method as kT's. A region whose abundance bound is not found (the lines too
weak, or the profile still below the level at the parameter's limit) keeps
its kT and norm and stays ok: both abundance bounds are NaN and ``reason``
says "abundance unconstrained".

Background scaling
------------------
The bundle gives, per observation, ``bkg_scale``: the factor that turns
background counts from an area into the expected background counts in the
source data from the same area. Sherpa scales a background by
``(t_src * backscal_src) / (t_bkg * backscal_bkg)``; we set the source
``backscal`` to 1, the background exposure to the source exposure and the
background ``backscal`` to ``1 / bkg_scale``, so that factor is exactly
``bkg_scale`` (areas cancel: both spectra come from the same circle).

Every region starts from the same parameter values (``kT = kT_init``, norm
derived deterministically from the region's counts), so a region's result
does not depend on which worker fits it or in which order.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import time
from dataclasses import dataclass

import numpy as np

from .rmf import compress_rmf
from .schema import COLUMNS, NAMES, ColumnAccess, Engine, Status, columns_from_records
from .spectra import ObsSpectrum, RegionSpectra, group_counts

STATISTICS = ("wstat", "cstat", "chi2gehrels")
#: Fewest grouped bins (all observations) a W-stat fit of a region needs.
MIN_WSTAT_BINS = 10
#: Expected background counts, as a share of the source counts, below which
#: a region with a too sparse background spectrum is fitted with cstat.
NEGLIGIBLE_BACKGROUND = 0.02
METHODS = ("levmar", "neldermead", "moncar")
ERROR_METHODS = ("conf", "covar", "none")


# --------------------------------------------------------------------------
# settings and records


@dataclass(frozen=True)
class FitSettings:
    """Everything that decides a region's fit result.

    Parameters
    ----------
    model : str
        ``absorption*emission``, e.g. ``"xsphabs*xsapec"``.
    nh : float
        Galactic column, 1e22 cm^-2 (frozen).
    abundance : float
        Metallicity, solar (frozen).
    redshift : float
        Redshift (frozen).
    kT_init : float
        Starting temperature of every region, keV.
    kT_range : tuple of float
        Lower and upper limit of kT, keV.
    energy_range : tuple of float
        Band fitted, keV.
    statistic, method, errors : str
        See :data:`STATISTICS`, :data:`METHODS`, :data:`ERROR_METHODS`.
    error_sigma : float
        Confidence level of the error bounds, in sigma.
    min_counts : int
        Regions with fewer source counts in the band (all observations)
        are not fitted.
    min_obs_fraction : float
        Only used in the reason text of regions with no usable observation.
    apec_root : str, optional
        AtomDB folder for xsapec.
    abundance_table : str
        XSPEC's solar abundance table (``angr``, XSPEC's default).
    wstat_min_src, wstat_min_bkg : int
        With ``wstat``, channels in the energy range are grouped so that each
        group holds at least this many source and background counts (0 and
        0: no grouping).
    conf_norm : bool
        With ``errors: conf``, always search the norm's bounds with conf
        (about four times slower); by default they come from the covariance
        matrix at the best fit, and from conf only where that fails.
    engine : str
        ``template`` or ``sherpa`` (see :mod:`hpcxt.engines`).
    verify_fraction : float
        Share of the regions the template engine also fits with Sherpa.
    free_abundance : bool
        Fit the abundance too (``fit.free: [abundance]``), starting from
        ``abundance``.
    """

    model: str
    nh: float
    abundance: float
    redshift: float
    kT_init: float = 8.0
    kT_range: tuple = (0.08, 64.0)
    energy_range: tuple = (0.7, 8.0)
    statistic: str = "wstat"
    method: str = "levmar"
    errors: str = "conf"
    error_sigma: float = 1.0
    min_counts: int = 100
    min_obs_fraction: float = 0.09
    apec_root: str | None = None
    abundance_table: str = "angr"
    wstat_min_src: int = 10
    wstat_min_bkg: int = 2
    conf_norm: bool = False
    engine: str = "sherpa"
    verify_fraction: float = 0.01
    free_abundance: bool = False

    @classmethod
    def from_config(cls, cfg) -> "FitSettings":
        """Settings from a loaded :class:`hpcxt.io.config.Config`."""
        f = cfg.fit
        return cls(model=f.model, nh=float(cfg.cluster.nh),
                   abundance=float(cfg.cluster.abundance),
                   redshift=float(cfg.cluster.redshift), kT_init=float(f.kT_init),
                   kT_range=tuple(float(v) for v in f.kT_range),
                   energy_range=tuple(float(v) for v in f.energy_range),
                   statistic=f.statistic, method=f.method, errors=f.errors,
                   error_sigma=float(f.error_sigma), min_counts=int(f.min_counts),
                   min_obs_fraction=float(f.min_obs_fraction), apec_root=f.apec_root,
                   abundance_table=f.abundance_table,
                   wstat_min_src=int(f.group_min_source),
                   wstat_min_bkg=int(f.group_min_background), engine=f.engine,
                   verify_fraction=float(f.verify_fraction),
                   free_abundance="abundance" in (f.free or ()))


class FitRecord(ColumnAccess):
    """The outcome of one region's fit: one value of every result column.

    Attributes are the columns of :data:`hpcxt.schema.COLUMNS` (``kT``,
    ``kT_lo``, ``kT_hi`` in keV; ``norm`` and bounds in XSPEC units;
    ``stat``; ``dof``; ``counts`` and ``bkg_counts``, shape (nobs,), per
    observation, 0 for observations not used; ``status``; ``reason``;
    ``fit_seconds`` in s; ``worker``), unfitted values where not given.
    A record starts out failed: a fit sets ``status`` to ok when it is.

    Parameters
    ----------
    nobs : int
        Observations in the bundle.
    **values
        Column values to set.
    """

    #: nobs -> (every column's unfitted value, the names of the per-observation arrays)
    _blank: dict = {}

    def __init__(self, nobs: int, **values):
        self.nobs = nobs = int(nobs)
        if values:
            unknown = set(values) - set(NAMES)
            if unknown:
                raise TypeError(f"FitRecord has no column {sorted(unknown)[0]!r}")
        blank = FitRecord._blank.get(nobs)
        if blank is None:
            cols = {c.name: (c.empty(1, nobs)[0] if not c.is_text else c.fill) for c in COLUMNS}
            cols["status"] = Status.FAILED
            blank = FitRecord._blank[nobs] = (cols, tuple(
                name for name, v in cols.items() if isinstance(v, np.ndarray)))
        cols = dict(blank[0])
        for name in blank[1]:  # a record's own arrays; the scalars are immutable
            cols[name] = cols[name].copy()
        cols.update(values)
        self.columns = cols

    def __setattr__(self, name, value):
        if name in NAMES:
            self.columns[name] = value
        else:
            object.__setattr__(self, name, value)


def failure_reason(exc: BaseException) -> str:
    """``"<ExceptionType>: <first line of the message>"``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@dataclass
class _ObsResponse:
    arf: object
    rmf: object
    channel: np.ndarray
    band: np.ndarray            # bool (nchan,): channels Sherpa notices in energy_range
    rate_per_norm: np.ndarray   # (nchan,) counts/s for norm=1 at kT_init
    select: object = None       # band as a slice where its channels are one run, else band

    def __post_init__(self):
        if self.select is None:
            idx = np.flatnonzero(self.band)
            contiguous = idx.size and idx[-1] - idx[0] + 1 == idx.size
            # indexing by a slice selects the same channels as the mask, faster
            self.select = slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else self.band


# --------------------------------------------------------------------------
# the fitter


def _quiet():
    """Sherpa's XSPEC layer and optimisers may print to stdout."""
    return contextlib.redirect_stdout(io.StringIO())


def sherpa_probe(name: str, r):
    """A Sherpa ``DataPHA`` of zeros (exposure 1 s) carrying a response's ARF and RMF.

    Parameters
    ----------
    name : str
        Prefix of the Sherpa objects' names.
    r : hpcxt.data.Response
        ARF (keV, cm^2) and dense RMF.

    Returns
    -------
    probe : sherpa.astro.data.DataPHA
    channel : ndarray (n_channel,) float64
        Channel numbers (from the RMF's offset).
    """
    from sherpa.astro.data import DataARF, DataPHA, DataRMF

    arf = DataARF(f"{name}_arf", np.asarray(r.arf_energ_lo, float),
                  np.asarray(r.arf_energ_hi, float), np.asarray(r.specresp, float))
    nchan = int(np.asarray(r.rmf_matrix).shape[1])
    n_grp, f_chan, n_chan, values = compress_rmf(r.rmf_matrix, int(r.offset))
    rmf = DataRMF(f"{name}_rmf", nchan, np.asarray(r.rmf_energ_lo, float),
                  np.asarray(r.rmf_energ_hi, float), n_grp, f_chan, n_chan, values,
                  offset=int(r.offset), e_min=np.asarray(r.e_min, float),
                  e_max=np.asarray(r.e_max, float))
    channel = np.arange(int(r.offset), int(r.offset) + nchan, dtype=np.float64)
    probe = DataPHA(f"{name}_probe", channel, np.zeros(nchan), exposure=1.0, backscal=1.0)
    probe.set_arf(arf)
    probe.set_rmf(rmf)
    return probe, channel


def sherpa_response(k: int, r, energy_range, rate_of) -> _ObsResponse:
    """Sherpa's ARF and RMF objects of one observation, and its fit band.

    Parameters
    ----------
    k : int
        Observation index (names the objects).
    r : hpcxt.data.Response
        ARF (keV, cm^2) and dense RMF of the observation.
    energy_range : (float, float)
        Fit band, keV: the channels Sherpa notices for it form ``band``.
    rate_of : callable
        ``rate_of(model -> folded model)`` returns a model's count rate per
        channel (the fitter's model at norm 1 and kT_init).
    """
    from sherpa.astro.instrument import Response1D

    probe, channel = sherpa_probe(f"obs{k}", r)
    # Which channels Sherpa keeps for energy_range, and the model's count
    # rate per unit norm at kT_init: both fixed for the run.
    probe.set_analysis("energy")
    probe.notice(*energy_range)
    band = np.asarray(probe.get_mask(), dtype=bool).copy()
    rate = rate_of(lambda model: Response1D(probe)(model)(channel))
    return _ObsResponse(probe.get_arf(), probe.get_rmf(), channel, band, rate)


@dataclass
class StatisticPlan:
    """How one region is fitted.

    Attributes
    ----------
    statistic : str or None
        The statistic to use; None when the region cannot be fitted.
    groupings : list
        One OGIP grouping array (or None: ungrouped) per spectrum.
    note : str
        How the region was fitted, or why it cannot be ("" for neither).
    """

    statistic: str | None
    groupings: list
    note: str = ""


def plan_statistic(settings: FitSettings, statistic: str, spectra: list[ObsSpectrum],
                   bands: list[np.ndarray]) -> StatisticPlan:
    """The statistic of one region and the W-stat grouping of each spectrum.

    W-stat is biased where background channels are empty (its profile
    background then soaks up source counts), so the band is grouped to at
    least ``wstat_min_src`` source and ``wstat_min_bkg`` background counts
    per bin. A background spectrum too sparse for :data:`MIN_WSTAT_BINS`
    such bins has, if its expected counts in the source spectrum are at most
    :data:`NEGLIGIBLE_BACKGROUND` of the source counts, no influence worth
    modelling: the region is fitted with cstat on the source alone (noted).
    Otherwise the region cannot be fitted.

    Parameters
    ----------
    settings : FitSettings
    statistic : str
        The run's statistic (``wstat`` already replaced by ``cstat`` when
        the bundle has no background).
    spectra : list of ObsSpectrum
    bands : list of (ndarray (nchan,) bool or slice)
        Each spectrum's fit band.
    """
    s = settings
    none = [None] * len(spectra)
    if statistic != "wstat" or (s.wstat_min_bkg <= 0 and s.wstat_min_src <= 0):
        return StatisticPlan(statistic, none)
    if any(sp.bkg_counts is None for sp in spectra):
        return StatisticPlan("cstat", none, "cstat: an observation has no background spectrum")
    groupings = [group_counts(band, sp.counts, s.wstat_min_src, sp.bkg_counts, s.wstat_min_bkg)
                 for sp, band in zip(spectra, bands)]
    bins = sum(int(np.count_nonzero(g[band] == 1)) for g, band in zip(groupings, bands))
    if bins >= MIN_WSTAT_BINS:
        return StatisticPlan("wstat", groupings)
    n_src = sum(int(sp.counts[band].sum()) for sp, band in zip(spectra, bands))
    n_bkg = sum(int(sp.bkg_counts[band].sum()) for sp, band in zip(spectra, bands))
    expected = sum(sp.bkg_scale * int(sp.bkg_counts[band].sum())
                   for sp, band in zip(spectra, bands))
    if expected <= NEGLIGIBLE_BACKGROUND * n_src:
        return StatisticPlan("cstat", none, f"cstat: background spectrum too sparse for wstat "
                             f"({n_bkg} counts), ignored")
    return StatisticPlan(None, none, f"background spectrum too sparse for wstat ({n_bkg} "
                         f"counts, {expected:.1f} expected in the source spectrum)")


class RegionFitter:
    """Joint fit of one region's spectra with one tied absorbed-thermal model.

    Build once per worker: it turns each observation's ARF and dense RMF
    into Sherpa response objects and creates the model. :meth:`fit` then
    resets the model to the same starting point for every region.

    Parameters
    ----------
    settings : FitSettings
    responses : list of hpcxt.io.bundle.Response
        One per observation, in bundle order.
    has_background : bool
        False when the bundle has no background events; ``wstat`` then
        falls back to ``cstat`` (W-stat needs a background spectrum).
    """

    def __init__(self, settings: FitSettings, responses, has_background: bool = True):
        from .models import build_model

        if settings.statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {settings.statistic!r}")
        if settings.method not in METHODS:
            raise ValueError(f"unknown method {settings.method!r}")
        if settings.errors not in ERROR_METHODS:
            raise ValueError(f"unknown error method {settings.errors!r}")
        self.settings = settings
        self.statistic = settings.statistic
        if self.statistic == "wstat" and not has_background:
            self.statistic = "cstat"
        pm = build_model(settings.model, settings.nh, settings.abundance, settings.redshift,
                         kT=settings.kT_init, norm=1.0, apec_root=settings.apec_root,
                         abundance_table=settings.abundance_table,
                         free_abundance=settings.free_abundance)
        self.model, self.kT_par, self.norm_par = pm.model, pm.kT, pm.norm
        #: The free abundance parameter (None when frozen).
        self.abundance_par = pm.abundance if settings.free_abundance else None
        lo_kT, hi_kT = settings.kT_range
        self.kT_par.set(min=lo_kT, max=hi_kT)
        self.norm_par.set(min=0.0)
        self.nobs = len(responses)
        self.responses = [sherpa_response(k, r, settings.energy_range, self._rate_at_kT_init)
                          for k, r in enumerate(responses)]
        self._reset_pars(1.0)
        #: Compute the statistic once per parameter point of a region (see
        #: :func:`remember_statistic`); False only to measure what it saves.
        self.remember = True

    def _rate_at_kT_init(self, folded) -> np.ndarray:
        """Counts/s per channel at norm 1 and kT_init of a model folder."""
        self._reset_pars(1.0)
        with _quiet():
            return np.asarray(folded(self.model), dtype=np.float64)

    # -- helpers ---------------------------------------------------------

    def _reset_pars(self, norm: float) -> None:
        self.kT_par.val = self.settings.kT_init
        self.norm_par.val = norm
        if self.abundance_par is not None:
            self.abundance_par.val = self.settings.abundance

    def band_counts(self, spectrum: ObsSpectrum) -> tuple[int, int]:
        """Source and background counts in the energy range of one spectrum."""
        band = self.responses[spectrum.obs_index].select
        src = int(spectrum.counts[band].sum())
        bkg = int(spectrum.bkg_counts[band].sum()) if spectrum.bkg_counts is not None else 0
        return src, bkg

    def initial_norm(self, spectra: list[ObsSpectrum]) -> float:
        """Starting norm: net counts in band over the model's counts at norm 1.

        Deterministic in the data, so every worker starts a region from the
        same point; floored at 10% of the source counts (and 1 count) so
        a background-dominated region still starts positive.
        """
        net = 0.0
        src_total = 0.0
        model_counts = 0.0
        for s in spectra:
            resp = self.responses[s.obs_index]
            src = float(s.counts[resp.select].sum())
            bkg = float(s.bkg_counts[resp.select].sum()) if s.bkg_counts is not None else 0.0
            net += src - s.bkg_scale * bkg
            src_total += src
            model_counts += s.exposure * float(resp.rate_per_norm[resp.select].sum())
        net = max(net, 0.1 * src_total, 1.0)
        return net / model_counts if model_counts > 0 else 1.0

    @staticmethod
    def _stat(name: str):
        from sherpa.stats import Chi2Gehrels, CStat, WStat
        return {"wstat": WStat, "cstat": CStat, "chi2gehrels": Chi2Gehrels}[name]()

    def _method(self):
        from sherpa.optmethods import LevMar, MonCar, NelderMead
        return {"levmar": LevMar, "neldermead": NelderMead,
                "moncar": MonCar}[self.settings.method]()

    def _estmethod(self, method: str):
        from sherpa.estmethods import Confidence, Covariance
        if method == "conf":
            est = Confidence()
            # Sherpa would fork one process per parameter: one core per rank.
            est.parallel = False
            est.numcores = 1
            # kT_range is the search range of the bounds too.
            est.soft_limits = True
        else:
            est = Covariance()
        est.sigma = self.settings.error_sigma
        return est

    def _dataset(self, s: ObsSpectrum, name: str, statistic: str, grouping=None):
        from sherpa.astro.data import DataPHA
        resp = self.responses[s.obs_index]
        pha = DataPHA(name, resp.channel, np.asarray(s.counts, dtype=np.float64),
                      exposure=s.exposure, backscal=1.0)
        pha.set_arf(resp.arf)
        pha.set_rmf(resp.rmf)
        if s.bkg_counts is not None and statistic != "cstat":
            bkg = DataPHA(name + "_bkg", resp.channel,
                          np.asarray(s.bkg_counts, dtype=np.float64),
                          exposure=s.exposure, backscal=1.0 / s.bkg_scale)
            pha.set_background(bkg)
            if statistic == "chi2gehrels":
                pha.subtract()
            elif grouping is not None:
                pha.grouping = grouping
                bkg.grouping = grouping
                pha.grouped = True
                bkg.grouped = True
        pha.set_analysis("energy")
        pha.notice(*self.settings.energy_range)
        return pha

    # -- the fit -----------------------------------------------------------

    def fit(self, spectra: list[ObsSpectrum], verify: bool = False,
            table=None) -> FitRecord:
        """Fit one region; never raises for a bad region.

        Parameters
        ----------
        spectra : list of ObsSpectrum
            The used observations of the region (from
            :meth:`RegionSpectra.spectra`).
        verify : bool
            Ignored: Sherpa is the reference the other engines are checked
            against (the engines' common interface, see :mod:`hpcxt.engines`).
        table : callable, optional
            ``table(spectra, groupings) -> counts``: where given, Sherpa's
            fit and error search run unchanged but take the model counts of
            the noticed bins from ``counts(kT, norm)`` instead of folding
            the model (:func:`tabulate_statistic`; the template engine's
            :class:`hpcxt.template_fit.FoldedCounts`).

        Returns
        -------
        FitRecord
            Status ok with best fit and bounds, or failed with the reason
            (too few counts, no usable observation, optimiser failure,
            error bounds not found, or the exception raised).
        """
        t0 = time.perf_counter()
        rec = FitRecord(self.nobs)
        try:
            self._fit(spectra, rec, table)
        except Exception as exc:  # a bad region must never stop the run
            rec.status = Status.FAILED
            rec.reason = failure_reason(exc)
        finally:
            self._reset_pars(1.0)
        rec.fit_seconds = time.perf_counter() - t0
        return rec

    def prepare(self, spectra: list[ObsSpectrum], rec: FitRecord) -> StatisticPlan | None:
        """What every engine does before fitting a region.

        Stores the band counts of each observation in ``rec`` and decides
        the statistic and grouping. Returns None, with ``rec`` marked failed
        and the reason, when the region cannot be fitted (no usable
        observation, too few counts, too sparse a background).
        """
        s = self.settings
        if not spectra:
            rec.status = Status.FAILED
            rec.reason = f"no observation covers >= min_obs_fraction ({s.min_obs_fraction:g})"
            return None
        for sp in spectra:
            rec.counts[sp.obs_index], rec.bkg_counts[sp.obs_index] = self.band_counts(sp)
        total = int(rec.counts.sum())
        if total < s.min_counts:
            rec.status = Status.FAILED
            rec.reason = f"too few counts ({total} < {s.min_counts})"
            return None
        plan = plan_statistic(s, self.statistic, spectra,
                              [self.responses[sp.obs_index].select for sp in spectra])
        rec.reason = plan.note
        if plan.statistic is None:
            rec.status = Status.FAILED
            return None
        return plan

    def _build(self, spectra: list[ObsSpectrum], plan: StatisticPlan):
        """Sherpa's data sets of one region and its ``Fit`` of them with the
        model, not yet run: ``(fit, datasets, "")``, or ``(None, datasets,
        why)`` where there are no degrees of freedom."""
        from sherpa.data import DataSimulFit
        from sherpa.fit import Fit
        from sherpa.astro.instrument import Response1D
        from sherpa.models.model import SimulFitModel

        datasets = [self._dataset(sp, f"obs{sp.obs_index}", plan.statistic, g)
                    for sp, g in zip(spectra, plan.groupings)]
        nbins = sum(int(d.get_dep(filter=True).size) for d in datasets)
        npar = 2 if self.abundance_par is None else 3
        if nbins <= npar:
            return None, datasets, f"no degrees of freedom ({nbins} bins for {npar} free " \
                                   "parameters)"
        models = [Response1D(d)(self.model) for d in datasets]
        if len(datasets) == 1:
            data, model = datasets[0], models[0]
        else:
            data = DataSimulFit("region", datasets)
            model = SimulFitModel("region", models)
        return Fit(data, model, stat=self._stat(plan.statistic), method=self._method(),
                   estmethod=None), datasets, ""

    def _fit(self, spectra: list[ObsSpectrum], rec: FitRecord, table=None) -> None:
        s = self.settings
        plan = self.prepare(spectra, rec)
        if plan is None:
            return
        rec.engine = Engine.SHERPA
        self._reset_pars(self.initial_norm(spectra))
        fitter, datasets, why = self._build(spectra, plan)
        if fitter is None:
            rec.status = Status.FAILED
            rec.reason = why
            return
        if table is not None:
            if self.abundance_par is not None:
                raise ValueError("a table of the model in kT cannot fit a free abundance")
            tabulate_statistic(fitter, datasets, table(spectra, plan.groupings), self.kT_par,
                               self.norm_par)
        elif self.remember:
            remember_statistic(fitter)
        with _quiet():
            res = fitter.fit()
        rec.stat = float(res.statval)
        rec.dof = int(res.dof)
        self._store_values(rec)
        if not res.succeeded:
            rec.status = Status.FAILED
            rec.reason = f"fit did not converge: {str(res.message).strip().splitlines()[0]}"
            return
        if s.errors != "none":
            bounds, missing = self._error_bounds(fitter)
            (rec.kT_lo, rec.kT_hi), (rec.norm_lo, rec.norm_hi) = bounds["kT"], bounds["norm"]
            self._store_values(rec)
            rec.stat = float(fitter.calc_stat())
            fatal = [m for m in missing if not m.startswith("abundance")]
            if fatal:
                rec.status = Status.FAILED
                rec.reason = f"{s.errors}: {', '.join(fatal)} bound not found"
                return
            if "abundance" in bounds:
                rec.abundance_lo, rec.abundance_hi = bounds["abundance"]
                if len(fatal) < len(missing):
                    # kT and norm stand; the abundance alone is not measured here
                    rec.abundance_lo = rec.abundance_hi = math.nan
                    sides = ", ".join(m.split()[1] for m in missing
                                      if m.startswith("abundance"))
                    rec.reason = _join_notes(rec.reason, f"abundance unconstrained: {s.errors} "
                                             f"found no {sides} bound within "
                                             f"{self.abundance_par.min:g}-"
                                             f"{self.abundance_par.max:g} (kT kept)")
        rec.status = Status.OK

    def covar_norm_bounds(self, spectra: list[ObsSpectrum], plan: StatisticPlan, table,
                          kT: float, norm: float) -> tuple[float, float] | None:
        """Sherpa's ``covar`` bounds of the norm at (kT, norm), on a table.

        What Sherpa's error search computes for the norm after its fit and
        ``conf`` on kT (the default, ``errors: conf`` without
        ``conf_norm``), at a best fit known already, with the model counts
        from ``table`` (``table(spectra, groupings)``, as in :meth:`fit`);
        ``plan`` is the region's, from :meth:`prepare`.
        For the template engine's regions whose best fit and kT bounds it
        certifies but whose norm bound Sherpa might reach along another
        path: ``covar`` is a local estimate (finite differences of the
        statistic at the best fit), so only the point matters, not the path.

        Returns
        -------
        (norm_lo, norm_hi) or None
            XSPEC units; None where the region cannot be fitted, ``covar``
            finds no bound (Sherpa then searches with ``conf``, whose path
            does matter) or anything raises (Sherpa's whole fit decides).
        """
        if self.abundance_par is not None:
            return None
        try:
            fitter, datasets, _ = self._build(spectra, plan)
            if fitter is None:
                return None
            self.kT_par.val, self.norm_par.val = kT, norm
            tabulate_statistic(fitter, datasets, table(spectra, plan.groupings), self.kT_par,
                               self.norm_par)
            fitter.estmethod = self._estmethod("covar")
            with _quiet():
                err = fitter.est_errors(parlist=(self.norm_par,))
        except Exception:  # whatever fails here, Sherpa's whole fit decides
            return None
        finally:
            self._reset_pars(1.0)
        lo, hi = err.parmins[0], err.parmaxes[0]
        if lo is None or hi is None:
            return None
        val = float(err.parvals[0])
        return val + float(lo), val + float(hi)

    def _store_values(self, rec: FitRecord) -> None:
        rec.kT = float(self.kT_par.val)
        rec.norm = float(self.norm_par.val)
        if self.abundance_par is not None:
            rec.abundance = float(self.abundance_par.val)

    def _error_bounds(self, fitter):
        """Bounds at the best fit: ({"kT": (lo, hi), "norm": ..., "abundance": ...}, missing).

        ``abundance`` only when it is free, with the same method as kT;
        ``missing`` names each bound not found ("kT upper", "abundance lower").

        conf: profile-likelihood bounds of kT (the mapped quantity); norm
        bounds from the covariance matrix at the best fit unless
        ``conf_norm``, or unless the covariance matrix gives none. Sherpa's
        conf search falls back to bisection for norm and costs about four
        times the kT search (see benchmarks/fit.py). conf may find a better
        minimum and refit: bounds are relative to the fit it ends at.
        """
        s = self.settings
        norm_methods = ["covar"]
        if s.errors == "conf":
            norm_methods = ["conf"] if s.conf_norm else ["covar", "conf"]
        plan = [("kT", self.kT_par, [s.errors]), ("norm", self.norm_par, norm_methods)]
        if self.abundance_par is not None:
            plan.append(("abundance", self.abundance_par, [s.errors]))
        bounds = {}
        missing = []
        for name, par, methods in plan:
            for method in methods:
                fitter.estmethod = self._estmethod(method)
                with _quiet():
                    err = fitter.est_errors(parlist=(par,))
                lo, hi = err.parmins[0], err.parmaxes[0]
                if lo is not None and hi is not None:
                    break
            val = float(err.parvals[0])
            bounds[name] = (math.nan if lo is None else val + float(lo),
                            math.nan if hi is None else val + float(hi))
            missing += [f"{name} {side}" for side, b in (("lower", lo), ("upper", hi))
                        if b is None]
        return bounds, missing


class _RememberingCallback:
    """Sherpa's statistic callback, computing each parameter point once.

    Sherpa's ``conf`` starts with the covariance matrix of all free
    parameters (``info_matrix``: two one-sided searches and three-step
    finite differences per parameter, 30-430 evaluations; the most near a
    jump of the model, where the differences never settle), and ``covar``
    on the norm computes the same matrix again at the same best fit. The
    statistic is a deterministic function of the model's parameter values
    (data, filter and grouping are fixed for the region), so a value
    computed once is returned again, bit for bit, for the same values.

    The key is the values of all the model's parameters after Sherpa sets
    the thawed ones (``conf`` refits with one parameter frozen: the thawed
    values alone would not identify the point). Each call still sets the
    parameters and counts in ``nfev``, as Sherpa's callback does; a
    remembered point is not written again to Sherpa's step log (``outfile``,
    ``record_steps``, which hpcxt does not use).
    """

    __slots__ = ("callback", "memo", "pars")

    def __init__(self, callback, memo: dict):
        self.callback = callback
        self.memo = memo
        self.pars = callback.model.pars

    def __getattr__(self, name):  # nfev, record_steps, ...: Sherpa's callback's
        if name.startswith("__") or name in self.__slots__:
            raise AttributeError(name)  # copy/pickle probe an instance without slots set
        return getattr(self.callback, name)

    def __call__(self, pars):
        cb = self.callback
        cb.model.thawedpars = pars
        key = (id(cb.stat), np.fromiter((p.val for p in self.pars), dtype=np.float64,
                                        count=len(self.pars)).tobytes())
        found = self.memo.get(key)
        if found is None:
            stat, fvec = cb(pars)
            self.memo[key] = (stat, np.array(fvec, dtype=np.float64))
            return stat, fvec
        cb.nfev += 1
        return found[0], found[1].copy()


def remember_statistic(fitter) -> dict:
    """Make a Sherpa ``Fit`` compute each parameter point's statistic once.

    Every callback the fit hands its optimiser and error methods from now
    on shares one memory (:class:`_RememberingCallback`); returns it. For
    one region's fit and error search: the data must not change meanwhile.
    Results are identical with and without (tests/test_fit.py); on the
    demo's fallback regions near xsbremss's jump it saves about 40% of the
    evaluations.
    """
    memo: dict = {}
    if getattr(fitter._iterfit, "current_func", None) is not None:
        return memo  # sigma rejection changes the data between fits: nothing to share
    make = fitter._iterfit._get_callback

    def remembering(*args, **kwargs):
        return _RememberingCallback(make(*args, **kwargs), memo)

    fitter._iterfit._get_callback = remembering
    return memo


class _TableModel:
    """A data set's ``eval_model_to_fit`` that reads its bins of the table."""

    __slots__ = ("counts", "kT_par", "norm_par", "bins")

    def __init__(self, counts, kT_par, norm_par, bins: slice):
        self.counts, self.kT_par, self.norm_par, self.bins = counts, kT_par, norm_par, bins

    def __call__(self, model):
        return self.counts(self.kT_par.val, self.norm_par.val)[self.bins]


_NOT_STARTED = object()


class _DeferredStartup:
    """A response model's ``startup`` and ``teardown``, done only where it folds.

    Sherpa starts the model up before every fit, error search and
    statistic (the response filtered to the noticed channels, about 0.6 ms
    for each observation's 1024-channel response) and tears it down after.
    With the model counts taken from a table, the response is used only
    where the table does not cover kT: the startup Sherpa asked for is done
    then, with its argument, and undone at Sherpa's next teardown. Where
    nothing was folded, the model is in the state a teardown leaves.
    """

    __slots__ = ("part", "cache", "started")

    def __init__(self, part):
        self.part = part
        self.cache = _NOT_STARTED  # the argument of a startup asked for, not yet done
        self.started = False
        # instance attributes shadow the class's methods, for every caller
        object.__setattr__(part, "startup", self.startup)
        object.__setattr__(part, "teardown", self.teardown)

    def startup(self, cache: bool = False) -> None:
        self.cache = cache

    def teardown(self) -> None:
        if self.started:
            type(self.part).teardown(self.part)
            self.started = False
        self.cache = _NOT_STARTED

    def ready(self) -> None:
        """Do the startup Sherpa asked for, before the model is folded."""
        if not self.started and self.cache is not _NOT_STARTED:
            type(self.part).startup(self.part, self.cache)
            self.started = True


class _ParameterLayout:
    """How a model's parameters are set and read, worked out once per region.

    ``own``: the model's parameters that hold values (no link), in order;
    ``hard``: their hard limits, None where a parameter is linked to one
    outside the model (Sherpa's ``lpars``: every point goes through
    Sherpa's setter); ``linked``: the linked parameters Sherpa's setter
    evaluates, less those that cannot leave their soft limits (a plain link
    to an own parameter whose hard limits lie inside them); ``where``: the
    positions of kT and the norm among ``own`` (None: linked); ``thawed``:
    per pattern of frozen flags, (parameter, hard_min, hard_max) of the
    thawed own parameters (conf freezes the parameter it searches).
    """

    __slots__ = ("own", "hard", "linked", "where", "thawed", "float")

    def __init__(self, model, kT_par, norm_par):
        from sherpa.utils.numeric_types import SherpaFloat

        self.float = SherpaFloat
        self.own = [p for p in model.pars if p.link is None]
        self.hard = None if model.lpars else [(p.hard_min, p.hard_max) for p in self.own]
        limits = {id(p): lim for p, lim in zip(self.own, self.hard or [])}
        self.linked = [p for p in model.pars if p.link is not None and not (
            id(p.link) in limits and p.min <= limits[id(p.link)][0]
            and limits[id(p.link)][1] <= p.max)]
        ids = [id(p) for p in self.own]
        self.where = tuple(ids.index(id(p)) if id(p) in ids else None
                           for p in (kT_par, norm_par))
        self.thawed: dict = {}


class _TabulatedCallback:
    """Sherpa's statistic callback with the model counts taken from a table.

    Does what Sherpa's callback does (set the thawed parameters, compute
    the statistic and its per-bin vector, count the evaluation) with the
    data side of the statistic computed once per region (the arguments
    Sherpa's own statistic function received, captured by
    :func:`tabulate_statistic`) and the model counts from the table.
    The parameters are set as Sherpa's ``thawedpars`` setter sets them
    (``_val`` of each thawed parameter, in order, as ``SherpaFloat``),
    directly where no parameter is linked to one outside the model and
    every value is inside its hard limits, else through that setter
    (:class:`_ParameterLayout`, shared by the region's callbacks). A
    parameter point met before in the region (all parameters' values the
    same) returns the stored statistic and a copy of its vector. Sherpa's
    step log (``outfile``, ``record_steps``) is not written: hpcxt does not
    use it.
    """

    __slots__ = ("callback", "calc", "args", "counts", "kT_par", "norm_par", "layout", "memo")

    def __init__(self, callback, calc, args, counts, kT_par, norm_par, memo: dict,
                 layout: _ParameterLayout | None = None):
        self.callback, self.calc, self.args = callback, calc, list(args)
        self.counts, self.kT_par, self.norm_par = counts, kT_par, norm_par
        self.memo = memo
        self.layout = layout or _ParameterLayout(callback.model, kT_par, norm_par)

    def __getattr__(self, name):  # nfev, record_steps, ...: Sherpa's callback's
        if name.startswith("__") or name in self.__slots__:
            raise AttributeError(name)
        return getattr(self.callback, name)

    def _set(self, vals) -> tuple:
        """Set the thawed parameters as Sherpa's setter does: (key, own).

        ``key`` identifies the point: the own parameters' values where they
        were set directly (``own`` True), else all parameters' values after
        Sherpa's setter (``own`` False).

        Sherpa's thawed parameters are the unlinked ones not frozen, in
        order; each value inside its hard limits is stored in ``_val``,
        then every linked parameter is evaluated (which raises where a
        link leaves its soft limits; skipped where it cannot). Anything
        else goes to that setter.
        """
        lay = self.layout
        if lay.hard is not None:
            own = lay.own
            # own parameters have no link: _frozen is what p.frozen returns
            frozen = tuple([p._frozen for p in own])
            todo = lay.thawed.get(frozen)
            if todo is None:
                todo = lay.thawed[frozen] = tuple(
                    (p, lo, hi) for p, (lo, hi) in zip(own, lay.hard) if not p._frozen)
            if len(todo) == len(vals):
                cast = lay.float
                vals = [cast(v) for v in vals]
                for (_, lo, hi), v in zip(todo, vals):
                    if not lo <= v <= hi:
                        break
                else:
                    for (p, _, _), v in zip(todo, vals):
                        # what the setter does, without NoNewAttributesAfterInit's
                        # check (an existing float attribute, set to a float)
                        object.__setattr__(p, "_val", v)
                    for p in lay.linked:
                        _ = p.val
                    return tuple([p._val for p in own]), True
        model = self.callback.model
        model.thawedpars = vals
        return tuple(p.val for p in (*model.pars, *model.lpars)), False

    def __call__(self, pars):
        key, own = self._set(pars)
        self.callback.nfev += 1
        found = self.memo.get(key)
        if found is not None:
            return found[0], found[1].copy()
        args = self.args
        i, j = self.layout.where
        if own and i is not None and j is not None:
            args[1] = self.counts(key[i], key[j])  # the own values: kT's and the norm's
        else:
            args[1] = self.counts(self.kT_par.val, self.norm_par.val)
        stat, fvec = self.calc(*args)
        self.memo[key] = (stat, fvec.copy())
        return stat, fvec


def tabulate_statistic(fitter, datasets, counts, kT_par, norm_par) -> None:
    """Make a Sherpa ``Fit`` take its model counts from a table.

    Everything else is Sherpa's: its optimiser and error methods take the
    same steps, and its statistic function computes the statistic and the
    per-bin vector, given model counts that differ from the folded model's
    only by the table's interpolation error (1e-4 relative at most for the
    template engine's tables). Costs about a tenth of folding the model.
    Each parameter point's statistic is computed once, as
    :func:`remember_statistic` does for the folded model; the fit's own
    ``calc_stat`` takes the same table and captured arguments; and the
    response is filtered for the region's channels only where the model is
    folded (:class:`_DeferredStartup`).

    Parameters
    ----------
    fitter : sherpa.fit.Fit
        Built on ``datasets``, not yet run.
    datasets : list of sherpa.astro.data.DataPHA
        Filtered and grouped, in the fit's order.
    counts : object
        ``counts.at(kT, norm)``: model counts of the data sets' noticed
        (grouped) bins, concatenated in their order, kT in keV, or None
        where the table does not hold; its ``sizes`` attribute lists the
        bins of each data set. Where it does not hold (Sherpa's ``covar``
        steps up to the parameters' hard limits, beyond ``kT_range``) the
        model is folded as Sherpa folds it
        (:class:`hpcxt.template_fit.FoldedCounts`).
    kT_par, norm_par : sherpa.models.parameter.Parameter

    Raises
    ------
    ValueError
        Where the table's bins are not the data sets', the fit rejects
        points between fits (sigma rejection changes the data), or Sherpa's
        statistic did not receive the model counts as its second argument
        (another Sherpa).
    """
    if getattr(fitter._iterfit, "current_func", None) is not None:
        raise ValueError("a table needs the same data throughout the fit (no sigma rejection)")
    counts = _install_table(fitter, datasets, counts, kT_par, norm_par)
    calc, args = _statistic_arguments(fitter, counts(kT_par.val, norm_par.val))
    make = fitter._iterfit._get_callback
    memo: dict = {}  # one region's points: see remember_statistic
    layout = _ParameterLayout(fitter.model, kT_par, norm_par)  # Sherpa's callbacks' model

    def tabulated(*a, **kw):
        return _TabulatedCallback(make(*a, **kw), calc, args, counts, kT_par, norm_par, memo,
                                  layout)

    fitter._iterfit._get_callback = tabulated

    def statistic():
        # Fit._calc_stat (calc_stat, the fit's and est_errors' first
        # statistic): Sherpa's statistic function on the captured data side
        a = list(args)
        a[1] = counts(kT_par.val, norm_par.val)
        return calc(*a)

    object.__setattr__(fitter, "_calc_stat", statistic)


def _install_table(fitter, datasets, table, kT_par, norm_par):
    """Point each data set's ``eval_model_to_fit`` at its bins of ``table``;
    returns ``counts(kT, norm)`` for all bins, which folds the model as
    Sherpa does where the table does not cover kT."""
    from sherpa.models.model import SimulFitModel

    parts = fitter.model.parts if isinstance(fitter.model, SimulFitModel) else (fitter.model,)
    folded = [(d.eval_model_to_fit, part, _DeferredStartup(part))
              for d, part in zip(datasets, parts, strict=True)]
    at = table.at

    def counts(kT, norm):
        out = at(kT, norm)
        if out is not None:
            return out
        for _, _, deferred in folded:
            deferred.ready()
        return np.concatenate([evaluate(part) for evaluate, part, _ in folded])

    start = 0
    for d, m in zip(datasets, table.sizes, strict=True):
        n = int(d.get_dep(filter=True).size)
        if n != m:
            raise ValueError(f"the table has {m} bins where data set {d.name} has {n}")
        d.eval_model_to_fit = _TableModel(counts, kT_par, norm_par, slice(start, start + n))
        start += n
    return counts


def _statistic_arguments(fitter, model_counts):
    """Sherpa's statistic function and the arguments it receives at the
    current parameters (data side, then ``model_counts`` second), captured
    from one ``calc_stat``."""
    stat = fitter.stat
    calc = stat._calc  # a C function, or a bound method for a statistic written in Python
    seen = []

    def spy(*args):
        seen.append(args)
        return calc(*args)

    object.__setattr__(stat, "_calc", spy)  # this one call only: the class's is restored below
    try:
        fitter.calc_stat()
    finally:
        object.__delattr__(stat, "_calc")
    if len(seen) != 1 or not np.array_equal(np.asarray(seen[0][1]), model_counts):
        raise ValueError("Sherpa's statistic did not receive the model counts as its second "
                         "argument")
    return calc, seen[0]


def _join_notes(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def fit_region(engine, spectra: RegionSpectra, region_id: int, verify: bool = False) -> FitRecord:
    """Extract and fit one region of the table; never raises for a bad region.

    ``engine`` is a :mod:`hpcxt.engines` engine (or anything with
    ``fit(spectra, verify)``); ``verify`` asks the template engine to check
    this region against Sherpa.
    """
    t0 = time.perf_counter()
    try:
        sp = spectra.spectra(region_id)
    except Exception as exc:
        rec = FitRecord(engine.nobs, status=Status.FAILED, reason=failure_reason(exc))
        rec.fit_seconds = time.perf_counter() - t0
        return rec
    rec = engine.fit(sp, verify)
    rec.fit_seconds = time.perf_counter() - t0
    return rec


class RecordBatch(ColumnAccess):
    """Fit records of several regions as columns (what workers send back).

    Attributes
    ----------
    region_id : ndarray, shape (n,), int64
    columns : dict of str -> ndarray
        Every column of :data:`hpcxt.schema.COLUMNS`, first axis n (also
        readable as attributes: ``batch.kT``).
    """

    def __init__(self, region_id, columns: dict):
        self.region_id = np.asarray(region_id, dtype=np.int64)
        self.columns = columns

    def __len__(self) -> int:
        return int(self.region_id.shape[0])

    def __reduce__(self):
        """Pickled as one float64 buffer of the numeric columns, plus the text column.

        A batch crosses MPI as a pickle to the master. Pickled as its 21
        separate arrays, unpickling and recording it cost the master about
        45 us, most of its cost per batch. Every numeric column is exact in
        float64 (integers well below 2**53), so they travel as the rows of
        one array and are cast back to their dtypes on arrival. A batch
        whose columns are not the schema's pickles as usual.
        """
        packed = self.pack()
        if isinstance(packed, RecordBatch):
            return (RecordBatch, (self.region_id, self.columns))
        return (_unpack_batch, packed)

    def pack(self):
        """``(nobs, region_id, rows, texts)``: the numeric columns as the rows of
        one float64 array, the text columns as lists; the batch itself when
        its columns are not the schema's (see :meth:`__reduce__`).

        What a fit worker sends: the master keeps these as they arrive and
        unpacks many at once (:meth:`unpack_many`), which costs it far less
        per batch than unpacking each.
        """
        if not self._packable():
            return self
        nobs = self.columns["counts"].shape[1]
        rows = []
        for c in COLUMNS:
            if not c.is_text:
                col = self.columns[c.name]
                rows.extend(col.T if c.per_obs else (col,))
        packed = np.array(rows, dtype=np.float64) if rows else np.zeros((0, len(self)))
        texts = [self.columns[c.name].tolist() for c in COLUMNS if c.is_text]
        return (nobs, self.region_id, packed, texts)

    @classmethod
    def unpack_many(cls, items: list) -> "RecordBatch | None":
        """One batch of every region of ``items`` (from :meth:`pack`), in order;
        None for no items."""
        tuples = [x for x in items if not isinstance(x, RecordBatch)]
        batches = [x for x in items if isinstance(x, RecordBatch)]
        if tuples:
            nobs = tuples[0][0]
            texts = [list(itertools.chain.from_iterable(t[3][k] for t in tuples))
                     for k in range(len(tuples[0][3]))]
            batches.append(_unpack_batch(nobs, np.concatenate([t[1] for t in tuples]),
                                         np.concatenate([t[2] for t in tuples], axis=1),
                                         texts))
        return cls.concat(batches)

    @classmethod
    def concat(cls, batches: list) -> "RecordBatch | None":
        """The regions of several batches as one (None for none)."""
        batches = [b for b in batches if b is not None]
        if len(batches) <= 1:
            return batches[0] if batches else None
        return cls(np.concatenate([b.region_id for b in batches]),
                   {k: np.concatenate([b.columns[k] for b in batches])
                    for k in batches[0].columns})

    def _packable(self) -> bool:
        """The schema's columns, dtypes and shapes, integers exact in float64."""
        if list(self.columns) != list(NAMES) or "counts" not in self.columns:
            return False
        n, nobs = len(self), self.columns["counts"].shape[-1]
        for c in COLUMNS:
            col = self.columns[c.name]
            if c.is_text:
                continue
            if col.dtype != np.dtype(c.dtype) or col.shape != c.shape(n, nobs):
                return False
            if col.dtype == np.int64 and col.size and np.abs(col).max() >= 2**53:
                return False
        return True

    @classmethod
    def from_records(cls, region_ids, records: list[FitRecord], nobs: int,
                     worker: int = 0) -> "RecordBatch":
        return cls(region_ids, columns_from_records(records, nobs, worker=worker))


def _unpack_batch(nobs: int, region_id, packed, texts: list) -> RecordBatch:
    columns, row, k = {}, 0, 0
    for c in COLUMNS:
        if c.is_text:
            col = np.empty(len(region_id), dtype=object)
            col[:] = texts[k]
            k += 1
        else:
            width = nobs if c.per_obs else 1
            col = packed[row:row + width].T if c.per_obs else packed[row]
            if c.dtype != "float64" or c.per_obs:
                col = col.astype(c.dtype, order="C")
            row += width
        columns[c.name] = col
    return RecordBatch(region_id, columns)


