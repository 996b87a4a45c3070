"""The fit engines behind one interface: ``engine.fit(spectra, verify) -> FitRecord``.

``sherpa``
    :class:`hpcxt.fit.RegionFitter` itself: Sherpa's fit and ``conf``/``covar``
    error search with the model folded through the RMF at every
    evaluation. The reference.
``template``
    :class:`TemplateEngine`: the same statistic and grouping, but the
    folded model is tabulated once per run (:mod:`hpcxt.template_fit`) and
    each region is a 1-D profile-likelihood problem, about 300-1000 times
    faster. It certifies itself region by region: a region whose answer it
    cannot vouch for (minimum or bound at the edge of ``kT_range`` or on a
    jump of the model, bound not found, no convergence) is refitted with
    Sherpa (engine ``SHERPA_FALLBACK``), and the regions of a random sample
    (:func:`verification_sample`) are refitted with Sherpa too, their
    differences stored in units of Sherpa's errors (``verify_*`` columns).
    Where the only doubt is the path Sherpa's optimiser takes across a
    jump of the model (:data:`hpcxt.template_fit.PATH_FLAGS`), Sherpa's own
    fit and error search run on the templates instead of the folded model
    (engine ``SHERPA_TEMPLATES``): the same steps, each about ten times
    cheaper. Where only a norm bound is in doubt, the template fit stands
    and Sherpa's ``covar`` of the norm, which its error search takes by
    default, runs on the templates at that best fit (a local estimate: no
    path to it). :data:`REPLAY_VERIFY_FACTOR` times as many of those
    regions are checked against Sherpa on the folded model.

With ``fit.free: [abundance]`` the template engine does not apply (it
tabulates the model in kT alone): :func:`engine_choice` gives ``sherpa``
for every region, and the fit stage says so in one log line.

No MPI, no file I/O: an engine is built once per worker from the bundle's
responses and fits region after region.
"""

from __future__ import annotations

import math
import time
import zlib

import numpy as np

from .fit import FitRecord, FitSettings, RegionFitter, failure_reason
from .schema import Engine, Status

ENGINES = ("template", "sherpa")
#: Fewest regions verified against Sherpa in a run that has that many.
MIN_VERIFIED = 20
#: Seed of the verification sample (a run's sample depends only on the
#: number of regions and the fraction, never on the ranks).
VERIFY_SEED = 20261201
#: Regions fitted by Sherpa on the templates are checked against Sherpa on
#: the folded model this many times as often as ``fit.verify_fraction``
#: (5% by default; a fixed function of the region's counts, so the same on
#: every rank and in every run).
REPLAY_VERIFY_FACTOR = 5
#: How a region's reason starts where only the norm's bounds came from
#: Sherpa on the templates (:meth:`TemplateEngine._norm_replay`).
NORM_COVAR_NOTE = "norm bounds: Sherpa's covar on the templates at the certified best fit"


def verification_sample(n_regions: int, fraction: float) -> np.ndarray:
    """Region ids refitted with Sherpa to check the template engine.

    ``max(MIN_VERIFIED, ceil(fraction * n))`` ids (all when fewer), drawn
    without replacement by a fixed-seed generator: the same ids on every
    worker and in every run with the same region count. ``fraction`` 0
    verifies none.

    Returns
    -------
    ndarray of int64, sorted
    """
    n = int(n_regions)
    if fraction <= 0 or n <= 0:
        return np.zeros(0, dtype=np.int64)
    k = min(n, max(MIN_VERIFIED, math.ceil(fraction * n)))
    rng = np.random.default_rng(VERIFY_SEED)
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


