"""Arrays held once per node: MPI-3 shared-memory windows seen as read-only numpy arrays.

Every fit worker needs all of the bundle's sorted events and every scale-map
rank all of the images. Instead of one copy per rank, the first rank of each
node fills one shared-memory window (``MPI_Win_allocate_shared`` on the
communicator of the ranks that share the node's memory) and every rank of
the node reads it through numpy views marked read-only. Memory per node is
then one copy of the data plus what each rank needs of its own.

Where MPI has no shared-memory windows (an MPI-2 library, a launcher that
cannot map memory between ranks), :func:`share_per_node` logs one line and
returns None, and the caller takes its private path: each rank holds its own
copy, as before. The communicator is an argument and mpi4py is imported only
inside the functions, as in :mod:`hpcxt.parallel`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Mapping

import numpy as np

log = logging.getLogger("hpcxt.shared")

#: Byte alignment of each array in a window: a cache line, more than any dtype needs.
ALIGN = 64


class NodeArrays(Mapping):
    """Named read-only arrays, in a node's shared-memory window or in private memory.

    A mapping ``name -> ndarray``. :meth:`free` (or leaving the ``with``
    block) releases the window; the arrays must not be used after that.
    """

    def __init__(self, arrays: dict, win=None, node=None, own_node: bool = False):
        for a in arrays.values():
            a.flags.writeable = False
        self._arrays = arrays
        self._win = win
        self._node = node
        self._own_node = own_node

    @property
    def shared(self) -> bool:
        """True when the arrays live in a shared-memory window."""
        return self._win is not None

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self._arrays.values()))

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def free(self) -> None:
        """Release the window. Collective over the node's ranks; no-op when private."""
        self._arrays = {}
        if self._win is not None:
            self._win.Free()
            if self._own_node:
                self._node.Free()
        self._win = self._node = None

    def __enter__(self) -> NodeArrays:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        # After an exception the other ranks may not reach the collective
        # free: leave the window to MPI_Abort or MPI_Finalize.
        if exc_type is None:
            self.free()
        return False


def window_layout(specs: dict) -> tuple[list, int]:
    """Offsets of named arrays packed into one buffer.

    Parameters
    ----------
    specs : dict
        ``name -> (shape, dtype)``.

    Returns
    -------
    entries : list of (name, shape, dtype str, offset in bytes)
    total : int
        Bytes needed, every array starting at a multiple of :data:`ALIGN`.
    """
    entries, offset = [], 0
    for name, (shape, dtype) in specs.items():
        dtype = np.dtype(dtype)
        shape = tuple(int(s) for s in np.atleast_1d(np.asarray(shape, dtype=np.int64)))
        entries.append((name, shape, dtype.str, offset))
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        offset += -(-nbytes // ALIGN) * ALIGN
    return entries, offset


def _views(buffer, entries) -> dict:
    mem = np.frombuffer(buffer, dtype=np.uint8)
    out = {}
    for name, shape, dtype, offset in entries:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64))
        out[name] = mem[offset:offset + n * dtype.itemsize].view(dtype).reshape(shape)
    return out


def private_arrays(layout, fill) -> NodeArrays:
    """The arrays of :func:`share_per_node`, made in this rank's own memory."""
    arrays = {name: np.empty(shape, dtype) for name, (shape, dtype) in layout().items()}
    fill(arrays)
    return NodeArrays(arrays)


def _all_ok(comm, ok: bool, why: str, what: str) -> bool:
    """True when every rank of ``comm`` succeeded; else rank 0 logs one line. Collective."""
    failed = comm.allreduce(0 if ok else 1)
    if failed and comm.Get_rank() == 0:
        log.warning("shared memory unavailable (%s): every rank keeps its own %s",
                    why or f"failed on {failed} rank(s)", what)
    return not failed


