"""Job scripts: rendering, directives, bash -n / shellcheck, and the chain logic.

The chain logic (signal -> checkpoint -> resubmit, and every reason not to
resubmit) runs here without a scheduler: the rendered scripts are run with
bash, with stand-ins for ``srun``/``sbatch``/``qsub`` on PATH and a stand-in
python whose ``hpcxt fit`` counts regions in a JSON file, checkpoints and
exits 85 on SIGUSR1/SIGTERM. tests/test_slurm.py runs them on a real Slurm.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcxt import jobs
from hpcxt.errors import InputError
from hpcxt.io.config import load_config, render_template

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "hpcxt" / "templates" / "jobs"
BASH = shutil.which("bash")


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "A2142.yaml"
    path.write_text(render_template("A2142", redshift=0.0909, nh=0.0381))
    return path


@pytest.fixture
def cfg(config):
    return load_config(config, check_files=False)


def render(cfg, tmp_path, **kw):
    kw.setdefault("ntasks_per_node", 3)
    return jobs.render_jobs(cfg, jobs.JobOptions(**kw), jobs_dir=tmp_path / "jobs")


def directives(text: str, prefix: str) -> list[str]:
    return [line[len(prefix):].strip() for line in text.splitlines() if line.startswith(prefix)]


# --------------------------------------------------------------------------
# wall time and defaults


# sbatch(1), --time: "Acceptable time formats include "minutes", "minutes:seconds",
# "hours:minutes:seconds", "days-hours", "days-hours:minutes" and
# "days-hours:minutes:seconds"." Slurm's time_str2secs bounds no field.
@pytest.mark.parametrize("text,seconds", [
    ("10", 600),                 # minutes
    ("90", 5400),
    ("10:00", 600),              # minutes:seconds: ten minutes, not ten hours
    ("10:30", 630),
    ("90:00", 5400),
    ("10:00:00", 36000),         # hours:minutes:seconds
    ("0:00:05", 5),
    ("00:61:00", 3660),
    ("48:00:00", 172800),
    ("2-3", 183600),             # days-hours
    ("2-03:30", 185400),         # days-hours:minutes
    ("2-03:30:15", 185415),      # days-hours:minutes:seconds
    (" 1-0 ", 86400),
])
def test_parse_walltime_reads_slurm_formats_as_slurm_does(text, seconds):
    assert jobs.parse_walltime(text) == seconds


@pytest.mark.parametrize("text", ["", "1h", "soon", "0", "0:00:00", "0-0", "-1", "UNLIMITED",
                                  "infinite", "1:2:3:4", "1-2-3", "1:2-3", "1-2:3:4:5", "1.5"])
def test_parse_walltime_rejects(text):
    with pytest.raises(InputError) as err:
        jobs.parse_walltime(text)
    assert err.value.field == "--time"


def test_slurm_gets_whole_minutes_rounded_up_pbs_gets_hh_mm_ss(cfg, tmp_path):
    fit = directives(render(cfg, tmp_path, scheduler="slurm", time="10:30")["fit"].read_text(),
                     "#SBATCH")
    assert "--time=00:11:00" in fit          # Slurm's resolution is a minute, rounded up
    assert "--signal=B:USR1@66" in fit      # a tenth of the 660 s Slurm grants
    fit = directives(render(cfg, tmp_path, scheduler="slurm", time="10:00")["fit"].read_text(),
                     "#SBATCH")
    assert "--time=00:10:00" in fit
    for text, walltime in (("10:00", "00:10:00"), ("10:30", "00:10:30"), ("2-03:30", "51:30:00"),
                           ("45", "00:45:00")):
        pbs = directives(render(cfg, tmp_path, scheduler="pbs", time=text)["fit"].read_text(),
                         "#PBS")
        assert f"-l walltime={walltime}" in pbs, (text, pbs)


def test_format_walltime_round_trip():
    for seconds in (5, 60, 3599, 86400, 183600):
        assert jobs.parse_walltime(jobs.format_walltime(seconds)) == seconds
    assert jobs.format_walltime(183600) == "51:00:00"


def test_default_signal_seconds_leaves_time_to_work():
    for wall in (60, 600, 3600, 86400, 7 * 86400):
        margin = jobs.default_signal_seconds(wall)
        assert 0 < margin < wall
        assert margin <= 600
    assert jobs.default_signal_seconds(3600) == 360
    assert jobs.default_signal_seconds(86400) == 600
    assert jobs.default_signal_seconds(60) == 30


# --------------------------------------------------------------------------
# rendering


def test_render_text_fills_quotes_and_drops_empty_directives():
    text = ("#SBATCH --account={{account}}\n#SBATCH --time={{time}}\n"
            "X={{path|q}}\n{{block}}\n{{empty_block}}\nend\n")
    out = jobs.render_text(text, {"account": None, "time": "01:00:00",
                                  "path": "/a b/c", "block": ("one", "two"),
                                  "empty_block": ()})
    assert out == "#SBATCH --time=01:00:00\nX='/a b/c'\none\ntwo\nend\n"


def test_render_text_unknown_placeholder_is_an_error():
    with pytest.raises(KeyError, match="nonesuch"):
        jobs.render_text("{{nonesuch}}\n", {})


def test_render_writes_three_executable_scripts_per_scheduler(cfg, tmp_path):
    for scheduler, suffix in (("slurm", "sbatch"), ("pbs", "pbs")):
        paths = render(cfg, tmp_path, scheduler=scheduler)
        assert sorted(paths) == ["fit", "run", "scalemap"]
        for stage, path in paths.items():
            assert path == tmp_path / "jobs" / f"{stage}.{suffix}"
            assert os.access(path, os.X_OK)
            text = path.read_text()
            assert not re.search(r"\{\{\s*[\w ./|-]+\}\}", text), path
            assert text.startswith("#!/bin/bash\n")
            assert f"HPCXT_SCRIPT={path}\n" in text
            assert f"HPCXT_CONFIG={cfg.path.resolve()}\n" in text
            assert f"HPCXT_STAGE={stage}\n" in text
            # the launch always goes through python -m mpi4py
            assert '"$HPCXT_PYTHON" -m mpi4py -m hpcxt "$@"' in text


def test_slurm_directives(cfg, tmp_path):
    paths = render(cfg, tmp_path, scheduler="slurm", nodes=4, ntasks_per_node=32,
                   time="12:00:00", account="astro42", partition="batch",
                   directives=("--mem=0", "#SBATCH --constraint=cpu"))
    fit = directives(paths["fit"].read_text(), "#SBATCH")
    assert fit == ["--job-name=A2142-fit", "--nodes=4", "--ntasks-per-node=32",
                   "--time=12:00:00", "--signal=B:USR1@600",
                   f"--output={tmp_path}/jobs/fit-%j.out", "--account=astro42",
                   "--partition=batch", "--mem=0", "--constraint=cpu"]
    run = directives(paths["run"].read_text(), "#SBATCH")
    assert "--signal=B:USR1@600" in run and "--job-name=A2142-run" in run
    # the scale map cannot checkpoint: no warning signal asked for
    scalemap = directives(paths["scalemap"].read_text(), "#SBATCH")
    assert not any(d.startswith("--signal") for d in scalemap)
    text = paths["fit"].read_text()
    assert "exec srun --kill-on-bad-exit=1 " in text
    assert "#PBS" not in text


def test_slurm_optional_directives_left_out(cfg, tmp_path):
    paths = render(cfg, tmp_path, scheduler="slurm", time="0:10:00", srun_mpi="pmi2")
    fit = directives(paths["fit"].read_text(), "#SBATCH")
    assert not any(d.startswith(("--account", "--partition")) for d in fit)
    assert "--signal=B:USR1@60" in fit
    assert "exec srun --kill-on-bad-exit=1 --mpi=pmi2 " in paths["fit"].read_text()


def test_pbs_directives_pro_and_torque(cfg, tmp_path):
    paths = render(cfg, tmp_path, scheduler="pbs", nodes=2, ntasks_per_node=16,
                   time="1-00:00:00", account="astro42", partition="workq")
    fit = directives(paths["fit"].read_text(), "#PBS")
    assert fit == ["-N A2142-fit", "-l select=2:ncpus=16:mpiprocs=16", "-l walltime=24:00:00",
                   "-j oe", f"-o {tmp_path}/jobs/fit.pbs.out", "-A astro42", "-q workq"]
    text = paths["fit"].read_text()
    assert "#SBATCH" not in text
    # PBS gives no early warning: the script's own timer does, 600 s early
    assert "local delay=$((86400 - 600))" in text
    assert "PBS_O_WORKDIR:-${SLURM_SUBMIT_DIR:-" in text
    assert "PBS_JOBID:-${SLURM_JOB_ID:-" in text
    paths = render(cfg, tmp_path, scheduler="pbs", nodes=2, ntasks_per_node=16,
                   pbs_resources="nodes")
    fit = directives(paths["fit"].read_text(), "#PBS")
    assert "-l nodes=2:ppn=16" in fit
    assert not any(d.startswith(("-A", "-q")) for d in fit)


def test_environment_setup_venv_modules_conda(cfg, tmp_path):
    venv = tmp_path / "my env"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "mpiexec").write_text("#!/bin/sh\n")
    paths = render(cfg, tmp_path, scheduler="pbs", venv=str(venv), modules=("gcc/12", "cray-mpich"))
    text = paths["fit"].read_text()
    setup = text[text.index("# ---- environment"):text.index("set -uo pipefail")]
    assert "module load gcc/12\nmodule load cray-mpich\n" in setup
    assert f"source '{venv}/bin/activate'" in setup
    assert f"HPCXT_PYTHON='{venv}/bin/python'" in text
    assert f"exec '{venv}/bin/mpiexec' -n" in text
    paths = render(cfg, tmp_path, scheduler="slurm", conda_env="hpcxt")
    text = paths["fit"].read_text()
    assert 'eval "$(conda shell.bash hook)"\nconda activate hpcxt\n' in text
    assert "HPCXT_PYTHON=python\n" in text
    assert "bin/activate" not in text


MPICH_WHEEL = "MPICH Version:      5.0.2"


@pytest.mark.parametrize("info,expected", [
    ({"library": MPICH_WHEEL, "loaded": ["/v/lib/libmpi.so.12"],
      "mpich_wheel": ["/v/lib/libmpi.so.12"]}, True),
    ({"library": MPICH_WHEEL, "loaded": None, "mpich_wheel": ["/v/lib/libmpi.so.12"]}, True),
    # the wheel is installed, but mpi4py was built against the site's MPICH
    ({"library": MPICH_WHEEL, "loaded": ["/opt/mpich/lib/libmpi.so.12"],
      "mpich_wheel": ["/v/lib/libmpi.so.12"]}, False),
    ({"library": "MPI VERSION    : CRAY MPICH version 8.1.28", "loaded": ["/opt/cray/libmpi.so.12"],
      "mpich_wheel": []}, False),
    ({"library": "Open MPI v5.0.6", "loaded": ["/v/lib/libmpi.so.40"],
      "mpich_wheel": []}, False),
    (None, False),
])
def test_mpich_wheel_is_told_from_a_site_mpi(info, expected):
    assert jobs.uses_mpich_wheel(info) is expected


def test_srun_gets_pmi2_by_default_with_the_mpich_wheel(cfg, tmp_path):
    if not jobs.uses_mpich_wheel(jobs.mpi_library_of(sys.executable)):
        pytest.skip("needs mpi4py running on the mpich wheel (pip install mpich)")
    text = render(cfg, tmp_path, scheduler="slurm", python=sys.executable)["fit"].read_text()
    assert "exec srun --kill-on-bad-exit=1 --mpi=pmi2 " in text
    text = render(cfg, tmp_path, scheduler="slurm", python=sys.executable,
                  srun_mpi="pmix")["fit"].read_text()
    assert "exec srun --kill-on-bad-exit=1 --mpi=pmix " in text and "--mpi=pmi2" not in text
    # a conda environment's bare `python` is not this one: nothing is guessed
    text = render(cfg, tmp_path, scheduler="slurm", conda_env="other")["fit"].read_text()
    assert "--mpi=" not in text
    assert "--mpi=" not in render(cfg, tmp_path, scheduler="pbs")["fit"].read_text()


def test_current_venv_is_the_default(cfg, tmp_path):
    if sys.prefix == sys.base_prefix:
        pytest.skip("needs to run inside a virtual environment")
    text = render(cfg, tmp_path, scheduler="slurm")["fit"].read_text()
    assert f"source {Path(sys.prefix).resolve()}/bin/activate" in text
    assert f"HPCXT_PYTHON={Path(sys.prefix).resolve()}/bin/python" in text


@pytest.mark.parametrize("kw,field", [
    ({"scheduler": "lsf"}, "--scheduler"),
    ({"scheduler": "slurm", "nodes": 0}, "--nodes"),
    ({"scheduler": "slurm", "ntasks_per_node": 0}, "--ntasks-per-node"),
    ({"scheduler": "slurm", "time": "1 day"}, "--time"),
    ({"scheduler": "slurm", "time": "0:01:00", "signal_seconds": 60}, "--signal-seconds"),
    ({"scheduler": "slurm", "account": "a b"}, "--account"),
    ({"scheduler": "pbs", "partition": "q;rm"}, "--partition"),
    ({"scheduler": "slurm", "venv": "/v", "conda_env": "c"}, "--conda-env"),
    ({"scheduler": "pbs", "pbs_resources": "chunks"}, "--pbs-resources"),
    ({"scheduler": "slurm", "max_resubmits": -1}, "--max-resubmits"),
])
def test_bad_options_name_the_flag(cfg, tmp_path, kw, field):
    with pytest.raises(InputError) as err:
        render(cfg, tmp_path, **kw)
    assert err.value.field == field
    assert not (tmp_path / "jobs").exists()


def test_cli_renders_and_reports_bad_input(config, tmp_path):
    from conftest import run_hpcxt
    proc = run_hpcxt("jobs", config, "--scheduler", "pbs", "--nodes", "2",
                     "--ntasks-per-node", "8", "--time", "02:00:00", "--queue", "short")
    assert proc.returncode == 0, proc.stderr
    jobs_dir = tmp_path / "work" / "jobs"
    assert proc.stdout.split("\n")[:3] == [f"wrote {jobs_dir}/{s}.pbs" for s in ("scalemap", "fit", "run")]
    assert "#PBS -q short" in (jobs_dir / "fit.pbs").read_text()
    proc = run_hpcxt("jobs", config, "--scheduler", "slurm", "--time", "soon")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "hpcxt: error: --time: wall time must be one of Slurm's formats (minutes, "
        "minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes, "
        "days-hours:minutes:seconds), got 'soon'"]


# --------------------------------------------------------------------------
# syntax


def _all_variants(cfg, tmp_path):
    variants = [
        dict(scheduler="slurm"),
        dict(scheduler="slurm", account="a1", partition="p1", modules=("m1",), srun_mpi="pmi2",
             directives=("--mem=0",)),
        dict(scheduler="slurm", conda_env="hpcxt"),
        dict(scheduler="pbs"),
        dict(scheduler="pbs", account="a1", partition="q1", pbs_resources="nodes",
             mpiexec_flags='-f "$PBS_NODEFILE"', modules=("m1",)),
        dict(scheduler="pbs", conda_env="hpcxt"),
    ]
    for i, kw in enumerate(variants):
        out = tmp_path / f"v{i}"
        yield from jobs.render_jobs(cfg, jobs.JobOptions(ntasks_per_node=2, **kw),
                                    jobs_dir=out).values()


def test_rendered_scripts_pass_bash_n(cfg, tmp_path):
    scripts = list(_all_variants(cfg, tmp_path))
    assert len(scripts) == 18
    for path in scripts:
        proc = subprocess.run([BASH, "-n", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{path}: {proc.stderr}"


def test_rendered_scripts_pass_shellcheck(cfg, tmp_path):
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("needs shellcheck on PATH (apt-get install shellcheck)")
    scripts = [str(p) for p in _all_variants(cfg, tmp_path)]
    proc = subprocess.run([shellcheck, "--shell=bash", *scripts], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_slurm_local_script_passes_shellcheck():
    script = REPO / "scripts" / "slurm-local.sh"
    assert subprocess.run([BASH, "-n", str(script)]).returncode == 0
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("needs shellcheck on PATH (apt-get install shellcheck)")
    proc = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_repository_jobs_folder_is_the_package_templates():
    """jobs/ (what readers of the repository open) is the packaged templates, not a copy."""
    link = REPO / "jobs"
    if not link.exists():
        pytest.skip("needs the source tree (jobs/ is not installed)")
    assert link.resolve() == TEMPLATES.resolve()
    assert (link / "slurm" / "fit.sbatch").read_bytes() == (TEMPLATES / "slurm" / "fit.sbatch").read_bytes()


def test_templates_ship_in_the_package():
    names = jobs.template_names("slurm") | {f"pbs-{k}": v for k, v in jobs.template_names("pbs").items()}
    for rel in names.values():
        assert jobs.read_template(rel).startswith("#!/bin/bash")
    includes = set()
    for rel in names.values():
        includes |= set(re.findall(r"\{\{include ([\w./-]+)\}\}", jobs.read_template(rel)))
    assert includes == {"common/setup.sh", "common/steps.sh", "slurm/lib.sh", "pbs/lib.sh"}
    for rel in includes:
        assert jobs.read_template(rel)


# --------------------------------------------------------------------------
# the chain logic, with stand-ins for the scheduler and the fit

FAKE_PYTHON = r'''#!{python}
"""Stand-in for `python`: hpcxt fit counts regions in a JSON state file."""
import json, os, signal, sys, time
args = sys.argv[1:]
if args[:2] == ["-m", "mpi4py"]:
    args = args[2:]
state_path = os.environ["FAKE_STATE"]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(" ".join(args) + "\n")

def load():
    try:
        with open(state_path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None

def save(state):
    with open(state_path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(state_path + ".tmp", state_path)

if args[:3] == ["-m", "hpcxt.jobs", "progress"]:
    time.sleep(float(os.environ.get("FAKE_PROGRESS_DELAY", "0")))
    state = load()
    print(*(state["final"], state["total"]) if state else (0, 0))
elif args[:3] == ["-m", "hpcxt", "fit"]:
    mode = os.environ.get("FAKE_FIT_MODE", "ok")
    rank = int(os.environ.get("PMI_RANK") or os.environ.get("SLURM_PROCID") or 0)
    stop = []
    signal.signal(signal.SIGUSR1, lambda s, f: stop.append(s))
    signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
    if rank > 0:  # workers: wait for the master's end or a signal
        time.sleep(0.5)
        while not stop and mode != "crash":
            state = load()
            if state and state["final"] >= state["total"]:
                sys.exit(0)
            time.sleep(0.05)
        sys.exit(85 if stop else 0)
    state = load()
    if state is not None and "--resume" not in args:
        sys.exit(2)  # what hpcxt fit does with unfinished results and no --resume
    if state is None:
        state = {{"final": 0, "total": int(os.environ.get("FAKE_TOTAL", "200"))}}
    if mode == "crash":
        sys.exit(1)
    while state["final"] < state["total"] and not stop:
        time.sleep(float(os.environ.get("FAKE_STEP", "0.02")))
        if mode != "stall":
            state["final"] += 1
            save(state)
    save(state)
    sys.exit(85 if state["final"] < state["total"] else 0)
# prep, scalemap, maps: the log line is all
'''

FAKE_SUBMIT = """#!/bin/bash
printf '%s\\n' "$@" >"$FAKE_SUBMITTED"
echo "{jobid}"
"""

FAKE_SRUN = """#!/bin/bash
while [ "${1#--}" != "$1" ]; do shift; done
exec "$@"
"""


@pytest.fixture
def standins(tmp_path):
    """bin/ with python, srun, sbatch and qsub stand-ins; returns (bin, env)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "fakepython").write_text(FAKE_PYTHON.format(python=sys.executable))
    (bindir / "srun").write_text(FAKE_SRUN)
    (bindir / "sbatch").write_text(FAKE_SUBMIT.format(jobid="4242"))
    (bindir / "qsub").write_text(FAKE_SUBMIT.format(jobid="4242.pbsserver"))
    for p in bindir.iterdir():
        p.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "PBS_", "HPCXT_", "FAKE_"))}
    env.update(PATH=f"{bindir}:{env['PATH']}", FAKE_STATE=str(tmp_path / "state.json"),
               FAKE_LOG=str(tmp_path / "calls.log"), FAKE_SUBMITTED=str(tmp_path / "submitted"))
    return bindir, env