class TemplateEngine:
    """Template fits, certified region by region, Sherpa where they cannot be.

    Built once per worker: the templates of every observation (about 1 s of
    CPU and 9 MB per 1024-channel observation, see
    :func:`hpcxt.template_fit.build_templates`; the fit stage has one
    worker per node build them into shared memory and passes them in) and
    two Sherpa
    :class:`RegionFitter`: one with the run's settings for the regions the
    template engine cannot certify (their answer is exactly what the
    ``sherpa`` engine gives), and one that searches the norm's bounds with
    ``conf`` too, as the template engine does, for the verification sample,
    so that the two are compared like for like.

    Parameters
    ----------
    settings : FitSettings
    responses : list of hpcxt.data.Response
    has_background : bool
    templates : hpcxt.template_fit.Templates, optional
        Built already (once per node, in shared memory) from the same
        settings and responses; default: built here.
    """

    name = "template"

    def __init__(self, settings: FitSettings, responses, has_background: bool = True,
                 templates=None):
        from dataclasses import replace

        from .template_fit import build_templates

        self.settings = settings
        self.sherpa = RegionFitter(settings, responses, has_background=has_background)
        self.reference = RegionFitter(replace(settings, conf_norm=settings.errors == "conf"),
                                      responses, has_background=has_background)
        self.nobs = self.sherpa.nobs
        bands = [r.band for r in self.sherpa.responses]
        if templates is None:
            templates = build_templates(settings, responses, band_masks=bands)
        elif [(o.band.start, o.band.stop) for o in templates.obs] != \
                [(int(np.flatnonzero(b)[0]), int(np.flatnonzero(b)[-1]) + 1) for b in bands]:
            raise ValueError("the templates given were built for other channels")
        self.templates = templates
        #: Fit path-dependent regions with Sherpa on the templates (False:
        #: on the folded model, as before; to measure what it saves).
        self.replay = True
        #: Sherpa's conf gives no bounds where the reduced statistic at the
        #: best fit is above this (its ``max_rstat``; None: no such limit).
        self.max_rstat = getattr(self.sherpa._estmethod(settings.errors), "max_rstat", None) \
            if settings.errors == "conf" else None

    def fit(self, spectra, verify: bool = False) -> FitRecord:
        """Fit one region; never raises for a bad region.

        Parameters
        ----------
        spectra : list of hpcxt.spectra.ObsSpectrum
        verify : bool
            Also fit it with Sherpa and store the differences.
        """
        t0 = time.perf_counter()
        rec = FitRecord(self.nobs)
        try:
            rec = self._fit(spectra, rec, verify)
        except Exception as exc:  # a bad region must never stop the run
            rec.status = Status.FAILED
            rec.reason = failure_reason(exc)
        rec.fit_seconds = time.perf_counter() - t0
        return rec

    def _fit(self, spectra, rec: FitRecord, verify: bool) -> FitRecord:
        from .template_fit import fit_profile

        s = self.settings
        plan = self.sherpa.prepare(spectra, rec)
        if plan is None:
            return rec
        res = None
        try:
            res = fit_profile(self.templates, spectra, plan.statistic, plan.groupings,
                              kT_range=s.kT_range, error_sigma=s.error_sigma,
                              errors=s.errors, kT_init=s.kT_init)
            why = "" if res.certified else res.reason
            if not why and self.max_rstat is not None and res.dof > 0 \
                    and res.stat / res.dof > self.max_rstat:
                # Sherpa's error search refuses such a fit (EstErr rstat>max):
                # its answer is that refusal
                why = (f"reduced statistic {res.stat / res.dof:.3g} above conf's max_rstat "
                       f"{self.max_rstat:g}")
        except Exception as exc:  # whatever the template fit cannot do, Sherpa does
            why = failure_reason(exc)
        if why and self.replay and res is not None and res.path_dependent:
            replayed = None
            if res.norm_path_only and s.errors == "conf" and not s.conf_norm:
                replayed = self._norm_replay(spectra, plan, res, rec, why, verify)
            if replayed is None:
                replayed = self._replay(spectra, why, verify)
            if replayed is not None:
                return replayed
        if why:
            ref = self.sherpa.fit(spectra)
            ref.engine = Engine.SHERPA_FALLBACK
            if ref.status == Status.OK:
                ref.reason = _join(ref.reason, f"Sherpa: the template fit was not "
                                               f"certified ({why})")
            return ref
        for name in ("kT", "kT_lo", "kT_hi", "norm", "norm_lo", "norm_hi", "stat", "dof"):
            setattr(rec, name, getattr(res, name))
        rec.engine = Engine.TEMPLATE
        rec.status = Status.OK
        if verify:
            _store_differences(rec, self.reference.fit(spectra))
        return rec

    def _replay(self, spectra, why: str, verify: bool) -> FitRecord | None:
        """Sherpa's fit and error search on the templates; None where it fails.

        A failure (optimiser, bound not found) is left to Sherpa on the
        folded model, which decides it.
        """
        rec = self.sherpa.fit(spectra, table=self._table)
        if rec.status != Status.OK:
            return None
        return self._on_templates(rec, spectra, f"Sherpa's fit on the templates: its answer "
                                                f"depends on its path ({why})", verify)

    def _norm_replay(self, spectra, plan, res, rec: FitRecord, why: str,
                     verify: bool) -> FitRecord | None:
        """The template fit, with the norm's bounds from Sherpa's ``covar`` on
        the templates at its best fit; None where ``covar`` finds none.

        For regions certified but for the norm's bounds
        (:attr:`~hpcxt.template_fit.TemplateResult.norm_path_only`): the
        best fit and the kT bounds are Sherpa's, and after them Sherpa's
        error search (``errors: conf`` without ``conf_norm``) takes the
        norm's bounds from ``covar``, a local estimate at the best fit that
        no path across the jump changes. Where ``covar`` finds no bound,
        Sherpa goes on with ``conf``, whose path does matter: the whole fit
        is then Sherpa's on the templates (:meth:`_replay`). Checked against
        Sherpa on the folded model as :meth:`_replay`'s regions are.
        """
        bounds = self.sherpa.covar_norm_bounds(spectra, plan, self._table, res.kT, res.norm)
        if bounds is None:
            return None
        for name in ("kT", "kT_lo", "kT_hi", "norm", "stat", "dof"):
            setattr(rec, name, getattr(res, name))
        rec.norm_lo, rec.norm_hi = bounds
        rec.status = Status.OK
        return self._on_templates(rec, spectra, f"{NORM_COVAR_NOTE} ({why})", verify)

    def _table(self, spectra, groupings):
        """The templates' model counts of one region's bins (Sherpa's ``table``)."""
        from .template_fit import FoldedCounts

        return FoldedCounts(self.templates, spectra, groupings)

    def _on_templates(self, rec: FitRecord, spectra, note: str, verify: bool) -> FitRecord:
        """Mark ``rec`` as Sherpa's on the templates (engine 4), with ``note``,
        and check it against Sherpa on the folded model where sampled."""
        rec.engine = Engine.SHERPA_TEMPLATES
        rec.reason = _join(rec.reason, note)
        if verify or replay_sampled(spectra, self.settings.verify_fraction):
            _store_differences(rec, self.sherpa.fit(spectra))
        return rec


