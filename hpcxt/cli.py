"""The ``hpcxt`` command line.

MPI stages (``scalemap``, ``fit``) are launched as::

    mpiexec -n N python -m mpi4py -m hpcxt fit CONFIG

``python -m mpi4py`` makes one failing rank abort the whole job. Every other
command is serial. Bad input ends with one line ``hpcxt: error: ...`` on
stderr and exit status 2; ``--debug`` shows the traceback instead.

``prep``, ``scalemap``, ``fit`` (and ``run``, in :mod:`hpcxt.pipeline`)
first check that the work directory can be written and take its lock
(:mod:`hpcxt.io.lock`): a second writer is refused with one line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import HpcxtError

log = logging.getLogger("hpcxt")


def _comm():
    """COMM_WORLD, imported only by the commands that use MPI."""
    from mpi4py import MPI
    return MPI.COMM_WORLD


def _setup_logging(verbose: bool, rank: int | None = None) -> None:
    tag = f"[rank {rank}] " if rank is not None else ""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format=f"%(asctime)s hpcxt {tag}%(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)


def _writing(cfg, command: str, comm=None):
    """Context of a command that writes into the work directory.

    Checks that the work directory can be written and holds its lock
    (:mod:`hpcxt.io.lock`) for the ``with`` block; under MPI rank 0 does
    both and a refusal reaches every rank.
    """
    from .io.lock import collective_workdir_lock
    return collective_workdir_lock(comm, cfg.workdir_path, command,
                                   stale_after=float(cfg.lock_stale_seconds))


def cmd_init(args) -> int:
    from .io.config import PLACEHOLDER, render_template
    from .io.workdir import write_text_atomic
    path = Path(args.dir) / f"{args.name}.yaml"
    if path.exists() and not args.force:
        raise HpcxtError(f"{path}: exists; use --force to overwrite")
    write_text_atomic(path, render_template(args.name, redshift=args.redshift, nh=args.nh))
    todo = [k for k, v in (("cluster.redshift", args.redshift), ("cluster.nh", args.nh))
            if v is None]
    fill = f"fill in {' and '.join(todo)} (now {PLACEHOLDER}), " if todo else ""
    print(f"wrote {path}: {fill}edit the observations and region files, then run "
          f"'hpcxt prep {path}'")
    return 0


def cmd_simulate(args) -> int:
    from .prep.simulate import simulate
    summary = simulate(Path(args.outdir), preset=args.preset, seed=args.seed)
    print(summary.describe() if hasattr(summary, "describe") else summary)
    return 0


def cmd_prep(args) -> int:
    from .stages.prep import run_prep
    from .io.config import load_config
    cfg = load_config(args.config)
    with _writing(cfg, "prep"):
        run_prep(cfg, force=args.force)
    return 0


def cmd_scalemap(args) -> int:
    from .stages.scalemap import run_scalemap
    from .io.config import load_config
    comm = _comm()
    _setup_logging(args.verbose, comm.Get_rank() if comm.Get_size() > 1 else None)
    cfg = load_config(args.config, check_files=False)
    with _writing(cfg, "scalemap", comm):
        run_scalemap(cfg, comm, hooks=args.hooks, shared_memory=not args.no_shared_memory)
    return 0


def cmd_fit(args) -> int:
    from .io.config import load_config
    from .lean_imports import import_fit_libraries
    comm = _comm()
    _setup_logging(args.verbose, comm.Get_rank() if comm.Get_size() > 1 else None)
    cfg = load_config(args.config, check_files=False)
    # before anything imports numba or Sherpa (the master of an MPI fit never fits)
    import_fit_libraries(cfg.fit.model, sherpa=comm.Get_size() == 1 or comm.Get_rank() != 0)
    from .stages.fit import run_fit
    with _writing(cfg, "fit", comm):
        status = run_fit(cfg, comm, resume=args.resume, hooks=args.hooks,
                         shared_memory=not args.no_shared_memory)
    if comm.Get_size() > 1:
        # Every rank returned: finalize together, so that the master's
        # "checkpointed, not finished" status (85) reaches mpiexec/srun as an
        # exit status instead of becoming an MPI_Abort under python -m mpi4py.
        from mpi4py import MPI
        comm.Barrier()
        MPI.Finalize()
    return status


def cmd_status(args) -> int:
    from .stages.fit import fit_status
    from .io.config import load_config
    cfg = load_config(args.config, check_files=False)
    print(fit_status(cfg))
    return 0


def _print_truth_comparison(cfg) -> None:
    """After maps of a simulated project: the per-zone table (never fails the command)."""
    from .stages.compare import compare_project, has_truth
    if not has_truth(cfg):
        return
    try:
        print(compare_project(cfg).describe("hpcxt maps"))
    except HpcxtError as exc:
        log.warning("no comparison with the simulator's truth: %s", exc)


def cmd_maps(args) -> int:
    from .stages.maps import run_maps
    from .io.config import load_config
    from .io.workdir import WorkDir
    cfg = load_config(args.config, check_files=False)
    # No lock: maps only read the fit's checkpoints, so they can be made while it runs.
    WorkDir.of(cfg).check_writable()
    run_maps(cfg, coords=args.coords)
    _print_truth_comparison(cfg)
    return 0


def cmd_regions(args) -> int:
    from .stages.export import describe_region
    from .io.config import load_config
    cfg = load_config(args.config, check_files=False)
    print(describe_region(cfg, args.id))
    return 0


def cmd_export(args) -> int:
    from .stages.export import run_export
    from .io.config import load_config
    cfg = load_config(args.config, check_files=False)
    print(f"wrote {run_export(cfg, args.format, args.output)}")
    return 0


def cmd_compare(args) -> int:
    from .stages.compare import compare_project
    from .io.config import load_config
    result = compare_project(load_config(args.config, check_files=False))
    print(result.describe("hpcxt compare"))
    return 0 if result.ok else 1


def cmd_run(args) -> int:
    from .pipeline import run_pipeline
    from .io.config import load_config
    status = run_pipeline(args.config, nprocs=args.np)
    if status == 0:
        _print_truth_comparison(load_config(args.config, check_files=False))
    return status


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(Path(args.outdir), nprocs=args.np, seed=args.seed)


def cmd_doctor(args) -> int:
    from .doctor import doctor_report
    config = None
    if args.config:
        from .io.config import load_config
        config = load_config(args.config, check_files=False)
    text, ok = doctor_report(config)
    print(text)
    return 0 if ok else 1


def cmd_jobs(args) -> int:
    from .io.config import load_config
    from .jobs import JobOptions, render_jobs, submit_jobs
    cfg = load_config(args.config, check_files=False)
    options = JobOptions(
        scheduler=args.scheduler, nodes=args.nodes, ntasks_per_node=args.ntasks_per_node,
        time=args.time, account=args.account, partition=args.partition,
        modules=tuple(args.module), venv=args.venv, conda_env=args.conda_env,
        python=args.python, signal_seconds=args.signal_seconds,
        max_resubmits=args.max_resubmits, srun_mpi=args.mpi, mpiexec=args.mpiexec,
        mpiexec_flags=args.mpiexec_flags, pbs_resources=args.pbs_resources,
        directives=tuple(args.directive))
    scripts = render_jobs(cfg, options, jobs_dir=args.jobs_dir)
    for stage, path in scripts.items():
        print(f"wrote {path}")
    if args.submit:
        for stage, job_id in submit_jobs(args.scheduler, scripts, args.submit):
            print(f"submitted {stage}: job {job_id}")
        print(f"watch: hpcxt status {args.config}; history in {scripts['fit'].parent}/chain.log")
    return 0


def _mpi_rank_and_size() -> tuple[int, int]:
    """(rank, size) if this process runs under MPI, else (0, 1); never initialises MPI."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return 0, 1
    return mpi.COMM_WORLD.Get_rank(), mpi.COMM_WORLD.Get_size()


