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
advises grouping to at least one background count per bin; in our
simulations (500-2500 source counts, sparse and rich backgrounds) that alone
still left mean kT pulls of -0.5 with a rich background, while groups of at
least 10 source and 2 background counts kept them within +-0.25. So the
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
import math
import time
from dataclasses import dataclass, field

import numpy as np

#: Values of the ``status`` column of results.h5.
STATUS_PENDING = 0
STATUS_OK = 1
STATUS_FAILED = 2

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
    wstat_min_src, wstat_min_bkg : int
        With ``wstat``, channels in the energy range are grouped so that each
        group holds at least this many source and background counts (0 and
        0: no grouping).
    conf_norm : bool
        With ``errors: conf``, always search the norm's bounds with conf
        (about four times slower); by default they come from the covariance
        matrix at the best fit, and from conf only where that fails.
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
    wstat_min_src: int = 10
    wstat_min_bkg: int = 2
    conf_norm: bool = False

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
                   wstat_min_src=int(f.group_min_source),
                   wstat_min_bkg=int(f.group_min_background))


@dataclass
class FitRecord:
    """The outcome of one region's fit.

    Attributes
    ----------
    kT, kT_lo, kT_hi : float
        Best-fit temperature and its absolute lower/upper bounds, keV
        (NaN where unknown).
    norm, norm_lo, norm_hi : float
        Best-fit normalisation and bounds, XSPEC units (NaN where unknown).
    stat : float
        Fit statistic at the best fit (NaN if not fitted).
    dof : int
        Degrees of freedom (-1 if not fitted).
    counts, bkg_counts : ndarray, shape (nobs,), int64
        Source and background counts in the energy range per observation
        (0 for observations not used).
    status : int
        :data:`STATUS_OK` or :data:`STATUS_FAILED`.
    reason : str
        Why the region failed; for an ok region "" or a note on how it
        was fitted (e.g. cstat for a negligible, too sparse background).
    fit_seconds : float
        Wall time of extraction and fit, s.
    """

    nobs: int
    kT: float = math.nan
    kT_lo: float = math.nan
    kT_hi: float = math.nan
    norm: float = math.nan
    norm_lo: float = math.nan
    norm_hi: float = math.nan
    stat: float = math.nan
    dof: int = -1
    counts: np.ndarray = None
    bkg_counts: np.ndarray = None
    status: int = STATUS_FAILED
    reason: str = ""
    fit_seconds: float = 0.0

    def __post_init__(self):
        if self.counts is None:
            self.counts = np.zeros(self.nobs, dtype=np.int64)
        if self.bkg_counts is None:
            self.bkg_counts = np.zeros(self.nobs, dtype=np.int64)


