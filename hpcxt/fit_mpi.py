"""MPI master/worker fitting of every region, with checkpoints and restart.

Run as::

    mpiexec -n N python -m mpi4py -m hpcxt fit CONFIG [--resume]

Rank 0 is the master: it decides what is left to fit, records the results
and is the only writer of ``<workdir>/fit/results.h5``. Ranks 1..N-1 are
workers: each reads the bundle and region table once, builds the Sherpa
responses once, then fits batch after batch (:mod:`hpcxt.fit`, no MPI
inside). With one rank (no launcher, or ``-n 1``) rank 0 fits everything
itself through the same kernel and writes the same file.

Work: the master tells every worker at the start which regions are left
(:class:`Plan`, the ids as runs of consecutive ids); each worker then takes
its next batch, positions ``[lo, lo + size)`` of that list, from a counter
that every rank advances atomically (:class:`hpcxt.parallel.WorkCounter`,
MPI-3 RMA ``MPI_Fetch_and_op`` on the master's window). The master hands
out nothing, so no worker waits for it, and it does not set the pace
however many workers there are and however fast the fits.

Results: a worker sends what it fitted (packed batches,
:meth:`hpcxt.fit.RecordBatch.pack`) at most every :data:`REPORT_SECONDS`
with a non-blocking send (after every batch with ``checkpoint_seconds:
0``), and once more with ``TAG_DONE`` when the counter runs out. The
master keeps the reports as they arrive and records them in its idle
moments, many at once. It waits with ``Iprobe`` and short sleeps rather
than a blocking receive: MPICH's blocking receive busy-polls and would take
a core from the fits. (The previous protocol, a request from the worker
answered by a batch of ids from the master, cost the master 50-180 us
per batch and set the pace of 1 ms fits past a few hundred ranks:
``benchmarks/scaling.py``.)

Batches: ``fit.batch_size`` regions, or with ``auto`` about
:data:`TARGET_BATCH_SECONDS` of work judged from the worker's own fits,
never more than half a worker's share of what is left (guided
self-scheduling: the last batches are small and the workers finish
together), never less than :data:`MIN_BATCH_SECONDS` (see
:func:`auto_batch_size`).

Checkpoints: at most every ``fit.checkpoint_seconds`` (0: after every
report), once at the start and once at the end, written aside and renamed
(:mod:`hpcxt.io.checkpoint`). Workers keep fitting while the master writes
one (unless the counter is served by messages, see
:class:`~hpcxt.parallel.WorkCounter`). The last one is written ahead when the work left is about
:data:`STAGE_LEAD` times as long as writing it
(:class:`hpcxt.io.checkpoint.StagedResults`), and only the rows
fitted since are written once the last result is in. SIGTERM or SIGUSR1
(what Slurm and PBS send before the wall-time limit, and what ``mpiexec``
forwards to every rank) make the master stop the counter, collect what the
workers were fitting for at most :data:`SIGNAL_GRACE_SECONDS`, write a
final checkpoint and return :data:`hpcxt.errors.EXIT_CHECKPOINTED` (85);
workers ignore the signal. Workers still fitting after the grace period are
not waited for: once the checkpoint is on disk the master ends the job with
``MPI_Abort(85)`` (:func:`_end_job`). Under ``python -m mpi4py`` a non-zero exit
status ends in ``MPI_Abort(85)`` (MPICH prints one "application called
MPI_Abort" line) after the checkpoint is on disk, and ``mpiexec`` exits
with 85. ``--resume`` then fits only regions without a final status
(failed is final).

Why not :mod:`mpi4py.futures`: measured on 2 shared cores with 3 worker
ranks and instant tasks (``benchmarks/futures_overhead.py``),
``MPIPoolExecutor.map`` dispatched 4,600 tasks/s one at a time and 43,000/s
in chunks of 10. It has none of what the fit needs: batch sizes from
measured fit rates, a master that never stands between a worker and its
next batch, a stop on SIGTERM/SIGUSR1 with a checkpoint within a grace
period, workers that keep their responses between batches, and no need
for ``MPI_Comm_spawn`` or a ``-m mpi4py.futures`` launch, which some HPC
sites do not support.

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
from .io.checkpoint import FitResults, StagedResults, utc_now, write_results
from .parallel import Backoff, IdRuns, WorkCounter, wait_message
from .schema import Status

log = logging.getLogger("hpcxt.fit")

TAG_RESULT, TAG_STOP, TAG_DONE = 12, 13, 14
#: Work per batch aimed at with ``batch_size: auto``, s. A take from the
#: counter costs microseconds, so batches can be short; short batches keep a
#: worker from taking a whole cluster of slow regions (Sherpa fallbacks are
#: 100 times slower than template fits, and neighbours).
TARGET_BATCH_SECONDS = 0.1
#: ... but at least this much, so a worker takes from the counter at most
#: a few hundred times a second however fast its fits.
MIN_BATCH_SECONDS = 0.005
MAX_AUTO_BATCH = 1000
#: Most time between two reports of a worker, s (checkpoint_seconds 0:
#: after every batch) ...
REPORT_SECONDS = 0.5
#: ... but a quarter of the run's time left when that is shorter, down to
#: this many seconds per worker (the master then spends about half of its
#: time on reports at 25 us each): the master's copy, and the final
#: checkpoint written ahead from it, are then never far behind the fits.
REPORT_SECONDS_PER_WORKER = 50e-6
#: The master stages the final checkpoint when the work left is about this
#: many times the duration of its last whole checkpoint ...
STAGE_LEAD = 3.0
#: ... if that checkpoint took at least this long, s.
STAGE_MIN_SECONDS = 0.05
#: Longest the master waits for batches in flight after SIGTERM/SIGUSR1, s.
SIGNAL_GRACE_SECONDS = 20.0
#: Seconds between progress lines.
PROGRESS_SECONDS = 10.0

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


# --------------------------------------------------------------------------
# the worker side: fitting batches


@dataclass(frozen=True)
class Plan:
    """What every worker is told when the run starts.

    Attributes
    ----------
    todo : IdRuns
        The region ids to fit; a worker fits positions ``[lo, hi)`` of it
        that it took from the run's :class:`~hpcxt.parallel.WorkCounter`.
    fixed_batch : int or None
        ``fit.batch_size``, or None for ``auto`` (:func:`auto_batch_size`).
    mean_fit : float or None
        Median fit time of the regions a previous run finished, s.
    report_seconds : float
        Most time between two reports of a worker to the master, s
        (0: after every batch; see :meth:`report_interval`).
    nworkers : int
    """

    todo: IdRuns
    fixed_batch: int | None
    mean_fit: float | None
    report_seconds: float
    nworkers: int

    def report_interval(self, mean_fit: float | None, remaining: int) -> float:
        """Least time between two reports, s: ``report_seconds``, or a quarter
        of the time the run has left (``remaining`` regions at ``mean_fit`` s on
        every worker) when that is shorter, but at least
        :data:`REPORT_SECONDS_PER_WORKER` times the workers."""
        if self.report_seconds == 0 or mean_fit is None:
            return self.report_seconds
        left = remaining * mean_fit / self.nworkers
        floor = min(self.report_seconds, self.nworkers * REPORT_SECONDS_PER_WORKER)
        return min(self.report_seconds, max(floor, left / 4))


def _worker_loop(comm, counter, plan: Plan, fit_batch, hooks=NO_HOOKS):
    """Take batches from the counter and fit them until none is left; report
    results to the master at most every ``plan.report_seconds`` without
    waiting for it, and once more at the end (``TAG_DONE``).

    Returns the requests of the reports not known to be received yet, to be
    waited for only after the master's ``TAG_STOP`` (a master that gave up
    waiting after a signal, :data:`SIGNAL_GRACE_SECONDS`, receives them
    never: it ends the job instead).
    """
    rank, n = comm.Get_rank(), len(plan.todo)
    mean_fit, remaining = plan.mean_fit, n
    unsent, last_report, request, nth = [], time.monotonic(), None, 0
    while True:
        if plan.fixed_batch:
            size = plan.fixed_batch
        else:
            size = auto_batch_size(mean_fit, remaining, plan.nworkers)
            if size > auto_batch_size(mean_fit, 0, plan.nworkers):
                # Less may be left than at this worker's last take (back from
                # a long batch it would take too much at the tail): read the
                # counter. At the smallest size, as at the tail, no need.
                remaining = max(n - counter.value(), 0)
                size = auto_batch_size(mean_fit, remaining, plan.nworkers)
        start = counter.take(size)
        if start >= n:
            break
        stop = min(start + size, n)
        remaining = n - stop
        nth += 1
        hooks.worker_got_batch(rank, nth)
        t0 = time.perf_counter()
        batch = fit_batch(plan.todo[start:stop])
        per_fit = (time.perf_counter() - t0) / (stop - start)
        mean_fit = per_fit if mean_fit is None else 0.7 * mean_fit + 0.3 * per_fit
        unsent.append(batch.pack())
        now = time.monotonic()
        # A report still in transit (the master is writing a checkpoint)
        # is not waited for: the results go with the next one.
        due = plan.report_interval(mean_fit, remaining)
        if now - last_report >= due and (request is None or request.Test()):
            request = comm.isend(unsent, dest=0, tag=TAG_RESULT)
            unsent, last_report = [], now
    requests = [] if request is None else [request]
    return requests + [comm.isend(unsent, dest=0, tag=TAG_DONE)]


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


def auto_batch_size(mean_fit: float | None, pending: int, nworkers: int) -> int:
    """Regions in the next batch with ``batch_size: auto``.

    About :data:`TARGET_BATCH_SECONDS` of work, at most :data:`MAX_AUTO_BATCH`
    regions and half a worker's share of what is left, so that the last
    batches are small and the workers finish together (guided
    self-scheduling), but at least :data:`MIN_BATCH_SECONDS` of work, so
    that a worker with very fast fits does not take from the counter
    thousands of times a second.

    Parameters
    ----------
    mean_fit : float or None
        Recent mean fit time of one region, s (None before the first result).
    pending : int
        Regions not taken yet (as the worker last saw the counter).
    nworkers : int
    """
    if mean_fit is None:
        return 1
    mean_fit = max(mean_fit, 1e-6)
    size = min(int(TARGET_BATCH_SECONDS / mean_fit), MAX_AUTO_BATCH,
               math.ceil(pending / (2 * nworkers)))
    size = max(size, min(int(MIN_BATCH_SECONDS / mean_fit), MAX_AUTO_BATCH))
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
        Reports received (a worker's report holds one or more batches; a
        serial run counts its batches).
    regions : int
        Regions recorded.
    busy_seconds : float
        Master CPU time spent receiving and recording reports, s (not
        polling, checkpoints or progress lines).
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
        self.received: list = []
        #: the final checkpoint written ahead (StagedResults), the region ids
        #: recorded since, and the duration of the last whole checkpoint, s
        self.staged = None
        self.staged_at = 0.0
        self.changed: list = []
        self.patched = 0
        self.write_seconds = 0.0
        self.stage_seconds = hooks.stage_final()
        self.gave_up = False

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
        return auto_batch_size(self.mean_fit, self.n_pending, self.nworkers)

    def next_batch(self) -> np.ndarray:
        """The serial run's next batch of region ids."""
        start = self.next_pending
        self.next_pending = min(start + self.batch_size(), self.pending.size)
        return self.pending[start:self.next_pending].copy()

    def plan(self) -> Plan:
        """What the workers are told at the start."""
        return Plan(todo=IdRuns(self.pending), fixed_batch=self.fixed_batch,
                    mean_fit=self.mean_fit,
                    report_seconds=0.0 if self.interval == 0 else REPORT_SECONDS,
                    nworkers=self.nworkers)

    def note_busy(self, seconds: float) -> None:
        """The master spent ``seconds`` of CPU on one message."""
        self.busy_seconds += seconds

    def receive(self, items: list) -> None:
        """Keep a worker's report (packed batches) until the next :meth:`flush`."""
        if not items:
            return
        self.received.extend(items)
        self.batches += 1
        self.dirty = True
        self.hooks.batch_recorded(self.batches)

    def flush(self) -> None:
        """Record every report kept since the last flush, all at once."""
        if self.received:
            c0 = time.process_time()
            batch, self.received = RecordBatch.unpack_many(self.received), []
            self.record(batch, count=False)
            self.busy_seconds += time.process_time() - c0

    def record(self, batch: RecordBatch, count: bool = True) -> None:
        if batch is None or len(batch) == 0:
            return
        self.res.record(batch)
        if self.staged is not None:
            self.changed.append(batch.region_id)
        if count:
            self.batches += 1
            self.hooks.batch_recorded(self.batches)
        self.done_this_run += len(batch)
        self.dirty = True
        per_fit = float(np.mean(batch.fit_seconds))
        self.mean_fit = per_fit if self.mean_fit is None else 0.7 * self.mean_fit + 0.3 * per_fit

    # -- checkpoints and progress ----------------------------------------------

    def _midway(self):
        self.hooks.checkpoint_midway(self.checkpoints_this_run + 1)

    def _stamp(self, t0: float) -> None:
        res = self.res
        res.updated = utc_now()
        res.run_seconds = self.run_seconds_before + (t0 - self.t_start)
        res.checkpoints += 1

    def _written(self, t0: float, what: str) -> None:
        dt = time.monotonic() - t0
        self.res.checkpoint_seconds_total += dt
        self.checkpoints_this_run += 1
        self.last_checkpoint = time.monotonic()
        self.dirty = False
        log.debug("fit: checkpoint %d %s in %.3f s", self.res.checkpoints, what, dt)
        self.hooks.checkpoint_written(self.checkpoints_this_run)

    def checkpoint(self) -> None:
        """Write every result so far (a staged final checkpoint is abandoned)."""
        self.flush()
        if self.staged is not None:
            self.staged.abandon()
            self.staged, self.changed = None, []
        t0 = time.monotonic()
        self._stamp(t0)
        write_results(self.path, self.res, midway=self._midway)
        self.write_seconds = time.monotonic() - t0
        self._written(t0, "written")

    def maybe_checkpoint(self) -> None:
        if self.dirty and time.monotonic() - self.last_checkpoint >= self.interval:
            if self.staged is not None:
                self._commit_stage()  # the staged file, brought up to date, is this one
            else:
                self.checkpoint()

    def maybe_stage(self) -> None:
        """Write the final checkpoint ahead when the work left is about
        :data:`STAGE_LEAD` times as long as writing it
        (:class:`~hpcxt.io.checkpoint.StagedResults`).

        The work left counts every region not recorded yet (being fitted, or
        fitted and not reported), spread over the workers. Only when a whole
        checkpoint took at least :data:`STAGE_MIN_SECONDS` (or the hooks ask
        for it), and never with ``checkpoint_seconds: 0``. Should the fits
        slow down, the staged file is committed when the next checkpoint is
        due, and staged again later.
        """
        if self.staged is not None or self.interval == 0 or self.mean_fit is None:
            return
        lead = self.stage_seconds
        if lead is None:
            if self.write_seconds < STAGE_MIN_SECONDS:
                return
            lead = STAGE_LEAD * self.write_seconds
        left = max(self.pending.size - self.done_this_run, 0) * self.mean_fit / self.nworkers
        if left > lead:
            return
        self.flush()
        t0 = time.monotonic()
        self.staged = StagedResults(self.path, self.res, midway=self._midway)
        self.staged_at, self.changed, self.patched = time.monotonic(), [], 0
        log.debug("fit: final checkpoint staged in %.3f s, %.3f s of work estimated left",
                  self.staged_at - t0, left)

    def catch_up(self) -> None:
        """Add the rows recorded since to the staged final checkpoint and flush it
        to disk (in the master's idle moments), so that the end has little
        left to write."""
        if self.staged is not None and self.changed:
            changed = np.concatenate(self.changed)
            self.staged.patch(self.res, changed, sync=True)
            self.patched += changed.size
            self.changed = []

    def _commit_stage(self) -> int:
        """Patch in the rows since the last catch-up and rename the staged file
        into place; the rows patched."""
        self.flush()
        t0 = time.monotonic()
        self._stamp(t0)
        changed = np.concatenate(self.changed) if self.changed else np.zeros(0, np.int64)
        self.staged.commit(self.res, changed)
        self.staged, self.changed = None, []
        self._written(t0, f"committed from the staged file, {changed.size} rows patched")
        return changed.size

    def final_checkpoint(self) -> None:
        """The run's last checkpoint: the staged one patched, or a whole one."""
        self.flush()
        if self.staged is None or self.signal is not None:
            self.checkpoint()
            return
        staged_at, t0 = self.staged_at, time.monotonic()
        at_end = self._commit_stage()
        log.info("fit: final checkpoint written %.2f s before the last result and completed "
                 "in %.3f s (%d rows added meanwhile, %d at the end)", t0 - staged_at,
                 time.monotonic() - t0, self.patched, at_end)

    def rate(self) -> float:
        dt = time.monotonic() - self.t_start
        return self.done_this_run / dt if dt > 0 else 0.0

    def maybe_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_progress < PROGRESS_SECONDS:
            return
        self.flush()
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
                    "per report")
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