def _report_error_once(exc: HpcxtError) -> None:
    """Print the one-line error; under MPI, once rather than once per rank.

    Bad input usually fails on every rank at once. Rank 0 prints and exits,
    which (under ``python -m mpi4py``) aborts the others; the other ranks wait
    a moment first, so they print only when rank 0 did not fail with them.
    """
    rank, size = _mpi_rank_and_size()
    if rank != 0 and size > 1:
        import time
        time.sleep(2.0)
    print(f"hpcxt: error: {exc}", file=sys.stderr)
    sys.stderr.flush()


def _add_shared_memory_flag(parser, what: str) -> None:
    parser.add_argument("--no-shared-memory", action="store_true",
                        help=f"every rank keeps its own copy of {what} instead of one per "
                             "node in MPI shared memory (same results)")


def _add_setup_commands(sub) -> None:
    """``init`` and ``simulate``: what comes before a project."""
    s = sub.add_parser("init", help="write a commented config template")
    s.add_argument("name", help="cluster name; writes NAME.yaml")
    s.add_argument("--dir", default=".", help="folder to write into (default: .)")
    s.add_argument("--force", action="store_true", help="overwrite an existing file")
    s.add_argument("--redshift", type=float, help="cluster.redshift (else left to fill in)")
    s.add_argument("--nh", type=float, help="cluster.nh, 1e22 cm^-2 (else left to fill in)")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("simulate", help="simulate Chandra ACIS-I observations of a merging cluster")
    s.add_argument("outdir")
    s.add_argument("--preset", choices=("small", "demo", "large"), default="small")
    s.add_argument("--seed", type=int, default=1)
    s.set_defaults(func=cmd_simulate)


