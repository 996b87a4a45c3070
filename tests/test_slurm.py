"""The job scripts on a real Slurm (one machine, started by the fixture).

The session fixture starts munged, slurmctld and slurmd with
scripts/slurm-local.sh (installing slurm-wlm, slurm-wlm-torque and munge
with apt-get when needed) when running as root on Debian, and stops them at
the end if it started them. Elsewhere these tests skip and say why. A
running Slurm that the script did not set up is used only when
HPCXT_TEST_SLURM_SITE=1 (then the tests submit small jobs to its default
partition).

- a 3-task mpi4py job under ``srun`` (pmi2 with the MPICH wheel);
- the rendered fit script with 2 and 3 tasks, ``sbatch --wait``, results
  equal to a serial fit's;
- a fit given a 2-minute wall time, warned 80 s before it: it checkpoints,
  resubmits itself and finishes, with results equal to an uninterrupted
  fit's (all columns but timing and worker rank);
- the same chain through the PBS script, submitted with Debian's Torque
  ``qsub`` wrapper (SLURM_* variables, no PBS_*), launched by ``mpiexec``;
- the whole-run script on a simulated cluster: prep, scalemap, fit, maps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import FAULT_LAUNCHER, run_hpcxt
from fit_fixtures import make_fit_workdir
from hpcxt import jobs
from hpcxt.io.checkpoint import read_results
from hpcxt.io.config import load_config

REPO = Path(__file__).resolve().parents[1]
SLURM_LOCAL = REPO / "scripts" / "slurm-local.sh"
MARKER = "# written by hpcxt scripts/slurm-local.sh"
CHAIN_TIMEOUT = 300

# One group: the session fixture starts one Slurm, on one xdist worker.
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]


def _ours() -> bool:
    conf = Path("/etc/slurm/slurm.conf")
    return conf.exists() and MARKER in conf.read_text(errors="replace")


@pytest.fixture(scope="session")
def slurm():
    """A Slurm that answers; started (and later stopped) here when possible."""
    status = subprocess.run(["bash", str(SLURM_LOCAL), "status"], capture_output=True,
                            text=True, timeout=60)
    if status.returncode == 0:
        if not (_ours() or os.environ.get("HPCXT_TEST_SLURM_SITE") == "1"):
            pytest.skip("a Slurm is running that scripts/slurm-local.sh did not set up; "
                        "set HPCXT_TEST_SLURM_SITE=1 to submit the test jobs to it")
        yield
        return
    if os.geteuid() != 0:
        pytest.skip("needs root to install and start a one-machine Slurm "
                    "(scripts/slurm-local.sh), or a running one")
    if not Path("/etc/debian_version").exists() or shutil.which("apt-get") is None:
        pytest.skip("needs Debian with apt-get to install slurm-wlm and munge")
    proc = subprocess.run(["bash", str(SLURM_LOCAL), "start"], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip())
    if proc.returncode != 0:
        pytest.fail(f"scripts/slurm-local.sh start failed ({proc.returncode}):\n"
                    f"{proc.stdout}\n{proc.stderr}")
    started = "slurm-local: started" in proc.stdout
    yield
    if started:
        subprocess.run(["bash", str(SLURM_LOCAL), "stop"], capture_output=True, timeout=120)


def job_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "PBS_", "HPCXT_"))}
    env.update(extra)
    return env


#: Job states after which a job runs no more (squeue/scontrol's names).
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def sbatch_wait(script, env, timeout=240, options=(), cwd=None):
    """Submit a job and wait for its end; ``returncode`` is the job's exit code.

    Like ``sbatch --wait``, but polling ``scontrol`` every 0.3 s: sbatch's
    own wait sleeps in growing steps (a job of 3 s is seen ended after 10 s).
    """
    cwd = Path(script).parent if cwd is None and script else cwd
    argv = ["sbatch", "--parsable", *options, *([str(script)] if script else [])]
    sub = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, cwd=cwd)
    if sub.returncode != 0:
        return sub
    jobid = sub.stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        show = subprocess.run(["scontrol", "-o", "show", "job", jobid], capture_output=True,
                              text=True, timeout=60)
        state = re.search(r"\bJobState=(\S+)", show.stdout)
        code = re.search(r"\bExitCode=(\d+):(\d+)", show.stdout)
        if state and code and state.group(1) in ENDED:
            status, sig = int(code.group(1)), int(code.group(2))
            return subprocess.CompletedProcess(argv, status or (128 + sig if sig else 0),
                                               f"Submitted batch job {jobid}\n",
                                               "" if state.group(1) == "COMPLETED"
                                               else f"job {jobid} {state.group(1)}\n")
        time.sleep(0.3)
    subprocess.run(["scancel", jobid], capture_output=True)
    raise AssertionError(f"job {jobid} did not end within {timeout} s")


def read_outputs(jobs_dir) -> str:
    parts = []
    for p in sorted(Path(jobs_dir).glob("*.out")):
        parts.append(f"==> {p.name} <==\n{p.read_text(errors='replace')}")
    log = Path(jobs_dir) / "chain.log"
    if log.exists():
        parts.append(f"==> chain.log <==\n{log.read_text()}")
    return "\n".join(parts)


def _workdir_and_reference(root: Path, n_side: int):
    """A synthetic fit workdir and the results of an uninterrupted serial fit
    of a copy of it."""
    config = make_fit_workdir(root / "data", n_side=n_side)
    ref = root / "reference"
    shutil.copytree(config.parent, ref)
    proc = run_hpcxt("fit", ref / config.name, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return config, read_results(ref / "work" / "fit" / "results.h5")


@pytest.fixture(scope="module")
def small_fit(tmp_path_factory):
    """16 regions: a fit of a few seconds."""
    return _workdir_and_reference(tmp_path_factory.mktemp("small"), n_side=4)


@pytest.fixture(scope="module")
def chain_fit(tmp_path_factory):
    """36 regions, to be slowed down with HPCXT_TEST_FIT_DELAY."""
    return _workdir_and_reference(tmp_path_factory.mktemp("chain"), n_side=6)


def fresh_copy(fit, tmp_path):
    """A copy of the workdir without results; returns (config, reference)."""
    config, ref = fit
    shutil.copytree(config.parent, tmp_path / "data")
    return tmp_path / "data" / config.name, ref


def assert_same_results(res, ref):
    assert res.complete and ref.complete
    assert res.same_results(ref) == []


def slow_fit_python(directory: Path, delay: float) -> str:
    """A ``python`` for the job scripts whose fits take ``delay`` s longer each.

    It runs ``-m hpcxt`` through tests/fault_launcher.py (the fault seam of
    the MPI stages) and everything else unchanged.
    """
    path = Path(directory) / "python-slow-fit"
    faults = json.dumps({"fit_delay": delay})
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""\
        import os, sys
        args = sys.argv[1:]
        for i in range(len(args) - 1):
            if args[i:i + 2] == ["-m", "hpcxt"]:
                args[i:i + 2] = [{str(FAULT_LAUNCHER)!r}, {faults!r}]
                break
        os.execv(sys.executable, [sys.executable, *args])
        """))
    path.chmod(0o755)
    return str(path)