def share_per_node(comm, layout, fill, *, enabled: bool = True, node=None,
                   what: str = "arrays", filler: int = 0) -> NodeArrays | None:
    """``fill`` once per node into a shared-memory window; read-only views on every rank.

    Collective over ``comm`` (unless ``enabled`` is False).

    Parameters
    ----------
    comm : mpi4py communicator
    layout : callable
        ``layout() -> {name: (shape, dtype)}``; called on each node's
        ``filler`` rank only.
    fill : callable
        ``fill(arrays)`` writes every array of ``{name: ndarray}`` (views of
        the window); called on each node's ``filler`` rank only, after
        ``layout``.
    enabled : bool
        False: share nothing and return None at once (``--no-shared-memory``).
    node : mpi4py communicator, optional
        The ranks of ``comm`` that share one window (each rank in exactly
        one); default ``comm.Split_type(COMM_TYPE_SHARED)``, the ranks of
        one node. Tests pass a split of one machine's ranks to play nodes.
    what : str
        What the arrays are, for the log.
    filler : int
        The rank within each node that calls ``layout`` and ``fill`` and
        holds the memory (the node's first rank when the node has no more
        ranks). The fit passes 1 for what only workers need, so that the
        master (rank 0, on the first node) does not load what filling takes.

    Returns
    -------
    NodeArrays or None
        None when not enabled or when shared memory is unavailable (logged
        once): the caller then keeps a private copy on every rank.
    """
    if not enabled:
        return None
    from mpi4py import MPI

    own_node = node is None
    ok, why = True, ""
    try:
        if own_node:
            node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    except (MPI.Exception, NotImplementedError) as exc:
        ok, why = False, f"{type(exc).__name__}: {exc}"
    if not _all_ok(comm, ok, why, what):
        return None
    root = filler if filler < node.Get_size() else 0
    leader = node.Get_rank() == root
    entries, total = node.bcast(window_layout(layout()) if leader else None, root=root)
    win, buffer = _allocate_shared(comm, node, root, total, what)
    if win is None:
        if own_node:
            node.Free()
        return None
    arrays = _views(buffer, entries)
    _fill_visibly(win, node, arrays, fill if leader else None)
    nodes = comm.allreduce(int(leader))
    if comm.Get_rank() == 0:
        log.info("shared memory: %s of %s once per node (%d node(s), %d rank(s) on this one)",
                 format_bytes(total), what, nodes, node.Get_size())
    return NodeArrays(arrays, win=win, node=node, own_node=own_node)


def _allocate_shared(comm, node, root: int, total: int, what: str):
    """One window of ``total`` bytes held by node rank ``root``. Collective.

    Returns (window, its buffer), or (None, None) on every rank of ``comm``
    when any rank could not allocate or map it (logged once).
    """
    from mpi4py import MPI

    ok, why, win, buffer = True, "", None, None
    try:
        # All the memory is the root's; the others map it. At least one
        # cache line, so that an empty layout still has a base address.
        win = MPI.Win.Allocate_shared(max(total, ALIGN) if node.Get_rank() == root else 0, 1,
                                      comm=node)
        buffer, _ = win.Shared_query(root)
    except (MPI.Exception, NotImplementedError) as exc:
        ok, why = False, f"{type(exc).__name__}: {exc}"
    if not _all_ok(comm, ok, why, what):
        if node.allreduce(int(win is not None), op=MPI.MIN):
            win.Free()
        return None, None
    return win, buffer


def _fill_visibly(win, node, arrays: dict, fill) -> None:
    """``fill(arrays)`` on the rank given one (None elsewhere), seen by every
    rank of ``node`` when this returns. Collective over ``node``.

    Unified memory model: the filler's stores are seen by the others after
    a Win_sync on each side of a barrier.
    """
    from mpi4py import MPI

    win.Lock_all(MPI.MODE_NOCHECK)
    if fill is not None:
        fill(arrays)
        release_free_memory()
    win.Sync()
    node.Barrier()
    win.Sync()
    win.Unlock_all()


@contextlib.contextmanager
def node_shared(comm, layout, fill, *, enabled: bool = True, node=None, what: str = "arrays",
                filler: int = 0):
    """:func:`share_per_node` as a context manager: the window is freed on a normal exit.

    Yields the :class:`NodeArrays`, or None where nothing is shared.
    """
    shared = share_per_node(comm, layout, fill, enabled=enabled, node=node, what=what,
                            filler=filler)
    with shared if shared is not None else contextlib.nullcontext():
        yield shared


def release_free_memory() -> None:
    """Give freed heap memory back to the system (glibc's ``malloc_trim``).

    After large temporaries (a bundle read, an argsort) glibc keeps the
    freed pages in its heap, and they stay in the rank's resident memory
    for the whole run. No-op where the C library has no ``malloc_trim``.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def format_bytes(n: float) -> str:
    """``"512 B"``, ``"11.3 MiB"``, ``"2.05 GiB"``."""
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"
