"""``hpcxt run`` and ``hpcxt demo``: every stage in order, MPI stages via mpiexec.

The serial stages (prep, maps) run in this process; the MPI stages are
launched as ``mpiexec -n N python -m mpi4py -m hpcxt STAGE CONFIG`` with the
venv's own mpiexec, so one failing rank aborts the job. Every stage skips
work that is already done, so a re-run after a finished run does nothing
and a re-run after an interruption resumes. ``hpcxt run`` holds the work
directory's lock (:mod:`hpcxt.io.lock`) from start to end and hands it to
the stages it launches; when a stage fails, ``run`` exits with that stage's
status (2 for bad input), after the stage's own one-line error.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .errors import EXIT_CHECKPOINTED, HpcxtError
from .io.workdir import WorkDir

log = logging.getLogger("hpcxt.run")


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def find_mpiexec() -> str:
    """The mpiexec of the MPI that mpi4py uses: the venv's own first."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    found = shutil.which("mpiexec")
    if not found:
        raise HpcxtError("no mpiexec found: pip install mpich (or load your site's MPI module)")
    return found


def mpi_command(nprocs: int, *args) -> list[str]:
    return [find_mpiexec(), "-n", str(nprocs), sys.executable, "-m", "mpi4py", "-m", "hpcxt",
            *map(str, args)]


def _run_mpi(nprocs: int, *args, lock_token: str | None = None) -> int:
    """Run an MPI stage; its exit status (128 + N when killed by signal N)."""
    from .io.lock import TOKEN_ENV

    cmd = mpi_command(nprocs, *args)
    log.info("running: %s", " ".join(cmd))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    if lock_token:
        env[TOKEN_ENV] = lock_token  # the stage runs under this process's lock
    status = subprocess.run(cmd, env=env).returncode
    return 128 - status if status < 0 else status


def run_pipeline(config_path, nprocs: int | None = None) -> int:
    """prep, scalemap, fit, maps; returns the exit status.

    Parameters
    ----------
    config_path : path
        The config file.
    nprocs : int, optional
        MPI ranks for the scale map; the fit gets one more, its master,
        which sleeps while it waits. Default: the cores available.
    """
    from .stages.prep import run_prep
    from .io.config import load_config
    from .io.lock import workdir_lock
    from .stages.fit import check_fit_model
    from .stages.maps import run_maps

    nprocs = nprocs or available_cores()
    cfg = load_config(config_path)
    t0 = time.perf_counter()
    # A model that cannot be evaluated here is refused before prep and the
    # scale map, not after them; the fit then reuses the verdict.
    check_fit_model(cfg)
    with workdir_lock(cfg.workdir_path, "run", stale_after=float(cfg.lock_stale_seconds)) as lock:
        run_prep(cfg)
        status = _run_mpi(nprocs, "scalemap", config_path, lock_token=lock.child_token)
        if status != 0:
            # The stage printed its own one-line error; pass its status on
            # (2 for bad input), as a shell pipeline with -e would.
            log.warning("run: stopped: scalemap exited with status %d", status)
            return status
        if cfg.fit.engine == "template":
            from .compiled import ensure_built
            ensure_built(log)  # once per installation: the ranks then load them
        fit_args = ["fit", config_path]
        if WorkDir.of(cfg).results.exists():
            fit_args.append("--resume")
        status = _run_mpi(nprocs + 1 if nprocs > 1 else 1, *fit_args,
                          lock_token=lock.child_token)
        if status == EXIT_CHECKPOINTED:
            log.warning("fit stopped by a signal after a checkpoint; run again to resume")
            return status
        if status != 0:
            log.warning("run: stopped: fit exited with status %d", status)
            return status
        run_maps(cfg)
    log.info("pipeline finished in %.1f s; maps in %s", time.perf_counter() - t0,
             WorkDir.of(cfg).maps)
    return 0
