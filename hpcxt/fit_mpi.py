"""MPI master/worker fitting of every region, with checkpoints and restart.

Run as::

    mpiexec -n N python -m mpi4py -m hpcxt fit CONFIG [--resume]

Rank 0 is the master: it decides what is left to fit, hands out batches of
region ids on request, records the results and is the only writer of
``<workdir>/fit/results.h5``. Ranks 1..N-1 are workers: each reads the
bundle and region table once, builds the Sherpa responses once, then fits
batch after batch (:mod:`hpcxt.fit`, no MPI inside). With one rank (no
launcher, or ``-n 1``) rank 0 fits everything itself through the same
kernel and writes the same file.

Messages: a worker sends ``TAG_RESULT`` (its last batch's
:class:`~hpcxt.fit.RecordBatch`, or None when it starts) and gets back
``TAG_WORK`` (an int64 array of region ids) or ``TAG_STOP``. Both sides
wait with ``Iprobe`` and short sleeps rather than a blocking receive:
MPICH's blocking receive busy-polls and would take a core from the fits.

Batches: ``fit.batch_size`` regions, or with ``auto`` about
:data:`TARGET_BATCH_SECONDS` of work judged from the fits so far, never
more than a worker's share of what is left, so the tail stays balanced.

Checkpoints: at most every ``fit.checkpoint_seconds`` (0: after every
batch), once at the start and once at the end, written aside and renamed
(:mod:`hpcxt.io.checkpoint`). SIGTERM or SIGUSR1 (what Slurm and PBS send
before the wall-time limit, and what ``mpiexec`` forwards to every rank)
make the master stop handing out work, collect the batches in flight for at
most :data:`SIGNAL_GRACE_SECONDS`, write a final checkpoint, stop the
workers and return :data:`hpcxt.errors.EXIT_CHECKPOINTED` (85); workers
ignore the signal and wait for the master's word. Under ``python -m
mpi4py`` a non-zero exit status ends in ``MPI_Abort(85)`` (MPICH prints one
"application called MPI_Abort" line) after the checkpoint is on disk, and
``mpiexec`` exits with 85. ``--resume`` then fits only regions without a
final status (failed is final).

Faults are injected by tests through a :class:`hpcxt.hooks.RunHooks`
object passed to :func:`run_fit` (failing regions, slow fits, a SIGKILL of
the master halfway through a checkpoint or of a worker on its first batch);
production code reads no test switch.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections import deque
from pathlib import Path

import numpy as np

from .errors import EXIT_CHECKPOINTED, InputError
from .fit import FitSettings, RecordBatch, RegionFitter, fit_region
from .spectra import RegionSpectra
from .hooks import NO_HOOKS
from .io.checkpoint import (FitResults, changed_keys, fit_inputs, inputs_hash, read_results,
                            utc_now, write_results)
from .io.workdir import WorkDir

log = logging.getLogger("hpcxt.fit")

TAG_WORK, TAG_RESULT, TAG_STOP = 11, 12, 13
#: Work per batch aimed at with ``batch_size: auto``, s.
TARGET_BATCH_SECONDS = 1.0
MAX_AUTO_BATCH = 1000
#: Longest the master waits for batches in flight after SIGTERM/SIGUSR1, s.
SIGNAL_GRACE_SECONDS = 20.0
#: Seconds between progress lines.
PROGRESS_SECONDS = 10.0
#: Longest sleep between polls for a message, s.
MAX_POLL_SLEEP = 0.002

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def results_path(cfg) -> Path:
    return WorkDir.of(cfg).results


# --------------------------------------------------------------------------
# the worker side: fitting batches


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
    """

    def __init__(self, cfg, rank: int = 0):
        from .io.bundle import read_bundle
        from .io.regions_table import read_regions

        wd = WorkDir.of(cfg)
        bundle = read_bundle(wd.bundle)
        table = read_regions(wd.regions)
        self.rank = rank
        self.nobs = len(bundle.observations)
        self.spectra = RegionSpectra(bundle.observations, table)
        self.fitter = RegionFitter(FitSettings.from_config(cfg),
                                   [o.response for o in bundle.observations],
                                   has_background=bundle.has_background)

    def __call__(self, region_ids) -> RecordBatch:
        ids = [int(i) for i in region_ids]
        records = [fit_region(self.fitter, self.spectra, i) for i in ids]
        return RecordBatch.from_records(ids, records, self.nobs, worker=self.rank)