def failure_reason(exc: BaseException) -> str:
    """``"<ExceptionType>: <first line of the message>"``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# --------------------------------------------------------------------------
# spectrum extraction


class EventIndex:
    """Events of one list sorted by sky y, for fast circle selection.

    Parameters
    ----------
    x, y : ndarray, shape (nev,)
        Sky positions, sky pixels.
    pi : ndarray, shape (nev,)
        PI channel of each event.
    """

    def __init__(self, x, y, pi):
        order = np.argsort(np.asarray(y, dtype=np.float64), kind="stable")
        self.y = np.ascontiguousarray(np.asarray(y, dtype=np.float64)[order])
        self.x = np.ascontiguousarray(np.asarray(x, dtype=np.float64)[order])
        self.pi = np.ascontiguousarray(np.asarray(pi, dtype=np.int64)[order])

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def spectrum(self, xc: float, yc: float, radius: float, nchan: int,
                 offset: int = 1) -> np.ndarray:
        """PI histogram of the events inside a circle.

        Parameters
        ----------
        xc, yc : float
            Circle centre, sky pixels.
        radius : float
            Circle radius, sky pixels; an event at exactly ``radius`` is inside.
        nchan : int
            Number of channels.
        offset : int
            Channel number of the first channel (TLMIN of PI, usually 1).

        Returns
        -------
        ndarray, shape (nchan,), int64
            Counts per channel; events with PI outside the channel range are
            dropped.
        """
        lo = np.searchsorted(self.y, yc - radius, side="left")
        hi = np.searchsorted(self.y, yc + radius, side="right")
        dx = self.x[lo:hi] - xc
        dy = self.y[lo:hi] - yc
        inside = dx * dx + dy * dy <= radius * radius
        chan = self.pi[lo:hi][inside] - offset
        chan = chan[(chan >= 0) & (chan < nchan)]
        return np.bincount(chan, minlength=nchan).astype(np.int64)


@dataclass
class ObsSpectrum:
    """One observation's spectra of one region, ready to fit.

    Attributes
    ----------
    obs_index : int
        Position of the observation in the bundle (and the fitter).
    counts : ndarray, shape (nchan,)
        Source counts per channel.
    bkg_counts : ndarray, shape (nchan,) or None
        Background counts per channel from the same circle, or None when
        the bundle has no background.
    exposure : float
        Source exposure time of this region, s.
    bkg_scale : float
        Multiplies background counts into expected background counts in the
        source spectrum.
    """

    obs_index: int
    counts: np.ndarray
    bkg_counts: np.ndarray | None
    exposure: float
    bkg_scale: float


class RegionSpectra:
    """Source and background spectra of the regions of a region table.

    Parameters
    ----------
    observations : list of hpcxt.io.bundle.ObsData
        The bundle's observations (with events loaded).
    table : hpcxt.io.regions_table.RegionTable
        Region centres (sky pixels), radii (sky pixels), exposure_time
        (n, nobs) in s and used (n, nobs).
    """

    def __init__(self, observations, table):
        self.table = table
        self.nobs = len(observations)
        self.obs = []
        for o in observations:
            r = o.response
            nchan = int(r.rmf_matrix.shape[1])
            src = EventIndex(o.events["x"], o.events["y"], o.events["pi"])
            bkg = (EventIndex(o.bkg_events["x"], o.bkg_events["y"], o.bkg_events["pi"])
                   if o.bkg_events is not None else None)
            self.obs.append((src, bkg, nchan, int(r.offset), float(o.bkg_scale)))

    def __len__(self) -> int:
        return len(self.table)

    def spectra(self, region_id: int) -> list[ObsSpectrum]:
        """Spectra of every used observation of one region (may be empty)."""
        t = self.table
        xc, yc, rad = float(t.x[region_id]), float(t.y[region_id]), float(t.radius_sky[region_id])
        out = []
        for k, (src, bkg, nchan, offset, scale) in enumerate(self.obs):
            expo = float(t.exposure_time[region_id, k])
            if not bool(t.used[region_id, k]) or not expo > 0:
                continue
            counts = src.spectrum(xc, yc, rad, nchan, offset)
            bcounts = bkg.spectrum(xc, yc, rad, nchan, offset) if bkg is not None else None
            out.append(ObsSpectrum(k, counts, bcounts, expo, scale))
        return out


# --------------------------------------------------------------------------
# responses


def group_min_counts(band: np.ndarray, *criteria) -> np.ndarray:
    """OGIP grouping flags: groups inside ``band`` that meet every count minimum.

    Parameters
    ----------
    band : ndarray, shape (nchan,), bool
        Contiguous channels to group; every other channel is its own group.
    *criteria : (ndarray, int) pairs
        Counts per channel, shape (nchan,), and the least a group must hold
        of them (e.g. source counts and 10, background counts and 2). A
        short last group joins the one before it.

    Returns
    -------
    ndarray, shape (nchan,), int16
        1 where a group starts, -1 where it continues.
    """
    grouping = np.ones(band.shape[0], dtype=np.int16)
    idx = np.flatnonzero(band)
    criteria = [(np.asarray(c)[idx].tolist(), int(m)) for c, m in criteria if m > 0]
    if idx.size == 0 or not criteria:
        return grouping
    starts = np.zeros(idx.size, dtype=bool)
    starts[0] = True
    totals = [0] * len(criteria)
    last_start = 0
    for i in range(idx.size):
        if all(t >= m for t, (_, m) in zip(totals, criteria)):
            starts[i] = True
            last_start = i
            totals = [0] * len(criteria)
        for k, (counts, _) in enumerate(criteria):
            totals[k] += counts[i]
    if last_start > 0 and not all(t >= m for t, (_, m) in zip(totals, criteria)):
        starts[last_start] = False
    grouping[idx] = np.where(starts, 1, -1)
    return grouping


def compress_rmf(matrix: np.ndarray, offset: int = 1):
    """Dense RMF to Sherpa's grouped form, one group per energy row.

    Parameters
    ----------
    matrix : ndarray, shape (n_energy, n_channel)
        Redistribution probabilities.
    offset : int
        Channel number of column 0.

    Returns
    -------
    n_grp, f_chan, n_chan : ndarray, shape (n_energy,), int64
        Groups per row (0 or 1), first channel and channel count of each
        row's non-zero range (rows without a group are left out of
        ``f_chan``/``n_chan``, as OGIP does).
    values : ndarray, shape (sum(n_chan),), float64
        The matrix elements of those ranges, row after row.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    nonzero = matrix != 0
    has = nonzero.any(axis=1)
    first = np.argmax(nonzero, axis=1)
    last = matrix.shape[1] - 1 - np.argmax(nonzero[:, ::-1], axis=1)
    n_grp = has.astype(np.int64)
    f_chan = (first[has] + offset).astype(np.int64)
    n_chan = (last[has] - first[has] + 1).astype(np.int64)
    values = np.concatenate([matrix[i, first[i]:last[i] + 1] for i in np.flatnonzero(has)]) \
        if has.any() else np.zeros(0)
    return n_grp, f_chan, n_chan, values


