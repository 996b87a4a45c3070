"""The fit stage: decide what is left, run the MPI master/worker fit, report.

Run as::

    mpiexec -n N python -m mpi4py -m hpcxt fit CONFIG [--resume]

Rank 0 reads results.h5 (or starts one), refuses what would mix results of
different inputs, refuses a model that cannot be evaluated here
(:func:`check_fit_model`; every rank then exits with status 2 before any
fit), and hands the run to :func:`hpcxt.fit_mpi.run_master_worker`;
every fitting rank builds one :class:`BatchFitter` (bundle, region table and
responses read once), over the bundle's events sorted once per node into
shared memory (:func:`node_sorted_events`) and, with the template engine,
templates built once per node into shared memory
(:func:`node_templates`). ``hpcxt status`` is :func:`fit_status`.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from .. import compiled
from ..errors import InputError
from ..engines import engine_choice, make_engine, verification_sample
from ..fit import FitSettings, RecordBatch, fit_region
from ..fit_mpi import RunOptions, describe, format_seconds, run_master_worker
from ..hooks import NO_HOOKS
from ..io.bundle import read_bundle, read_bundle_identity
from ..io.checkpoint import (FitResults, changed_keys, fit_inputs, inputs_hash, read_results,
                             utc_now)
from ..io.regions_table import read_regions
from ..io.workdir import StageRecord, WorkDir, fingerprint
from ..schema import Engine
from ..shared import node_shared, release_free_memory
from ..spectra import RegionSpectra, fill_sorted_events, sorted_events_layout

log = logging.getLogger("hpcxt.fit")


def results_path(cfg) -> Path:
    """``<workdir>/fit/results.h5``."""
    return WorkDir.of(cfg).results


class BatchFitter:
    """Fits batches of regions of one workdir (one per worker rank).

    Reads the bundle's events and the region table once, sorts the events
    and builds the responses once; calling it with region ids returns their
    records as a :class:`~hpcxt.fit.RecordBatch`.

    Parameters
    ----------
    cfg : hpcxt.io.config.Config
    rank : int
        Written into the ``worker`` column.
    events : mapping, optional
        The bundle's events already sorted (:func:`node_sorted_events`);
        default: read and sort them here.
    templates : mapping, optional
        The template engine's templates already built
        (:func:`node_templates`); default: built here when that engine fits.
    """

    def __init__(self, cfg, rank: int = 0, events=None, templates=None):
        wd = WorkDir.of(cfg)
        bundle = read_bundle(wd.bundle, load_events=events is None)
        table = read_regions(wd.regions)
        self.rank = rank
        self.nobs = len(bundle.observations)
        self.spectra = RegionSpectra(bundle.observations, table, events=events)
        settings = FitSettings.from_config(cfg)
        if templates is not None:
            from ..template_fit import templates_from_arrays
            templates = templates_from_arrays(templates)
        self.engine = make_engine(settings, [o.response for o in bundle.observations],
                                  has_background=bundle.has_background, templates=templates)
        self.verify = (set(verification_sample(len(table), settings.verify_fraction).tolist())
                       if engine_choice(settings)[0] == "template" else set())
        del bundle
        release_free_memory()

    def __call__(self, region_ids) -> RecordBatch:
        ids = [int(i) for i in region_ids]
        records = [fit_region(self.engine, self.spectra, i, verify=i in self.verify)
                   for i in ids]
        return RecordBatch.from_records(ids, records, self.nobs, worker=self.rank)


def node_sorted_events(cfg, comm, enabled: bool = True):
    """The bundle's events, sorted once per node into shared memory. Collective.

    A context manager yielding the sorted columns
    (:func:`hpcxt.spectra.sorted_events_layout`) or None, where shared
    memory is off (``--no-shared-memory``) or unavailable; each fitting
    rank then sorts its own copy, as :class:`BatchFitter` does by default.
    """
    path = WorkDir.of(cfg).bundle
    loaded = {}

    def layout():
        loaded["obs"] = read_bundle(path).observations
        return sorted_events_layout(loaded["obs"])

    def fill(arrays):
        fill_sorted_events(loaded.pop("obs"), arrays)

    return node_shared(comm, layout, fill, enabled=enabled, what="sorted events")


def node_templates(cfg, comm, enabled: bool = True):
    """The template engine's templates, built once per node into shared memory. Collective.

    A context manager yielding the arrays of
    :func:`hpcxt.template_fit.templates_layout`, or None where shared
    memory is off or unavailable or the run does not use the template
    engine; each fitting rank then builds its own, as :class:`BatchFitter`
    does by default. The second rank of each node builds them (about 1 s of
    CPU and 9 MB per 1024-channel observation), from the same settings and
    responses as every worker would.
    """
    settings = FitSettings.from_config(cfg)
    built = {}

    def layout():
        from ..template_fit import build_templates, templates_layout

        observations = read_bundle(WorkDir.of(cfg).bundle, load_events=False).observations
        built["templates"] = build_templates(settings, [o.response for o in observations])
        return templates_layout(built["templates"])

    def fill(arrays):
        from ..template_fit import templates_to_arrays
        templates_to_arrays(built.pop("templates"), arrays)

    use = enabled and engine_choice(settings)[0] == "template"
    # a worker builds them: the master never loads Sherpa or XSPEC
    return node_shared(comm, layout, fill, enabled=use, what="fit templates", filler=1)


def prepare_results(cfg, resume: bool, nranks: int = 1):
    """Load or create the results for this run; refuse what would lose work.

    Returns
    -------
    res : FitResults
        The results to continue (new: every region pending).
    todo : bool
        False when results.h5 is complete and made for this config, region
        table and bundle (nothing to do).

    Raises
    ------
    InputError
        Inputs missing or inconsistent; results.h5 made for another config,
        region table or bundle; an unfinished results.h5 without ``--resume``.
    """

    wd = WorkDir.of(cfg)
    path, table_path, bundle_path = wd.results, wd.regions, wd.bundle
    table = read_regions(table_path)
    bundle_obsids, bundle_config_hash = read_bundle_identity(bundle_path)
    _check_table_is_current(cfg, table, table_path, bundle_config_hash)
    if list(table.obsids) != bundle_obsids:
        raise InputError(f"region table is for observations {', '.join(table.obsids)} but the "
                         f"bundle holds {', '.join(bundle_obsids)}; re-run 'hpcxt scalemap'",
                         path=table_path, field="obsids")
    inputs = fit_inputs(cfg)
    table_hash = table.content_hash()
    fresh = FitResults.new(len(table), table.obsids, inputs, region_table_hash=table_hash,
                           bundle_hash=table.bundle_hash, bundle_config_hash=bundle_config_hash)
    if not path.exists():
        if resume:
            log.info("fit: no %s yet; starting from the beginning", path)
        fresh.runs = 1
        fresh.nranks = nranks
        return fresh, True
    res = read_results(path)
    problems = []
    if res.config_hash != inputs_hash(inputs):
        what = ", ".join(changed_keys(res.fit_inputs, inputs)) or "the fit settings"
        problems.append(("config_hash", f"{what} changed since this file was written"))
    if res.region_table_hash != table_hash:
        problems.append(("region_table_hash", "the region table (acb/regions.h5) changed "
                         "since this file was written"))
    elif res.bundle_config_hash != bundle_config_hash:
        problems.append(("bundle_config_hash", "the bundle (prep/bundle.h5) changed since "
                         "this file was written"))
    if problems:
        field = problems[0][0]
        text = "; ".join(p[1] for p in problems)
        raise InputError(f"{text}; use a new workdir, or move this file away to fit again",
                         path=path, field=field)
    if res.complete:
        return res, False
    if not resume:
        raise InputError(f"holds an unfinished fit ({describe(res)}); pass --resume to "
                         "continue it, or move it away to start over", path=path)
    res.runs += 1
    res.run_started = utc_now()
    res.final_at_run_start = res.n_final
    res.seconds_at_run_start = res.run_seconds
    res.nranks = nranks
    return res, True


def _check_table_is_current(cfg, table, table_path, bundle_config_hash: str) -> None:
    """Refuse a region table made for other scale-map settings or another bundle.

    Tables written before their settings were recorded (or by tests'
    synthetic fixtures) carry none and are not checked.
    """
    from .scalemap import scalemap_inputs

    if not table.inputs:
        return
    changed = changed_keys(table.inputs, scalemap_inputs(cfg))
    if changed:
        raise InputError(f"{', '.join(changed)} changed since the scale map was made; re-run "
                         "'hpcxt scalemap' first", path=table_path, field="inputs")
    if table.bundle_hash != bundle_config_hash:
        raise InputError("the bundle (prep/bundle.h5) changed since the scale map was made; "
                         "re-run 'hpcxt scalemap' first", path=table_path, field="bundle_hash")


def check_fit_model(cfg, hooks=None) -> None:
    """Refuse ``fit.model`` when it cannot be evaluated here, before any fit.

    The model is evaluated once in a child process
    (:func:`hpcxt.models.check_model`): without its data files an XSPEC
    model returns zeros or takes its process down, which would otherwise
    end ``hpcxt fit`` in a segmentation fault, or fill results.h5 with
    failures. A usable verdict is kept in ``fit/model_check.json`` under a
    fingerprint of the model settings and of the installation
    (:func:`hpcxt.models.model_environment`), so a resumed fit with the
    same ones does not pay for the check again; a refusal is never kept.

    Raises
    ------
    InputError
        One line naming ``fit.model`` in the config file, what happened and
        what to do.
    """
    from ..models import check_model, model_environment, probe_command

    hooks = hooks or NO_HOOKS
    f = cfg.fit
    record = StageRecord(WorkDir.of(cfg).model_check)
    key = fingerprint({"model": f.model, "apec_root": f.apec_root,
                       "abundance_table": f.abundance_table,
                       "environment": model_environment(f.apec_root)})
    if record.is_done("usable", key):
        log.debug("fit: %s was checked here before", f.model)
        return
    command = hooks.model_probe_command(probe_command(f.model, f.apec_root, f.abundance_table))
    verdict = check_model(f.model, f.apec_root, f.abundance_table, command=command)
    if not verdict.usable:
        raise InputError(str(verdict), path=cfg.path, field="fit.model")
    log.info("fit: %s evaluates here", f.model)
    record.mark("usable", key)


def run_fit(cfg, comm, resume: bool = False, fit_factory=None, hooks=None,
            shared_memory: bool = True) -> int:
    """``hpcxt fit``: fit every region of the table, on every rank of ``comm``.

    Parameters
    ----------
    cfg : hpcxt.io.config.Config
    comm : mpi4py.MPI.Comm
        The communicator; rank 0 is the master. One rank fits serially.
    resume : bool
        Continue an unfinished results.h5 (``--resume``).
    fit_factory : callable, optional
        ``fit_factory(cfg, rank) -> fit_batch`` where ``fit_batch(ids)``
        returns a :class:`~hpcxt.fit.RecordBatch`; default
        :class:`BatchFitter`. The benchmark passes one that returns at once.
    hooks : hpcxt.hooks.RunHooks, optional
        Observation and fault-injection points (tests); default: none.
    shared_memory : bool
        Sort the bundle's events, and build the template engine's
        templates, once per node into shared memory (when MPI can); False:
        every fitting rank holds its own copies (``--no-shared-memory``).
        Results are the same either way.

    Returns
    -------
    int
        See :func:`hpcxt.fit_mpi.run_master_worker`.
    """
    hooks = hooks or NO_HOOKS
    options = RunOptions(results_path=results_path(cfg), batch_size=cfg.fit.batch_size,
                         checkpoint_seconds=float(cfg.fit.checkpoint_seconds))
    node = {}

    @contextlib.contextmanager
    def share(comm):
        enabled = shared_memory and fit_factory is None
        with node_sorted_events(cfg, comm, enabled=enabled) as node["events"], \
                node_templates(cfg, comm, enabled=enabled) as node["templates"]:
            yield

    def make_fit_batch(rank):
        fitter = (fit_factory(cfg, rank) if fit_factory is not None
                  else BatchFitter(cfg, rank, events=node.get("events"),
                                   templates=node.get("templates")))
        return hooks.wrap_fit_batch(fitter, rank)

    start = 0
    if comm.Get_rank() == 0:
        try:
            res, todo = prepare_results(cfg, resume, nranks=comm.Get_size())
            if todo:
                check_fit_model(cfg, hooks)
        except BaseException:
            # The workers learn the status; only this rank reports the error.
            run_master_worker(comm, 2, make_fit_batch, options, hooks)
            raise
        if todo:
            log.info("fit: statistic %s, errors %s", cfg.fit.statistic, cfg.fit.errors)
            engine, why = engine_choice(FitSettings.from_config(cfg))
            if why:
                log.info("fit: %s", why)
            if engine == "template" and compiled.mode() == "jit":
                log.info("fit: kernels compiled by numba at each rank's first fit (about "
                         "40 MiB more per rank); python -m hpcxt.compiled builds them once")
            start = res
        else:
            log.info("fit: %s is up to date (%s)", options.results_path, describe(res))
    status = run_master_worker(comm, start, make_fit_batch, options, hooks, share=share)
    if isinstance(start, FitResults):
        for line in engine_report(start, cfg.fit.verify_fraction):
            log.info("fit: %s", line)
    return status


def engine_report(res: FitResults, verify_fraction: float | None = None) -> list[str]:
    """Which engine fitted how many regions, and how far the template engine
    (and Sherpa on the templates) was from Sherpa on the regions it was
    checked on (``verify_fraction``: the config's ``fit.verify_fraction``, 0
    when verification is off)."""
    counts = {e: int(np.count_nonzero(res.engine == e)) for e in Engine}
    fast = (Engine.TEMPLATE, Engine.SHERPA_TEMPLATES)
    if not any(counts[e] for e in fast + (Engine.SHERPA_FALLBACK,)):
        return [f"engine: Sherpa for all {counts[Engine.SHERPA]} fitted regions"]
    lines = [f"engine: template for {counts[Engine.TEMPLATE]} regions, Sherpa on the templates "
             f"for {counts[Engine.SHERPA_TEMPLATES]} whose answer depends on Sherpa's path "
             f"across a jump of the model, Sherpa for {counts[Engine.SHERPA_FALLBACK]} the "
             f"template engine could not certify"]
    checked = np.isfinite(res.verify_dkT)
    for engine, what in zip(fast, ("", " (Sherpa on the templates)")):
        mine = checked & (res.engine == engine)
        if not mine.any():
            continue
        worst = {name: float(np.nanmax(np.abs(getattr(res, f"verify_{name}")[mine])))
                 for name in ("dkT", "dnorm", "dbounds")}
        lines.append(f"verified against Sherpa on {int(mine.sum())} regions{what}: largest "
                     f"difference {worst['dkT']:.4f} sigma in kT, {worst['dnorm']:.4f} in norm, "
                     f"{worst['dbounds']:.4f} in the bounds")
    if not checked.any():
        lines.append("not verified against Sherpa (fit.verify_fraction: 0)" if verify_fraction == 0
                     else "verified against Sherpa on no region yet")
    return lines


def fit_status(cfg) -> str:
    """``hpcxt status``: progress of the fit from results.h5.

    Reads without locking, so it works while a fit runs (it sees the last
    checkpoint). Reports regions ok/failed/pending, fits per second (last
    run and overall), the estimated time left and the most common failure
    reasons.
    """
    import datetime as dt

    path = results_path(cfg)
    res = read_results(path)
    n = len(res)
    lines = [f"{path}", f"  regions: {n}: {res.n_ok} ok, {res.n_failed} failed, "
             f"{res.n_pending} pending ({100.0 * res.n_final / max(n, 1):.1f}% final)"]
    last, overall = res.rates()
    rate = last or overall
    if res.complete:
        eta = "done"
    elif rate > 0:
        eta = format_seconds(res.n_pending / rate)
    else:
        eta = "unknown"
    lines.append(f"  rate: {last:.2f} fits/s in the last run ({res.nranks} ranks), "
                 f"{overall:.2f} fits/s over {format_seconds(res.run_seconds)} of fitting "
                 f"in {res.runs} run(s); time left: {eta}")
    age = ""
    try:
        t = dt.datetime.strptime(res.updated, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=dt.timezone.utc)
        age = f" ({format_seconds((dt.datetime.now(dt.timezone.utc) - t).total_seconds())} ago)"
    except ValueError:
        pass
    lines.append(f"  last checkpoint: {res.updated}{age}, {res.checkpoints} in total; "
                 f"complete: {'yes' if res.complete else 'no'}")
    lines.extend(f"  {line}" for line in engine_report(res, cfg.fit.verify_fraction))
    top = res.failure_summary()
    if top:
        lines.append("  most common failure reasons:")
        lines.extend(f"    {count:6d} x {text}" for count, text in top)
    return "\n".join(lines)