def _wait_message(comm, source, tags):
    """Receive the next message from ``source`` with one of ``tags``, politely.

    Spins briefly, then sleeps with growing pauses (up to MAX_POLL_SLEEP)
    between ``Iprobe`` calls so a waiting rank leaves its core to others.
    """
    from mpi4py import MPI
    st = MPI.Status()
    pause = 0.0
    while True:
        if comm.Iprobe(source=source, tag=MPI.ANY_TAG, status=st) and st.Get_tag() in tags:
            tag = st.Get_tag()
            return tag, comm.recv(source=st.Get_source(), tag=tag)
        time.sleep(pause)
        pause = min(MAX_POLL_SLEEP, pause * 2 + 1e-5)


def _worker_loop(comm, fit_batch, hooks=NO_HOOKS) -> None:
    """Ask for work, fit it, send it back, until the master says stop."""
    rank = comm.Get_rank()
    comm.send(None, dest=0, tag=TAG_RESULT)
    nth = 0
    while True:
        tag, ids = _wait_message(comm, 0, (TAG_WORK, TAG_STOP))
        if tag == TAG_STOP:
            return
        nth += 1
        hooks.worker_got_batch(rank, nth)
        comm.send(fit_batch(ids), dest=0, tag=TAG_RESULT)


# --------------------------------------------------------------------------
# the master side: deciding what to fit


def _describe(res: FitResults) -> str:
    return (f"{len(res)} regions: {res.n_ok} ok, {res.n_failed} failed, "
            f"{res.n_pending} pending")


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
    from .io.bundle import read_bundle_identity
    from .io.regions_table import read_regions

    wd = WorkDir.of(cfg)
    path, table_path, bundle_path = wd.results, wd.regions, wd.bundle
    table = read_regions(table_path)
    bundle_obsids, bundle_config_hash = read_bundle_identity(bundle_path)
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
        raise InputError(f"holds an unfinished fit ({_describe(res)}); pass --resume to "
                         "continue it, or move it away to start over", path=path)
    res.runs += 1
    res.run_started = utc_now()
    res.final_at_run_start = res.n_final
    res.seconds_at_run_start = res.run_seconds
    res.nranks = nranks
    return res, True