def run_script(script, env, signal_after=None, sig=signal.SIGUSR1, timeout=60):
    """Run a rendered script with bash; optionally signal it after some seconds."""
    proc = subprocess.Popen([BASH, str(script)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if signal_after is not None:
        time.sleep(signal_after)
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def chain_log(jobs_dir) -> str:
    path = Path(jobs_dir) / "chain.log"
    return path.read_text() if path.exists() else ""


def state(tmp_path):
    return json.loads((tmp_path / "state.json").read_text())


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_warning_checkpoints_and_resubmits_then_next_job_finishes(cfg, tmp_path, standins,
                                                                  scheduler):
    bindir, env = standins
    paths = render(cfg, tmp_path, scheduler=scheduler, python=str(bindir / "fakepython"),
                   time="00:10:00")
    status, out = run_script(paths["fit"], env, signal_after=1.5)
    assert status == 0, out
    first = state(tmp_path)
    assert 0 < first["final"] < first["total"]
    log = chain_log(tmp_path / "jobs")
    assert "SIGUSR1 received: passed on to the running step" in log
    assert "fit: step exited with status 85" in log
    jobid = "4242" if scheduler == "slurm" else "4242.pbsserver"
    assert f"resubmitted as job {jobid} (attempt 2, from stage fit)" in log
    submitted = (tmp_path / "submitted").read_text().splitlines()
    assert submitted[-1] == str(paths["fit"])
    variables = "HPCXT_ATTEMPT=2,HPCXT_START_STAGE=fit,HPCXT_MAX_RESUBMITS=20,HPCXT_STALLED=0"
    if scheduler == "slurm":
        assert submitted[:2] == ["--parsable", f"--export=ALL,{variables}"]
    else:
        assert submitted[:3] == ["-V", "-v", variables]
    # no job id in the environment: nothing to depend on
    assert not any("depend" in a for a in submitted)

    # the resubmitted job: the scheduler sets what the first job asked for
    env2 = dict(env, HPCXT_ATTEMPT="2", HPCXT_START_STAGE="fit")
    (tmp_path / "submitted").unlink()
    status, out = run_script(paths["fit"], env2)
    assert status == 0, out
    assert state(tmp_path)["final"] == first["total"]
    calls = (tmp_path / "calls.log").read_text().splitlines()
    fits = [c for c in calls if c.startswith("-m hpcxt fit")]
    assert set(fits) == {f"-m hpcxt fit {cfg.path.resolve()} --resume"}
    assert "fit: complete" in chain_log(tmp_path / "jobs").splitlines()[-1]
    assert not (tmp_path / "submitted").exists()


def test_pbs_timer_warns_before_the_wall_time(cfg, tmp_path, standins):
    """PBS has no early signal: the script's own timer sends SIGUSR1."""
    bindir, env = standins
    paths = render(cfg, tmp_path, scheduler="pbs", python=str(bindir / "fakepython"),
                   time="00:00:05", signal_seconds=3)
    env["FAKE_TOTAL"] = "400"  # 8 s of work: only the timer stops it
    t0 = time.monotonic()
    status, out = run_script(paths["fit"], env)
    elapsed = time.monotonic() - t0
    assert status == 0, out
    assert elapsed < 15
    assert 0 < state(tmp_path)["final"] < 400
    log = chain_log(tmp_path / "jobs")
    assert "resubmitted as job 4242.pbsserver (attempt 2, from stage fit)" in log
    # without PBS_* or SLURM_* variables the job id and output fall back
    job_ids = set(re.findall(r"job (local-\d+) attempt", log))
    assert len(job_ids) == 1
    assert (tmp_path / "jobs" / f"fit-{job_ids.pop()}.out").exists()


def test_dependency_on_the_running_job(cfg, tmp_path, standins):
    bindir, env = standins
    paths = render(cfg, tmp_path, scheduler="slurm", python=str(bindir / "fakepython"))
    env["SLURM_JOB_ID"] = "777"
    status, out = run_script(paths["fit"], env, signal_after=1.0)
    assert status == 0, out
    submitted = (tmp_path / "submitted").read_text().splitlines()
    assert "--dependency=afterany:777" in submitted
    paths = render(cfg, tmp_path, scheduler="pbs", python=str(bindir / "fakepython"))
    env["PBS_JOBID"] = "99.server"
    status, out = run_script(paths["fit"], env, signal_after=1.0)
    assert status == 0, out
    submitted = (tmp_path / "submitted").read_text().splitlines()
    assert submitted[3:5] == ["-W", "depend=afterany:99.server"]
    assert "fit-99.server.out" in os.listdir(tmp_path / "jobs")


def test_crash_is_not_resubmitted(cfg, tmp_path, standins):
    bindir, env = standins
    paths = render(cfg, tmp_path, scheduler="slurm", python=str(bindir / "fakepython"))
    env["FAKE_FIT_MODE"] = "crash"
    status, out = run_script(paths["fit"], env)
    assert status == 1, out
    log = chain_log(tmp_path / "jobs")
    assert "not resubmitting: the fit failed (status 1) without a wall-time warning" in log
    assert not (tmp_path / "submitted").exists()


@pytest.mark.parametrize("when", ["during", "before"])
def test_one_job_without_progress_is_retried_two_end_the_chain(cfg, tmp_path, standins, when):
    """No region finished: the fit stalled, or Slurm's warning (which may come
    up to a minute early) arrived before the fit started."""
    bindir, env = standins
    paths = render(cfg, tmp_path, scheduler="slurm", python=str(bindir / "fakepython"))
    if when == "during":
        env["FAKE_FIT_MODE"] = "stall"
        why, second_status = "no region finished in this job", 85
    else:
        env["FAKE_PROGRESS_DELAY"] = "2"
        why, second_status = "the wall-time warning came before the fit started", 1
    status, out = run_script(paths["fit"], env, signal_after=1.0 if when == "during" else 0.5)
    assert status == 0, out
    log = chain_log(tmp_path / "jobs")
    assert f"fit: {why} (Slurm may warn up to a minute early); one more job will try" in log
    assert "resubmitted as job 4242 (attempt 2, from stage fit)" in log
    assert ("-m hpcxt fit" in (tmp_path / "calls.log").read_text()) == (when == "during")
    submitted = (tmp_path / "submitted").read_text().splitlines()
    assert submitted[1].endswith(",HPCXT_STALLED=1")
    (tmp_path / "submitted").unlink()
    env.update(HPCXT_ATTEMPT="2", HPCXT_STALLED="1")
    status, out = run_script(paths["fit"], env, signal_after=1.0 if when == "during" else 0.5)
    assert status == second_status, out
    assert (f"not resubmitting: {why}, and the job before made no progress either"
            in chain_log(tmp_path / "jobs"))
    assert not (tmp_path / "submitted").exists()


def test_resubmission_cap(cfg, tmp_path, standins):
    bindir, env = standins
    paths = render(cfg, tmp_path, scheduler="pbs", python=str(bindir / "fakepython"),
                   max_resubmits=5)
    assert "HPCXT_MAX_RESUBMITS=${HPCXT_MAX_RESUBMITS:-5}" in paths["fit"].read_text()
    env.update(HPCXT_ATTEMPT="3", HPCXT_MAX_RESUBMITS="2")
    status, out = run_script(paths["fit"], env, signal_after=1.0)
    assert status == 1, out
    assert "not resubmitting: 2 resubmissions done (HPCXT_MAX_RESUBMITS)" in chain_log(tmp_path / "jobs")
    assert not (tmp_path / "submitted").exists()


def test_cancelled_job_is_not_resubmitted(cfg, tmp_path, standins):
    bindir, env = standins
    paths = render(cfg, tmp_path, scheduler="slurm", python=str(bindir / "fakepython"))
    status, out = run_script(paths["fit"], env, signal_after=1.0, sig=signal.SIGTERM)
    assert status == 85, out
    log = chain_log(tmp_path / "jobs")
    assert "SIGTERM received: passed on to the running step" in log
    assert "not resubmitting: stopped by SIGTERM" in log
    assert 0 < state(tmp_path)["final"] < state(tmp_path)["total"]
    assert not (tmp_path / "submitted").exists()


def test_failed_submission_is_logged(cfg, tmp_path, standins):
    bindir, env = standins
    (bindir / "sbatch").write_text("#!/bin/bash\necho 'sbatch: error: QOSMaxSubmitJobPerUserLimit'\nexit 1\n")
    paths = render(cfg, tmp_path, scheduler="slurm", python=str(bindir / "fakepython"))
    status, out = run_script(paths["fit"], env, signal_after=1.0)
    assert status == 1, out
    assert ("not resubmitting: submission failed: sbatch: error: QOSMaxSubmitJobPerUserLimit"
            in chain_log(tmp_path / "jobs"))


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_run_script_runs_the_stages_in_order(cfg, tmp_path, standins, scheduler):
    bindir, env = standins
    paths = render(cfg, tmp_path, scheduler=scheduler, python=str(bindir / "fakepython"))
    status, out = run_script(paths["run"], env)
    assert status == 0, out
    calls = [c.split()[2] for c in (tmp_path / "calls.log").read_text().splitlines()
             if c.startswith("-m hpcxt ")]
    assert list(dict.fromkeys(calls)) == ["prep", "scalemap", "fit", "maps"]
    assert calls.count("prep") == 1 and calls.count("maps") == 1  # serial stages: one process
    assert chain_log(tmp_path / "jobs").splitlines()[-1].endswith("run: finished")


def test_run_script_resubmits_from_the_fit_and_resumes_there(cfg, tmp_path, standins):
    bindir, env = standins
    paths = render(cfg, tmp_path, scheduler="slurm", python=str(bindir / "fakepython"))
    env["FAKE_TOTAL"] = "200"
    status, out = run_script(paths["run"], env, signal_after=2.0)
    assert status == 0, out
    assert "resubmitted as job 4242 (attempt 2, from stage fit)" in chain_log(tmp_path / "jobs")
    (tmp_path / "calls.log").unlink()
    status, out = run_script(paths["run"], dict(env, HPCXT_ATTEMPT="2", HPCXT_START_STAGE="fit"))
    assert status == 0, out
    calls = [c.split()[2] for c in (tmp_path / "calls.log").read_text().splitlines()
             if c.startswith("-m hpcxt ")]
    assert calls == ["fit", "maps"]
    status, out = run_script(paths["run"], dict(env, HPCXT_START_STAGE="fitt"))
    assert status == 2
    assert "HPCXT_START_STAGE must be prep, scalemap, fit or maps, got 'fitt'" in out


def test_submit_uses_the_scheduler_and_chains_scalemap_then_fit(cfg, tmp_path, standins,
                                                                monkeypatch):
    bindir, env = standins
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("FAKE_SUBMITTED", env["FAKE_SUBMITTED"])
    monkeypatch.setenv("HPCXT_ATTEMPT", "7")  # a stale counter must not leak into a new chain
    (bindir / "sbatch").write_text('#!/bin/bash\nprintf "%s\\n" "$@" >>"$FAKE_SUBMITTED"\n'
                                   'echo "$HPCXT_ATTEMPT" >>"$FAKE_SUBMITTED.env"\n'
                                   'echo "$((RANDOM + 100));cluster"\n')
    paths = render(cfg, tmp_path, scheduler="slurm")
    submitted = jobs.submit_jobs("slurm", paths, "mpi")
    assert [s for s, _ in submitted] == ["scalemap", "fit"]
    first, second = (j for _, j in submitted)
    assert first.isdigit() and second.isdigit()
    lines = (tmp_path / "submitted").read_text().splitlines()
    assert lines == ["--parsable", str(paths["scalemap"]),
                     "--parsable", f"--dependency=afterok:{first}", str(paths["fit"])]
    assert (tmp_path / "submitted.env").read_text() == "\n\n"


def test_submit_without_the_scheduler_says_what_to_do(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    paths = render(cfg, tmp_path, scheduler="pbs")
    with pytest.raises(jobs.HpcxtError, match="qsub not found"):
        jobs.submit_jobs("pbs", paths, "fit")


def test_progress_counts_final_regions_from_the_results(tmp_path):
    """What the scripts read to decide: `python -m hpcxt.jobs progress CONFIG`."""
    from conftest import run_hpcxt
    from fit_fixtures import make_fit_workdir
    config = make_fit_workdir(tmp_path, n_side=2)
    progress = [sys.executable, "-m", "hpcxt.jobs", "progress", str(config)]
    out = subprocess.run(progress, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "0 0\n"
    fit = run_hpcxt("fit", config, timeout=300)
    assert fit.returncode == 0, fit.stderr
    out = subprocess.run(progress, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "4 4\n"
    assert jobs.fit_progress(load_config(config, check_files=False)) == (4, 4)
    bad = subprocess.run([*progress[:-1], str(tmp_path / "nonesuch.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("hpcxt: error: ")
