"""Per-task cost of mpi4py.futures against hpcxt's own master/worker protocol.

    mpiexec -n 4 python -m mpi4py.futures benchmarks/futures_overhead.py

Times MPIPoolExecutor.map over N instant tasks (3 workers), batched as the
fit batches regions (chunksize 1 and 10). Compare with the master capacity
that ``benchmarks/fit.py`` prints for hpcxt's protocol on the same ranks:
the figures decide which protocol the fit uses (see hpcxt/fit_mpi.py).
"""

from __future__ import annotations

import time

from mpi4py.futures import MPIPoolExecutor


def instant(i):
    return i


def main(n: int = 20000) -> None:
    with MPIPoolExecutor() as pool:
        list(pool.map(instant, range(100)))  # start-up not timed
        for chunksize in (1, 10):
            t0 = time.perf_counter()
            list(pool.map(instant, range(n), chunksize=chunksize))
            dt = time.perf_counter() - t0
            print(f"mpi4py.futures, {pool._max_workers if hasattr(pool, '_max_workers') else '?'} "
                  f"workers, chunksize {chunksize}: {n / dt:,.0f} tasks/s")


if __name__ == "__main__":
    main()