class _Master:
    """Bookkeeping of one run on rank 0: batches, progress, checkpoints."""

    def __init__(self, cfg, res: FitResults, nworkers: int, hooks=NO_HOOKS):
        self.cfg = cfg
        self.hooks = hooks
        self.res = res
        self.path = results_path(cfg)
        self.pending = deque(int(i) for i in res.pending_ids())
        self.nworkers = max(1, nworkers)
        bs = cfg.fit.batch_size
        self.fixed_batch = None if bs == "auto" else int(bs)
        self.interval = float(cfg.fit.checkpoint_seconds)
        self.mean_fit = None
        self.t_start = time.monotonic()
        self.run_seconds_before = res.run_seconds
        self.last_checkpoint = -math.inf
        self.last_progress = time.monotonic()
        self.checkpoints_this_run = 0
        self.batches = 0
        self.done_this_run = 0
        self.dirty = True
        self.signal = None

    # -- signals -------------------------------------------------------------

    def _on_signal(self, signum, frame):
        self.signal = signum  # acted on in the loop; nothing else is safe here

    def install_signals(self):
        return {s: signal.signal(s, self._on_signal) for s in HANDLED_SIGNALS}

    # -- batches -------------------------------------------------------------

    def batch_size(self) -> int:
        if self.fixed_batch is not None:
            return self.fixed_batch
        if self.mean_fit is None:
            size = 1
        else:
            size = int(TARGET_BATCH_SECONDS / max(self.mean_fit, 1e-6))
        share = math.ceil(len(self.pending) / (2 * self.nworkers))
        return max(1, min(size, MAX_AUTO_BATCH, share))

    def next_batch(self) -> np.ndarray:
        n = min(self.batch_size(), len(self.pending))
        return np.array([self.pending.popleft() for _ in range(n)], dtype=np.int64)

    def record(self, batch: RecordBatch) -> None:
        if batch is None or len(batch) == 0:
            return
        self.res.record(batch)
        self.batches += 1
        self.done_this_run += len(batch)
        self.dirty = True
        per_fit = float(np.mean(batch.fit_seconds))
        self.mean_fit = per_fit if self.mean_fit is None else 0.7 * self.mean_fit + 0.3 * per_fit
        self.hooks.batch_recorded(self.batches)

    # -- checkpoints and progress ----------------------------------------------

    def _midway(self):
        self.hooks.checkpoint_midway(self.checkpoints_this_run + 1)

    def checkpoint(self) -> None:
        t0 = time.monotonic()
        res = self.res
        res.updated = utc_now()
        res.run_seconds = self.run_seconds_before + (t0 - self.t_start)
        res.checkpoints += 1
        write_results(self.path, res, midway=self._midway)
        self.checkpoints_this_run += 1
        dt = time.monotonic() - t0
        res.checkpoint_seconds_total += dt
        self.last_checkpoint = time.monotonic()
        self.dirty = False
        log.debug("fit: checkpoint %d written in %.3f s", res.checkpoints, dt)
        self.hooks.checkpoint_written(self.checkpoints_this_run)

    def maybe_checkpoint(self) -> None:
        if self.dirty and time.monotonic() - self.last_checkpoint >= self.interval:
            self.checkpoint()

    def rate(self) -> float:
        dt = time.monotonic() - self.t_start
        return self.done_this_run / dt if dt > 0 else 0.0

    def maybe_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_progress < PROGRESS_SECONDS:
            return
        self.last_progress = now
        res = self.res
        rate = self.rate()
        left = res.n_pending
        eta = _format_seconds(left / rate) if rate > 0 else "unknown"
        log.info("fit: %d/%d final (%d ok, %d failed), %.2f fits/s, ETA %s",
                 res.n_final, len(res), res.n_ok, res.n_failed, rate, eta)

    def summary(self) -> None:
        res = self.res
        elapsed = time.monotonic() - self.t_start
        share = 100.0 * res.checkpoint_seconds_total / max(res.run_seconds, 1e-9)
        log.info("fit: %s; %d fits in %.1f s this run (%.2f fits/s); %d checkpoints, "
                 "%.3f s in total (%.2f%% of the fitting time)", _describe(res),
                 self.done_this_run, elapsed, self.rate(), res.checkpoints,
                 res.checkpoint_seconds_total, share)


def _format_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "unknown"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _serial_loop(m: _Master, fit_batch) -> bool:
    """Rank 0 alone: fit batch after batch. Returns True if stopped by a signal."""
    while m.pending:
        if m.signal is not None:
            return True
        m.record(fit_batch(m.next_batch()))
        m.maybe_checkpoint()
        m.maybe_progress()
    return False


def _master_loop(m: _Master, comm) -> bool:
    """Hand out batches until every region is final. True if stopped by a signal."""
    from mpi4py import MPI
    st = MPI.Status()
    active = set(range(1, comm.Get_size()))
    in_flight: dict[int, int] = {}
    stopping_since = None
    pause = 0.0
    while active:
        got = False
        while comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_RESULT, status=st):
            w = st.Get_source()
            m.record(comm.recv(source=w, tag=TAG_RESULT))
            in_flight.pop(w, None)
            if m.pending and stopping_since is None:
                ids = m.next_batch()
                comm.send(ids, dest=w, tag=TAG_WORK)
                in_flight[w] = len(ids)
            else:
                comm.send(None, dest=w, tag=TAG_STOP)
                active.discard(w)
            got = True
            if m.interval == 0:
                m.maybe_checkpoint()
        if m.signal is not None and stopping_since is None:
            stopping_since = time.monotonic()
            log.warning("fit: signal %d received: collecting %d batches in flight, then "
                        "checkpointing", m.signal, len(in_flight))
        if stopping_since is not None and (
                not in_flight or time.monotonic() - stopping_since > SIGNAL_GRACE_SECONDS):
            # Workers still fitting get their stop when they report back;
            # those results are dropped (their regions stay pending).
            for w in active:
                if w not in in_flight:
                    comm.send(None, dest=w, tag=TAG_STOP)
            return True
        m.maybe_checkpoint()
        m.maybe_progress()
        if got:
            pause = 0.0
        else:
            time.sleep(pause)
            pause = min(MAX_POLL_SLEEP, pause * 2 + 1e-5)
    return m.signal is not None


