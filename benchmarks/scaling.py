"""Benchmark: the fit master's per-message costs, and efficiency projected to 1,024 ranks.

Run from the repository root::

    .venv/bin/python benchmarks/scaling.py                 # measure, then project
    .venv/bin/python benchmarks/scaling.py --nprocs 33     # more worker ranks
    .venv/bin/python benchmarks/scaling.py --c0 120e-6 --c1 0.3e-6 --l0 60e-6 --l1 0.1e-6
                                                           # project from given costs

1. Master cost per batch. ``hpcxt fit``'s master/worker loop
   (:func:`hpcxt.stages.fit.run_fit`) with fits that take no time
   (``benchmarks/fit.py``'s instant factory), ``--nprocs`` ranks (default
   17: 16 workers, oversubscribed), fixed batch sizes from 1 to 1000. The
   master's CPU time spent receiving, recording and handing out batches
   (:class:`hpcxt.fit_mpi.MasterStats`) divided by the batches gives its cost
   per batch, fitted as ``c(b) = c0 + c1 * b``. Capacity (regions/s) and
   the share of the loop the master was busy are printed too. Before
   that, in one process, the master's unpickling and recording of a
   batch packed as it travels, beside its columns pickled one by one.
2. Round trip. A worker and a master that is never idle (it polls
   without pausing, as a master serving many workers does) pass a result
   batch and a batch of ids back and forth with the fit's messages and
   polling (:func:`hpcxt.parallel.wait_message` on the worker): the cycle
   beyond the master's own handling is the latency a worker sees per
   batch, fitted as ``l(b) = l0 + l1 * b``. The checkpoint cost per region
   is measured too (results.h5 of 100,000 and 1,000,000 regions).
3. Projection. A discrete-event model of the same protocol: one master
   serving requests in arrival order at ``c(b)`` each, workers fitting
   ``b * fit_seconds`` and waiting ``l(b)`` per cycle, the batch sizes of
   :func:`hpcxt.fit_mpi.auto_batch_size` (so it follows the code), a
   checkpoint every 60 s that stops the master, and the final checkpoint.
   Parallel efficiency at ``P`` ranks is ``N * fit_seconds / (P * T)``
   (rank 0 fits nothing and counts as a loss), printed for ``T`` the fit
   loop and ``T`` the loop plus the final checkpoint. Start-up (imports,
   reading the bundle, building responses; the master's first checkpoint
   is written meanwhile) is not included.
4. Check of the model: on ``--nprocs`` ranks with fits that sleep (the
   workers then need no core, so 2 cores carry 16 of them), the measured
   fit loop beside the projected one.

Not a test: timings on 2 shared cores vary; nothing is asserted.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import heapq
import importlib.util
import inspect
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def _bench_fit():
    """benchmarks/fit.py as a module (its instant fits and capacity workdir)."""
    spec = importlib.util.spec_from_file_location("bench_fit", HERE / "fit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------
# 1-2. measuring


def sleeping_factory(seconds: float):
    """Fits that sleep ``seconds`` per region: workers wait without taking a core."""
    import time

    instant = _bench_fit().instant_factory

    def factory(cfg, rank):
        fit = instant(cfg, rank)

        def fit_batch(ids):
            time.sleep(seconds * len(ids))
            batch = fit(ids)
            batch.columns["fit_seconds"][...] = seconds
            return batch
        return fit_batch
    return factory


def child(config: str, sleep: float = 0.0) -> None:
    """Runs under mpiexec: the fit loop with instant fits; rank 0 prints MasterStats."""
    import logging

    from mpi4py import MPI

    from hpcxt.hooks import RunHooks
    from hpcxt.io.config import load_config
    from hpcxt.stages.fit import run_fit

    class Stats(RunHooks):
        stats = None

        def master_finished(self, stats):
            Stats.stats = stats

    logging.basicConfig(level=logging.WARNING)
    comm = MPI.COMM_WORLD
    cfg = load_config(config, check_files=False)
    factory = sleeping_factory(sleep) if sleep else _bench_fit().instant_factory
    status = run_fit(cfg, comm, fit_factory=factory, hooks=Stats())
    if comm.Get_rank() == 0:
        s = Stats.stats
        print(f"RESULT status={status} batches={s.batches} regions={s.regions} "
              f"busy={s.busy_seconds:.6f} loop={s.loop_seconds:.6f}", flush=True)


def pingpong_child(cycles: int, size: int) -> None:
    """Runs on 2 ranks: rank 1 is a worker, rank 0 a master that never pauses."""
    import time

    from mpi4py import MPI

    from hpcxt.fit_mpi import TAG_RESULT, TAG_WORK
    from hpcxt.parallel import wait_message

    comm = MPI.COMM_WORLD
    batch = _bench_fit().instant_factory(None, 1)(np.arange(size))
    ids = np.arange(size, dtype=np.int64)
    comm.Barrier()
    if comm.Get_rank() == 0:
        st, busy = MPI.Status(), 0.0
        for _ in range(cycles):
            while not comm.Iprobe(source=1, tag=TAG_RESULT, status=st):
                pass
            c0 = time.process_time()
            comm.recv(source=1, tag=TAG_RESULT)
            comm.send(ids, dest=1, tag=TAG_WORK)
            busy += time.process_time() - c0
        comm.send(busy / cycles, dest=1, tag=99)
    else:
        t0 = time.perf_counter()
        for _ in range(cycles):
            comm.send(batch, dest=0, tag=TAG_RESULT)
            wait_message(comm, 0, (TAG_WORK,))
        cycle = (time.perf_counter() - t0) / cycles
        master = comm.recv(source=0, tag=99)
        print(f"RESULT cycle={cycle:.9f} master={master:.9f}", flush=True)


def _mpirun(nprocs: int, *child_args) -> dict:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [str(mpiexec), "-n", str(nprocs), sys.executable, "-m", "mpi4py",
           str(Path(__file__).resolve()), *map(str, child_args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-2000:]}")
    return {k: float(v) for k, v in (kv.split("=") for kv in line[0].split()[1:])}


def checkpoint_seconds_per_region() -> float:
    """Seconds per region of one checkpoint (write aside, fsync, rename)."""
    import time

    from hpcxt.io.checkpoint import FitResults, write_results

    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (100_000, 1_000_000):
            res = FitResults.new(n, ["1", "2"], {"fit": {}})
            best = math.inf
            for _ in range(3):
                t0 = time.perf_counter()
                write_results(Path(tmp) / "results.h5", res)
                best = min(best, time.perf_counter() - t0)
            times.append(best)
            print(f"  checkpoint of {n:9d} regions: {1e3 * best:7.1f} ms", flush=True)
    return times[1] / 1_000_000


def receive_cost(sizes=(1, 10, 100), repeats: int = 5000) -> None:
    """The master's unpickling and recording of one result batch, in one process:
    as it travels now (:meth:`hpcxt.fit.RecordBatch.__reduce__`, one float64
    array) beside the columns pickled one by one (before), interleaved, best
    of three rounds each."""
    import pickle
    import time

    from hpcxt.fit import FitRecord, RecordBatch
    from hpcxt.io.checkpoint import FitResults

    print("master's unpickle + record of one batch (2 observations), us, best of 3:")
    res = FitResults.new(100_000, ["1", "2"], {"fit": {}})
    for n in sizes:
        batch = RecordBatch.from_records(np.arange(n), [FitRecord(2) for _ in range(n)], 2)
        payloads = {"packed": pickle.dumps(batch, protocol=5),
                    "columns": pickle.dumps((batch.region_id, batch.columns), protocol=5)}
        best = {k: math.inf for k in payloads}
        for _ in range(3):
            for kind, data in payloads.items():
                t0 = time.perf_counter()
                for _ in range(repeats):
                    got = pickle.loads(data)
                    res.record(got if kind == "packed" else RecordBatch(*got))
                best[kind] = min(best[kind], (time.perf_counter() - t0) / repeats)
        print(f"  batch {n:4d}: packed {1e6 * best['packed']:6.1f}, columns one by one "
              f"{1e6 * best['columns']:6.1f} ({len(payloads['packed'])} and "
              f"{len(payloads['columns'])} bytes)", flush=True)


def run_loop(n_regions: int, batch_size, nprocs: int, sleep: float = 0.0) -> dict:
    """One fit loop with instant (or sleeping) fits under mpiexec; the master's figures."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _bench_fit().make_capacity_workdir(Path(tmp), n_regions, batch_size)
        f = _mpirun(nprocs, "--child", cfg, "--sleep", sleep)
    f["per_batch"] = f["busy"] / f["batches"]
    return f


