"""Benchmark of the fit stage: fits per second, master capacity, checkpoint cost.

Run from the repository root::

    .venv/bin/python benchmarks/fit.py                 # synthetic data
    .venv/bin/python benchmarks/fit.py --config DEMO/config.yaml
                                                       # a prepped + scalemapped workdir

Prints three figures (targets from GitHub issue 4):

1. Fits per CPU-second of both engines side by side on the same regions,
   with bounds on kT and norm (targets from issue 10: the template engine
   >= 1000 per core and >= 100 times Sherpa). Without ``--config`` the
   regions are the synthetic ones of tests/fit_fixtures.py (about 1000-2000
   counts each, two observations); with ``--config`` the first
   ``--regions`` regions of that workdir (e.g. the demo's, 1024-channel
   ACIS-I-like responses).
2. Master capacity: regions per second rank 0 hands out and records when
   fits take no time, with several worker ranks under the venv's mpiexec
   (target: >= 5000/s, enough for 1000 ranks at 5 fits/s each).
3. Checkpoint cost: time to write results.h5 for 100 000 regions, as a share
   of the default 60 s checkpoint interval (target: < 1%), and the share
   measured in the capacity runs.

Not a test: timings on shared machines vary; nothing is asserted.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
from dataclasses import replace
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


# --------------------------------------------------------------------------
# 1. fits per second


def _cpu_rate(fn, items) -> tuple[float, list]:
    """Items per CPU-second of ``fn`` over ``items``, and its results."""
    c0 = time.process_time()
    out = [fn(x) for x in items]
    return len(items) / max(time.process_time() - c0, 1e-9), out


def fits_per_second(config: Path | None, n_regions: int, n_sherpa: int) -> None:
    """Both fit engines side by side on the same regions, one core.

    Rates are regions per CPU-second, with bounds on kT and norm:

    * template kernel: the profile-likelihood fit alone (grouping included);
    * template engine on the regions it certifies alone: where no jump of
      the model in kT is in the way (xsapec has no such jumps);
    * template engine: what a run does per region (kernel, plus Sherpa's fit
      on the templates for the regions whose answer depends on Sherpa's path
      across a jump of the model, plus Sherpa for the regions it cannot
      certify), without the verification sample; and the same with those
      path-dependent regions fitted by Sherpa on the folded model, as
      before Sherpa ran on the templates, with the largest difference
      between the two answers;
    * Sherpa, conf on kT and norm: the reference the engine is compared with;
    * Sherpa, hpcxt's default (conf on kT, covar on norm).
    """
    from hpcxt.engines import sigma_differences
    from hpcxt.fit import FitRecord
    from hpcxt.io.config import Config, load_config
    from hpcxt.schema import Engine, Status
    from hpcxt.stages.fit import BatchFitter
    from hpcxt.template_fit import fit_profile

    with tempfile.TemporaryDirectory() as tmp:
        if config is None:
            from fit_fixtures import make_fit_workdir
            cfg_path = make_fit_workdir(Path(tmp), n_side=6, errors="conf")
            source = "synthetic workdir (tests/fit_fixtures.py, 36 regions, 2 observations)"
        else:
            cfg_path = config
            source = f"{config}"
        raw = load_config(cfg_path, check_files=False).to_dict()
        raw["fit"].update(errors="conf", engine="template")
        t0 = time.perf_counter()
        fitter = BatchFitter(Config(raw, cfg_path))
        setup = time.perf_counter() - t0
        eng, s = fitter.engine, fitter.engine.settings
        n = min(n_regions, len(fitter.spectra))
        spectra = [fitter.spectra.spectra(i) for i in range(n)]
        plans = [eng.sherpa.prepare(sp, FitRecord(eng.nobs)) for sp in spectra]
        fittable = [(sp, p) for sp, p in zip(spectra, plans) if p is not None]
        eng.fit(fittable[0][0])  # warm up the compiled kernels, XSPEC and Sherpa
        # timed without verification (the random sample, and the regions of
        # Sherpa on the templates checked against Sherpa on the folded model)
        eng.settings = replace(eng.settings, verify_fraction=0.0)

        def kernel(item):
            sp, p = item
            return fit_profile(eng.templates, sp, p.statistic, p.groupings, kT_range=s.kT_range,
                               error_sigma=s.error_sigma, errors="conf", kT_init=s.kT_init)

        r_kernel, res = _cpu_rate(kernel, fittable)
        r_engine, recs = _cpu_rate(lambda item: eng.fit(item[0]), fittable)
        eng.replay = False
        r_folded, recs_folded = _cpu_rate(lambda item: eng.fit(item[0]), fittable)
        eng.replay = True
        replayed = [(rec, ref) for rec, ref in zip(recs, recs_folded)
                    if rec.engine == Engine.SHERPA_TEMPLATES]
        worst = max([0.0] + [abs(d) for rec, ref in replayed if ref.status == Status.OK
                             for d in sigma_differences(rec, ref)])
        away = [item for item, rec in zip(fittable, recs) if rec.engine == Engine.TEMPLATE]
        r_away = _cpu_rate(lambda item: eng.fit(item[0]), away)[0] if away else float("nan")
        few = fittable[:n_sherpa]
        r_conf, _ = _cpu_rate(lambda item: eng.reference.fit(item[0]), few)
        r_default, _ = _cpu_rate(lambda item: eng.sherpa.fit(item[0]), few)
        fallback = sum(r.engine == Engine.SHERPA_FALLBACK for r in recs)
        n_replayed = len(replayed)
        ok = sum(r.status == Status.OK for r in recs)
        print(f"fit engines on {source}: {len(fittable)} fittable regions of {n} "
              f"(Sherpa timed on the first {len(few)}); engine set-up {setup:.2f} s "
              f"({eng.templates.nbytes / 2**20:.1f} MiB of templates)", flush=True)
        print("| engine (bounds on kT and norm) | fits per CPU-second | template faster by |")
        print("|---|---|---|")
        for name, rate in (("template kernel alone", r_kernel),
                           (f"template engine as run ({n_replayed} of {len(recs)} regions by "
                            f"Sherpa on the templates, {fallback} fell back to Sherpa)",
                            r_engine),
                           (f"template engine, those {n_replayed} by Sherpa on the folded model "
                            "(before)", r_folded),
                           (f"template engine on the {len(away)} regions it certified alone "
                            "(no jump of the model in the way)", r_away),
                           ("Sherpa, conf on kT and norm", r_conf),
                           ("Sherpa, hpcxt default (conf kT, covar norm)", r_default)):
            ratio = "" if name.startswith("Sherpa") else \
                f"{rate / r_conf:,.0f}x conf, {rate / r_default:,.0f}x default"
            print(f"| {name} | {rate:,.1f} | {ratio} |", flush=True)
        print(f"({ok} of {len(recs)} ok; {sum(not r.certified for r in res)} not certified "
              "by the template kernel)", flush=True)
        print(f"Sherpa on the templates against Sherpa on the folded model, {n_replayed} "
              f"regions: largest difference {worst:.4f} sigma (best fits and bounds of kT and "
              "norm)", flush=True)


# --------------------------------------------------------------------------
# 2. master capacity


def instant_factory(cfg, rank):
    """A fit that takes no time: the master's bookkeeping is all that is timed."""
    from hpcxt.fit import RecordBatch
    from hpcxt.schema import Status, empty_columns
    nobs = 2

    def fit_batch(ids):
        ids = np.asarray(ids, dtype=np.int64)
        n = ids.size
        cols = empty_columns(n, nobs)
        values = dict(kT=5.0, kT_lo=4.0, kT_hi=6.0, norm=1e-4, norm_lo=9e-5, norm_hi=1.1e-4,
                      stat=100.0, dof=98, counts=1000, bkg_counts=50, status=Status.OK,
                      fit_seconds=1e-6, worker=rank)
        for name, v in values.items():
            cols[name][...] = v
        return RecordBatch(ids, cols)
    return fit_batch


