"""Benchmark: the fit's costs at scale, and its efficiency projected to 1,024 ranks.

Run from the repository root::

    .venv/bin/python benchmarks/scaling.py                 # measure, then project
    .venv/bin/python benchmarks/scaling.py --nprocs 33     # more worker ranks
    .venv/bin/python benchmarks/scaling.py --take 5e-6 --take-service 0.5e-6 \\
        --c0 20e-6 --c1 0.05e-6                            # project from given costs

The fit's protocol (:mod:`hpcxt.fit_mpi`): workers take their batches from
an atomic counter on rank 0 (:class:`hpcxt.parallel.WorkCounter`, MPI-3
``MPI_Fetch_and_op``), fit them, and report results to the master at most
every :data:`~hpcxt.fit_mpi.REPORT_SECONDS` without waiting for it; the
master records reports, checkpoints, and writes its final checkpoint ahead
of the end (:class:`hpcxt.io.checkpoint.StagedResults`).

1. The master's cost per report, in one process: unpickling a report and
   recording it, many reports at once as the master does
   (:meth:`hpcxt.fit.RecordBatch.unpack_many`), beside the previous
   protocol's unpickling and recording of each batch on arrival. Fitted as
   ``c(b) = c0 + c1 * b`` for ``b`` regions in a report.
   Then MPI's part under mpiexec: ``--nprocs - 1`` ranks send one-region
   reports as the workers do, and rank 0's CPU per message to probe and
   receive one is added to ``c0``.
2. The counter: one rank takes from it as fast as it can (the time a take
   costs a rank with a core of its own), then ``--nprocs - 1`` ranks
   (oversubscribed) at once (the counter's throughput: its service time is
   one over it).
3. The real fit loop with fits that take no time on ``--nprocs`` ranks,
   fixed batch sizes from 1 to 1000 and ``auto``: regions per second
   through the loop and the master's share of busy time.
4. Checkpoint costs: a whole checkpoint per region (results.h5 of 10^5 and
   10^6 regions), and committing a staged one after ``k`` rows changed.
5. Projection: a discrete-event model of the protocol. Workers never wait
   for the master, so they are simulated first (a take per batch, and a
   read before it unless the batch is as small as it gets, served one at
   a time by the counter, ``fit_seconds`` a region, the batch sizes of
   :func:`hpcxt.fit_mpi.auto_batch_size` so it follows the code, reports
   at most every ``REPORT_SECONDS`` and at the end); then the master serves
   the reports in arrival order at ``c(b)``, writes a checkpoint every
   60 s, stages the final checkpoint as :meth:`hpcxt.fit_mpi._Master.maybe_stage`
   does, and commits it after the last report. Parallel efficiency at
   ``P`` ranks is ``N * fit_seconds / (P * T)`` (rank 0 fits nothing and
   counts as a loss), for ``T`` the workers' loop and ``T`` until the final
   checkpoint is on disk. Start-up (imports, reading the bundle, building
   responses; the master's first checkpoint is written meanwhile) is not
   included.
6. Check of the model: on ``--nprocs`` ranks with fits that sleep (the
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
import math
import subprocess
import sys
import tempfile
import time
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


def linear(x, y) -> tuple[float, float]:
    """``y = a + b x``, least squares on relative errors (sizes span 1 to 1000)."""
    y = np.asarray(y, float)
    b, a = np.polyfit(np.asarray(x, float), y, 1, w=1.0 / y)
    return float(a), float(b)


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


# --------------------------------------------------------------------------
# 1. the master's cost per report


def report_cost(sizes=(1, 10, 100, 1000), reports: int = 2000) -> tuple:
    """Master CPU per report of ``b`` regions, in one process (best of 3).

    Now: ``pickle.loads`` of the report (a list of packed batches) on
    arrival, then :meth:`RecordBatch.unpack_many` and ``FitResults.record``
    of all of them at once (the master's idle-time flush), divided by the
    reports. Before: each batch unpickled into a RecordBatch and recorded on
    arrival (the previous protocol).
    """
    import pickle

    from hpcxt.fit import FitRecord, RecordBatch
    from hpcxt.io.checkpoint import FitResults

    print("master's CPU per report (2 observations), us, best of 3, in one process:")
    per, packs = [], []
    for b in sizes:
        count = max(20, min(reports, 200_000 // b))
        res = FitResults.new(count * b, ["1", "2"], {"fit": {}})
        batches = [RecordBatch.from_records(np.arange(i * b, (i + 1) * b),
                                            [FitRecord(2) for _ in range(b)], 2)
                   for i in range(count)]
        now = [pickle.dumps([x.pack()], protocol=5) for x in batches]
        before = [pickle.dumps(x, protocol=5) for x in batches]
        best_now = best_before = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            kept = []
            for data in now:
                kept.extend(pickle.loads(data))
            res.record(RecordBatch.unpack_many(kept))
            best_now = min(best_now, (time.perf_counter() - t0) / count)
            t0 = time.perf_counter()
            for data in before:
                res.record(pickle.loads(data))
            best_before = min(best_before, (time.perf_counter() - t0) / count)
        best_pack = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            for x in batches[:200]:
                pickle.dumps([x.pack()], protocol=5)
            best_pack = min(best_pack, (time.perf_counter() - t0) / min(count, 200))
        per.append(best_now)
        packs.append(best_pack)
        print(f"  report of {b:5d} regions: {1e6 * best_now:8.1f} us kept and recorded "
              f"together; {1e6 * best_before:8.1f} us each on arrival (before); the worker "
              f"packs and pickles it in {1e6 * best_pack:7.1f} us", flush=True)
    c0, c1 = linear(sizes, per)
    w0, w1 = linear(sizes, packs)
    print(f"  fit: c(b) = {1e6 * c0:.1f} us + {1e6 * c1:.3f} us x b "
          "(plus MPI's own receive); the worker's packing "
          f"{1e6 * w0:.1f} us + {1e6 * w1:.3f} us x b")
    return c0, c1, w0, w1


# --------------------------------------------------------------------------
# 2. the counter


def counter_child(seconds: float) -> None:
    """Runs under mpiexec: every rank but 0 takes from the counter for ``seconds``."""
    from mpi4py import MPI

    from hpcxt.parallel import Backoff, WorkCounter

    comm = MPI.COMM_WORLD
    counter = WorkCounter(comm)
    comm.Barrier()
    t0 = time.perf_counter()
    takes = 0
    if comm.Get_rank() == 0:
        # the master polls politely, as in the fit
        backoff = Backoff()
        while time.perf_counter() - t0 < seconds:
            comm.Iprobe()
            backoff.wait()
    else:
        while time.perf_counter() - t0 < seconds:
            counter.take(1)
            takes += 1
    dt = time.perf_counter() - t0
    total = comm.reduce(takes, root=0)
    mean_latency = comm.reduce(dt / takes if takes else 0.0, root=0)
    counter.close()
    if comm.Get_rank() == 0:
        workers = comm.Get_size() - 1
        print(f"RESULT takes={total} seconds={dt:.6f} latency={mean_latency / workers:.9f}",
              flush=True)


def measure_counter(nprocs: int, seconds: float = 3.0) -> tuple[float, float]:
    """(s a take costs a rank on a core of its own, s the counter serves one).

    The first from one rank taking (2 ranks: no core shared); the second
    from ``nprocs - 1`` ranks taking at once, whose time per take on
    shared cores is mostly waiting for a core, as printed.
    """
    one = _mpirun(2, "--counter-child", seconds)
    f = _mpirun(nprocs, "--counter-child", seconds)
    service = f["seconds"] / f["takes"]
    print(f"counter: one rank taking, {1e6 * one['latency']:.2f} us a take; "
          f"{nprocs - 1} ranks taking as fast as they can (oversubscribed on "
          f"{os.cpu_count()} cores): {f['takes'] / f['seconds']:,.0f} takes/s in all "
          f"({1e6 * service:.2f} us each), {1e6 * f['latency']:.1f} us a take seen by a rank",
          flush=True)
    return one["latency"], service


def receive_child(messages: int) -> None:
    """Runs under mpiexec: every rank but 0 sends ``messages`` one-region reports
    as the fit's workers do; rank 0 receives them as the fit's master does and
    prints its CPU per message."""
    from mpi4py import MPI

    from hpcxt.fit_mpi import TAG_RESULT

    comm = MPI.COMM_WORLD
    batch = _bench_fit().instant_factory(None, 1)(np.arange(1))
    comm.Barrier()
    if comm.Get_rank() == 0:
        st, kept, cpu = MPI.Status(), [], 0.0
        for _ in range(messages * (comm.Get_size() - 1)):
            while not comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=st):
                pass
            c0 = time.process_time()
            kept.extend(comm.recv(source=st.Get_source(), tag=st.Get_tag()))
            cpu += time.process_time() - c0
        print(f"RESULT receive={cpu / len(kept):.9f}", flush=True)
    else:
        requests = []
        for _ in range(messages):
            requests.append(comm.isend([batch.pack()], dest=0, tag=TAG_RESULT))
            if len(requests) > 64:
                MPI.Request.waitall(requests)
                requests = []
        MPI.Request.waitall(requests)
    comm.Barrier()


def measure_receive(nprocs: int, messages: int = 2000) -> float:
    f = _mpirun(nprocs, "--receive-child", messages)
    print(f"master's probe and receive of a one-region report, {nprocs - 1} senders: "
          f"{1e6 * f['receive']:.1f} us CPU a message", flush=True)
    return f["receive"]


# --------------------------------------------------------------------------
# 3. the real loop


def sleeping_factory(seconds: float):
    """Fits that sleep ``seconds`` per region: workers wait without taking a core."""
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


def run_loop(n_regions: int, batch_size, nprocs: int, sleep: float = 0.0) -> dict:
    """One fit loop with instant (or sleeping) fits under mpiexec; the master's figures."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _bench_fit().make_capacity_workdir(Path(tmp), n_regions, batch_size)
        return _mpirun(nprocs, "--child", cfg, "--sleep", sleep)


def measure_loop(nprocs: int, sizes, n_regions: int = 100_000) -> None:
    print(f"the fit loop, {nprocs - 1} workers (oversubscribed), instant fits, "
          f"{n_regions} regions:")
    for b in (*sizes, "auto"):
        f = run_loop(n_regions, b, nprocs)
        print(f"  batch {b!s:>5s}: {f['regions'] / f['loop']:9.0f} regions/s, "
              f"{int(f['batches'])} reports, master busy {100 * f['busy'] / f['loop']:5.1f}% "
              f"({1e6 * f['busy'] / max(f['batches'], 1):.0f} us a report)", flush=True)


# --------------------------------------------------------------------------
# 4. checkpoints


def checkpoint_costs() -> dict:
    """A whole checkpoint (s per region); a staged one's patch while the
    workers fit (with its fsync) and final commit: s, and s per changed row."""
    from hpcxt.io.checkpoint import FitResults, StagedResults, write_results
    from hpcxt.schema import Status

    print("checkpoint cost (write aside, fsync, rename; best of 3):")
    times = []
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        path = Path(tmp) / "results.h5"
        for n in (100_000, 1_000_000):
            res = FitResults.new(n, ["1", "2"], {"fit": {}})
            best = math.inf
            for _ in range(3):
                t0 = time.perf_counter()
                write_results(path, res)
                best = min(best, time.perf_counter() - t0)
            times.append(best)
            print(f"  whole, {n:9d} regions: {1e3 * best:7.1f} ms", flush=True)
        found = {}
        for k in (1_000, 100_000):
            best = {"patch": math.inf, "commit": math.inf}
            for _ in range(3):
                staged = StagedResults(path, res)
                for step in ("patch", "commit"):
                    ids = np.arange(n - 2 * k, n - k) if step == "patch" else np.arange(n - k, n)
                    res.status[ids] = Status.OK
                    res.kT[ids] = 5.0
                    res.reason[ids[::7]] = f"a new reason ({step})"
                    t0 = time.perf_counter()
                    if step == "patch":
                        staged.patch(res, ids, sync=True)
                    else:
                        staged.commit(res, ids)
                    best[step] = min(best[step], time.perf_counter() - t0)
            found[k] = best
            print(f"  staged, {n} regions, {k:6d} rows changed: patch and fsync "
                  f"{1e3 * best['patch']:7.1f} ms, commit {1e3 * best['commit']:7.1f} ms",
                  flush=True)
    costs = {"whole": times[1] / 1e6}
    for step in ("patch", "commit"):
        per_row = max((found[100_000][step] - found[1_000][step]) / 99_000, 0.0)
        costs[f"{step}0"] = max(found[1_000][step] - 1_000 * per_row, 0.0)
        costs[f"{step}1"] = per_row
    print(f"  fit: whole {1e6 * costs['whole']:.3f} us per region; patch {1e3 * costs['patch0']:.1f}"
          f" ms + {1e6 * costs['patch1']:.3f} us per row; commit {1e3 * costs['commit0']:.1f} ms "
          f"+ {1e6 * costs['commit1']:.3f} us per row")
    return costs


# --------------------------------------------------------------------------
# 5. projecting


def simulate_workers(n_regions: int, nworkers: int, fit_seconds: float, take: float,
                     take_service: float, pack=(0.0, 0.0), latency: float = 50e-6):
    """The workers of one run: their reports (arrival at the master, regions),
    by discrete-event simulation.

    Returns
    -------
    reports : list of (time, regions, last)
        Sorted by time; ``last`` marks a worker's final report.
    done : float
        When the last worker finished fitting, s.
    """
    from hpcxt.fit_mpi import REPORT_SECONDS, Plan, auto_batch_size

    plan = Plan(None, None, None, REPORT_SECONDS, nworkers)
    counter_free, handed = 0.0, 0
    # (time the worker wants its next batch, worker, its mean fit, unsent, last report)
    queue = [(0.0, w) for w in range(nworkers)]
    state = {w: [None, 0, 0.0, n_regions] for w in range(nworkers)}
    heapq.heapify(queue)
    reports, done = [], 0.0
    while queue:
        t, w = heapq.heappop(queue)
        mean, unsent, last, seen = state[w]
        # as _worker_loop: size from what was left at the last take, and a
        # read of the counter first unless that is the smallest size
        size = auto_batch_size(mean, seen, nworkers)
        ops = 1
        if size > auto_batch_size(mean, 0, nworkers):
            size = auto_batch_size(mean, n_regions - handed, nworkers)
            ops = 2
        served = max(t, counter_free)
        counter_free = served + ops * take_service
        t_got = served + ops * max(take, take_service)
        start, handed = handed, handed + size
        if start >= n_regions:
            reports.append((t_got + latency, unsent, True))
            done = max(done, t_got)
            continue
        k = min(size, n_regions - start)
        t_end = t_got + k * fit_seconds + pack[0] + pack[1] * k
        unsent += k
        if t_end - last >= plan.report_interval(fit_seconds, n_regions - handed):
            reports.append((t_end + latency, unsent, False))
            unsent, last = 0, t_end
        state[w] = [fit_seconds, unsent, last, max(n_regions - handed, 0)]
        heapq.heappush(queue, (t_end, w))
    reports.sort()
    return reports, done


def project(n_regions: int, nranks: int, fit_seconds: float, costs: dict,
            checkpoint_every: float = 60.0) -> dict:
    """The fit on ``nranks`` ranks (see the module docstring, 5).

    ``costs``: ``take``, ``take_service`` (s), ``w0``, ``w1`` (a worker's
    packing of each batch: s, and s per region), ``c0``, ``c1`` (master s per
    report and per region in it), ``whole`` (s per region of a whole
    checkpoint), ``patch0``, ``patch1`` (adding rows to a staged checkpoint,
    with its fsync: s, and s per row), ``commit0``, ``commit1`` (its final
    commit: s, and s per row).
    """
    from hpcxt.fit_mpi import STAGE_LEAD, STAGE_MIN_SECONDS

    nworkers = nranks - 1
    reports, done = simulate_workers(
        n_regions, nworkers, fit_seconds, costs["take"], costs["take_service"],
        (costs.get("w0", 0.0), costs.get("w1", 0.0)))
    whole = costs["whole"] * n_regions
    t_master, last_checkpoint, busy = 0.0, 0.0, 0.0
    staged, since, recorded = False, 0, 0
    for arrival, regions, _ in reports:
        if staged and since and arrival > t_master:
            # idle: the rows since go into the staged file (Master.catch_up)
            t_master += costs["patch0"] + costs["patch1"] * since
            since = 0
        t_master = max(arrival, t_master)
        service = costs["c0"] + costs["c1"] * regions
        t_master += service
        busy += service
        since += regions
        recorded += regions
        if not staged and whole >= STAGE_MIN_SECONDS:
            # as _Master.maybe_stage: every region not recorded yet is work left
            if (n_regions - recorded) * fit_seconds / nworkers <= STAGE_LEAD * whole:
                t_master += whole
                staged, since = True, 0
                continue
        if not staged and t_master - last_checkpoint >= checkpoint_every:
            t_master += whole
            last_checkpoint = t_master
    final = costs["commit0"] + costs["commit1"] * since if staged else whole
    work = n_regions * fit_seconds
    return dict(loop=done, end=t_master + final, final=final, staged=staged,
                reports=len(reports), master_busy=busy / t_master,
                efficiency_loop=work / (nranks * done),
                efficiency=work / (nranks * (t_master + final)))


def largest_efficient(n: int, nranks: int, fit_s: float, costs: dict,
                      target: float = 0.9) -> int:
    """The most ranks (``nranks`` halved until it does) projected to reach ``target``; 0: none.

    (Rank 0 fits nothing, so a few ranks never reach 90%: the search stops at 16.)
    """
    while nranks >= 16:
        if project(n, nranks, fit_s, costs)["efficiency"] >= target:
            return nranks
        nranks //= 2
    return 0


def projections(costs: dict, nranks: int, regions, fit_times) -> None:
    print(f"projected on {nranks} ranks (take {1e6 * costs['take']:.1f} us, counter "
          f"{1e6 * costs['take_service']:.2f} us a take; master {1e6 * costs['c0']:.0f} us "
          f"+ {1e6 * costs['c1']:.3f} us x regions a report; checkpoint "
          f"{1e6 * costs['whole']:.2f} us per region, a staged one's patch "
          f"{1e3 * costs['patch0']:.1f} ms + {1e6 * costs['patch1']:.2f} us per row, commit "
          f"{1e3 * costs['commit0']:.1f} ms + {1e6 * costs['commit1']:.2f} us per row):")
    for fit_s in fit_times:
        for n in regions:
            p = project(n, nranks, fit_s, costs)
            ideal = n * fit_s / (nranks - 1)
            most = ""
            if p["efficiency"] < 0.9:
                most = (f"; >= 90% on at most "
                        f"{largest_efficient(n, nranks // 2, fit_s, costs)} ranks")
            print(f"  fit {1e3 * fit_s:6.1f} ms, {n:9d} regions: efficiency "
                  f"{100 * p['efficiency_loop']:5.1f}% workers' loop, "
                  f"{100 * p['efficiency']:5.1f}% until the final checkpoint is on disk "
                  f"(loop {p['loop']:8.3f} s, end {p['end']:8.3f} s, final write "
                  f"{p['final']:6.3f} s{' (staged)' if p['staged'] else ''}; ideal "
                  f"{ideal:8.3f} s; {p['reports']} reports, master busy "
                  f"{100 * p['master_busy']:5.1f}%){most}", flush=True)


def validate(nprocs: int, costs: dict) -> None:
    """Measured against projected, with fits that sleep (so workers need no core)."""
    print(f"check of the model: {nprocs} ranks, fits that sleep, batch_size auto:")
    for fit_s, n in ((1e-3, 20_000), (10e-3, 5_000)):
        f = run_loop(n, "auto", nprocs, sleep=fit_s)
        p = project(n, nprocs, fit_s, costs)
        print(f"  fit {1e3 * fit_s:4.1f} ms, {n} regions: measured {f['loop']:6.3f} s "
              f"({int(f['batches'])} reports, master busy {100 * f['busy'] / f['loop']:4.1f}%), "
              f"projected {p['end']:6.3f} s ({p['reports']} reports), "
              f"ideal {n * fit_s / (nprocs - 1):6.3f} s", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nprocs", type=int, default=17, help="ranks for the measurements")
    p.add_argument("--sizes", type=int, nargs="*", default=[1, 16, 256])
    p.add_argument("--take", type=float, help="skip measuring: s a take costs its rank")
    p.add_argument("--take-service", type=float, help="... and the counter's s per take")
    p.add_argument("--c0", type=float, help="skip measuring: master s per report")
    p.add_argument("--c1", type=float, default=0.0, help="... and per region in it")
    p.add_argument("--whole", type=float, help="skip measuring: s per region of a checkpoint")
    p.add_argument("--commit0", type=float, default=0.04,
                   help="with --whole: s to patch or commit a staged checkpoint")
    p.add_argument("--commit1", type=float, default=0.17e-6, help="... and s per row")
    p.add_argument("--ranks", type=int, default=1024)
    p.add_argument("--regions", type=int, nargs="*", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--fit-ms", type=float, nargs="*", default=[1.0, 170.0])
    p.add_argument("--skip-loop", action="store_true", help="skip 3 and 6 (real fit loops)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--sleep", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--counter-child", type=float, help=argparse.SUPPRESS)
    p.add_argument("--receive-child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.sleep)
        return
    if args.counter_child:
        counter_child(args.counter_child)
        return
    if args.receive_child:
        receive_child(args.receive_child)
        return
    costs = {}
    if args.c0 is None:
        c0, c1, w0, w1 = report_cost()
        receive = measure_receive(args.nprocs)
        print(f"  so the master's cost per report: c(b) = {1e6 * (c0 + receive):.1f} us + "
              f"{1e6 * c1:.3f} us x b")
        costs.update(c0=c0 + receive, c1=c1, w0=w0, w1=w1)
    else:
        costs.update(c0=args.c0, c1=args.c1)
    if args.take is None:
        costs["take"], costs["take_service"] = measure_counter(args.nprocs)
    else:
        costs["take"] = args.take
        costs["take_service"] = args.take_service or args.take
    if not args.skip_loop:
        measure_loop(args.nprocs, args.sizes)
    if args.whole is None:
        costs.update(checkpoint_costs())
    else:
        costs.update(whole=args.whole, patch0=args.commit0, patch1=args.commit1,
                     commit0=args.commit0, commit1=args.commit1)
    if not args.skip_loop:
        validate(args.nprocs, costs)
    projections(costs, args.ranks, args.regions, [ms / 1e3 for ms in args.fit_ms])


if __name__ == "__main__":
    main()