def linear(x, y) -> tuple[float, float]:
    """``y = a + b x``, least squares on relative errors (sizes span 1 to 1000)."""
    y = np.asarray(y, float)
    b, a = np.polyfit(np.asarray(x, float), y, 1, w=1.0 / y)
    return float(a), float(b)


def measure(nprocs: int, sizes, regions_per_size) -> dict:
    print(f"master cost per batch, {nprocs - 1} workers (oversubscribed), instant fits:")
    per = []
    for b in sizes:
        n = min(regions_per_size * b, 100_000) if b < 16 else 100_000
        f = run_loop(n, b, nprocs)
        per.append(f["per_batch"])
        print(f"  batch {b:5d}: {1e6 * f['per_batch']:8.1f} us master CPU per batch, "
              f"{f['regions'] / f['loop']:9.0f} regions/s, master busy "
              f"{100 * f['busy'] / f['loop']:5.1f}% ({int(f['batches'])} batches)", flush=True)
    c0, c1 = linear(sizes, per)
    print(f"  fit: c(b) = {1e6 * c0:.1f} us + {1e6 * c1:.3f} us x b")
    print("round trip seen by a worker, beyond the master's handling (2 ranks):")
    lat = []
    for b in sizes:
        f = _mpirun(2, "--pingpong", 2000 if b < 256 else 300, b)
        lat.append(f["cycle"] - f["master"])
        print(f"  batch {b:5d}: cycle {1e6 * f['cycle']:8.1f} us, of which master "
              f"{1e6 * f['master']:7.1f} us", flush=True)
    l0, l1 = linear(sizes, lat)
    print(f"  fit: l(b) = {1e6 * l0:.1f} us + {1e6 * l1:.3f} us x b")
    return dict(c0=c0, c1=c1, l0=l0, l1=max(l1, 0.0))