def make_capacity_workdir(root: Path, n_regions: int, batch_size) -> Path:
    """A region table of n_regions and a minimal bundle (events unused)."""
    from fit_fixtures import gaussian_response
    from hpcxt.io.bundle import Bundle, ImageGrid, ObsData, write_bundle
    from hpcxt.io.config import dump_config
    from hpcxt.io.regions_table import RegionTable, write_regions

    resp = gaussian_response(nchan=16)
    ev = {"x": np.zeros(1), "y": np.zeros(1), "pi": np.ones(1, np.int32),
          "energy": np.zeros(1, np.float32)}
    obs = [ObsData(obsid=str(k), exposure=1e4, bkg_exposure=5e4, bkg_scale=0.2, events=ev,
                   bkg_events=ev, exposure_map=np.ones((2, 2), np.float32),
                   fov=np.ones((2, 2), bool), response=resp) for k in (1, 2)]
    z = np.zeros((2, 2))
    write_bundle(root / "work" / "prep" / "bundle.h5",
                 Bundle(grid=ImageGrid((2, 2), 0.0, 0.0, 4), counts=z, background=z,
                        exposure=z, mask=np.ones((2, 2), bool), observations=obs))
    n = n_regions
    write_regions(root / "work" / "acb" / "regions.h5", RegionTable(
        region_id=np.arange(n, dtype=np.int64), row=np.zeros(n, np.int32),
        col=np.zeros(n, np.int32), x=np.zeros(n), y=np.zeros(n), radius=np.ones(n),
        radius_sky=np.ones(n) * 4, fraction=np.ones((n, 2)), effective_exposure=np.ones((n, 2)),
        exposure_time=np.ones((n, 2)) * 1e4, used=np.ones((n, 2), bool), obsids=["1", "2"]))
    cfg = {"cluster": {"name": "bench", "redshift": 0.1, "nh": 0.03}, "workdir": "work",
           "observations": [{"obsid": "1"}, {"obsid": "2"}],
           "fit": {"model": "xsphabs*xsbremss", "batch_size": batch_size,
                   "checkpoint_seconds": 60.0}}
    path = root / "config.yaml"
    path.write_text(dump_config(cfg))
    return path