def replay_sampled(spectra, verify_fraction: float) -> bool:
    """Whether a region fitted by Sherpa on the templates is checked against
    Sherpa on the folded model: for ``REPLAY_VERIFY_FACTOR * verify_fraction``
    of them, chosen by a checksum of the region's counts."""
    fraction = min(1.0, REPLAY_VERIFY_FACTOR * verify_fraction)
    if fraction <= 0:
        return False
    crc = 0
    for sp in spectra:
        crc = zlib.crc32(np.ascontiguousarray(sp.counts).tobytes(), crc)
    return crc % 100_000 < fraction * 100_000


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def sigma_differences(fast: FitRecord, ref: FitRecord) -> tuple[float, float, float]:
    """(kT, norm, worst bound) differences fast - ref in units of ref's errors.

    A parameter's error is half its bounds' width in ``ref``; NaN where
    ``ref`` has none.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        sig_kT = (ref.kT_hi - ref.kT_lo) / 2.0
        sig_norm = (ref.norm_hi - ref.norm_lo) / 2.0
        d_kT = (fast.kT - ref.kT) / sig_kT
        d_norm = (fast.norm - ref.norm) / sig_norm
        bounds = [abs(fast.kT_lo - ref.kT_lo) / sig_kT, abs(fast.kT_hi - ref.kT_hi) / sig_kT,
                  abs(fast.norm_lo - ref.norm_lo) / sig_norm,
                  abs(fast.norm_hi - ref.norm_hi) / sig_norm]
    finite = [b for b in bounds if np.isfinite(b)]
    return float(d_kT), float(d_norm), float(max(finite)) if finite else math.nan


def _store_differences(rec: FitRecord, ref: FitRecord) -> None:
    if ref.status != Status.OK:
        rec.reason = _join(rec.reason, f"verification: Sherpa failed ({ref.reason})")
        return
    rec.verify_dkT, rec.verify_dnorm, rec.verify_dbounds = sigma_differences(rec, ref)


def engine_choice(settings: FitSettings) -> tuple[str, str]:
    """The engine that fits the regions, and why it is not the configured one ("" if it is).

    The template engine tabulates the folded model in kT alone (norm
    linear, everything else frozen): a free abundance is a second nonlinear
    parameter it does not handle, so those runs use Sherpa for every region.
    """
    if settings.engine == "template" and settings.free_abundance:
        return "sherpa", ("fit.engine template fits kT and norm only: with fit.free "
                          "[abundance] every region is fitted by the Sherpa engine")
    return settings.engine, ""


def make_engine(settings: FitSettings, responses, has_background: bool = True,
                templates=None):
    """The engine :func:`engine_choice` picks for ``settings`` (``templates``:
    see :class:`TemplateEngine`; ignored by the Sherpa engine)."""
    name, _ = engine_choice(settings)
    if name == "template":
        return TemplateEngine(settings, responses, has_background, templates=templates)
    if name == "sherpa":
        return RegionFitter(settings, responses, has_background=has_background)
    raise ValueError(f"unknown fit engine {settings.engine!r} (one of {', '.join(ENGINES)})")