# --------------------------------------------------------------------------
# 3. projecting


def project(n_regions: int, nranks: int, fit_seconds: float, costs: dict,
            checkpoint_per_region: float, policy=None, checkpoint_every: float = 60.0) -> dict:
    """The fit loop on ``nranks`` ranks, by discrete-event simulation.

    Returns
    -------
    dict
        ``loop`` (s, until the last result is recorded), ``final`` (s, the
        final checkpoint), ``efficiency_loop`` and ``efficiency`` (with the
        final checkpoint), ``batches``, ``master_busy`` (share of the loop
        the master spent on messages).
    """
    from hpcxt.fit_mpi import auto_batch_size

    policy = policy or auto_batch_size
    # The policy sees the master's recent cost per batch where it asks for it.
    own_cost = "master_seconds" in inspect.signature(policy).parameters
    c0, c1, l0, l1 = costs["c0"], costs["c1"], costs["l0"], costs["l1"]
    checkpoint = checkpoint_per_region * n_regions
    nworkers = nranks - 1
    t_master, last_checkpoint = 0.0, 0.0
    # (time the worker's message reaches the master, worker, regions in it)
    queue = [(l0 / 2, w, 0) for w in range(nworkers)]
    heapq.heapify(queue)
    pending, mean_fit, master_seconds, batches, busy = n_regions, None, None, 0, 0.0
    while queue:
        arrival, w, done = heapq.heappop(queue)
        start = max(arrival, t_master)
        if done:
            batches += 1
            mean_fit = fit_seconds
        extra = {"master_seconds": master_seconds} if own_cost else {}
        size = min(policy(mean_fit, pending, nworkers, **extra), pending) if pending else 0
        service = c0 + c1 * 0.5 * (done + size)
        master_seconds = service if master_seconds is None else (
            0.7 * master_seconds + 0.3 * service)
        busy += service
        t_master = start + service
        if size:
            pending -= size
            heapq.heappush(queue, (t_master + l0 + l1 * size + size * fit_seconds, w, size))
        if t_master - last_checkpoint >= checkpoint_every:
            t_master += checkpoint
            last_checkpoint = t_master
    work = n_regions * fit_seconds
    return dict(loop=t_master, final=checkpoint, batches=batches, master_busy=busy / t_master,
                efficiency_loop=work / (nranks * t_master),
                efficiency=work / (nranks * (t_master + checkpoint)))


def policy_without_load_floor(mean_fit, pending, nworkers) -> int:
    """``auto_batch_size`` before it kept the master's load under MAX_MASTER_LOAD.

    (hpcxt up to commit 76019ac; kept here to project both with the same costs.)
    """
    from hpcxt.fit_mpi import MAX_AUTO_BATCH, TARGET_BATCH_SECONDS

    size = 1 if mean_fit is None else int(TARGET_BATCH_SECONDS / max(mean_fit, 1e-6))
    return max(1, min(size, MAX_AUTO_BATCH, math.ceil(pending / (2 * nworkers))))