def capacity_child(config: str) -> None:
    """Runs under mpiexec: run_fit with instant fits, rank 0 prints its figures."""
    import logging

    from mpi4py import MPI

    from hpcxt.stages.fit import run_fit
    from hpcxt.io.checkpoint import read_results
    from hpcxt.io.config import load_config

    logging.basicConfig(level=logging.WARNING)
    comm = MPI.COMM_WORLD
    cfg = load_config(config, check_files=False)
    comm.Barrier()
    t0 = time.perf_counter()
    status = run_fit(cfg, comm, fit_factory=instant_factory)
    dt = time.perf_counter() - t0
    if comm.Get_rank() == 0:
        res = read_results(cfg.stage_dir("fit") / "results.h5")
        cpu = time.process_time()
        print(f"RESULT n={len(res)} seconds={dt:.4f} status={status} "
              f"checkpoints={res.checkpoints} ckpt_seconds={res.checkpoint_seconds_total:.4f} "
              f"run_seconds={res.run_seconds:.4f} master_cpu={cpu:.2f}", flush=True)


def master_capacity(n_regions: int, nprocs: int) -> None:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for batch_size in (1, 10, "auto"):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = make_capacity_workdir(Path(tmp), n_regions, batch_size)
            cmd = [str(mpiexec), "-n", str(nprocs), sys.executable, "-m", "mpi4py",
                   str(Path(__file__).resolve()), "--capacity-child", str(cfg)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
            if proc.returncode != 0 or not line:
                print(f"capacity run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
                continue
            f = dict(kv.split("=") for kv in line[0].split()[1:])
            n, dt = int(f["n"]), float(f["seconds"])
            share = 100 * float(f["ckpt_seconds"]) / max(float(f["run_seconds"]), 1e-9)
            print(f"master capacity, batch_size={batch_size!s:4s}: {n / dt:9.0f} regions/s "
                  f"({n} regions, {nprocs - 1} workers, {dt:.2f} s incl. start-up; "
                  f"{f['checkpoints']} checkpoints = {share:.2f}% of the loop; "
                  f"master CPU {f['master_cpu']} s)", flush=True)


# --------------------------------------------------------------------------
# 3. checkpoint cost


def checkpoint_cost(n_regions: int = 100_000, repeats: int = 5) -> None:
    from hpcxt.schema import Status
    from hpcxt.io.checkpoint import FitResults, write_results

    res = FitResults.new(n_regions, ["1", "2"], {"fit": {}})
    rng = np.random.default_rng(1)
    done = rng.random(n_regions) < 0.7
    res.kT[done] = rng.uniform(1, 15, done.sum())
    res.status[done] = Status.OK
    res.reason[~done & (rng.random(n_regions) < 0.05)] = "too few counts (57 < 100)"
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "results.h5"
        for _ in range(repeats):
            t0 = time.perf_counter()
            write_results(path, res)
            times.append(time.perf_counter() - t0)
        size = path.stat().st_size / 1e6
    t = float(np.median(times))
    print(f"checkpoint of {n_regions} regions ({size:.1f} MB, write aside + fsync + rename): "
          f"{1e3 * t:.1f} ms median; {100 * t / 60.0:.3f}% of the default 60 s interval",
          flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, help="prepped and scalemapped workdir config")
    p.add_argument("--regions", type=int, default=400, help="regions for the template engine")
    p.add_argument("--sherpa-regions", type=int, default=40,
                   help="of those, regions timed with Sherpa (slow)")
    p.add_argument("--capacity-regions", type=int, default=100_000)
    p.add_argument("--nprocs", type=int, default=4, help="ranks for the capacity run")
    p.add_argument("--skip-fits", action="store_true")
    p.add_argument("--skip-capacity", action="store_true")
    p.add_argument("--capacity-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.capacity_child:
        capacity_child(args.capacity_child)
        return
    if not args.skip_fits:
        fits_per_second(args.config, args.regions, args.sherpa_regions)
    if not args.skip_capacity:
        master_capacity(args.capacity_regions, args.nprocs)
    checkpoint_cost()


if __name__ == "__main__":
    main()
