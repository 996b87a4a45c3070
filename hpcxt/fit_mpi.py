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

Why not :mod:`mpi4py.futures`: measured on 2 shared cores with 3 worker
ranks and instant tasks (``benchmarks/futures_overhead.py`` beside
``benchmarks/fit.py``), ``MPIPoolExecutor.map`` dispatched 4,600 tasks/s
one at a time and 43,000/s in chunks of 10, against this protocol's 2,600
and 18,600 regions/s (each carrying a whole result batch and recorded
into the results table) and 133,000 regions/s with ``batch_size: auto``.
Per message, futures is about twice as cheap, but with adaptive batches
the dispatch is never the bottleneck, and this protocol gives what the
fit needs and futures does not: batch sizes chosen at dispatch time from
measured fit rates, a master that on SIGTERM/SIGUSR1 stops handing out
work, collects only the batches in flight and checkpoints within a grace
period, workers that keep their responses between batches, and no need
for ``MPI_Comm_spawn`` or a ``-m mpi4py.futures`` launch, which some
HPC sites do not support.

Batches: ``fit.batch_size`` regions, or with ``auto`` about
:data:`TARGET_BATCH_SECONDS` of work judged from the fits so far, never
more than a worker's share of what is left, so the tail stays balanced,
unless that would keep the master busy more than :data:`MAX_MASTER_LOAD`
of its time (fast fits on many workers; see :func:`auto_batch_size` and
``benchmarks/scaling.py``).

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
object passed to :func:`run_master_worker` (failing regions, slow fits, a SIGKILL of
the master halfway through a checkpoint or of a worker on its first batch);
production code reads no test switch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import EXIT_CHECKPOINTED
from .fit import RecordBatch
from .hooks import NO_HOOKS
from .io.checkpoint import FitResults, utc_now, write_results
from .parallel import Backoff, wait_message
from .schema import Status

log = logging.getLogger("hpcxt.fit")

TAG_WORK, TAG_RESULT, TAG_STOP = 11, 12, 13
#: Work per batch aimed at with ``batch_size: auto``, s.
TARGET_BATCH_SECONDS = 1.0
MAX_AUTO_BATCH = 1000
#: With ``batch_size: auto``, batches grow (up to MAX_AUTO_BATCH) until the
#: workers' requests keep the master busy at most this share of the time.
MAX_MASTER_LOAD = 0.5
#: Longest the master waits for batches in flight after SIGTERM/SIGUSR1, s.
SIGNAL_GRACE_SECONDS = 20.0
#: Seconds between progress lines.
PROGRESS_SECONDS = 10.0

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


# --------------------------------------------------------------------------
# the worker side: fitting batches


def _worker_loop(comm, fit_batch, hooks=NO_HOOKS) -> None:
    """Ask for work, fit it, send it back, until the master says stop."""
    rank = comm.Get_rank()
    comm.send(None, dest=0, tag=TAG_RESULT)
    nth = 0
    while True:
        tag, ids = wait_message(comm, 0, (TAG_WORK, TAG_STOP))
        if tag == TAG_STOP:
            return
        nth += 1
        hooks.worker_got_batch(rank, nth)
        comm.send(fit_batch(ids), dest=0, tag=TAG_RESULT)


# --------------------------------------------------------------------------
# the master side: deciding what to fit


@dataclass(frozen=True)
class RunOptions:
    """How the master runs (not what it computes).

    Attributes
    ----------
    results_path : Path
        ``results.h5``, written only by the master.
    batch_size : int or "auto"
        Regions per batch; ``auto`` aims at :data:`TARGET_BATCH_SECONDS`.
    checkpoint_seconds : float
        Least time between checkpoints, s (0: after every batch).
    """

    results_path: Path
    batch_size: object = "auto"
    checkpoint_seconds: float = 60.0


def describe(res: FitResults) -> str:
    """``"N regions: a ok, b failed, c pending"``."""
    return (f"{len(res)} regions: {res.n_ok} ok, {res.n_failed} failed, "
            f"{res.n_pending} pending")


