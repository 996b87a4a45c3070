"""The helpers every MPI stage shares: deal work by cost, broadcast or abort, poll.

The communicator is always an argument and mpi4py is imported only inside
the functions that need its constants, so importing this module starts no
MPI and every helper also works on a one-rank communicator.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .errors import InputError

#: Longest sleep between two polls for a message, s.
MAX_POLL_SLEEP = 0.002


def balance(costs, nparts: int) -> list[list[int]]:
    """Split items over ``nparts`` workers: largest first, each to the least loaded.

    Deterministic (ties go to the lower item and worker index).

    Returns
    -------
    list of lists of int
        Item indices of each part, in increasing order.
    """
    costs = np.asarray(costs, dtype=np.float64)
    order = sorted(range(costs.size), key=lambda i: (-costs[i], i))
    loads = [0.0] * nparts
    parts: list[list[int]] = [[] for _ in range(nparts)]
    for i in order:
        w = min(range(nparts), key=lambda q: (loads[q], q))
        parts[w].append(i)
        loads[w] += float(costs[i])
    return [sorted(pt) for pt in parts]


def deal_by_cost(comm, costs, root: int = 0) -> list[int]:
    """The work items this rank does, balanced by cost on ``root``. Collective.

    Parameters
    ----------
    comm : mpi4py communicator
    costs : sequence of float
        Estimated cost of every item (read on ``root`` only).

    Returns
    -------
    list of int
        Indices of this rank's items, increasing.
    """
    parts = balance(costs, comm.Get_size()) if comm.Get_rank() == root else None
    return comm.bcast(parts, root=root)[comm.Get_rank()]


def bcast_or_raise(comm, make, root: int = 0):
    """``root`` runs ``make()``; its result, or its InputError, reaches every rank.

    Bad input found while loading on one rank then ends every rank with the
    same one-line error instead of leaving the others waiting in a
    collective. Collective.
    """
    payload = None
    if comm.Get_rank() == root:
        try:
            payload = make()
        except InputError as exc:
            payload = exc
    payload = comm.bcast(payload, root=root)
    if isinstance(payload, InputError):
        raise payload
    return payload


class Backoff:
    """Pauses between polls: none at first, then doubling up to ``ceiling`` s.

    MPICH's blocking receive busy-polls and would take a core from the
    ranks that compute; a waiting rank polls with these pauses instead.
    """

    def __init__(self, ceiling: float = MAX_POLL_SLEEP):
        self.ceiling = ceiling
        self.pause = 0.0

    def reset(self) -> None:
        self.pause = 0.0

    def wait(self) -> None:
        time.sleep(self.pause)
        self.pause = min(self.ceiling, self.pause * 2 + 1e-5)


def wait_message(comm, source: int, tags):
    """Receive the next message from ``source`` with one of ``tags``, politely.

    Returns
    -------
    (tag, object)
    """
    from mpi4py import MPI
    st = MPI.Status()
    backoff = Backoff()
    while True:
        if comm.Iprobe(source=source, tag=MPI.ANY_TAG, status=st) and st.Get_tag() in tags:
            tag = st.Get_tag()
            return tag, comm.recv(source=st.Get_source(), tag=tag)
        backoff.wait()


class WorkCounter:
    """One int64 on ``root`` that every rank advances atomically (MPI-3 RMA).

    Ranks take work without the master: :meth:`take` adds ``k`` to the
    counter and returns its value before (``MPI_Fetch_and_op`` with
    ``MPI_SUM`` in one passive-target epoch, a shared ``MPI_Win_lock`` of
    the root's window that lasts as long as the counter), so
    ``[value, value + k)`` is the caller's. Measured on this machine (MPICH
    5.0.2, one node): 1.6-5.7 us a take, served while the root sleeps in
    ``time.sleep``; across nodes the network's atomics serve it, or the
    root's next poll where it has none. The lock is granted by the root's
    progress (its next poll, within milliseconds); ``MPI_Win_lock_all``
    instead waited for every rank's progress, so ranks busy fitting made
    others start up to 0.7 s late.

    Where MPI cannot create the window (an MPI without one-sided
    communication over the network at hand), or with ``rma=False``, the
    counter is *served*: a take is a message to the root (``TAG_TAKE``)
    answered by the root's :meth:`serve` (``TAG_GIVE``), which the root
    must call for every ``TAG_TAKE`` it receives. One log line says so.
    Served takes wait while the root is busy, as while it writes a
    checkpoint.

    Collective to create and to :meth:`close`. On a one-rank communicator
    it is a plain integer (no window, no messages).
    """

    #: Added by :meth:`stop`: every later take returns at least this.
    STOPPED = 1 << 62
    TAG_TAKE, TAG_GIVE = 21, 22

    def __init__(self, comm, root: int = 0, rma: bool = True):
        self.comm, self.root = comm, root
        self._local = 0
        self.win = None
        self.served = False
        if comm.Get_size() == 1:
            return
        from mpi4py import MPI
        self._mpi = MPI
        mine = comm.Get_rank() == root
        why = "not asked for" if not rma else ""
        if rma:
            try:
                self.win = MPI.Win.Allocate(8 if mine else 0, 8, comm=comm)
                if mine:  # zeroed in an epoch of its own (MPI's separate memory model)
                    self.win.Lock(root, MPI.LOCK_EXCLUSIVE)
                    self.win.Put(np.zeros(1, dtype=np.int64), root)
                    self.win.Unlock(root)
            except MPI.Exception as exc:
                why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # Every rank counts the same way (a window only some ranks got is left be).
        if not comm.allreduce(self.win is not None, op=MPI.LAND):
            self.win, self.served = None, True
            if mine:
                logging.getLogger("hpcxt.parallel").warning(
                    "work counter: MPI one-sided communication unavailable (%s); rank %d "
                    "answers every take by message", why, root)
            return
        self.win.Lock(root, MPI.LOCK_SHARED)
        self._one = np.zeros(1, dtype=np.int64)
        self._out = np.zeros(1, dtype=np.int64)

    def take(self, k: int) -> int:
        """Add ``k``; the value before."""
        if self.win is None:
            if self.served and self.comm.Get_rank() != self.root:
                self.comm.send(int(k), dest=self.root, tag=self.TAG_TAKE)
                return int(wait_message(self.comm, self.root, (self.TAG_GIVE,))[1])
            value, self._local = self._local, self._local + int(k)
            return value
        self._one[0] = k
        self.win.Fetch_and_op(self._one, self._out, self.root, 0, self._mpi.SUM)
        self.win.Flush(self.root)
        return int(self._out[0])

    def serve(self, source: int, k: int) -> None:
        """On the root of a served counter: answer ``source``'s take of ``k``."""
        value, self._local = self._local, self._local + int(k)
        self.comm.send(value, dest=source, tag=self.TAG_GIVE)

    def value(self) -> int:
        """The current value (an atomic read)."""
        return self.take(0)

    def stop(self) -> None:
        """Make every later :meth:`take` return :data:`STOPPED` or more."""
        self.take(self.STOPPED)

    def close(self) -> None:
        """End the epoch and free the window. Collective (but for a served counter)."""
        if self.win is not None:
            self.win.Unlock(self.root)
            self.win.Free()
            self.win = None


class IdRuns:
    """An ascending array of ids held as runs of consecutive ids.

    What the fit's workers need to turn positions ``[lo, hi)`` taken from a
    :class:`WorkCounter` into region ids: a fresh run is one run, a resumed
    one a few, so every rank holds a few numbers instead of 8 bytes per
    region (80 MB per rank at 10^7 regions).
    """

    def __init__(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        self.size = int(ids.size)
        breaks = np.flatnonzero(np.diff(ids) != 1) + 1 if ids.size else np.zeros(0, np.int64)
        #: position in ``ids`` where each run starts, and its first id
        self.starts = np.concatenate([[0], breaks]).astype(np.int64) if ids.size else breaks
        self.first = ids[self.starts] if ids.size else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, s: slice) -> np.ndarray:
        """Ids at positions ``s`` (a slice with step 1)."""
        lo, hi, _ = s.indices(self.size)
        if hi <= lo:
            return np.zeros(0, dtype=np.int64)
        pos = np.arange(lo, hi, dtype=np.int64)
        run = np.searchsorted(self.starts, pos, side="right") - 1
        return self.first[run] + (pos - self.starts[run])