def wait_for_chain_end(jobs_dir, timeout=CHAIN_TIMEOUT) -> str:
    """Poll chain.log until the chain finished or gave up; return it."""
    log = Path(jobs_dir) / "chain.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if "fit: complete" in text or "not resubmitting" in text:
            return text
        time.sleep(2)
    subprocess.run(["scancel", "--name", "synthetic-fit"], capture_output=True)
    raise AssertionError(f"chain did not end within {timeout} s\n{read_outputs(jobs_dir)}")


def test_mpi4py_under_srun_pmi2(slurm, tmp_path):
    out = tmp_path / "hello.out"
    code = ("from mpi4py import MPI; c = MPI.COMM_WORLD; "
            "print(c.Get_rank(), c.Get_size(), flush=True)")
    proc = sbatch_wait(None, job_env(), timeout=120, cwd=tmp_path, options=(
        "--ntasks=3", "--time=1", f"--output={out}",
        f"--wrap=srun --kill-on-bad-exit=1 {sys.executable} -m mpi4py -c '{code}'"))
    assert proc.returncode == 0, proc.stdout + proc.stderr + out.read_text()
    lines = sorted(out.read_text().split("\n"))
    assert [line for line in lines if line] == ["0 3", "1 3", "2 3"]


@pytest.mark.parametrize("ntasks", [2, 3])
def test_fit_script_runs_to_completion(slurm, small_fit, tmp_path, ntasks):
    config, ref = fresh_copy(small_fit, tmp_path)
    cfg = load_config(config, check_files=False)
    paths = jobs.render_jobs(cfg, jobs.JobOptions(
        scheduler="slurm", ntasks_per_node=ntasks, time="00:05:00", srun_mpi="pmi2"))
    proc = sbatch_wait(paths["fit"], job_env())
    jobs_dir = paths["fit"].parent
    assert proc.returncode == 0, proc.stderr + read_outputs(jobs_dir)
    log = (jobs_dir / "chain.log").read_text()
    assert f"starting on {ntasks} tasks" in log
    assert "fit: complete" in log and "resubmitted" not in log
    res = read_results(cfg.stage_dir("fit") / "results.h5")
    assert res.nranks == ntasks
    assert set(np.unique(res.worker[res.worker >= 0])) <= set(range(1, ntasks))
    assert_same_results(res, ref)