def _master_loop(m: _Master, comm, counter) -> bool:
    """Receive reports until every worker is done. True if stopped by a signal.

    Workers take their batches from ``counter`` without the master; it only
    receives, records (in its idle moments, many reports at once),
    checkpoints and, on a signal, stops the counter. Receives are posted
    without blocking (``MPI_Improbe`` and ``MPI_Imrecv``): some message sizes
    need the sender's progress to complete, and a worker makes none while
    it fits. If workers are still fitting :data:`SIGNAL_GRACE_SECONDS` after
    a signal, ``m.gave_up`` is set.
    """
    from mpi4py import MPI
    st = MPI.Status()
    active = set(range(1, comm.Get_size()))
    posted: list = []  # (source, tag, request) of receives under way
    stopping_since = None
    grace = m.hooks.signal_grace(SIGNAL_GRACE_SECONDS)
    backoff = Backoff()
    # Not only "while active": a worker's TAG_DONE can complete before its
    # larger report sent just before (MPI orders the matching of messages,
    # not the completion of receives).
    while active or posted:
        got = False
        while m.signal is None or stopping_since is not None:
            message = comm.improbe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=st)
            if message is None:
                break
            posted.append((st.Get_source(), st.Get_tag(), message.irecv()))
        still = []
        for w, tag, request in posted:
            c0 = time.process_time()
            done, payload = request.test()
            if not done:
                still.append((w, tag, request))
                continue
            got = True
            if tag == counter.TAG_TAKE:  # a counter MPI could not put in a window
                counter.serve(w, payload)
                continue
            m.receive(payload)
            if tag == TAG_DONE:
                active.discard(w)
            m.note_busy(time.process_time() - c0)
            if m.interval == 0:
                m.maybe_checkpoint()
        posted = still
        if m.signal is not None and stopping_since is None:
            counter.stop()
            stopping_since = time.monotonic()
            log.warning("fit: signal %d received: collecting the batches being fitted, "
                        "then checkpointing", m.signal)
        if stopping_since is not None and active and (
                time.monotonic() - stopping_since > grace):
            # Results of workers still fitting are dropped (their regions
            # stay pending).
            # Said now: lines logged just before MPI_Abort can be lost by the
            # launcher's output forwarding.
            log.warning("fit: %d workers still fitting after %.1f s; their regions stay "
                        "pending, and the job ends with status %d (MPI_Abort) once the "
                        "checkpoint is written", len(active), grace, EXIT_CHECKPOINTED)
            m.gave_up = True
            return True
        if got:
            backoff.reset()
            continue
        m.flush()
        if stopping_since is None:
            m.maybe_stage()
            m.catch_up()
        m.maybe_checkpoint()
        m.maybe_progress()
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
    m = _Master(options, start, nworkers=size - 1, hooks=hooks)
    if size > 1:
        comm.bcast(("go", m.plan()), root=0)
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
                m.final_checkpoint()
            else:
                stopped = _run_master(m, comm, hooks)
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