def _add_stage_commands(sub) -> None:
    """The stages (``prep``, ``scalemap``, ``fit``, ``maps``) and ``status``."""
    s = sub.add_parser("prep", help="serial prep: events, images and responses into the bundle")
    s.add_argument("config")
    s.add_argument("--force", action="store_true", help="redo every prep stage")
    s.set_defaults(func=cmd_prep)

    s = sub.add_parser("scalemap", help="adaptive circular binning (MPI)")
    s.add_argument("config")
    _add_shared_memory_flag(s, "the images")
    s.set_defaults(func=cmd_scalemap)

    s = sub.add_parser("fit", help="one spectral fit per region (MPI master/worker)")
    s.add_argument("config")
    s.add_argument("--resume", action="store_true", help="continue from results.h5")
    _add_shared_memory_flag(s, "the sorted events")
    s.set_defaults(func=cmd_fit)

    s = sub.add_parser("status", help="progress of the fit: done, failed, pending, ETA")
    s.add_argument("config")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("maps", help="temperature, pressure, density and entropy maps, "
                                    "flux images, coverage and a ds9 region file")
    s.add_argument("config")
    s.add_argument("--coords", choices=("fk5", "physical"), default="fk5",
                   help="coordinates of maps/regions.reg: fk5 (sexagesimal, default) or "
                        "physical (sky pixels)")
    s.set_defaults(func=cmd_maps)


def _add_result_commands(sub) -> None:
    """``regions``, ``export`` and ``compare``: reading the fit results."""
    s = sub.add_parser("regions", help="every number of one fitted region")
    s.add_argument("config")
    s.add_argument("--id", type=int, required=True, help="region id (as in regions.reg)")
    s.set_defaults(func=cmd_regions)

    s = sub.add_parser("export", help="the fit results as a table, one row per region")
    s.add_argument("config")
    s.add_argument("--format", choices=("fits", "csv", "ecsv"), default="fits",
                   help="fits (default), csv (comma-separated ECSV) or ecsv")
    s.add_argument("--output", help="file to write (default: <workdir>/export/results.<format>)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("compare", help="a simulated project's temperature map against its truth, "
                                       "per zone (exit 1 when a zone is off by more than 10%%)")
    s.add_argument("config")
    s.set_defaults(func=cmd_compare)