def auto_batch_size(mean_fit: float | None, pending: int, nworkers: int,
                    master_seconds: float | None = None) -> int:
    """Regions in the next batch with ``batch_size: auto``.

    About :data:`TARGET_BATCH_SECONDS` of work, at most :data:`MAX_AUTO_BATCH`
    regions and half a worker's share of what is left (so that the last
    batches are small and the workers finish together), but never so small
    that the master, at ``master_seconds`` a batch, would be busy more than
    :data:`MAX_MASTER_LOAD` of its time: with fast fits and many workers the
    share shrinks to a few regions and the master, not the fits, would set
    the pace.

    Parameters
    ----------
    mean_fit : float or None
        Recent mean fit time of one region, s (None before the first result).
    pending : int
        Regions not handed out yet.
    nworkers : int
    master_seconds : float or None
        The master's recent CPU time per batch (receive, record, send), s.
    """
    if mean_fit is None:
        return 1
    mean_fit = max(mean_fit, 1e-6)
    size = min(int(TARGET_BATCH_SECONDS / mean_fit), MAX_AUTO_BATCH,
               math.ceil(pending / (2 * nworkers)))
    if master_seconds:
        # nworkers requests every size * mean_fit seconds, master_seconds each
        floor = math.ceil(nworkers * master_seconds / (MAX_MASTER_LOAD * mean_fit))
        size = max(size, min(floor, MAX_AUTO_BATCH))
    return max(1, size)


def resumed_mean_fit(res: FitResults) -> float | None:
    """Median fit time of the regions a previous run finished, s (None if none).

    A resumed run sizes its first batches from it, instead of handing every
    worker one region while it measures: with many workers that first
    round of one-region batches keeps the master busy, and the workers
    then come back all at once.
    """
    done = res.fit_seconds[(res.status != Status.PENDING) & (res.fit_seconds > 0)]
    return float(np.median(done)) if done.size else None


@dataclass
class MasterStats:
    """What the master did in one run (logged at the end; see ``RunHooks.master_finished``).

    Attributes
    ----------
    batches : int
        Batches recorded.
    regions : int
        Regions recorded.
    busy_seconds : float
        Master CPU time spent receiving and recording results and sending
        work, s (not polling, checkpoints or progress lines).
    loop_seconds : float
        Wall time from the first checkpoint to the last, s.
    """

    batches: int = 0
    regions: int = 0
    busy_seconds: float = 0.0
    loop_seconds: float = 0.0


class _Master:
    """Bookkeeping of one run on rank 0: batches, progress, checkpoints."""

    def __init__(self, options: RunOptions, res: FitResults, nworkers: int, hooks=NO_HOOKS):
        self.hooks = hooks
        self.res = res
        self.path = Path(options.results_path)
        # ids left to hand out: pending[next_pending:] (an array, not a deque
        # of Python ints: less memory and O(1) per batch for 10^6 regions)
        self.pending = np.array(res.pending_ids(), dtype=np.int64)
        self.next_pending = 0
        self.nworkers = max(1, nworkers)
        bs = options.batch_size
        self.fixed_batch = None if bs == "auto" else int(bs)
        self.interval = float(options.checkpoint_seconds)
        self.mean_fit = resumed_mean_fit(res)
        self.t_start = time.monotonic()
        self.run_seconds_before = res.run_seconds
        self.last_checkpoint = -math.inf
        self.last_progress = time.monotonic()
        self.checkpoints_this_run = 0
        self.batches = 0
        self.done_this_run = 0
        self.dirty = True
        self.signal = None
        self.busy_seconds = 0.0
        self.master_seconds = None

    # -- signals -------------------------------------------------------------

    def _on_signal(self, signum, frame):
        self.signal = signum  # acted on in the loop; nothing else is safe here

    def install_signals(self):
        return {s: signal.signal(s, self._on_signal) for s in HANDLED_SIGNALS}

    # -- batches -------------------------------------------------------------

    @property
    def n_pending(self) -> int:
        """Regions not handed out yet."""
        return int(self.pending.size - self.next_pending)

    def batch_size(self) -> int:
        if self.fixed_batch is not None:
            return self.fixed_batch
        return auto_batch_size(self.mean_fit, self.n_pending, self.nworkers,
                               self.master_seconds)

    def next_batch(self) -> np.ndarray:
        start = self.next_pending
        self.next_pending = min(start + self.batch_size(), self.pending.size)
        return self.pending[start:self.next_pending].copy()

    def note_busy(self, seconds: float) -> None:
        """The master spent ``seconds`` of CPU on one batch's messages."""
        self.busy_seconds += seconds
        self.master_seconds = (seconds if self.master_seconds is None
                               else 0.7 * self.master_seconds + 0.3 * seconds)

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
        eta = format_seconds(left / rate) if rate > 0 else "unknown"
        log.info("fit: %d/%d final (%d ok, %d failed), %.2f fits/s, ETA %s",
                 res.n_final, len(res), res.n_ok, res.n_failed, rate, eta)

    def stats(self) -> MasterStats:
        return MasterStats(batches=self.batches, regions=self.done_this_run,
                           busy_seconds=self.busy_seconds,
                           loop_seconds=time.monotonic() - self.t_start)

    def summary(self) -> None:
        res = self.res
        st = self.stats()
        share = 100.0 * res.checkpoint_seconds_total / max(res.run_seconds, 1e-9)
        busy = ""
        if self.nworkers > 1 or st.busy_seconds > 0:
            busy = (f"; master busy {100.0 * st.busy_seconds / max(st.loop_seconds, 1e-9):.1f}%"
                    f" of the time, {1e6 * st.busy_seconds / max(st.batches, 1):.0f} us "
                    "per batch")
        log.info("fit: %s; %d fits in %.1f s this run (%.2f fits/s); %d checkpoints, "
                 "%.3f s in total (%.2f%% of the fitting time)%s", describe(res),
                 self.done_this_run, st.loop_seconds, self.rate(), res.checkpoints,
                 res.checkpoint_seconds_total, share, busy)
        self.hooks.master_finished(st)