def largest_efficient(n: int, nranks: int, fit_s: float, costs: dict,
                      checkpoint_per_region: float, policy, target: float = 0.9) -> int:
    """The most ranks (``nranks`` halved until it does) projected to reach ``target``; 0: none.

    (Rank 0 fits nothing, so a few ranks never reach 90%: the search stops at 16.)
    """
    while nranks >= 16:
        p = project(n, nranks, fit_s, costs, checkpoint_per_region, policy)
        if p["efficiency"] >= target:
            return nranks
        nranks //= 2
    return 0


def projections(costs: dict, nranks: int, regions, fit_times, checkpoint_per_region: float,
                policy=None, label: str = "") -> None:
    print(f"projected on {nranks} ranks, {label} (c0 {1e6 * costs['c0']:.0f} us, c1 "
          f"{1e6 * costs['c1']:.2f} us, l0 {1e6 * costs['l0']:.0f} us, l1 "
          f"{1e6 * costs['l1']:.2f} us per batch; checkpoint "
          f"{1e6 * checkpoint_per_region:.2f} us per region):")
    for fit_s in fit_times:
        for n in regions:
            p = project(n, nranks, fit_s, costs, checkpoint_per_region, policy)
            ideal = n * fit_s / nranks
            most = ""
            if p["efficiency"] < 0.9:
                most = (f"; >= 90% on at most "
                        f"{largest_efficient(n, nranks // 2, fit_s, costs, checkpoint_per_region, policy)}"
                        " ranks")
            print(f"  fit {1e3 * fit_s:6.1f} ms, {n:9d} regions: efficiency "
                  f"{100 * p['efficiency_loop']:5.1f}% loop, {100 * p['efficiency']:5.1f}% "
                  f"with the final checkpoint (loop {p['loop']:8.3f} s + {p['final']:6.3f} s; "
                  f"ideal {ideal:8.3f} s; {p['batches']} batches, master busy "
                  f"{100 * p['master_busy']:5.1f}%){most}", flush=True)


def validate(nprocs: int, costs: dict, checkpoint_per_region: float) -> None:
    """Measured against projected, with fits that sleep (so workers need no core)."""
    print(f"check of the model: {nprocs} ranks, fits that sleep, batch_size auto:")
    for fit_s, n in ((1e-3, 20_000), (10e-3, 5_000)):
        f = run_loop(n, "auto", nprocs, sleep=fit_s)
        p = project(n, nprocs, fit_s, costs, checkpoint_per_region)
        print(f"  fit {1e3 * fit_s:4.1f} ms, {n} regions: measured {f['loop']:6.3f} s "
              f"({int(f['batches'])} batches, master busy {100 * f['busy'] / f['loop']:4.1f}%), "
              f"projected {p['loop'] + p['final']:6.3f} s ({p['batches']} batches), "
              f"ideal {n * fit_s / (nprocs - 1):6.3f} s", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nprocs", type=int, default=17, help="ranks for the cost measurement")
    p.add_argument("--sizes", type=int, nargs="*", default=[1, 4, 16, 64, 256, 1000])
    p.add_argument("--regions-per-size", type=int, default=5000,
                   help="regions per batch size below 16: this many batches")
    p.add_argument("--c0", type=float, help="skip measuring: master s per batch")
    p.add_argument("--c1", type=float, default=0.0, help="... and per region in it")
    p.add_argument("--l0", type=float, default=50e-6, help="round trip s per batch")
    p.add_argument("--l1", type=float, default=0.0, help="... and per region in it")
    p.add_argument("--checkpoint-per-region", type=float,
                   help="skip measuring: s per region of one checkpoint")
    p.add_argument("--ranks", type=int, default=1024)
    p.add_argument("--regions", type=int, nargs="*", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--fit-ms", type=float, nargs="*", default=[1.0, 170.0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--sleep", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--pingpong", type=int, nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.sleep)
        return
    if args.pingpong:
        pingpong_child(*args.pingpong)
        return
    if args.c0 is None:
        receive_cost()
        costs = measure(args.nprocs, args.sizes, args.regions_per_size)
    else:
        costs = dict(c0=args.c0, c1=args.c1, l0=args.l0, l1=args.l1)
    per_region = args.checkpoint_per_region
    if per_region is None:
        print("checkpoint cost:")
        per_region = checkpoint_seconds_per_region()
    validate(args.nprocs, costs, per_region)
    fit_times = [ms / 1e3 for ms in args.fit_ms]
    projections(costs, args.ranks, args.regions, fit_times, per_region,
                policy_without_load_floor, "batch sizes before the master-load floor")
    projections(costs, args.ranks, args.regions, fit_times, per_region, None,
                "batch sizes of hpcxt.fit_mpi.auto_batch_size")


if __name__ == "__main__":
    main()