def run_fit(cfg, comm, resume: bool = False, fit_factory=None, hooks=None) -> int:
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

    Returns
    -------
    int
        0 when every region has a final status (or there was nothing to
        do), :data:`~hpcxt.errors.EXIT_CHECKPOINTED` when a SIGTERM/SIGUSR1
        made the run checkpoint and stop early. That is the master's status;
        workers return 0 (the job's exit status is the master's under
        ``python -m mpi4py``, which aborts the job with a non-zero status).
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    hooks = hooks or NO_HOOKS
    base_factory = fit_factory or BatchFitter

    def factory(cfg, rank):
        return hooks.wrap_fit_batch(base_factory(cfg, rank), rank)

    if rank != 0:
        return _run_worker(cfg, comm, rank, factory, hooks)

    try:
        res, todo = prepare_results(cfg, resume, nranks=size)
    except BaseException:
        if size > 1:
            comm.bcast(("exit", 2), root=0)
        raise
    if not todo:
        log.info("fit: %s is up to date (%s)", results_path(cfg), _describe(res))
        if size > 1:
            comm.bcast(("exit", 0), root=0)
        return 0
    if size > 1:
        comm.bcast(("go", 0), root=0)
    m = _Master(cfg, res, nworkers=size - 1, hooks=hooks)
    log.info("fit: %s; %d to fit on %d %s (master pid %d); statistic %s, errors %s",
             _describe(res), len(m.pending), max(size - 1, 1),
             "worker ranks" if size > 1 else "rank (serial)", os.getpid(),
             cfg.fit.statistic, cfg.fit.errors)
    old = m.install_signals()
    try:
        m.checkpoint()
        if size == 1:
            stopped = _serial_loop(m, factory(cfg, 0))
        else:
            stopped = _master_loop(m, comm)
        m.checkpoint()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    m.maybe_progress(force=True)
    m.summary()
    if stopped and not m.res.complete:
        log.warning("fit: stopped by signal %s with %d regions pending; "
                    "continue with 'hpcxt fit --resume'", m.signal, m.res.n_pending)
        return EXIT_CHECKPOINTED
    return 0


def _run_worker(cfg, comm, rank: int, factory, hooks) -> int:
    # Scheduler signals reach every rank; only the master acts on them.
    old = {s: signal.signal(s, lambda signum, frame: None) for s in HANDLED_SIGNALS}
    try:
        what, status = comm.bcast(None, root=0)
        if what != "go":
            # The master reports why; a worker only mirrors its status.
            return status
        _worker_loop(comm, factory(cfg, rank), hooks)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


# --------------------------------------------------------------------------
# hpcxt status


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
        eta = _format_seconds(res.n_pending / rate)
    else:
        eta = "unknown"
    lines.append(f"  rate: {last:.2f} fits/s in the last run ({res.nranks} ranks), "
                 f"{overall:.2f} fits/s over {_format_seconds(res.run_seconds)} of fitting "
                 f"in {res.runs} run(s); time left: {eta}")
    age = ""
    try:
        t = dt.datetime.strptime(res.updated, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=dt.timezone.utc)
        age = f" ({_format_seconds((dt.datetime.now(dt.timezone.utc) - t).total_seconds())} ago)"
    except ValueError:
        pass
    lines.append(f"  last checkpoint: {res.updated}{age}, {res.checkpoints} in total; "
                 f"complete: {'yes' if res.complete else 'no'}")
    top = res.failure_summary()
    if top:
        lines.append("  most common failure reasons:")
        lines.extend(f"    {count:6d} x {text}" for count, text in top)
    return "\n".join(lines)