def test_short_walltime_checkpoints_resubmits_and_finishes(slurm, chain_fit, tmp_path):
    """2-minute jobs warned 80 s early: the fit goes on over several jobs."""
    config, ref = fresh_copy(chain_fit, tmp_path)
    cfg = load_config(config, check_files=False)
    paths = jobs.render_jobs(cfg, jobs.JobOptions(
        scheduler="slurm", ntasks_per_node=3, time="00:02:00", signal_seconds=80,
        srun_mpi="pmi2", max_resubmits=8, python=slow_fit_python(tmp_path, 2.5)))
    # slurmctld looks at time limits every 30 s and sends the warning at the
    # first look within 30 s of its due time: 10-40 s into a 2-minute job,
    # after the fit has started (with 1-minute jobs it could come before).
    # About 2.7 s per region, 36 regions, 2 workers: about 50 s of fitting,
    # more than a job gets before its warning.
    env = job_env()
    proc = sbatch_wait(paths["fit"], env)
    jobs_dir = paths["fit"].parent
    assert proc.returncode == 0, proc.stderr + read_outputs(jobs_dir)
    log = wait_for_chain_end(jobs_dir)
    assert "fit: complete" in log, read_outputs(jobs_dir)
    assert "not resubmitting" not in log
    assert "SIGUSR1 received: passed on to the running step" in log
    assert "resubmitted as job" in log
    attempts = {int(line.split(" attempt ")[1].split()[0]) for line in log.splitlines()}
    assert len(attempts) >= 2 and attempts == set(range(1, max(attempts) + 1))
    res = read_results(cfg.stage_dir("fit") / "results.h5")
    assert res.runs == sum("; starting on 3 tasks" in line for line in log.splitlines())
    assert_same_results(res, ref)


def test_pbs_script_through_the_torque_qsub_wrapper(slurm, chain_fit, tmp_path):
    """#PBS directives, no PBS_* variables, mpiexec, the script's own timer."""
    if shutil.which("qsub") is None:
        pytest.skip("needs Debian's slurm-wlm-torque (qsub wrapper)")
    config, ref = fresh_copy(chain_fit, tmp_path)
    cfg = load_config(config, check_files=False)
    paths = jobs.render_jobs(cfg, jobs.JobOptions(
        scheduler="pbs", ntasks_per_node=3, time="00:01:00", signal_seconds=45,
        max_resubmits=8, python=slow_fit_python(tmp_path, 1.0)))
    # the script's timer warns 15 s in; about 1.2 s per region, 36 regions,
    # 2 workers: about 22 s of fitting, so at least two jobs
    env = job_env()
    jobs_dir = paths["fit"].parent
    proc = subprocess.run(["qsub", str(paths["fit"])], capture_output=True, text=True,
                          env=env, timeout=60, cwd=jobs_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first_id = proc.stdout.strip().splitlines()[-1]
    assert first_id.isdigit(), proc.stdout
    log = wait_for_chain_end(jobs_dir)
    assert "fit: complete" in log, read_outputs(jobs_dir)
    assert "not resubmitting" not in log
    # the script ran under Slurm's wrapper: its job id came from SLURM_JOB_ID
    assert f"job {first_id} attempt 1" in log
    assert "starting on 3 tasks" in log
    assert "resubmitted as job" in log
    assert (jobs_dir / f"fit-{first_id}.out").exists()
    res = read_results(cfg.stage_dir("fit") / "results.h5")
    assert_same_results(res, ref)


def test_run_script_makes_maps_from_a_simulated_cluster(slurm, tmp_path):
    sim = tmp_path / "sim"
    proc = run_hpcxt("simulate", sim, "--preset", "small", timeout=300)
    assert proc.returncode == 0, proc.stderr
    config = sim / "config.yaml"
    data = yaml.safe_load(config.read_text())
    data.setdefault("fit", {})["errors"] = "none"   # the scripts are under test, not the fit
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = load_config(config, check_files=False)
    paths = jobs.render_jobs(cfg, jobs.JobOptions(
        scheduler="slurm", ntasks_per_node=3, time="00:10:00", srun_mpi="pmi2"))
    proc = sbatch_wait(paths["run"], job_env(), timeout=600)
    jobs_dir = paths["run"].parent
    assert proc.returncode == 0, proc.stderr + read_outputs(jobs_dir)
    stages = [line.split(" run: ")[1] for line in (jobs_dir / "chain.log").read_text().splitlines()]
    assert [s for s in stages if s.endswith(": done")] == [
        "prep: done", "scalemap: done", "fit: done", "maps: done"]
    assert stages[-1] == "run: finished"
    res = read_results(cfg.stage_dir("fit") / "results.h5")
    assert res.complete and res.nranks == 3
    assert (cfg.stage_dir("maps") / "temperature.fits").exists()