def _serial_loop(m: _Master, fit_batch) -> bool:
    """Rank 0 alone: fit batch after batch. Returns True if stopped by a signal."""
    while m.n_pending:
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
    backoff = Backoff()
    while active:
        got = False
        while comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_RESULT, status=st):
            c0 = time.process_time()
            w = st.Get_source()
            m.record(comm.recv(source=w, tag=TAG_RESULT))
            in_flight.pop(w, None)
            if m.n_pending and stopping_since is None:
                ids = m.next_batch()
                comm.send(ids, dest=w, tag=TAG_WORK)
                in_flight[w] = len(ids)
            else:
                comm.send(None, dest=w, tag=TAG_STOP)
                active.discard(w)
            m.note_busy(time.process_time() - c0)
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
            backoff.reset()
        else:
            backoff.wait()
    return m.signal is not None


def run_master_worker(comm, start, make_fit_batch, options: RunOptions, hooks=None,
                      share=None) -> int:
    """Fit every pending region of ``start`` on the ranks of ``comm``. Collective.

    Parameters
    ----------
    comm : mpi4py communicator
        Rank 0 is the master; with one rank it fits serially.
    start : FitResults or int
        On rank 0: the results to continue, or an exit status that ends
        the run on every rank at once (the driver found nothing to do, or
        bad input). Ignored on the other ranks.
    make_fit_batch : callable
        ``make_fit_batch(rank) -> fit_batch`` with ``fit_batch(ids)``
        returning a :class:`~hpcxt.fit.RecordBatch`; called once per fitting
        rank, after the master said go.
    options : RunOptions
    hooks : hpcxt.hooks.RunHooks, optional
    share : callable, optional
        ``share(comm)`` returns a context manager that every rank enters
        together once the master said go (before any ``make_fit_batch``)
        and leaves when its part of the run ends: the fit stage puts the
        sorted events in each node's shared memory there. Collective.

    Returns
    -------
    int
        0 when every region has a final status,
        :data:`~hpcxt.errors.EXIT_CHECKPOINTED` when SIGTERM/SIGUSR1 made the
        run checkpoint and stop early, or the status ``start`` gave. That is
        the master's status; workers return 0 (or the given status).
    """
    hooks = hooks or NO_HOOKS
    share = share or (lambda comm: contextlib.nullcontext())
    rank, size = comm.Get_rank(), comm.Get_size()
    if rank != 0:
        return _run_worker(comm, rank, make_fit_batch, hooks, share)
    if not isinstance(start, FitResults):
        if size > 1:
            comm.bcast(("exit", int(start)), root=0)
        return int(start)
    if size > 1:
        comm.bcast(("go", 0), root=0)
    m = _Master(options, start, nworkers=size - 1, hooks=hooks)
    log.info("fit: %s; %d to fit on %d %s (master pid %d)", describe(start), m.n_pending,
             max(size - 1, 1), {1: "rank (serial)", 2: "worker rank"}.get(size, "worker ranks"),
             os.getpid())
    old = m.install_signals()
    try:
        # The first checkpoint is written while the workers build their
        # fitters; the last before leaving ``share``, whose collective free
        # waits for the workers.
        with share(comm):
            m.checkpoint()
            if size == 1:
                stopped = _serial_loop(m, make_fit_batch(0))
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


def _run_worker(comm, rank: int, make_fit_batch, hooks, share) -> int:
    # Scheduler signals reach every rank; only the master acts on them.
    old = {s: signal.signal(s, lambda signum, frame: None) for s in HANDLED_SIGNALS}
    try:
        what, status = comm.bcast(None, root=0)
        if what != "go":
            # The master reports why; a worker only mirrors its status.
            return status
        with share(comm):
            _worker_loop(comm, make_fit_batch(rank), hooks)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


def format_seconds(s: float) -> str:
    """``"42s"``, ``"3m07s"``, ``"2h05m"``; ``"unknown"`` for inf/NaN."""
    if not math.isfinite(s):
        return "unknown"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
