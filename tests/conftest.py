"""Shared test helpers: running hpcxt under the venv's own mpiexec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"
FAULT_LAUNCHER = Path(__file__).with_name("fault_launcher.py")


def mpi_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def hpcxt_command(*args, nprocs: int | None = None, faults: dict | None = None) -> list[str]:
    """``python -m hpcxt ARGS``, under ``mpiexec -n nprocs`` if given.

    MPI runs always go through ``python -m mpi4py`` so that one failing rank
    aborts the job instead of hanging it. With ``faults``, the command runs
    through tests/fault_launcher.py, which injects them.
    """
    entry = ["-m", "hpcxt"] if faults is None else [str(FAULT_LAUNCHER), json.dumps(faults)]
    if nprocs is None:
        return [sys.executable, *entry, *map(str, args)]
    if not MPIEXEC.exists():
        pytest.skip(f"needs the venv's mpiexec at {MPIEXEC} (pip install mpich)")
    return [str(MPIEXEC), "-n", str(nprocs), sys.executable, "-m", "mpi4py", *entry,
            *map(str, args)]


def run_hpcxt(*args, nprocs: int | None = None, timeout: float = 300, cwd=None,
              check: bool = False, faults: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``hpcxt ARGS`` as a subprocess (see :func:`hpcxt_command`).

    The timeout turns a deadlock into a test failure rather than a hung suite.
    """
    cmd = hpcxt_command(*args, nprocs=nprocs, faults=faults)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=mpi_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def simulated_small(tmp_path_factory) -> Path:
    """``hpcxt simulate --preset small`` output folder (config.yaml, obs*/, truth/)."""
    from hpcxt.prep.simulate import simulate

    outdir = tmp_path_factory.mktemp("sim_small")
    simulate(outdir, preset="small", seed=1)
    return outdir


@pytest.fixture(scope="session")
def prepped_small(simulated_small, tmp_path_factory) -> Path:
    """Config path of a copy of the small simulation, with ``hpcxt prep`` done.

    Tests may run later stages in its workdir; they must not modify the
    simulated inputs. Tests that change configs or inputs make their own copy.
    """
    import shutil

    from hpcxt.stages.prep import run_prep
    from hpcxt.io.config import load_config

    outdir = tmp_path_factory.mktemp("prepped_small") / "sim"
    shutil.copytree(simulated_small, outdir)
    cfg_path = outdir / "config.yaml"
    # no Sherpa verification sample in the fits of the tests that use it (20
    # Sherpa fits a run); tests/test_engines.py tests the verification
    doc = yaml.safe_load(cfg_path.read_text())
    doc.setdefault("fit", {})["verify_fraction"] = 0.0
    cfg_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    run_prep(load_config(cfg_path))
    return cfg_path



#: The longest modules first: under pytest-xdist's loadscope (make test) each
#: module runs on one worker, and a long one started last would leave the
#: others idle at the end. The Slurm tests mostly wait on their jobs.
LONGEST_FIRST = ("test_slurm.py", "test_fit_mpi.py", "test_ciao.py", "test_bins.py")


def pytest_collection_modifyitems(config, items):
    order = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))