def _add_jobs_command(sub) -> None:
    """``jobs``: batch scripts, with the scheduler options they take."""
    s = sub.add_parser("jobs", help="Slurm/PBS job scripts that checkpoint and resubmit themselves")
    s.add_argument("config")
    s.add_argument("--scheduler", choices=("slurm", "pbs"), required=True)
    s.add_argument("--nodes", type=int, default=1, help="nodes per job (default: 1)")
    s.add_argument("--ntasks-per-node", type=int, default=None,
                   help="MPI ranks per node (default: this machine's CPU count)")
    s.add_argument("--time", default="24:00:00",
                   help="wall time per job in Slurm's formats, with Slurm's meaning for both "
                        "schedulers: minutes, minutes:seconds, hours:minutes:seconds, days-hours, "
                        "days-hours:minutes, days-hours:minutes:seconds (10:00 is ten minutes; "
                        "default: 24:00:00)")
    s.add_argument("--account", help="account to charge")
    s.add_argument("--partition", "--queue", dest="partition", help="Slurm partition or PBS queue")
    s.add_argument("--module", action="append", default=[], metavar="NAME",
                   help="'module load NAME' first (repeatable)")
    s.add_argument("--venv", help="virtual environment to activate (default: the current one)")
    s.add_argument("--conda-env", help="conda environment to activate instead of a venv")
    s.add_argument("--python", help="python that runs hpcxt (default: the environment's)")
    s.add_argument("--signal-seconds", type=int, default=None,
                   help="checkpoint this many s before the wall time (default: a tenth of it, 60-600)")
    s.add_argument("--max-resubmits", type=int, default=20,
                   help="cap on automatic resubmissions (HPCXT_MAX_RESUBMITS, default: 20)")
    s.add_argument("--mpi", help="srun --mpi= plugin (default: pmi2 when mpi4py runs on the "
                                 "MPICH wheel, else the site's MpiDefault)")
    s.add_argument("--mpiexec", help="PBS launcher (default: the environment's mpiexec)")
    s.add_argument("--mpiexec-flags", default="", help="extra flags for the PBS launcher")
    s.add_argument("--pbs-resources", choices=("select", "nodes"), default="select",
                   help="PBS Pro select=N:ncpus=M (default) or Torque nodes=N:ppn=M")
    s.add_argument("--directive", action="append", default=[], metavar="OPTION",
                   help="extra #SBATCH/#PBS option, e.g. --directive=--mem=0 (repeatable)")
    s.add_argument("--jobs-dir", help="where to write (default: <workdir>/jobs)")
    s.add_argument("--submit", nargs="?", const="run", choices=("run", "fit", "scalemap", "mpi"),
                   help="submit too: run (default), fit, scalemap, or mpi (scalemap, then fit after it)")
    s.set_defaults(func=cmd_jobs)


def _add_pipeline_commands(sub) -> None:
    """``run``, ``demo`` and ``doctor``: whole runs and the installation check."""
    s = sub.add_parser("run", help="prep, scalemap, fit and maps in order (MPI stages via mpiexec)")
    s.add_argument("config")
    s.add_argument("--np", type=int, default=None,
                   help="MPI ranks (default: the cores available; the fit adds its master)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("demo", help="simulate a merging cluster, map it, compare with the truth")
    s.add_argument("--outdir", default="hpcxt-demo", help="folder for data and results")
    s.add_argument("--np", type=int, default=None, help="MPI ranks (default: the cores available)")
    s.add_argument("--seed", type=int, default=1)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("doctor", help="what is installed: MPI, Sherpa, XSPEC models, CIAO")
    s.add_argument("config", nargs="?", help="also check this config's fit.model")
    s.set_defaults(func=cmd_doctor)


def build_parser() -> argparse.ArgumentParser:
    """The ``hpcxt`` parser: global flags, then every command's subparser."""
    p = argparse.ArgumentParser(
        prog="hpcxt",
        description="Temperature maps of galaxy clusters from Chandra ACIS data, under MPI.")
    p.add_argument("--version", action="version", version=f"hpcxt {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for add_commands in (_add_setup_commands, _add_stage_commands, _add_result_commands,
                         _add_jobs_command, _add_pipeline_commands):
        add_commands(sub)
    return p


def main(argv=None, hooks=None) -> int:
    """Run one ``hpcxt`` command; returns its exit status.

    ``hooks`` (a :class:`hpcxt.hooks.RunHooks`) reaches the MPI stages: the
    seam through which tests inject faults.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.hooks = hooks
    if not logging.getLogger().handlers:
        _setup_logging(args.verbose)
    try:
        status = args.func(args)
    except HpcxtError as exc:
        if args.debug:
            raise
        _report_error_once(exc)
        return exc.exit_status
    except KeyboardInterrupt:
        print("hpcxt: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)