def _run_master(m: _Master, comm, hooks) -> bool:
    """Rank 0 of a run on several ranks: the counter, the loop, the last
    checkpoint, the workers' stop. True if stopped by a signal."""
    counter = WorkCounter(comm, rma=hooks.work_counter_rma())
    try:
        stopped = _master_loop(m, comm, counter)
        m.final_checkpoint()
    except Exception:
        # The workers wait for TAG_STOP and then for collectives: leaving
        # with the exception would hang them all.
        log.exception("fit: the master failed; ending the job")
        comm.Abort(1)
        raise
    if m.gave_up:
        _end_job(m, comm)
    # Workers wait for this politely (the counter's collective close would
    # have them busy-poll through the checkpoint).
    for w in range(1, comm.Get_size()):
        comm.send(None, dest=w, tag=TAG_STOP)
    counter.close()
    return stopped


def _end_job(m: _Master, comm) -> None:
    """After the grace period, with workers still fitting: the checkpoint is on
    disk; end every rank now with :data:`EXIT_CHECKPOINTED`.

    A worker finishing its batch would wait for its report to be received
    and for the counter's collective close, which only it can complete, so
    a clean exit would take as long as the longest batch in flight, past
    the wall time perhaps. ``python -m mpi4py`` would abort the job on
    this status anyway.
    """
    m.maybe_progress(force=True)
    m.summary()
    log.warning("fit: ending the job with status %d (MPI_Abort); continue with "
                "'hpcxt fit --resume'", EXIT_CHECKPOINTED)
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    comm.Abort(EXIT_CHECKPOINTED)


def _run_worker(comm, rank: int, make_fit_batch, hooks, share) -> int:
    # Scheduler signals reach every rank; only the master acts on them.
    old = {s: signal.signal(s, lambda signum, frame: None) for s in HANDLED_SIGNALS}
    try:
        what, plan = comm.bcast(None, root=0)
        if what != "go":
            # The master reports why; a worker only mirrors its status.
            return plan
        with share(comm):
            fit_batch = make_fit_batch(rank)
            counter = WorkCounter(comm, rma=hooks.work_counter_rma())
            sent = _worker_loop(comm, counter, plan, fit_batch, hooks)
            wait_message(comm, 0, (TAG_STOP,))
            for request in sent:
                request.wait()
            counter.close()
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
