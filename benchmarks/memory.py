"""Benchmark: the fit's memory per node, with and without shared memory.

Run from the repository root::

    .venv/bin/python benchmarks/memory.py                     # small and demo presets
    .venv/bin/python benchmarks/memory.py --presets demo --ranks 1 2 4 8
    .venv/bin/python benchmarks/memory.py --data NAME=DIR/config.yaml   # a prepped,
                                                                       # scale-mapped workdir

For each data set, number of ranks and memory mode (shared: the default;
private: ``--no-shared-memory``), runs ``mpiexec -n N python -m mpi4py -m
hpcxt fit`` on a fresh copy of the fit, waits until every fitting rank has
finished a batch (steady state: bundle read, events sorted, responses
built, Sherpa warm), samples the proportional set size (PSS, from
``/proc/<pid>/smaps_rollup``) of every rank several times, then stops the
fit with SIGTERM. Memory per node is the sum of the ranks' PSS (the MPI
launcher's own processes are left out): shared pages, such as a
shared-memory window or a library's code, count once in total however many
ranks map them.

Then for each data set and mode it fits ``total(N) = data + N * per_rank``
by least squares over the rank counts from 2 up (one rank is a serial run,
whose rank 0 both hands out and fits; from 2 ranks on every added rank is
a worker, so ``per_rank`` is what a worker adds, and ``data`` is one copy of
the data plus what the master weighs less than a worker) and prints both
terms. ``anon+shmem`` is the same without file-backed pages, whose PSS
also depends on what other processes on the machine map (other Python
processes share the libraries' pages).

Not a test: nothing is asserted. The data sets are made once in
``--outdir`` (``hpcxt simulate``, ``prep``, ``scalemap``) and reused.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODES = {"shared": (), "private": ("--no-shared-memory",)}


SOURCE = [ROOT]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE[0]), env.get("PYTHONPATH"))
                                        if p)
    return env


def hpcxt(*args, nprocs: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "hpcxt", *map(str, args)]
    if nprocs is None:
        return cmd
    mpiexec = Path(sys.executable).parent / "mpiexec"
    return [str(mpiexec), "-n", str(nprocs), sys.executable, "-m", "mpi4py", *cmd[1:]]


def prepare_preset(preset: str, outdir: Path) -> Path:
    """Simulate, prep and scale-map a preset once; the config path."""
    sim = outdir / preset
    cfg = sim / "config.yaml"
    if not (sim / "work" / "acb" / "regions.h5").exists():
        if not cfg.exists():
            subprocess.run(hpcxt("simulate", sim, "--preset", preset), check=True, env=_env())
        subprocess.run(hpcxt("prep", cfg), check=True, env=_env())
        subprocess.run(hpcxt("scalemap", cfg), check=True, env=_env())
    return cfg


def bench_config(cfg: Path) -> Path:
    """``config-memory.yaml`` beside ``cfg``: a checkpoint after every batch.

    So that results.h5 shows at once which ranks have fitted (the scale
    map and fit inputs are unchanged).
    """
    from hpcxt.io.config import dump_config, load_config

    raw = load_config(cfg, check_files=False).to_dict()
    raw["fit"]["checkpoint_seconds"] = 0
    out = cfg.with_name("config-memory.yaml")
    out.write_text(dump_config(raw))
    return out


def bundle_events(cfg: Path) -> int:
    """Source and background events in the bundle."""
    import h5py

    from hpcxt.io.config import load_config
    from hpcxt.io.workdir import WorkDir

    with h5py.File(WorkDir.of(load_config(cfg, check_files=False)).bundle, "r") as f:
        return sum(f["obs"][o][g]["x"].shape[0] for o in f["obs"]
                   for g in ("events", "bkg_events") if g in f["obs"][o])


# --------------------------------------------------------------------------
# processes and their memory


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(d))
    return kids


def rank_pids(launcher: int) -> list[int]:
    """The ranks under an mpiexec (hydra starts them through hydra_pmi_proxy)."""
    kids = _children()
    out, todo = [], list(kids.get(launcher, []))
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"hpcxt" in cmd and b"mpi4py" in cmd:
            out.append(pid)
    return sorted(out)


def pss(pid: int) -> dict[str, float]:
    """PSS of one process and its anonymous, file and shmem parts, MiB."""
    want = {"Pss:": "pss", "Pss_Anon:": "anon", "Pss_File:": "file", "Pss_Shmem:": "shmem"}
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in want:
            out[want[parts[0]]] = int(parts[1]) / 1024.0
    return out


def measure(cfg: Path, nprocs: int, mode: str, samples: int, interval: float,
            timeout: float) -> dict:
    """Run the fit, wait for steady state, sample every rank's PSS, stop the fit."""
    from hpcxt.io.checkpoint import read_results

    shutil.rmtree(cfg.parent / "work" / "fit", ignore_errors=True)
    results = cfg.parent / "work" / "fit" / "results.h5"
    fitting = {0} if nprocs == 1 else set(range(1, nprocs))
    proc = subprocess.Popen(hpcxt("fit", cfg, *MODES[mode], nprocs=nprocs), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"fit ended early ({proc.returncode}): "
                                   f"{proc.stderr.read()[-2000:]}")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"no steady state within {timeout:.0f} s")
            try:
                res = read_results(results)
                done = set(np.unique(res.worker[res.status != 0]).tolist())
            except Exception:  # not written yet, or being replaced
                done = set()
            if fitting <= done:
                break
            time.sleep(0.5)
        steady = time.monotonic() - t0
        pids = rank_pids(proc.pid)
        totals = []
        for _ in range(samples):
            per_rank = [pss(p) for p in pids]
            totals.append({k: sum(r.get(k, 0.0) for r in per_rank)
                           for k in ("pss", "anon", "file", "shmem")})
            time.sleep(interval)
        if len(pids) != nprocs:
            raise RuntimeError(f"found {len(pids)} ranks, expected {nprocs}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the master checkpoints and stops
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    median = {k: float(np.median([t[k] for t in totals])) for k in totals[0]}
    median["steady_s"] = steady
    return median


def fit_terms(ranks, totals) -> tuple[float, float]:
    """Least-squares ``total = data + n * per_rank``."""
    a = np.vstack([np.ones(len(ranks)), np.asarray(ranks, float)]).T
    (data, per_rank), *_ = np.linalg.lstsq(a, np.asarray(totals, float), rcond=None)
    return float(data), float(per_rank)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="*", default=["small", "demo"])
    p.add_argument("--data", action="append", default=[], metavar="NAME=CONFIG",
                   help="a prepped and scale-mapped workdir to measure too (repeatable)")
    p.add_argument("--ranks", nargs="*", type=int, default=[1, 2, 4, 8])
    p.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    p.add_argument("--outdir", type=Path, default=Path("/tmp/hpcxt-bench-memory"))
    p.add_argument("--samples", type=int, default=6)
    p.add_argument("--interval", type=float, default=0.5, help="s between samples")
    p.add_argument("--timeout", type=float, default=600.0, help="s to reach steady state")
    p.add_argument("--source", type=Path, default=ROOT,
                   help="hpcxt source tree to run (e.g. an older commit's, with --modes "
                        "shared, which passes no flag)")
    args = p.parse_args(argv)
    SOURCE[0] = args.source.resolve()
    args.outdir = args.outdir.resolve()
    args.outdir.mkdir(parents=True, exist_ok=True)
    data = [(name, Path(cfg).resolve()) for name, cfg in (i.split("=", 1) for i in args.data)]
    # Run from the data folder: ``python -m hpcxt`` puts the working
    # directory first on sys.path, where a checkout would shadow --source.
    os.chdir(args.outdir)
    datasets = [(name, bench_config(prepare_preset(name, args.outdir)))
                for name in args.presets]
    datasets += [(name, bench_config(cfg)) for name, cfg in data]
    print(f"{'data':>8s} {'events':>10s} {'mode':>8s} {'ranks':>5s} {'PSS MiB':>9s} "
          f"{'anon+shmem':>10s} {'file':>7s} {'steady after':>12s}", flush=True)
    rows = []
    for name, cfg in datasets:
        nev = bundle_events(cfg)
        for mode in args.modes:
            for n in args.ranks:
                m = measure(cfg, n, mode, args.samples, args.interval, args.timeout)
                rows.append((name, nev, mode, n, m))
                print(f"{name:>8s} {nev:10d} {mode:>8s} {n:5d} {m['pss']:9.1f} "
                      f"{m['anon'] + m['shmem']:10.1f} {m['file']:7.1f} "
                      f"{m['steady_s']:10.1f} s", flush=True)
    print("\nmemory per node = data + ranks x per_rank, MiB (least squares over the runs "
          "on 2 ranks or more)")
    for name, nev, mode in dict.fromkeys((r[0], r[1], r[2]) for r in rows):
        sel = [r for r in rows if r[:3] == (name, nev, mode) and r[3] >= 2]
        if len(sel) < 2:
            continue
        ranks = [r[3] for r in sel]
        line = [f"{name:>8s} ({nev / 1e6:.2f} M events) {mode:>8s}:"]
        for label in ("PSS", "anon+shmem"):
            vals = [r[4]["pss"] if label == "PSS" else r[4]["anon"] + r[4]["shmem"]
                    for r in sel]
            data, per_rank = fit_terms(ranks, vals)
            line.append(f"{label} {data:7.1f} + {per_rank:6.1f}/rank")
        print("  ".join(line), flush=True)


if __name__ == "__main__":
    main()
