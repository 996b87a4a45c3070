"""The helpers every MPI stage shares: deal work by cost, broadcast or abort, poll.

The communicator is always an argument and mpi4py is imported only inside
the functions that need its constants, so importing this module starts no
MPI and every helper also works on a one-rank communicator.
"""

from __future__ import annotations

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