@dataclass
class _ObsResponse:
    arf: object
    rmf: object
    channel: np.ndarray
    band: np.ndarray            # bool (nchan,): channels Sherpa notices in energy_range
    rate_per_norm: np.ndarray   # (nchan,) counts/s for norm=1 at kT_init


# --------------------------------------------------------------------------
# the fitter


def _quiet():
    """Sherpa's XSPEC layer and optimisers may print to stdout."""
    return contextlib.redirect_stdout(io.StringIO())


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
        from sherpa.astro.data import DataARF, DataPHA, DataRMF
        from sherpa.astro.instrument import Response1D

        from .models import make_model

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
        self.model, self.kT_par, self.norm_par = make_model(
            settings.model, settings.nh, settings.abundance, settings.redshift,
            kT=settings.kT_init, norm=1.0, apec_root=settings.apec_root)
        lo_kT, hi_kT = settings.kT_range
        self.kT_par.set(min=lo_kT, max=hi_kT)
        self.norm_par.set(min=0.0)
        self.nobs = len(responses)
        self.responses: list[_ObsResponse] = []
        elo, ehi = settings.energy_range
        for k, r in enumerate(responses):
            arf = DataARF(f"arf{k}", np.asarray(r.arf_energ_lo, float),
                          np.asarray(r.arf_energ_hi, float), np.asarray(r.specresp, float))
            nchan = int(np.asarray(r.rmf_matrix).shape[1])
            n_grp, f_chan, n_chan, values = compress_rmf(r.rmf_matrix, int(r.offset))
            rmf = DataRMF(f"rmf{k}", nchan, np.asarray(r.rmf_energ_lo, float),
                          np.asarray(r.rmf_energ_hi, float), n_grp, f_chan, n_chan, values,
                          offset=int(r.offset), e_min=np.asarray(r.e_min, float),
                          e_max=np.asarray(r.e_max, float))
            channel = np.arange(int(r.offset), int(r.offset) + nchan, dtype=np.float64)
            # Which channels Sherpa keeps for energy_range, and the model's
            # count rate per unit norm at kT_init: both fixed for the run.
            probe = DataPHA(f"probe{k}", channel, np.zeros(nchan), exposure=1.0, backscal=1.0)
            probe.set_arf(arf)
            probe.set_rmf(rmf)
            probe.set_analysis("energy")
            probe.notice(elo, ehi)
            band = np.asarray(probe.get_mask(), dtype=bool).copy()
            self._reset_pars(1.0)
            with _quiet():
                rate = np.asarray(Response1D(probe)(self.model)(channel), dtype=np.float64)
            self.responses.append(_ObsResponse(arf, rmf, channel, band, rate))
        self._reset_pars(1.0)

    # -- helpers ---------------------------------------------------------

    def _reset_pars(self, norm: float) -> None:
        self.kT_par.val = self.settings.kT_init
        self.norm_par.val = norm

    def band_counts(self, spectrum: ObsSpectrum) -> tuple[int, int]:
        """Source and background counts in the energy range of one spectrum."""
        band = self.responses[spectrum.obs_index].band
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
            src = float(s.counts[resp.band].sum())
            bkg = float(s.bkg_counts[resp.band].sum()) if s.bkg_counts is not None else 0.0
            net += src - s.bkg_scale * bkg
            src_total += src
            model_counts += s.exposure * float(resp.rate_per_norm[resp.band].sum())
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

    def fit(self, spectra: list[ObsSpectrum]) -> FitRecord:
        """Fit one region; never raises for a bad region.

        Parameters
        ----------
        spectra : list of ObsSpectrum
            The used observations of the region (from
            :meth:`RegionSpectra.spectra`).

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
            self._fit(spectra, rec)
        except Exception as exc:  # a bad region must never stop the run
            rec.status = STATUS_FAILED
            rec.reason = failure_reason(exc)
        finally:
            self._reset_pars(1.0)
        rec.fit_seconds = time.perf_counter() - t0
        return rec

    def _plan_statistic(self, spectra: list[ObsSpectrum], rec: FitRecord):
        """The statistic of this region and the W-stat grouping of each spectrum.

        W-stat is biased where background channels are empty (its profile
        background then soaks up source counts), so the band is grouped to
        at least ``wstat_min_src`` source and ``wstat_min_bkg`` background
        counts per bin. A background
        spectrum too sparse for :data:`MIN_WSTAT_BINS` such bins has, if its
        expected counts in the source spectrum are at most
        :data:`NEGLIGIBLE_BACKGROUND` of the source counts, no influence
        worth modelling: the region is fitted with cstat on the source
        alone (noted in ``reason``). Otherwise the region fails.

        Returns (None, None) after marking ``rec`` failed.
        """
        s = self.settings
        none = [None] * len(spectra)
        if self.statistic != "wstat" or (s.wstat_min_bkg <= 0 and s.wstat_min_src <= 0):
            return self.statistic, none
        if any(sp.bkg_counts is None for sp in spectra):
            rec.reason = "cstat: an observation has no background spectrum"
            return "cstat", none
        groupings = []
        bins = 0
        for sp in spectra:
            band = self.responses[sp.obs_index].band
            g = group_min_counts(band, (sp.counts, s.wstat_min_src),
                                 (sp.bkg_counts, s.wstat_min_bkg))
            groupings.append(g)
            bins += int(np.count_nonzero(g[band] == 1))
        if bins >= MIN_WSTAT_BINS:
            return "wstat", groupings
        expected = sum(sp.bkg_scale * rec.bkg_counts[sp.obs_index] for sp in spectra)
        n_bkg = int(sum(rec.bkg_counts[sp.obs_index] for sp in spectra))
        if expected <= NEGLIGIBLE_BACKGROUND * rec.counts.sum():
            rec.reason = (f"cstat: background spectrum too sparse for wstat ({n_bkg} counts), "
                          "ignored")
            return "cstat", none
        rec.status = STATUS_FAILED
        rec.reason = (f"background spectrum too sparse for wstat ({n_bkg} counts, "
                      f"{expected:.1f} expected in the source spectrum)")
        return None, None

    def _fit(self, spectra: list[ObsSpectrum], rec: FitRecord) -> None:
        from sherpa.data import DataSimulFit
        from sherpa.fit import Fit
        from sherpa.astro.instrument import Response1D
        from sherpa.models.model import SimulFitModel

        s = self.settings
        if not spectra:
            rec.status = STATUS_FAILED
            rec.reason = f"no observation covers >= min_obs_fraction ({s.min_obs_fraction:g})"
            return
        for sp in spectra:
            rec.counts[sp.obs_index], rec.bkg_counts[sp.obs_index] = self.band_counts(sp)
        total = int(rec.counts.sum())
        if total < s.min_counts:
            rec.status = STATUS_FAILED
            rec.reason = f"too few counts ({total} < {s.min_counts})"
            return

        statistic, groupings = self._plan_statistic(spectra, rec)
        if statistic is None:
            return
        self._reset_pars(self.initial_norm(spectra))
        datasets = [self._dataset(sp, f"obs{sp.obs_index}", statistic, g)
                    for sp, g in zip(spectra, groupings)]
        models = [Response1D(d)(self.model) for d in datasets]
        if len(datasets) == 1:
            data, model = datasets[0], models[0]
        else:
            data = DataSimulFit("region", datasets)
            model = SimulFitModel("region", models)
        fitter = Fit(data, model, stat=self._stat(statistic), method=self._method(),
                     estmethod=None)
        nbins = sum(int(d.get_dep(filter=True).size) for d in datasets)
        if nbins <= 2:
            rec.status = STATUS_FAILED
            rec.reason = f"no degrees of freedom ({nbins} bins for 2 free parameters)"
            return
        with _quiet():
            res = fitter.fit()
        rec.stat = float(res.statval)
        rec.dof = int(res.dof)
        rec.kT = float(self.kT_par.val)
        rec.norm = float(self.norm_par.val)
        if not res.succeeded:
            rec.status = STATUS_FAILED
            rec.reason = f"fit did not converge: {str(res.message).strip().splitlines()[0]}"
            return
        if s.errors != "none":
            # conf: profile-likelihood bounds of kT (the mapped quantity);
            # norm bounds from the covariance matrix at the best fit unless
            # conf_norm, or unless the covariance matrix gives none. Sherpa's
            # conf search falls back to bisection for norm and costs about
            # four times the kT search (see benchmarks/fit.py).
            norm_methods = ["covar"]
            if s.errors == "conf":
                norm_methods = ["conf"] if s.conf_norm else ["covar", "conf"]
            plan = [("kT", self.kT_par, [s.errors]), ("norm", self.norm_par, norm_methods)]
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
                # conf may find a better minimum and refit: bounds are
                # relative to the best fit it ends at.
                val = float(err.parvals[0])
                bounds[name] = (math.nan if lo is None else val + float(lo),
                                math.nan if hi is None else val + float(hi))
                missing += [f"{name} {side}" for side, b in (("lower", lo), ("upper", hi))
                            if b is None]
            rec.kT, rec.norm = float(self.kT_par.val), float(self.norm_par.val)
            rec.stat = float(fitter.calc_stat())
            (rec.kT_lo, rec.kT_hi), (rec.norm_lo, rec.norm_hi) = bounds["kT"], bounds["norm"]
            if missing:
                rec.status = STATUS_FAILED
                rec.reason = f"{s.errors}: {', '.join(missing)} bound not found"
                return
        rec.status = STATUS_OK


def fit_region(fitter: RegionFitter, spectra: RegionSpectra, region_id: int) -> FitRecord:
    """Extract and fit one region of the table; never raises for a bad region."""
    t0 = time.perf_counter()
    try:
        sp = spectra.spectra(region_id)
    except Exception as exc:
        rec = FitRecord(fitter.nobs, status=STATUS_FAILED, reason=failure_reason(exc))
        rec.fit_seconds = time.perf_counter() - t0
        return rec
    rec = fitter.fit(sp)
    rec.fit_seconds = time.perf_counter() - t0
    return rec


@dataclass
class RecordBatch:
    """Fit records of several regions as columns (what workers send back).

    All arrays have length ``n`` (the batch size); ``counts`` and
    ``bkg_counts`` have shape (n, nobs).
    """

    region_id: np.ndarray
    kT: np.ndarray
    kT_lo: np.ndarray
    kT_hi: np.ndarray
    norm: np.ndarray
    norm_lo: np.ndarray
    norm_hi: np.ndarray
    stat: np.ndarray
    dof: np.ndarray
    counts: np.ndarray
    bkg_counts: np.ndarray
    status: np.ndarray
    reason: list = field(default_factory=list)
    fit_seconds: np.ndarray = None
    worker: np.ndarray = None

    FLOAT_FIELDS = ("kT", "kT_lo", "kT_hi", "norm", "norm_lo", "norm_hi", "stat")

    def __len__(self) -> int:
        return int(self.region_id.shape[0])

    @classmethod
    def from_records(cls, region_ids, records: list[FitRecord], nobs: int,
                     worker: int = 0) -> "RecordBatch":
        n = len(records)
        cols = {name: np.array([getattr(r, name) for r in records], dtype=np.float64)
                for name in cls.FLOAT_FIELDS}
        return cls(region_id=np.asarray(region_ids, dtype=np.int64), **cols,
                   dof=np.array([r.dof for r in records], dtype=np.int64),
                   counts=(np.array([r.counts for r in records], dtype=np.int64)
                           .reshape(n, nobs)),
                   bkg_counts=(np.array([r.bkg_counts for r in records], dtype=np.int64)
                               .reshape(n, nobs)),
                   status=np.array([r.status for r in records], dtype=np.int8),
                   reason=[r.reason for r in records],
                   fit_seconds=np.array([r.fit_seconds for r in records], dtype=np.float64),
                   worker=np.full(n, worker, dtype=np.int16))
