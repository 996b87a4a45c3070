"""Template fit engine: one region's fit as a 1-D profile-likelihood problem.

With nH, abundance and redshift frozen, the folded model of an observation
is ``norm * exposure * r(kT)``: the count rate per unit norm ``r`` (counts
s^-1 per channel per unit norm) depends on kT alone and the norm enters
linearly. So ``r`` is tabulated once per run and observation on a grid in
``ln kT``, with the same Sherpa/XSPEC model objects and the same ARF/RMF
folding as :class:`hpcxt.fit.RegionFitter`, and each region is then fitted
without Sherpa:

* the norm is profiled exactly at every kT: closed form for ``cstat`` and
  ``chi2gehrels`` (weighted least squares, norm >= 0), a safeguarded Newton
  solve for ``wstat`` (whose per-bin background Sherpa profiles
  analytically; the statistic is convex in the norm);
* kT by a bracketed search on the profile statistic over ``ln kT``: descent
  from ``kT_init`` with doubling steps to a sign change of the profile's
  derivative (exact, by the envelope theorem), then safeguarded
  cubic-Hermite steps inside the bracket;
* kT bounds where the profile rises by ``error_sigma**2`` above its minimum
  (what Sherpa's ``conf`` computes), by Newton/regula-falsi steps inside a
  bracket;
* norm bounds the same way: the norm's profile over kT crosses the level
  ``min + error_sigma**2`` at the extreme norms of the level curve
  ``stat(kT, norm) = min + error_sigma**2`` (N is inside the interval iff
  some kT has ``stat(kT, N) <= level``; for each kT that set of N is an
  interval because the statistic is convex in N). The extremes are found
  where the level curve's norm has zero derivative in kT (secant steps in a
  sign bracket).

A result is certified unless the minimum or a bound lies at the edge of
``kT_range``, a bound is not found, a search does not converge, the norm
sits at its limit 0, a bound search finds a lower minimum, or a jump of the
model in kT makes Sherpa's answer depend on its optimiser's steps: the
minimum or a kT bound on a jump; a lower statistic beyond a jump (levmar
may end in that basin); a jump between
``kT_init`` and the minimum before which the profile comes within
:data:`DESCENT_MARGIN` of the minimum (levmar may stop there); the profile
back below a bound's level beyond a jump (the kT within the level are not
one interval); a norm extreme on or across a jump from the best fit
(Sherpa's conf on the norm refits kT locally, and its covar fails near
jumps). Uncertified regions are meant to be refitted with Sherpa by the
caller. Measured on simulated 8-18 keV regions around xsbremss's jump at
13.58 keV (two seeds of 150): about half are certified, and every certified
one is within 0.02 sigma of Sherpa's conf on both parameters.

Where the jump is the only doubt (:data:`PATH_FLAGS`), the templates are
still right; what is unknown is Sherpa's path. :class:`FoldedCounts` gives
Sherpa's own fit and error search the templates' model counts
(:func:`hpcxt.fit.tabulate_statistic`), so it takes Sherpa's steps at about
a tenth of the cost; where only a norm bound is in doubt
(:attr:`TemplateResult.norm_path_only`), only Sherpa's ``covar`` of the
norm runs there, at the template fit (:mod:`hpcxt.engines`). On the demo's
120 such regions 6-10 ms each on average against 135 ms on the folded model,
all within 0.009 sigma of that answer.

The statistics are Sherpa's definitions term by term (see
:func:`statistic_value`) on the grouped, noticed bins, with Sherpa's dof
convention (bins minus the 2 free parameters).

Measured (benchmarks/template_fit.py, tests/test_template.py)
-------------------------------------------------------------
* Statistics: equal to Sherpa's ``calc_stat`` for the same model counts to
  3e-15 relative (wstat, cstat, chi2gehrels; grouped and not; empty source
  and background channels).
* Speed, one core: two observations with 1024-channel responses, about
  2,580 counts, W-stat grouped to about 35 bins, conf bounds on kT and
  norm: about 5,300 fits per CPU-second including the grouping, against
  5.1 for RegionFitter with conf on both and 19 with its default (conf on
  kT, covar on norm).
* Agreement with Sherpa (288 regions: 500-10,000 counts, kT 1-15 keV, one
  and two observations, sparse and rich backgrounds, three statistics;
  2026-12-01): where Sherpa succeeds and the engine certifies (229), best
  fit and the four bounds are within 0.1 sigma in 100% (largest difference
  0.025 sigma). 26 of the uncertified go to Sherpa because a jump of
  xsbremss makes its answer path-dependent (before that rule 241 were
  certified and 1.2% of them differed, Sherpa's optimiser or its conf on
  the norm stopping at the jump at 13.58 keV).

Not done here: a free abundance (the design's template pair), a global
scan for a second profile minimum (like Sherpa's fit, the search is local
from ``kT_init``), and xsapec (no AtomDB here: its kinks at the tabulated
temperatures would be refined by the build's check, untested).

API
---
``templates = build_templates(settings, responses, band_masks=None)``
    Once per run, on every worker (see :class:`Templates`: about 0.45 s of
    CPU and 9 MB per 1024-channel observation).
``result = fit_profile(templates, spectra, statistic, groupings=None,
kT_range=None, error_sigma=1.0, errors="conf", kT_init=8.0)``
    One region; ``spectra`` are :class:`hpcxt.fit.ObsSpectrum` (the used
    observations), ``groupings`` the OGIP grouping flags of each (or None,
    e.g. from :meth:`hpcxt.fit.RegionFitter._plan_statistic`). Returns a
    :class:`TemplateResult`.
``statistic_value(statistic, model_counts, counts, bkg_counts, exposure,
bkg_scale)``
    Sherpa's statistic for given grouped model counts.
``group_band(values, grouping, band)``
    Sums of a channel array over the groups inside the band.
``group_counts(band, counts, min_counts, bkg_counts, min_bkg)``
    (from :mod:`hpcxt.spectra`) :func:`hpcxt.spectra.group_min_counts`
    compiled (the W-stat grouping of a region costs more than its template
    fit otherwise).

Interpolation
-------------
Each channel's rate is a cubic spline (not-a-knot) in ``ln kT``; grouping
commutes with it, and evaluating it needs no transcendental function. The
grid starts with steps of :data:`GRID_STEP` in ln kT (half that below
``energy_range[0] / 2``, where the band sees only the exponential tail) and
every run checks the spline against Sherpa at the midpoint of every
interval, halving intervals that are off by more than :data:`JUMP_TOL`.
XSPEC's ``bremss`` is not smooth in kT: it jumps by 0.3-3% at 0.1358,
0.5432, 13.58 and 54.32 keV (where its Gaunt-factor table changes regime;
the build finds such jumps by trisection and breaks the spline there) and by
up to 1.4e-4 at about 500 further temperatures below 5 keV (its table
steps), which no smooth interpolant follows. Measured in
tests/test_template.py at 500 off-grid kT over 0.08-64 keV, two responses
(relative error of a channel: |interpolated - Sherpa| / Sherpa, over the
channels with at least :data:`SIGNIFICANT` of the band's largest rate at
that kT): at most 7.8e-5 for kT >= 1 keV (6.5e-5 above 1.5 keV, 1.8e-5
above 5 keV) and 1.6e-4 below 1 keV, where the model's own steps are
1.4e-4; count-weighted (sum of |difference| over sum of rates) at most
8.4e-5 everywhere.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field

import numpy as np

from .compiled import entry, njit

from .spectra import group_counts  # noqa: F401  (part of this module's API)

#: Step of the starting grid in ln(kT).
GRID_STEP = 0.02
#: An interval whose midpoint is off by more than this (relative, in any
#: significant channel) is halved; one narrower than MIN_STEP that still is
#: is searched for a jump of the model, and the spline is broken there.
JUMP_TOL = 2e-4
#: Channels whose rate is at least this fraction of their observation's
#: largest rate at that kT are the ones checked (the others carry no counts).
SIGNIFICANT = 1e-6
#: Narrowest interval (ln kT) refined before looking for a jump in it.
MIN_STEP = 1e-4
#: Width (ln kT) to which a jump of the model is located.
JUMP_WIDTH = 1e-10
#: A best fit or bound closer than this (ln kT) to a jump is not certified.
BREAK_GUARD = 1e-5
#: A minimum beyond a jump of the model (seen from ``kT_init``) is not
#: certified where the profile just before the jump is within this much
#: (statistic units, whatever ``error_sigma``) of it: a local optimiser may
#: stop at the jump.
DESCENT_MARGIN = 0.25
#: Offset (ln kT) from a jump at which the pieces on either side are evaluated.
BREAK_SIDE = 1e-9
#: Sherpa's ``conf`` accepts as a bound any point where the profile is
#: within this much (statistic units) of the level (its ``eps``, which
#: ``zeroin`` takes as its tolerance in the statistic): a profile that comes
#: this close to the level just before a jump, and crosses only beyond it,
#: may have its bound reported at the jump.
CONF_EPS = 0.01
#: Sherpa's ``trunc_value`` (sherpa.rc, statistics section): replaces a
#: non-positive model in cstat; wstat uses it as the *logarithm* of a
#: non-positive argument.
TRUNC_VALUE = 1e-25

STAT_CODES = {"wstat": 0, "cstat": 1, "chi2gehrels": 2}
_WSTAT, _CSTAT, _CHI2 = 0, 1, 2
ERRORS = {"none": 0, "conf": 1, "covar": 2}

# Reasons a region is not certified (bit flags set by the kernel).
_F_KT_EDGE = 1
_F_KT_LO_OPEN = 2
_F_KT_HI_OPEN = 4
_F_NORM_LO_OPEN = 8
_F_NORM_HI_OPEN = 16
_F_NOT_CONVERGED = 32
_F_NORM_ZERO = 64
_F_BETTER_MIN = 128
_F_NORM_BOUND_EDGE = 256
_F_AT_BREAK = 512
_F_NO_DOF = 1024
_F_DESCENT_STOPS = 2048
_F_LEVEL_SPLIT = 4096
_F_NORM_ACROSS = 8192
_F_LOWER_BEYOND_JUMP = 16384
_FLAG_TEXT = {
    _F_KT_EDGE: "kT minimum at the edge of kT_range",
    _F_KT_LO_OPEN: "kT lower bound not found inside kT_range",
    _F_KT_HI_OPEN: "kT upper bound not found inside kT_range",
    _F_NORM_LO_OPEN: "norm lower bound not found",
    _F_NORM_HI_OPEN: "norm upper bound not found",
    _F_NOT_CONVERGED: "search did not converge",
    _F_NORM_ZERO: "norm at its lower limit 0",
    _F_BETTER_MIN: "bound search found a lower minimum",
    _F_NORM_BOUND_EDGE: "norm bound reached at the edge of kT_range",
    _F_AT_BREAK: "best fit or a bound at a jump of the model in kT",
    _F_NO_DOF: "no degrees of freedom (at most 2 bins)",
    _F_DESCENT_STOPS: "a local fit from kT_init may stop at a jump of the model short of the "
                      "minimum",
    _F_LEVEL_SPLIT: "the statistic drops back below a bound's level beyond a jump of the model",
    _F_NORM_ACROSS: "a norm bound lies on or across a jump of the model",
    _F_LOWER_BEYOND_JUMP: "a lower statistic beyond a jump of the model, where a local fit "
                          "may end",
}

#: Reasons that only say Sherpa's answer depends on its optimiser's path
#: across a jump of the model: the template fit is sound, but which basin,
#: crossing or norm extreme Sherpa reports depends on its steps. Such a
#: region is refitted by Sherpa's own fit and error search on the
#: templates (:class:`FoldedCounts`), which takes Sherpa's steps.
PATH_FLAGS = (_F_AT_BREAK | _F_DESCENT_STOPS | _F_LEVEL_SPLIT | _F_NORM_ACROSS
              | _F_LOWER_BEYOND_JUMP)

# Rows of the per-bin array the kernel works on.
_S, _B, _TS, _TB, _D, _WT, _K = range(7)


# --------------------------------------------------------------------------
# templates


@dataclass
class ObsTemplate:
    """Tabulated folded model of one observation.

    Attributes
    ----------
    band : slice
        The channels (0-based columns of the RMF) inside the energy range;
        the template covers exactly these, in order.
    knots : ndarray, shape (n_knots,)
        Grid nodes, ln(kT / keV), increasing (shared by all observations).
    coef : ndarray, shape (n_knots - 1, 4, n_band)
        Piecewise-cubic coefficients of the rate (Sherpa's folded count rate
        per unit norm, counts s^-1 per channel per unit norm), a view into
        :attr:`Templates.coef`: on interval ``j``,
        ``rate = ((c[j,0] t + c[j,1]) t + c[j,2]) t + c[j,3]`` with
        ``t = ln kT - knots[j]``.
    """

    band: slice
    knots: np.ndarray
    coef: np.ndarray
    _dips: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def n_band(self) -> int:
        return self.band.stop - self.band.start

    @property
    def dips(self) -> np.ndarray:
        """Per interval, whether some channel's cubic is negative in it
        (:func:`cubic_dips_below_zero`; computed on first use)."""
        if self._dips is None:
            self._dips = cubic_dips_below_zero(self.knots, self.coef)
        return self._dips

    @property
    def kT_nodes(self) -> np.ndarray:
        """Grid temperatures, keV."""
        return np.exp(self.knots)

    def rate_at(self, kT) -> np.ndarray:
        """Interpolated count rate per unit norm, counts s^-1 per channel.

        Parameters
        ----------
        kT : float or array_like, shape (n,)
            Temperatures, keV.

        Returns
        -------
        ndarray, shape (n_band,) or (n, n_band)
        """
        return _eval_pieces(self.knots, self.coef, np.log(np.asarray(kT, dtype=np.float64)))


def cubic_dips_below_zero(knots, coef) -> np.ndarray:
    """Whether any channel's cubic goes below 0 inside each interval.

    Parameters
    ----------
    knots : ndarray (n_knots,)
        ln(kT / keV).
    coef : ndarray (n_knots - 1, 4, n_channel)
        Piecewise-cubic coefficients in ``t = ln kT - knots[j]``.

    Returns
    -------
    ndarray (n_knots - 1,) bool
        True where the minimum over ``0 <= t <= knots[j+1] - knots[j]`` (at
        the ends or where the derivative vanishes) is negative for some
        channel: there a rate is clipped at 0 channel by channel.
    """
    a3, a2, a1, a0 = (coef[:, i, :] for i in range(4))
    h = np.diff(knots)[:, None]

    def value(t):
        return ((a3 * t + a2) * t + a1) * t + a0

    low = np.minimum(a0, value(h))
    with np.errstate(divide="ignore", invalid="ignore"):
        root = np.sqrt(a2 * a2 - 3.0 * a3 * a1)  # NaN: no turning point
        for t in ((-a2 + root) / (3.0 * a3), (-a2 - root) / (3.0 * a3),
                  np.where(a3 == 0.0, -a1 / (2.0 * a2), np.nan)):
            inside = (t > 0.0) & (t < h)
            low = np.where(inside, np.minimum(low, value(np.where(inside, t, 0.0))), low)
    return (low < 0.0).any(axis=1)


def _eval_pieces(knots, coef, u):
    """Piecewise cubics at u (scalar or (n,)): shape (m,) or (n, m)."""
    j = np.clip(np.searchsorted(knots, u, side="right") - 1, 0, coef.shape[0] - 1)
    t = (u - knots[j])[..., None]
    c = coef[j]
    return ((c[..., 0, :] * t + c[..., 1, :]) * t + c[..., 2, :]) * t + c[..., 3, :]


@dataclass
class Templates:
    """The folded models of all observations of a run, on one kT grid.

    Built by :func:`build_templates`, once per run. They depend only on the
    fit settings (model, frozen parameters, kT and energy ranges) and the
    responses, and the XSPEC evaluation is deterministic, so each worker
    builds its own copy, or one worker of each node builds one into shared
    memory for the node's ranks (:func:`templates_layout`, used by
    :mod:`hpcxt.stages.fit`). Measured for
    two 1024-channel ACIS-like responses (1070 energies, 501 band channels
    each) and ``xsphabs*xsbremss`` over 0.08-64 keV: 0.9 s of CPU for both
    (about 1580 kT values, half of them for the accuracy check, at 0.19 ms
    of Sherpa folding per observation each; 558 knots) and 8.9 MB per
    observation (benchmarks/template_fit.py prints both).

    Attributes
    ----------
    obs : list of ObsTemplate
        One per observation, in bundle order.
    knots : ndarray, shape (n_knots,)
        Grid nodes, ln(kT / keV).
    coef : ndarray, shape (n_knots - 1, 4, n_total)
        The observations' ``coef`` side by side (channels of observation
        ``k`` at ``offsets[k]:offsets[k+1]``).
    offsets : ndarray, shape (n_obs + 1,), int64
    breaks : ndarray, shape (n_breaks,)
        ln(kT / keV) of the model's jumps (the spline is broken there).
    check_error : float
        Largest relative error of an interpolated rate at the build's own
        check points (interval midpoints; channels of at least
        :data:`SIGNIFICANT` of their observation's largest rate).
    n_evals : int
        Folded-model evaluations made per observation.
    build_seconds : float
        Wall time of the build, s.
    """

    obs: list
    knots: np.ndarray
    coef: np.ndarray
    offsets: np.ndarray
    breaks: np.ndarray
    check_error: float
    n_evals: int = 0
    build_seconds: float = 0.0

    @property
    def kT_range(self) -> tuple:
        """First and last grid node, keV."""
        return (float(np.exp(self.knots[0])), float(np.exp(self.knots[-1])))

    @property
    def nbytes(self) -> int:
        """Memory held, bytes (the observations' coefficients are views)."""
        return int(self.coef.nbytes + self.knots.nbytes)


def templates_layout(templates: Templates) -> dict:
    """``name -> (shape, dtype)`` of the arrays that hold ``templates``
    (for a node's shared-memory window, :mod:`hpcxt.shared`)."""
    return {"knots": (templates.knots.shape, np.float64),
            "coef": (templates.coef.shape, np.float64),
            "offsets": (templates.offsets.shape, np.int64),
            "breaks": (templates.breaks.shape, np.float64),
            "bands": ((len(templates.obs), 2), np.int64),
            "meta": ((3,), np.float64)}


def templates_to_arrays(templates: Templates, arrays) -> None:
    """Write ``templates`` into the arrays of :func:`templates_layout`."""
    for name in ("knots", "coef", "offsets", "breaks"):
        arrays[name][...] = getattr(templates, name)
    arrays["bands"][...] = [(o.band.start, o.band.stop) for o in templates.obs]
    arrays["meta"][...] = (templates.check_error, templates.n_evals, templates.build_seconds)


def templates_from_arrays(arrays) -> Templates:
    """The :class:`Templates` held in the arrays of :func:`templates_layout`
    (views: nothing is copied)."""
    coef, offsets = arrays["coef"], arrays["offsets"]
    obs = [ObsTemplate(band=slice(int(a), int(b)), knots=arrays["knots"],
                       coef=coef[:, :, offsets[k]:offsets[k + 1]])
           for k, (a, b) in enumerate(arrays["bands"])]
    check_error, n_evals, seconds = (float(v) for v in arrays["meta"])
    return Templates(obs=obs, knots=arrays["knots"], coef=coef, offsets=offsets,
                     breaks=arrays["breaks"], check_error=check_error, n_evals=int(n_evals),
                     build_seconds=seconds)


def band_slice(band) -> slice:
    """The contiguous run of True in a channel mask, as a slice."""
    if isinstance(band, slice):
        return band
    idx = np.flatnonzero(np.asarray(band, dtype=bool))
    if idx.size == 0 or idx[-1] - idx[0] + 1 != idx.size:
        raise ValueError("the band must be one non-empty run of channels")
    return slice(int(idx[0]), int(idx[-1]) + 1)


def _probe(response):
    """A DataPHA of zeros (exposure 1 s) with this response's ARF and RMF."""
    from .fit import sherpa_probe
    return sherpa_probe("tmpl", response)


def energy_band(settings, response) -> np.ndarray:
    """Channels Sherpa notices for ``settings.energy_range``, shape (n_channel,), bool."""
    probe, _ = _probe(response)
    probe.set_analysis("energy")
    probe.notice(*settings.energy_range)
    return np.asarray(probe.get_mask(), dtype=bool).copy()


class ModelRates:
    """Sherpa's folded count rate per unit norm of each observation at any kT.

    The model is :func:`hpcxt.models.make_model` of ``settings``, folded by
    Sherpa's ``Response1D`` through a ``DataPHA`` with exposure 1 s that
    carries the observation's ARF and RMF: the path by which
    :class:`hpcxt.fit.RegionFitter` evaluates it. Results are cached by kT.

    Parameters
    ----------
    settings : hpcxt.fit.FitSettings
    responses : list of hpcxt.io.bundle.Response
    bands : list of slice
        Channels kept per observation.
    """

    def __init__(self, settings, responses, bands):
        from sherpa.astro.instrument import Response1D

        from .models import make_model

        self.model, self.kT_par, _ = make_model(
            settings.model, settings.nh, settings.abundance, settings.redshift,
            kT=settings.kT_init, norm=1.0, apec_root=settings.apec_root, name="tmpl",
            abundance_table=settings.abundance_table)
        self.folded = []
        for resp, band in zip(responses, bands):
            probe, channel = _probe(resp)
            self.folded.append((Response1D(probe)(self.model), channel, band))
        self.cache: dict = {}

    def __call__(self, u: float) -> list:
        """Rates at ln(kT / keV) = u: one (n_band_k,) array per observation."""
        from .fit import _quiet

        u = float(u)
        hit = self.cache.get(u)
        if hit is None:
            self.kT_par.val = math.exp(u)
            with _quiet():
                hit = [np.asarray(f(ch), dtype=np.float64)[band].copy()
                       for f, ch, band in self.folded]
            self.cache[u] = hit
        return hit


def _piecewise_coef(knots, values, gaps) -> np.ndarray:
    """Not-a-knot cubic splines of ``values`` (n, m) in ``knots``, broken at gaps.

    ``gaps`` holds the indices j of intervals [knots[j], knots[j+1]] that
    contain a jump: the splines end on either side, and the interval takes
    the left spline's polynomial continued. Returns (n - 1, 4, m).
    """
    from scipy.interpolate import CubicSpline

    n, m = values.shape
    coef = np.empty((n - 1, 4, m))
    start = 0
    for end in sorted(gaps) + [n - 1]:  # a segment covers knots[start..end]
        if end > start:
            spl = CubicSpline(knots[start:end + 1], values[start:end + 1], axis=0,
                              bc_type="not-a-knot")
            coef[start:end] = np.moveaxis(spl.c, 0, 1)
        if end < n - 1:  # the gap interval [end, end + 1]
            if end == start:
                coef[end] = 0.0
                coef[end, 3] = values[end]
            else:
                a3, a2, a1, a0 = coef[end - 1]
                d = knots[end] - knots[end - 1]
                coef[end] = (a3, 3 * a3 * d + a2, (3 * a3 * d + 2 * a2) * d + a1,
                             ((a3 * d + a2) * d + a1) * d + a0)
        start = end + 1
    return coef


def _significant(rates) -> np.ndarray:
    """Channels of at least SIGNIFICANT of their observation's largest rate."""
    return np.concatenate([r >= SIGNIFICANT * r.max() if r.max() > 0 else r > 0
                           for r in rates])


def _locate_jump(rates_at, a: float, b: float):
    """Trisect [a, b] (ln keV) down to JUMP_WIDTH around a jump of the rates.

    Of three equal sub-intervals the jump is in the one across which the
    rates change differently from across the other two (a smooth change is
    the same in all three to second order). Returns (a, b, size): the final
    interval and the largest relative change of a significant channel's rate
    across it (about 1e-7, XSPEC's single-precision rounding, where there is
    no jump).
    """
    def logs(u):
        return np.log(np.maximum(np.concatenate(rates_at(u)), 1e-300))

    sig = _significant(rates_at(a)) | _significant(rates_at(b))
    la, lb = logs(a)[sig], logs(b)[sig]
    while b - a > JUMP_WIDTH:
        w = (b - a) / 3.0
        m1, m2 = a + w, b - w
        l1, l2 = logs(m1)[sig], logs(m2)[sig]
        change = (l1 - la, l2 - l1, lb - l2)
        odd = [np.abs(change[k] - 0.5 * (change[(k + 1) % 3] + change[(k + 2) % 3])).max()
               for k in range(3)]
        k = int(np.argmax(odd))
        a, la, b, lb = ((a, la, m1, l1), (m1, l1, m2, l2), (m2, l2, b, lb))[k]
    return a, b, float(np.expm1(np.abs(lb - la).max()))


def _check(rates_at, knots, coef, gaps, offsets):
    """Relative error of the spline at every interval midpoint, shape (n - 1,).

    Largest over each observation's significant channels (rate at least
    SIGNIFICANT of its largest at that kT); 0 for the gap intervals.
    """
    mids = 0.5 * (knots[:-1] + knots[1:])
    interp = _eval_pieces(knots, coef, mids)
    direct = np.array([np.concatenate(rates_at(m)) for m in mids])
    sig = np.zeros(direct.shape, dtype=bool)
    for o0, o1 in zip(offsets[:-1], offsets[1:]):
        block = direct[:, o0:o1]
        sig[:, o0:o1] = block >= SIGNIFICANT * block.max(axis=1, keepdims=True)
    sig &= direct > 0
    rel = np.abs(interp / np.where(sig, direct, 1.0) - 1.0)
    err = np.where(sig, rel, 0.0).max(axis=1)
    err[list(gaps)] = 0.0
    return err


def build_templates(settings, responses, band_masks=None, step: float = GRID_STEP,
                    tol: float = JUMP_TOL) -> Templates:
    """Tabulate each observation's folded model on an adaptive grid in ln kT.

    Starts from a uniform grid over ``settings.kT_range`` (step ``step`` in
    ln kT, half that below ``energy_range[0] / 2``), compares the spline with
    Sherpa at the midpoint of every interval and halves the intervals where
    a significant channel is off by more than ``tol``. An interval narrower
    than :data:`MIN_STEP` that still fails is narrowed down to
    :data:`JUMP_WIDTH` around the rates' jump (:func:`_locate_jump`); where
    the change across it exceeds ``tol`` the spline is broken there.

    Parameters
    ----------
    settings : hpcxt.fit.FitSettings
        Model, frozen parameters, ``kT_range`` (the grid spans it) and
        ``energy_range``.
    responses : list of hpcxt.io.bundle.Response
        One per observation, in bundle order.
    band_masks : list of ndarray (n_channel,) bool, optional
        Channels fitted per observation (what Sherpa notices for
        ``settings.energy_range``, :func:`energy_band`, when not given).
        Must be contiguous.
    step : float
        Starting grid step in ln kT.
    tol : float
        Largest relative error accepted at the check points.

    Returns
    -------
    Templates
    """
    t0 = time.perf_counter()
    lo, hi = (float(v) for v in settings.kT_range)
    if not 0 < lo < hi:
        raise ValueError(f"kT_range must be 0 < lo < hi, got {settings.kT_range}")
    if band_masks is None:
        band_masks = [energy_band(settings, r) for r in responses]
    bands = [band_slice(b) for b in band_masks]
    rates_at = ModelRates(settings, responses, bands)
    knots, probes = _start_knots(settings, lo, hi, step)
    for k in range(len(bands)):
        if not max(rates_at(u)[k].max() for u in probes) > 0:
            raise ValueError(f"model {settings.model!r} gives no counts in the band of "
                             f"observation {k} (xsapec needs AtomDB files)")
    offsets = np.cumsum([0] + [b.stop - b.start for b in bands]).astype(np.int64)
    kn, coef, gaps, err = _refine_grid(rates_at, knots, offsets, tol)
    obs = [ObsTemplate(band=band, knots=kn, coef=coef[:, :, offsets[k]:offsets[k + 1]])
           for k, band in enumerate(bands)]
    breaks = np.array([0.5 * (kn[j] + kn[j + 1]) for j in gaps])
    return Templates(obs=obs, knots=kn, coef=coef, offsets=offsets, breaks=breaks,
                     check_error=float(err.max()), n_evals=len(rates_at.cache),
                     build_seconds=time.perf_counter() - t0)


def _start_knots(settings, lo: float, hi: float, step: float):
    """The starting grid in ln kT over ``[lo, hi]`` keV, finer below half the band's edge.

    Returns
    -------
    knots : set of float
        ln kT (kT in keV) of the starting knots.
    probes : (float, float, float)
        ln kT of the grid's ends and of where the fine part stops: where a
        model with counts in the band must give some.
    """
    u_lo, u_hi = math.log(lo), math.log(hi)
    # The band sees only the exponential tail of a spectrum much cooler than
    # its lower edge, where the rates are steepest in ln kT.
    u_fine = min(max(math.log(0.5 * float(settings.energy_range[0])), u_lo), u_hi)
    knots = set(np.linspace(u_lo, u_fine, max(2, int(math.ceil((u_fine - u_lo) / (0.5 * step))) + 1)))
    knots |= set(np.linspace(u_fine, u_hi, max(2, int(math.ceil((u_hi - u_fine) / step)) + 1)))
    return knots, (u_lo, u_fine, u_hi)


def _refine_grid(rates_at, knots: set, offsets: np.ndarray, tol: float):
    """Halve the failing intervals and break the spline at jumps until every check passes.

    Parameters
    ----------
    rates_at : ModelRates
        Folded model rates (counts s^-1 per channel) at a ln kT.
    knots : set of float
        Starting knots, ln kT; grown in place.
    offsets : ndarray (n_obs + 1,) int64
        Where each observation's channels start in the concatenated rates.
    tol : float
        Largest relative error accepted at the check points.

    Returns
    -------
    kn : ndarray (n_knots,) float64
        Final knots, ln kT, sorted.
    coef : ndarray
        Spline coefficients (:func:`_piecewise_coef`).
    gaps : list of int
        Intervals the spline is broken across (a jump inside).
    err : ndarray (n_knots - 1,) float64
        Relative error at each interval's check point.
    """
    gap_left: set = set()  # knots that start an interval holding a jump
    frozen: set = set()    # knots that start a narrow interval with no jump in it
    for _ in range(100):
        kn = np.array(sorted(knots))
        values = np.array([np.concatenate(rates_at(u)) for u in kn])
        gaps = [j for j, u in enumerate(kn[:-1]) if u in gap_left]
        coef = _piecewise_coef(kn, values, gaps)
        err = _check(rates_at, kn, coef, gaps, offsets)
        bad = [j for j in np.flatnonzero(err > tol) if kn[j] not in frozen]
        if not bad:
            break
        narrow = [j for j in bad if kn[j + 1] - kn[j] < MIN_STEP]
        if narrow:
            # Locate jumps first: a jump spoils the spline of its whole
            # segment, so the other failures wait for the next round.
            for j in narrow:
                ja, jb, size = _locate_jump(rates_at, kn[j], kn[j + 1])
                if size > tol:
                    knots.update((ja, jb))
                    gap_left.add(ja)
                else:
                    frozen.add(kn[j])
            continue
        knots.update(0.5 * (kn[j] + kn[j + 1]) for j in bad)
    else:
        raise RuntimeError("template grid did not converge")
    return kn, coef, gaps, err


# --------------------------------------------------------------------------
# statistics: Sherpa's definitions, one grouped bin at a time


@njit(cache=True)
def _wstat_bin(M, S, B, ts, tb, K, value):
    """W-stat term of one bin (doubled, as Sherpa sums) and derivatives in M.

    ``M`` is the model's source counts, ``S``/``B`` the source/background
    counts, ``ts`` the source exposure, ``tb`` the background exposure times
    the background/source BACKSCAL ratio (Sherpa's ``bkg_exp_time``) and
    ``K = S ln S - S + B ln B - B``. Sherpa's special cases for ``S == 0``
    and ``B == 0`` and its use of ``TRUNC_VALUE`` as a logarithm are kept.
    With ``value`` False the term itself (which needs logarithms) is not
    computed. Returns (term, dterm/dM, d2term/dM2).
    """
    T = ts + tb
    m = M / ts
    if S == 0.0:
        w = M - B * math.log(tb / T) if value else 0.0
        return 2.0 * w, 2.0, 0.0
    if B == 0.0:
        if m < S / T:
            w = -tb * m - S * math.log(ts / T) if value else 0.0
            return 2.0 * w, -2.0 * tb / ts, 0.0
        # here M >= S ts / T > 0: Sherpa's truncation cannot apply
        w = M + S * (math.log(S) - math.log(M) - 1.0) if value else 0.0
        return 2.0 * w, 2.0 * (1.0 - S / M), 2.0 * S / (M * M)
    raw = S + B
    Tm = T * m
    tmp1 = Tm - raw
    d = math.sqrt(tmp1 * tmp1 + 4.0 * T * B * m)
    f = (raw - Tm + d) / (2.0 * T)
    mu = M + ts * f
    w = 0.0
    if value:
        lmu = math.log(mu) if mu > 0.0 else TRUNC_VALUE
        lb = math.log(tb * f) if tb * f > 0.0 else TRUNC_VALUE
        w = M + T * f - S * lmu - B * lb + K
    # B > 0 makes f > 0 and mu > 0. With f profiled, dW/dM = 1 - S/mu
    # (envelope theorem), and differentiating dW/df = 0 in M gives
    # d2W/dM2 = S B / (S ts^2 f^2 + B mu^2).
    return 2.0 * w, 2.0 * (1.0 - S / mu), 2.0 * S * B / (S * ts * ts * f * f + B * mu * mu)


@njit(cache=True)
def _cstat_bin(M, S):
    """Cash (cstat) term of one bin (doubled) and derivatives in M."""
    mm = M if M > 0.0 else TRUNC_VALUE
    if S > 0.0:
        return 2.0 * (mm - S + S * math.log(S / mm)), 2.0 * (1.0 - S / mm), 2.0 * S / (mm * mm)
    return 2.0 * mm, 2.0, 0.0


@njit(cache=True)
def _chi2_bin(M, D, wt):
    """chi2 term (M - D)^2 wt and derivatives in M; wt = 1/variance."""
    r = M - D
    return r * r * wt, 2.0 * r * wt, 2.0 * wt


@njit(cache=True)
def _stat_terms(code, M, bins, out):
    """Statistic term of every bin into ``out``; returns their sum."""
    total = 0.0
    for g in range(M.size):
        if code == _WSTAT:
            v = _wstat_bin(M[g], bins[_S, g], bins[_B, g], bins[_TS, g], bins[_TB, g],
                           bins[_K, g], True)[0]
        elif code == _CSTAT:
            v = _cstat_bin(M[g], bins[_S, g])[0]
        else:
            v = _chi2_bin(M[g], bins[_D, g], bins[_WT, g])[0]
        out[g] = v
        total += v
    return total


@njit(cache=True)
def _finish_bins(bins):
    """Fill the derived rows (t_b, chi2 data and weight, W-stat constant).

    On entry rows S, B, TS hold the counts and exposure and row TB the
    background scale (0: no background).
    """
    for g in range(bins.shape[1]):
        S, B, bs = bins[_S, g], bins[_B, g], bins[_TB, g]
        # Gehrels' error 1 + sqrt(N + 0.75), the background's scaled by bs
        # and added in quadrature (Sherpa's chi2gehrels, background subtracted)
        es = 1.0 + math.sqrt(S + 0.75)
        eb = bs * (1.0 + math.sqrt(B + 0.75))
        bins[_D, g] = S - bs * B
        bins[_WT, g] = 1.0 / (es * es + eb * eb)
        bins[_K, g] = ((S * math.log(S) - S if S > 0.0 else 0.0)
                       + (B * math.log(B) - B if B > 0.0 else 0.0))
        bins[_TB, g] = bins[_TS, g] / bs if bs > 0.0 else math.inf


def _bins_from_grouped(S, B, exposure, bkg_scale):
    """The kernel's per-bin array (7, n) from grouped counts."""
    n = np.asarray(S).size
    bins = np.zeros((7, n))
    bins[_S] = S
    if B is not None:
        bins[_B] = B
        bins[_TB] = np.broadcast_to(np.asarray(bkg_scale, dtype=np.float64), (n,))
    bins[_TS] = np.broadcast_to(np.asarray(exposure, dtype=np.float64), (n,))
    _finish_bins(bins)
    return bins


def statistic_value(statistic: str, model_counts, counts, bkg_counts=None, exposure=1.0,
                    bkg_scale=1.0) -> float:
    """Sherpa's statistic for grouped, noticed bins and given model counts.

    Parameters
    ----------
    statistic : {"wstat", "cstat", "chi2gehrels"}
    model_counts : array_like, shape (n,)
        Model source counts per bin (norm * exposure * rate, grouped).
    counts : array_like, shape (n,)
        Source counts per bin.
    bkg_counts : array_like, shape (n,), optional
        Background counts per bin (``wstat``: required; ``chi2gehrels``:
        subtracted when given; ``cstat``: ignored).
    exposure : float or array_like, shape (n,)
        Source exposure of each bin's observation, s (``wstat``).
    bkg_scale : float or array_like, shape (n,)
        Factor turning background counts into expected background counts in
        the source spectrum, of each bin's observation.

    Returns
    -------
    float
        What ``sherpa.stats.<Stat>().calc_stat`` gives for the same data
        set up as :class:`hpcxt.fit.RegionFitter` does.
    """
    code = STAT_CODES[statistic]
    if code == _WSTAT and bkg_counts is None:
        raise ValueError("wstat needs background counts")
    M = np.asarray(model_counts, dtype=np.float64)
    bins = _bins_from_grouped(np.asarray(counts, dtype=np.float64),
                              None if bkg_counts is None or code == _CSTAT
                              else np.asarray(bkg_counts, dtype=np.float64),
                              exposure, bkg_scale)
    return float(_stat_terms(code, M, bins, np.empty(M.size)))


def group_band(values, grouping, band) -> np.ndarray:
    """Sums of ``values`` over the groups of the band's channels.

    Parameters
    ----------
    values : array_like, shape (n_channel,)
    grouping : array_like, shape (n_channel,) or None
        OGIP flags (1 starts a group, -1 continues it); None: no grouping.
        The band's first channel must start a group.
    band : ndarray (n_channel,) bool or slice
        Contiguous noticed channels.

    Returns
    -------
    ndarray, shape (n_groups,)
    """
    sl = band_slice(band)
    v = np.asarray(values, dtype=np.float64)[sl]
    if grouping is None:
        return v.copy()
    starts = np.flatnonzero(np.asarray(grouping)[sl] == 1)
    if starts.size == 0 or starts[0] != 0:
        raise ValueError("the first channel of the band must start a group")
    return np.add.reduceat(v, starts)


# --------------------------------------------------------------------------
# the kernel: profile over the norm, search over ln kT, bounds


@njit(cache=True)
def _prepare_bins(src, bkg, gstart, offsets, used, texp, bscale):
    """Group one region's channels.

    Parameters are the concatenated band channels of all observations
    (``src``, ``bkg`` counts, ``gstart`` 1 where a group starts) and per
    observation ``used``, exposure ``texp`` (s) and ``bscale`` (0: no
    background). Returns ``chan_group`` (bin of each channel, -1 for unused
    observations) and the per-bin array (7, n_bins).
    """
    n_bins = 0
    for k in range(used.size):
        if used[k]:
            for i in range(offsets[k], offsets[k + 1]):
                if gstart[i] == 1 or i == offsets[k]:
                    n_bins += 1
    chan_group = np.full(src.size, -1, dtype=np.int64)
    bins = np.zeros((7, n_bins))
    g = -1
    for k in range(used.size):
        if not used[k]:
            continue
        for i in range(offsets[k], offsets[k + 1]):
            if gstart[i] == 1 or i == offsets[k]:
                g += 1
                bins[_TS, g] = texp[k]
                bins[_TB, g] = bscale[k]
            chan_group[i] = g
            bins[_S, g] += src[i]
            bins[_B, g] += bkg[i]
    _finish_bins(bins)
    return chan_group, bins


@njit(cache=True)
def _rates(u, coef, knots, chan_group, bins, work, second):
    """Model counts per unit norm of every bin at ln kT = u, and u-derivatives.

    Evaluates each channel's cubic (clipped at 0), sums the channels of each
    bin and multiplies by the bin's exposure: ``work[0]`` counts per unit
    norm, ``work[1]`` their derivative in u, ``work[2]`` (only with
    ``second``) the second derivative.
    """
    lo = 0
    hi = coef.shape[0] - 1
    while lo < hi:  # interval with knots[j] <= u (the end ones extrapolate)
        mid = (lo + hi + 1) // 2
        if knots[mid] <= u:
            lo = mid
        else:
            hi = mid - 1
    t = u - knots[lo]
    a3 = coef[lo, 0]
    a2 = coef[lo, 1]
    a1 = coef[lo, 2]
    a0 = coef[lo, 3]
    c = work[0]
    dc = work[1]
    d2c = work[2]
    c[:] = 0.0
    dc[:] = 0.0
    if second:
        d2c[:] = 0.0
    for i in range(chan_group.size):
        g = chan_group[i]
        if g >= 0:
            v = ((a3[i] * t + a2[i]) * t + a1[i]) * t + a0[i]
            if v > 0.0:
                c[g] += v
                dc[g] += (3.0 * a3[i] * t + 2.0 * a2[i]) * t + a1[i]
                if second:
                    d2c[g] += 6.0 * a3[i] * t + 2.0 * a2[i]
    ts = bins[_TS]
    for g in range(c.size):
        c[g] *= ts[g]
        dc[g] *= ts[g]
        if second:
            d2c[g] *= ts[g]


@njit(cache=True)
def _moments(code, bins, work, mom):
    """Sums that make cstat and chi2 closed-form functions of the norm."""
    c = work[0]
    dc = work[1]
    mom[:] = 0.0
    if code == _CSTAT:
        for g in range(c.size):
            S = bins[_S, g]
            mom[0] += c[g]
            mom[1] += S
            mom[3] += dc[g]
            if S > 0.0:
                if c[g] > 0.0:
                    mom[2] += S * (math.log(S) - math.log(c[g]))
                    mom[4] += S * dc[g] / c[g]
                else:  # counts where the model has none (far from any fit)
                    mom[2] = math.inf
        mom[2] -= mom[1]
    elif code == _CHI2:
        for g in range(c.size):
            w = bins[_WT, g]
            D = bins[_D, g]
            mom[0] += w * c[g] * c[g]
            mom[1] += w * c[g] * D
            mom[2] += w * D * D
            mom[3] += w * c[g] * dc[g]
            mom[4] += w * D * dc[g]


@njit(cache=True)
def _stat_N(N, code, bins, work, mom, value):
    """Statistic at norm N (rates already at u): (W, dW/dN, d2W/dN2, dW/du)."""
    if code == _CSTAT:
        # W = 2 (N sum c - sum S ln N + K), K = sum S (ln S - ln c) - sum S
        if N <= 0.0:
            return math.inf, -math.inf, math.inf, 0.0
        return (2.0 * (N * mom[0] - mom[1] * math.log(N) + mom[2]),
                2.0 * (mom[0] - mom[1] / N), 2.0 * mom[1] / (N * N),
                2.0 * (N * mom[3] - mom[4]))
    if code == _CHI2:
        return ((mom[0] * N - 2.0 * mom[1]) * N + mom[2], 2.0 * (mom[0] * N - mom[1]),
                2.0 * mom[0], 2.0 * N * (N * mom[3] - mom[4]))
    c = work[0]
    dc = work[1]
    W = 0.0
    WN = 0.0
    WNN = 0.0
    Wu = 0.0
    for g in range(c.size):
        w, d1, d2 = _wstat_bin(N * c[g], bins[_S, g], bins[_B, g], bins[_TS, g],
                               bins[_TB, g], bins[_K, g], value)
        W += w
        WN += c[g] * d1
        WNN += c[g] * c[g] * d2
        Wu += dc[g] * d1
    return W, WN, WNN, N * Wu


@njit(cache=True)
def _profile_norm(code, bins, work, mom, N0):
    """Norm minimising the statistic at fixed kT (norm >= 0).

    Returns (P, dP/du, N, at_zero): the profile statistic, its derivative
    in ln kT (the partial derivative at the optimum, by the envelope
    theorem), the norm, and whether the optimum is the limit norm = 0.
    """
    if code == _CSTAT:
        if mom[1] <= 0.0:
            return math.inf, 0.0, 0.0, True
        N = mom[1] / mom[0]
        W, WN, WNN, Wu = _stat_N(N, code, bins, work, mom, True)
        return W, Wu, N, False
    if code == _CHI2:
        N = mom[1] / mom[0]
        at_zero = N <= 0.0
        if at_zero:
            N = 0.0
        W, WN, WNN, Wu = _stat_N(N, code, bins, work, mom, True)
        return W, Wu, N, at_zero
    # wstat: convex in N; Newton on dW/dN inside a bracket, without the
    # logarithms until the last pass.
    N = N0
    if not N > 0.0:
        net = 0.0
        tot = 0.0
        for g in range(bins.shape[1]):
            net += bins[_S, g] - bins[_B, g] * bins[_TS, g] / bins[_TB, g]
            tot += work[0, g]
        if not tot > 0.0:  # a model with no counts (far from any fit)
            return math.inf, 0.0, 0.0, False
        N = max(net, 0.1 * bins[_S].sum(), 1.0) / tot
    lo = 0.0
    hi = math.inf
    N_first = N
    for _ in range(200):
        W, WN, WNN, Wu = _stat_N(N, code, bins, work, mom, False)
        if WN > 0.0:
            hi = N
        else:
            lo = N
        Nn = N - WN / WNN if WNN > 0.0 else math.nan
        if not (lo < Nn < hi):
            Nn = 2.0 * N if hi == math.inf else 0.5 * (lo + hi)
        if abs(Nn - N) <= 1e-10 * N:
            # one more (quadratically converged) step, with the value
            W, WN, WNN, Wu = _stat_N(Nn, code, bins, work, mom, True)
            return W, Wu, Nn, False
        if hi < 1e-12 * N_first:
            W, WN, WNN, Wu = _stat_N(0.0, code, bins, work, mom, True)
            return W, Wu, 0.0, True
        N = Nn
    return math.nan, math.nan, N, False


@njit(cache=True)
def _norm_root(side, target, N0, code, bins, work, mom):
    """Norm on one side of the profile optimum where the statistic equals target.

    ``side`` +1: the root above the optimum, -1: below. Returns
    (N, dN/du along the level curve, ok); ok False when the level is not
    crossed (it is below the profile at this kT, or the lower root would
    be at N <= 0).
    """
    if code == _CHI2:
        A, Bq, C = mom[0], mom[1], mom[2]  # W = A N^2 - 2 Bq N + C
        disc = Bq * Bq - A * (C - target)
        if disc < 0.0:
            return math.nan, math.nan, False
        N = (Bq + side * math.sqrt(disc)) / A
        if N <= 0.0:
            return 0.0, math.nan, False
        W, WN, WNN, Wu = _stat_N(N, code, bins, work, mom, True)
        return N, -Wu / WN, True
    ftol = 1e-9 * max(1.0, abs(target))
    N = N0 if N0 > 0.0 else 1.0
    for _ in range(200):
        W, WN, WNN, Wu = _stat_N(N, code, bins, work, mom, True)
        F = W - target
        if side * WN > 0.0:
            # On the root's branch: Newton converges monotonically from
            # outside, and from inside overshoots once to outside.
            if abs(F) <= ftol:
                return N, -Wu / WN, True
            Nn = N - F / WN
            if Nn <= 0.0:
                if N < 1e-12 * N0:
                    return 0.0, math.nan, False  # not crossed above 0
                Nn = 0.1 * N
            if abs(Nn - N) <= 1e-14 * N:
                return N, -Wu / WN, abs(F) <= 1e3 * ftol
            N = Nn
        else:
            # Past the optimum on the other side, or no crossing at all:
            # restart from the profile optimum and the local curvature.
            P, dP, Nopt, at_zero = _profile_norm(code, bins, work, mom, N)
            if not P < target:
                return math.nan, math.nan, False
            W2, WN2, WNN2, Wu2 = _stat_N(Nopt, code, bins, work, mom, False)
            step = math.sqrt(2.0 * (target - P) / WNN2) if WNN2 > 0.0 else 0.1 * Nopt
            N = Nopt + side * step
            if N <= 0.0:
                N = 0.5 * Nopt
    return N, math.nan, False


@njit(cache=True)
def _profile_at(u, st, coef, knots, chan_group, bins, code, work, mom):
    """Profile statistic at u; warm-starts from and updates st[0] (the norm)."""
    _rates(u, coef, knots, chan_group, bins, work, False)
    _moments(code, bins, work, mom)
    P, dP, N, at_zero = _profile_norm(code, bins, work, mom, st[0])
    st[0] = N
    st[1] += 1.0
    return P, dP, N, at_zero


@njit(cache=True)
def _norm_at(u, side, target, N0, st, coef, knots, chan_group, bins, code, work, mom):
    """The level curve's norm on ``side`` at u, and its derivative in u."""
    _rates(u, coef, knots, chan_group, bins, work, False)
    _moments(code, bins, work, mom)
    st[1] += 1.0
    return _norm_root(side, target, N0, code, bins, work, mom)


@njit(cache=True)
def _minimise(uA, uB, u_init, st, coef, knots, chan_group, bins, code, work, mom):
    """Minimum of the profile over [uA, uB] by descent from u_init and bracketing.

    Returns (u, P, N, curvature d2P/du2 estimate, flags).
    """
    flags = 0
    tol_u = 1e-7
    u = min(max(u_init, uA), uB)
    P, dP, N, z = _profile_at(u, st, coef, knots, chan_group, bins, code, work, mom)
    best_u, best_P, best_N, best_z = u, P, N, z
    a, Pa, Da = u, P, dP
    b, Pb, Db = u, P, dP
    direction = 1.0 if dP < 0.0 else -1.0
    step = 0.3
    bracket = dP == 0.0
    while not bracket:
        x = min(max(a + direction * step, uA), uB)
        Px, Dx, Nx, zx = _profile_at(x, st, coef, knots, chan_group, bins, code, work, mom)
        if Px < best_P:
            best_u, best_P, best_N, best_z = x, Px, Nx, zx
        if direction * Dx >= 0.0:
            b, Pb, Db = x, Px, Dx
            bracket = True
        elif x == uA or x == uB:
            flags |= _F_KT_EDGE
            break
        else:
            a, Pa, Da = x, Px, Dx
            step *= 2.0
    curv = 0.0
    if bracket and a != b:
        lo, Plo, Dlo = (a, Pa, Da) if a < b else (b, Pb, Db)
        hi, Phi, Dhi = (b, Pb, Db) if a < b else (a, Pa, Da)
        converged = False
        for _ in range(100):
            w = hi - lo
            # minimiser of the cubic Hermite interpolant on [lo, hi]
            d1 = Dlo + Dhi - 3.0 * (Plo - Phi) / (lo - hi)
            d2 = math.sqrt(max(d1 * d1 - Dlo * Dhi, 0.0))
            den = Dhi - Dlo + 2.0 * d2
            x = hi - w * (Dhi + d2 - d1) / den if den != 0.0 else 0.5 * (lo + hi)
            if not (lo + 0.02 * w <= x <= hi - 0.02 * w):
                x = min(max(x, lo + 0.02 * w), hi - 0.02 * w) if x == x else 0.5 * (lo + hi)
            Px, Dx, Nx, zx = _profile_at(x, st, coef, knots, chan_group, bins, code, work, mom)
            if Px < best_P:
                best_u, best_P, best_N, best_z = x, Px, Nx, zx
            if Dx < 0.0:
                lo, Plo, Dlo = x, Px, Dx
            else:
                hi, Phi, Dhi = x, Px, Dx
            curv = (Dhi - Dlo) / (hi - lo)
            if (curv > 0.0 and abs(Dx) / curv < tol_u) or hi - lo < tol_u:
                converged = True
                break
        if not converged:
            flags |= _F_NOT_CONVERGED
    if best_z:
        flags |= _F_NORM_ZERO
    if not math.isfinite(best_P):
        flags |= _F_NOT_CONVERGED
    return best_u, best_P, best_N, curv, flags


@njit(cache=True)
def _next_break(breaks, a, b):
    """The jump nearest to ``a`` strictly between ``a`` and ``b`` (ln kT), else NaN."""
    best = math.nan
    for x in breaks:
        if min(a, b) < x < max(a, b) and not abs(x - a) >= abs(best - a):
            best = x
    return best


@njit(cache=True)
def _lower_point_flag(breaks, u_best, u):
    """The flag for a statistic below the minimum's found at u.

    On the best fit's side of every jump the minimum was missed; beyond a
    jump it is another basin, which Sherpa's conf ignores but its levmar
    fit may have ended in.
    """
    return _F_BETTER_MIN if math.isnan(_next_break(breaks, u_best, u)) else _F_LOWER_BEYOND_JUMP


@njit(cache=True)
def _descent_stops(u_init, u_best, P_min, margin, breaks, st, coef, knots, chan_group, bins, code,
                   work, mom):
    """Whether a local fit from u_init may stop at a jump before reaching u_best.

    True where, just before a jump on the way from u_init to u_best, the
    profile comes within ``margin`` of the minimum P_min (or below it).
    Sherpa's levmar, descending from ``kT_init``, then stops at the jump or
    steps across it depending on its steps: measured on simulated 8-18 keV
    regions (bremss jumps at 13.58 keV), it stopped there only where the
    profile before the jump was within 0.07 of the minimum's, and crossed
    wherever it was more than 0.1 above.
    """
    side = 1.0 if u_best > u_init else -1.0
    b = _next_break(breaks, u_init, u_best)
    while not math.isnan(b):
        P_near = _profile_at(b - side * BREAK_SIDE, st, coef, knots, chan_group, bins, code,
                             work, mom)[0]
        if P_near < P_min + margin:
            return True
        b = _next_break(breaks, b + side * BREAK_SIDE, u_best)
    return False


@njit(cache=True)
def _level_split(side, u_bound, target, uA, uB, breaks, st, coef, knots, chan_group, bins, code,
                 work, mom):
    """Whether the profile comes back below ``target`` beyond a jump outside u_bound.

    Then the kT within the level are not one interval, and which crossing
    Sherpa's ``conf`` reports (and where its norm search goes) depends on
    its steps. Each piece beyond a jump on ``side`` is checked at its inner
    end, and searched for its minimum where the profile falls outwards.
    """
    end = uB if side > 0.0 else uA
    b = _next_break(breaks, u_bound, end)
    while not math.isnan(b):
        x = b + side * BREAK_SIDE
        P, dP, N, z = _profile_at(x, st, coef, knots, chan_group, bins, code, work, mom)
        if P < target:
            return True
        nb = _next_break(breaks, x, end)
        if side * dP < 0.0:
            e = end if math.isnan(nb) else nb - side * BREAK_SIDE
            lo, hi = (x, e) if side > 0.0 else (e, x)
            P_min = _minimise(lo, hi, x, st, coef, knots, chan_group, bins, code, work, mom)[1]
            if P_min < target:
                return True
        b = nb
    return False


@njit(cache=True)
def _kT_bound(side, u_best, P_min, N_best, delta, sig_u, uA, uB, breaks, st, coef, knots,
              chan_group, bins, code, work, mom):
    """Where the profile first rises by delta on ``side`` of u_best: (u, flags).

    The first crossing outwards, as Sherpa's ``conf`` finds it: the outward
    steps stop on each side of a jump of the model, so that a crossing
    before a jump is never skipped for one beyond it (where the profile
    drops back below the level across the jump, the kT within the level are
    not one interval). A crossing on a jump itself is reported there,
    flagged :data:`_F_AT_BREAK`; so is a crossing beyond a jump where the
    profile just before it comes within :data:`CONF_EPS` of the level,
    which Sherpa's ``conf`` may take for the bound. A lower statistic is flagged, differently
    on the best fit's side of every jump and beyond one
    (:func:`_lower_point_flag`).
    """
    flags = 0
    target = P_min + delta
    inner, F_in = u_best, -delta
    st[0] = N_best
    step = sig_u
    found = False
    xo, F_out, D_out = inner, 0.0, 0.0
    for _ in range(60):  # step outwards until the level is crossed
        xo = min(max(u_best + side * step, uA), uB)
        b = _next_break(breaks, inner, xo)
        while not math.isnan(b):  # look on both sides of each jump on the way
            for near in (b - side * BREAK_SIDE, b + side * BREAK_SIDE):
                Pb, Db, Nb, zb = _profile_at(near, st, coef, knots, chan_group, bins, code,
                                             work, mom)
                if Pb < P_min - 1e-6 * delta:
                    flags |= _lower_point_flag(breaks, u_best, near)
                if Pb - target > 0.0:
                    if near == b - side * BREAK_SIDE:
                        found = True
                        xo, F_out, D_out = near, Pb - target, Db
                        break
                    return b, flags | _F_AT_BREAK
                if near == b - side * BREAK_SIDE and Pb - target > -CONF_EPS:
                    # within conf's tolerance of the level at the jump: Sherpa may
                    # report its bound here, or at the crossing beyond
                    flags |= _F_AT_BREAK
                inner, F_in = near, Pb - target
            if found:
                break
            b = _next_break(breaks, inner, xo)
        if found:
            break
        Px, Dx, Nx, zx = _profile_at(xo, st, coef, knots, chan_group, bins, code, work, mom)
        if Px < P_min - 1e-6 * delta:
            flags |= _lower_point_flag(breaks, u_best, xo)
        F_out, D_out = Px - target, Dx
        if F_out > 0.0:
            found = True
            break
        inner, F_in = xo, F_out
        if xo == uA or xo == uB:
            break
        step *= 2.0
    if not found:
        return math.nan, flags | (_F_KT_LO_OPEN if side < 0 else _F_KT_HI_OPEN)
    return _refine_crossing(side, inner, F_in, xo, F_out, D_out, u_best, P_min, delta, flags,
                            breaks, st, coef, knots, chan_group, bins, code, work, mom)


@njit(cache=True)
def _refine_crossing(side, inner, F_in, outer, F_out, D_out, u_best, P_min, delta, flags,
                     breaks, st, coef, knots, chan_group, bins, code, work, mom):
    """The crossing of the level ``P_min + delta`` between ``inner`` (below
    it by ``-F_in``) and ``outer`` (above by ``F_out``, slope ``D_out``):
    (u, flags), a lower statistic met on the way flagged as in
    :func:`_kT_bound`."""
    tol_u = 1e-7
    target = P_min + delta
    x, Fx, Dx = outer, F_out, D_out
    for _ in range(100):
        # Newton from the outside, else regula falsi, else bisection
        xn = x - Fx / Dx if side * Dx > 0.0 else math.nan
        lo_b, hi_b = min(inner, outer), max(inner, outer)
        if not (lo_b < xn < hi_b):
            xn = inner - F_in * (outer - inner) / (F_out - F_in)
            if not (lo_b < xn < hi_b):
                xn = 0.5 * (inner + outer)
        Pn, Dn, Nn, zn = _profile_at(xn, st, coef, knots, chan_group, bins, code, work, mom)
        if Pn < P_min - 1e-6 * delta:
            flags |= _lower_point_flag(breaks, u_best, xn)
        Fn = Pn - target
        if Fn > 0.0:
            outer, F_out = xn, Fn
        else:
            inner, F_in = xn, Fn
        moved = abs(xn - x)
        x, Fx, Dx = xn, Fn, Dn
        if moved < tol_u or abs(Fn) < 1e-10 * max(1.0, target):
            return x, flags
    return x, flags | _F_NOT_CONVERGED


@njit(cache=True)
def _norm_climb(side, target, x0, N0, g0, lo, hi, step, tol, st, coef, knots, chan_group, bins,
                code, work, mom):
    """Local extreme of side * phi over [lo, hi], climbing from x0.

    phi(u) is the level curve's norm on ``side`` of the profile optimum
    (phi(x0) = N0, phi'(x0) = g0). Its extreme is where phi' = 0: secant
    steps on psi = d * side * phi' (> 0 from x0 up to the extreme, < 0
    beyond) inside a sign bracket; where the level curve closes (at a kT
    bound) psi -> -inf. Returns (norm, ln kT, converged).
    """
    best, best_u = N0, x0
    if g0 == 0.0:
        return best, best_u, True
    d = 1.0 if side * g0 > 0.0 else -1.0
    far = hi if d > 0.0 else lo
    a = x0
    xprev, pprev = x0, d * side * g0
    x = x0 + d * min(step, 0.5 * abs(far - x0))
    Nw = N0
    for _ in range(60):
        Nx, gx, okx = _norm_at(x, side, target, Nw, st, coef, knots, chan_group, bins, code,
                               work, mom)
        if not okx:
            # outside the level curve: the extreme lies between a and x
            far = x
            xn = 0.5 * (a + x)
        else:
            Nw = Nx
            if side * Nx > side * best:
                best = Nx
                best_u = x
            px = d * side * gx
            if px > 0.0:
                a = x
            else:
                far = x
            # secant on psi through the last two points, kept in (a, far)
            xn = x - px * (x - xprev) / (px - pprev) if px != pprev else math.nan
            if not (min(a, far) < xn < max(a, far)):
                xn = 0.5 * (a + far)
            xprev, pprev = x, px
        if abs(xn - x) < tol:
            return best, best_u, True
        x = xn
    return best, best_u, False


@njit(cache=True)
def _norm_extreme(side, target, u_best, N_guess, sig_u, u_lo, u_hi, uA, uB, breaks, st, coef,
                  knots, chan_group, bins, code, work, mom):
    """Largest (side +1) or smallest (side -1) norm on the level curve.

    Over [u_lo, u_hi] (the kT bounds, where the curve's two branches meet).
    Where the model jumps inside that interval the curve's norm jumps too:
    each piece between jumps is sampled (6 points, and next to its jumps)
    and the climb starts from the best sample; an extreme next to a jump is
    reported there (and the region is then not certified). Returns (norm,
    ln kT where it is reached, flags).
    """
    flags = 0
    N, g, ok = _norm_at(u_best, side, target, N_guess, st, coef, knots, chan_group, bins, code,
                        work, mom)
    if not ok:
        return math.nan, u_best, _F_NORM_LO_OPEN if side < 0 else _F_NORM_HI_OPEN
    tol = 1e-4 * sig_u
    n_in = 0
    for b in breaks:
        if u_lo < b < u_hi:
            n_in += 1
    if n_in == 0:
        best, best_u, conv = _norm_climb(side, target, u_best, N, g, u_lo, u_hi, 0.5 * sig_u, tol,
                                         st, coef, knots, chan_group, bins, code, work, mom)
    else:
        edges = np.empty(n_in + 2)
        edges[0] = u_lo
        edges[n_in + 1] = u_hi
        i = 1
        for b in breaks:
            if u_lo < b < u_hi:
                edges[i] = b
                i += 1
        best, best_u, best_g, piece = N, u_best, g, 0
        for p in range(n_in + 1):
            if edges[p] <= u_best < edges[p + 1]:
                piece = p
        at_jump = False
        for p in range(n_in + 1):
            p0, p1 = edges[p], edges[p + 1]
            for q in range(8):
                if q < 6:
                    x = p0 + (q + 1) * (p1 - p0) / 7.0
                elif q == 6 and p > 0:
                    x = p0 + 1e-9
                elif q == 7 and p < n_in:
                    x = p1 - 1e-9
                else:
                    continue
                Nx, gx, okx = _norm_at(x, side, target, best, st, coef, knots, chan_group, bins,
                                       code, work, mom)
                if okx and side * Nx > side * best:
                    best, best_u, best_g, piece, at_jump = Nx, x, gx, p, q >= 6
        conv = True
        if not at_jump:
            best, best_u, conv = _norm_climb(side, target, best_u, best, best_g, edges[piece],
                                             edges[piece + 1], (edges[piece + 1] - edges[piece])
                                             / 14.0, tol, st, coef, knots, chan_group, bins,
                                             code, work, mom)
    if not conv:
        flags |= _F_NOT_CONVERGED
    if best_u <= uA + 1e-9 or best_u >= uB - 1e-9:
        flags |= _F_NORM_BOUND_EDGE
    return best, best_u, flags


@njit(cache=True)
def _covar(u, N, delta, coef, knots, chan_group, bins, code, work, out):
    """Symmetric bounds from the inverse Hessian in (kT, norm), as Sherpa's covar."""
    _rates(u, coef, knots, chan_group, bins, work, True)
    c = work[0]
    dc = work[1]
    d2c = work[2]
    H_NN = 0.0
    H_uN = 0.0
    H_uu = 0.0
    for g in range(c.size):
        M = N * c[g]
        if code == _WSTAT:
            w, d1, d2 = _wstat_bin(M, bins[_S, g], bins[_B, g], bins[_TS, g], bins[_TB, g],
                                   bins[_K, g], False)
        elif code == _CSTAT:
            w, d1, d2 = _cstat_bin(M, bins[_S, g])
        else:
            w, d1, d2 = _chi2_bin(M, bins[_D, g], bins[_WT, g])
        H_NN += c[g] * c[g] * d2
        H_uN += dc[g] * d1 + N * c[g] * dc[g] * d2
        H_uu += N * d2c[g] * d1 + N * N * dc[g] * dc[g] * d2
    kT = math.exp(u)
    # in (kT, N): dW/du = 0 at the minimum, so W_kk = W_uu / kT^2
    H_kk = H_uu / (kT * kT)
    H_kN = H_uN / kT
    det = H_kk * H_NN - H_kN * H_kN
    # covariance 2 H^-1 (the statistic is -2 ln L), scaled by sigma
    sk = math.sqrt(2.0 * delta * H_NN / det) if det > 0.0 else math.nan
    sn = math.sqrt(2.0 * delta * H_kk / det) if det > 0.0 else math.nan
    out[1] = kT - sk
    out[2] = kT + sk
    out[4] = N - sn
    out[5] = N + sn


@njit(cache=True)
def _fit_kernel(coef, knots, breaks, src, bkg, gstart, offsets, used, texp, bscale, code, uA,
                uB, u_init, delta, errors, out):
    """Best fit and bounds of one region; see :func:`fit_profile`.

    ``out`` (float64, 12): kT, kT_lo, kT_hi, norm, norm_lo, norm_hi, stat,
    profile evaluations, flags, ln kT where norm_lo and norm_hi are
    reached, number of bins.
    """
    chan_group, bins = _prepare_bins(src, bkg, gstart, offsets, used, texp, bscale)
    n_bins = bins.shape[1]
    work = np.empty((3, n_bins))
    mom = np.zeros(5)
    st = np.zeros(2)  # warm-start norm, evaluation count
    for k in range(12):
        out[k] = math.nan
    out[11] = n_bins
    if n_bins <= 2:
        out[7] = 0.0
        out[8] = _F_NO_DOF
        return
    u_best, P_min, N_best, curv, flags = _minimise(uA, uB, u_init, st, coef, knots, chan_group,
                                                   bins, code, work, mom)
    out[0] = math.exp(u_best)
    out[3] = N_best
    out[6] = P_min
    u_start = min(max(u_init, uA), uB)
    if flags == 0 and _descent_stops(u_start, u_best, P_min, DESCENT_MARGIN, breaks, st,
                                     coef, knots, chan_group, bins, code, work, mom):
        flags |= _F_DESCENT_STOPS
    if errors != 0 and flags == 0:
        if errors == 2:
            _covar(u_best, N_best, delta, coef, knots, chan_group, bins, code, work, out)
        else:
            if not curv > 0.0:
                P2, D2, N2, z2 = _profile_at(u_best + 1e-3, st, coef, knots, chan_group, bins,
                                             code, work, mom)
                curv = max(D2 / 1e-3, 1e-6)
            sig_u = math.sqrt(2.0 * delta / curv)
            u_lo, fl = _kT_bound(-1.0, u_best, P_min, N_best, delta, sig_u, uA, uB, breaks, st,
                                 coef, knots, chan_group, bins, code, work, mom)
            flags |= fl
            u_hi, fl = _kT_bound(1.0, u_best, P_min, N_best, delta, sig_u, uA, uB, breaks, st,
                                 coef, knots, chan_group, bins, code, work, mom)
            flags |= fl
            out[1] = math.exp(u_lo)
            out[2] = math.exp(u_hi)
            for si in range(2):
                side = -1.0 if si == 0 else 1.0
                if flags == 0 and _level_split(side, u_lo if si == 0 else u_hi, P_min + delta,
                                               uA, uB, breaks, st, coef, knots, chan_group,
                                               bins, code, work, mom):
                    flags |= _F_LEVEL_SPLIT
            if flags == 0:
                _rates(u_best, coef, knots, chan_group, bins, work, False)
                _moments(code, bins, work, mom)
                W0, WN0, WNN0, Wu0 = _stat_N(N_best, code, bins, work, mom, False)
                sig_N = math.sqrt(2.0 * delta / WNN0) if WNN0 > 0.0 else 0.1 * N_best
                for si in range(2):
                    side = -1.0 if si == 0 else 1.0
                    res, u_ext, fl = _norm_extreme(side, P_min + delta, u_best,
                                                   N_best + side * sig_N, sig_u, u_lo, u_hi,
                                                   uA, uB, breaks, st, coef, knots, chan_group,
                                                   bins, code, work, mom)
                    flags |= fl
                    out[4 + si] = res
                    out[9 + si] = u_ext
    out[7] = st[1]
    out[8] = flags


_fit_kernel = entry("fit_kernel", _fit_kernel)


# --------------------------------------------------------------------------
# the public fit


@dataclass
class TemplateResult:
    """One region's template fit.

    Attributes
    ----------
    kT, kT_lo, kT_hi : float
        Best-fit temperature and absolute bounds, keV (NaN where unknown).
    norm, norm_lo, norm_hi : float
        Best-fit normalisation and absolute bounds, XSPEC units.
    stat : float
        Statistic at the best fit (Sherpa's definition).
    dof : int
        Noticed (grouped) bins of all observations minus 2.
    certified : bool
        False when the answer may differ from Sherpa's: the caller refits.
    reason : str
        Why not certified ("" when certified).
    n_eval : int
        Evaluations of the rates (each one pass over the band channels).
    norm_lo_kT, norm_hi_kT : float
        Temperature (keV) at which the level curve reaches norm_lo and
        norm_hi: (norm_hi_kT, norm_hi) is a point where the statistic is
        ``stat + error_sigma**2``, which anyone can check (NaN with
        ``errors="covar"``).
    """

    kT: float
    kT_lo: float
    kT_hi: float
    norm: float
    norm_lo: float
    norm_hi: float
    stat: float
    dof: int
    certified: bool
    reason: str
    n_eval: int = 0
    norm_lo_kT: float = math.nan
    norm_hi_kT: float = math.nan
    flags: int = 0

    @property
    def path_dependent(self) -> bool:
        """Not certified only because Sherpa's answer depends on its path
        across a jump of the model (:data:`PATH_FLAGS`)."""
        return bool(self.flags) and not self.flags & ~PATH_FLAGS

    @property
    def norm_path_only(self) -> bool:
        """Certified but for the norm's bounds: the best fit and the kT
        bounds stand, and only the path of Sherpa's search for a norm bound
        (which crosses a jump of the model) is in doubt."""
        return self.flags == _F_NORM_ACROSS


class FoldedCounts:
    """Model counts of one region's noticed bins, from the templates.

    ``counts(kT, norm)`` (kT in keV, norm in XSPEC units) returns the counts
    of each noticed bin of every spectrum, grouped as the spectrum is and
    concatenated in the spectra's order: the template's interpolated rate
    per unit norm (counts s^-1 per channel, clipped at 0 as the kernel
    does) times the exposure (s) and the norm, summed over each group.
    Where no channel's cubic dips below 0 in an interval
    (:attr:`ObsTemplate.dips`), its coefficients are grouped and scaled
    once (grouping commutes with the cubic) and a call costs one cubic
    over the bins; elsewhere each channel is evaluated and clipped. For
    Sherpa's fit and error search on the templates
    (:meth:`hpcxt.fit.RegionFitter.fit` with ``table``).

    A kT outside the grid raises ValueError (:meth:`at` returns None
    there): the caller folds the model itself.

    Parameters
    ----------
    templates : Templates
    spectra : list of hpcxt.fit.ObsSpectrum
        ``obs_index`` and ``exposure`` (s) are used.
    groupings : list of (ndarray (n_channel,) or None)
        OGIP grouping flags of each spectrum; groups must lie in the band.

    Attributes
    ----------
    sizes : list of int
        Noticed bins of each spectrum.
    """

    __slots__ = ("_knots", "_lo", "_hi", "_last", "_parts", "sizes", "_grouped", "_powers")

    def __init__(self, templates: Templates, spectra, groupings):
        self._knots = templates.knots.tolist()
        self._lo, self._hi = self._knots[0] - 1e-12, self._knots[-1] + 1e-12
        self._last = len(self._knots) - 2
        self._powers = np.empty(4)  # (t^3, t^2, t, 1) times the norm, refilled per call
        self._parts = []
        self.sizes = []
        for sp, grouping in zip(spectra, groupings):
            o = templates.obs[sp.obs_index]
            starts = None
            if grouping is not None:
                starts = np.flatnonzero(np.asarray(grouping)[o.band] == 1)
                if starts.size == 0 or starts[0] != 0:
                    raise ValueError("the first channel of the band must start a group")
            self._parts.append((o, float(sp.exposure), starts))
            self.sizes.append(o.n_band if starts is None else int(starts.size))
        self._grouped: dict = {}

    def _interval(self, j: int):
        """Coefficients (4, n_bins) of interval ``j``, grouped and times the
        exposure; None where some channel's cubic dips below 0 in it."""
        if j not in self._grouped:
            self._grouped[j] = None if any(o.dips[j] for o, _, _ in self._parts) else \
                np.concatenate([(o.coef[j] if starts is None else
                                 np.add.reduceat(o.coef[j], starts, axis=1)) * exposure
                                for o, exposure, starts in self._parts], axis=1)
        return self._grouped[j]

    def __call__(self, kT: float, norm: float) -> np.ndarray:
        out = self.at(kT, norm)
        if out is None:
            # beyond the grid the spline would extrapolate: not Sherpa's model
            raise ValueError(f"kT {kT:g} keV is outside the templates' grid "
                             f"{math.exp(self._knots[0]):g}-{math.exp(self._knots[-1]):g} keV")
        return out

    def at(self, kT: float, norm: float) -> np.ndarray | None:
        """``counts(kT, norm)``, or None where kT is not on the grid (the
        check and the counts in one call, for Sherpa's callback)."""
        u = math.log(kT)
        if not self._lo <= u <= self._hi:
            return None
        j = bisect.bisect_right(self._knots, u) - 1
        j = 0 if j < 0 else self._last if j > self._last else j
        t = u - self._knots[j]
        t2 = t * t
        c = self._grouped.get(j, False)
        if c is False:
            c = self._interval(j)
        if c is not None:
            # the cubic as a dot product with (t^3, t^2, t, 1): one call where
            # Horner's scheme takes seven (same values to rounding)
            w = self._powers
            w[0], w[1], w[2], w[3] = t2 * t * norm, t2 * norm, t * norm, norm
            return w @ c
        out = []
        for o, exposure, starts in self._parts:
            v = np.maximum(np.dot((t2 * t, t2, t, 1.0), o.coef[j]), 0.0)
            out.append((v if starts is None else np.add.reduceat(v, starts)) * exposure)
        return np.concatenate(out) * norm


def region_channels(templates: Templates, spectra, statistic: str, groupings=None):
    """One region's band channels, concatenated over observations, for the kernel.

    Returns
    -------
    src, bkg : ndarray (n_total,) float64
        Source and background counts (0 for observations not used; the
        background 0 for cstat).
    gstart : ndarray (n_total,) int8
        1 where a group starts.
    used : ndarray (n_obs,) int8
    texp : ndarray (n_obs,)
        Source exposure, s.
    bscale : ndarray (n_obs,)
        Background scale (0: no background used).
    """
    code = STAT_CODES[statistic]
    n_obs = len(templates.obs)
    n = int(templates.offsets[-1])
    src = np.zeros(n)
    bkg = np.zeros(n)
    gstart = np.ones(n, dtype=np.int8)
    used = np.zeros(n_obs, dtype=np.int8)
    texp = np.zeros(n_obs)
    bscale = np.zeros(n_obs)
    if groupings is None:
        groupings = [None] * len(spectra)
    for sp, grouping in zip(spectra, groupings):
        k = sp.obs_index
        sl = templates.obs[k].band
        o0, o1 = int(templates.offsets[k]), int(templates.offsets[k + 1])
        src[o0:o1] = sp.counts[sl]
        if sp.bkg_counts is not None and code != _CSTAT:
            bkg[o0:o1] = sp.bkg_counts[sl]
            bscale[k] = sp.bkg_scale
        elif code == _WSTAT:
            raise ValueError(f"wstat needs a background spectrum (observation {k})")
        if grouping is not None:
            if grouping[sl.start] != 1:
                raise ValueError("the first channel of the band must start a group")
            gstart[o0:o1] = grouping[sl] == 1
        used[k] = 1
        texp[k] = sp.exposure
    return src, bkg, gstart, used, texp, bscale


def fit_profile(templates: Templates, spectra, statistic: str, groupings=None,
                kT_range=None, error_sigma: float = 1.0, errors: str = "conf",
                kT_init: float = 8.0) -> TemplateResult:
    """Fit one region: norm profiled, kT searched, bounds from the profile.

    Parameters
    ----------
    templates : Templates
        From :func:`build_templates` for the same settings.
    spectra : list of hpcxt.fit.ObsSpectrum
        The region's used observations: counts and background counts per
        channel, exposure (s), bkg_scale.
    statistic : {"wstat", "cstat", "chi2gehrels"}
        ``wstat`` needs background spectra; ``cstat`` ignores them;
        ``chi2gehrels`` subtracts them when present.
    groupings : list of (ndarray (n_channel,) int or None), optional
        OGIP grouping flags per spectrum (e.g. from
        :func:`hpcxt.fit.group_min_counts`); groups must lie inside the band.
    kT_range : tuple of float, optional
        Limits of kT, keV (default: the template grid's range, which it must
        lie in).
    error_sigma : float
        Bounds where the statistic rises by ``error_sigma**2``.
    errors : {"conf", "covar", "none"}
        ``conf``: profile bounds (Sherpa's conf); ``covar``: symmetric
        bounds from the inverse Hessian (Sherpa's covar); ``none``.
    kT_init : float
        Start of the search, keV (Sherpa's fit starts there too).

    Returns
    -------
    TemplateResult
    """
    if errors not in ERRORS:
        raise ValueError(f"unknown error method {errors!r}")
    grid_lo, grid_hi = templates.kT_range
    lo, hi = (grid_lo, grid_hi) if kT_range is None else (float(v) for v in kT_range)
    if lo < grid_lo * (1 - 1e-9) or hi > grid_hi * (1 + 1e-9):
        raise ValueError(f"kT_range {lo:g}-{hi:g} keV is outside the template grid "
                         f"{grid_lo:g}-{grid_hi:g} keV")
    src, bkg, gstart, used, texp, bscale = region_channels(templates, spectra, statistic,
                                                           groupings)
    out = np.empty(12)
    _fit_kernel(templates.coef, templates.knots, templates.breaks, src, bkg, gstart,
                templates.offsets, used, texp, bscale, STAT_CODES[statistic],
                math.log(max(lo, grid_lo)), math.log(min(hi, grid_hi)), math.log(kT_init),
                float(error_sigma) ** 2, ERRORS[errors], out)
    flags = int(out[8])
    # On a jump the profile is discontinuous: a minimum or kT bound found
    # there is the jump itself, and Sherpa's optimiser may stop elsewhere.
    breaks = templates.breaks.tolist()
    ln_fit = [math.log(v) if v > 0.0 else math.nan for v in out[:3].tolist()]
    ln_norm_ext = out[9:11].tolist()
    if _near_break(breaks, ln_fit):
        flags |= _F_AT_BREAK
    elif flags == 0 and (_near_break(breaks, ln_norm_ext)
                         or _break_between(breaks, ln_fit[0], ln_norm_ext)):
        # The extreme norm of the level curve lies on a jump or across one
        # from the best fit: Sherpa's conf on the norm (kT refitted locally
        # at each trial norm) reaches it or stops at the jump depending on
        # its steps, and its covar (finite differences near the jump) may
        # fail and leave the norm to conf: Sherpa decides.
        flags |= _F_NORM_ACROSS
    return TemplateResult(kT=float(out[0]), kT_lo=float(out[1]), kT_hi=float(out[2]),
                          norm=float(out[3]), norm_lo=float(out[4]), norm_hi=float(out[5]),
                          stat=float(out[6]), dof=int(out[11]) - 2, certified=flags == 0,
                          reason="; ".join(t for bit, t in _FLAG_TEXT.items() if flags & bit),
                          n_eval=int(out[7]), norm_lo_kT=float(np.exp(out[9])),
                          norm_hi_kT=float(np.exp(out[10])), flags=flags)


def _break_between(breaks, u0: float, u) -> bool:
    """Whether a jump (ln kT, a list) lies strictly between ln kT u0 and any
    finite value of ``u``."""
    for x in u:
        if math.isfinite(x):
            lo, hi = min(x, u0), max(x, u0)
            if any(lo < b < hi for b in breaks):
                return True
    return False


def _near_break(breaks, u) -> bool:
    """Whether any finite ln kT of ``u`` lies within :data:`BREAK_GUARD` of a
    jump (ln kT, a list)."""
    return any(abs(x - b) < BREAK_GUARD for x in u if math.isfinite(x) for b in breaks)
