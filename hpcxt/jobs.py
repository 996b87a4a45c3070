"""Slurm and PBS job scripts: rendering, submission, and the chain's progress.

``hpcxt jobs CONFIG --scheduler slurm|pbs`` renders three scripts into
``<workdir>/jobs/``:

``scalemap``
    the scale map under ``srun``/``mpiexec`` (cannot checkpoint).
``fit``
    the fit; the scheduler (Slurm: ``--signal=B:USR1@S``) or a timer in the
    script (PBS) sends SIGUSR1 ``S`` seconds before the wall time, the script
    passes it on to the MPI step, the fit's master writes a final checkpoint
    and stops, and the script submits itself again with ``--resume`` until
    every region has a final status. A job that fails for another reason,
    is cancelled, or finishes no region is not resubmitted; nor is one past
    ``HPCXT_MAX_RESUBMITS`` resubmissions. ``chain.log`` says why.
``run``
    prep (serial), scalemap (MPI), fit (MPI, with the same chain), maps
    (serial); a resubmitted job starts from the fit.

The canonical templates live in the package, ``hpcxt/templates/jobs/``
(``jobs/`` at the top of the source tree is a link to it, for people who read the
repository; a test keeps them equal). Placeholders are ``{{name}}``,
``{{name|q}}`` (shell-quoted) and ``{{include path}}`` (a fragment under the
templates folder). A ``#SBATCH``/``#PBS`` line whose placeholder is empty is
left out, so optional directives (account, partition) need no conditionals.

``python -m hpcxt.jobs progress CONFIG`` prints ``FINAL TOTAL`` (regions
with a final status, all regions) for the scripts' chain decisions.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from . import __version__
from .errors import HpcxtError, InputError
from .io.workdir import WorkDir, atomic_write

log = logging.getLogger("hpcxt.jobs")
SCHEDULERS = ("slurm", "pbs")
STAGES = ("scalemap", "fit", "run")
SUFFIX = {"slurm": "sbatch", "pbs": "pbs"}
SUBMIT_COMMAND = {"slurm": "sbatch", "pbs": "qsub"}
#: What ``--submit`` can submit: one script, or scalemap then fit (``mpi``)
#: with the fit waiting for the scale map to succeed.
SUBMIT_CHOICES = ("run", "fit", "scalemap", "mpi")
PBS_RESOURCES = ("select", "nodes")
DEFAULT_TIME = "24:00:00"
DEFAULT_MAX_RESUBMITS = 20

_PLACEHOLDER = re.compile(r"\{\{\s*(?:include\s+(?P<include>[\w./-]+)|(?P<name>\w+)(?P<quote>\|q)?)\s*\}\}")
_DIRECTIVE = ("#SBATCH", "#PBS")


@dataclass(frozen=True)
class JobOptions:
    """What a user chooses for the job scripts.

    Parameters
    ----------
    scheduler : {'slurm', 'pbs'}
    nodes : int
        Nodes per job.
    ntasks_per_node : int
        MPI ranks per node (one core each). Default: this machine's CPUs.
    time : str
        Wall time per job in one of Slurm's formats (:data:`WALLTIME_FORMATS`),
        with Slurm's meaning for both schedulers: ``10:00`` is ten minutes.
    account, partition : str, optional
        Charged account; Slurm partition or PBS queue.
    modules : tuple of str
        ``module load`` these first (site MPI, Python).
    venv : str, optional
        Virtual environment to activate. Default: the one running now, if any.
    conda_env : str, optional
        Conda environment to activate instead of a venv.
    python : str, optional
        Python that runs hpcxt. Default: the venv's, else this one.
    signal_seconds : int, optional
        Warning before the wall time, s: time for the final checkpoint and
        the resubmission. Default: a tenth of the wall time, 60-600 s.
    max_resubmits : int
        Cap on resubmissions of one chain (``HPCXT_MAX_RESUBMITS``).
    srun_mpi : str, optional
        ``srun --mpi=`` plugin. Default: ``pmi2`` when the scripts' python
        runs mpi4py on the MPICH wheel (:func:`uses_mpich_wheel`), which
        ``srun`` cannot start otherwise; else the site's ``MpiDefault``.
    mpiexec : str, optional
        PBS launcher. Default: the venv's ``mpiexec`` if it has one.
    mpiexec_flags : str
        Extra flags for the PBS launcher, as shell words (``-f "$PBS_NODEFILE"``).
    pbs_resources : {'select', 'nodes'}
        PBS Pro ``select=N:ncpus=M:mpiprocs=M`` or Torque ``nodes=N:ppn=M``.
    directives : tuple of str
        Extra scheduler options, one per directive line (``--mem=0``).
    """

    scheduler: str
    nodes: int = 1
    ntasks_per_node: int | None = None
    time: str = DEFAULT_TIME
    account: str | None = None
    partition: str | None = None
    modules: tuple = ()
    venv: str | None = None
    conda_env: str | None = None
    python: str | None = None
    signal_seconds: int | None = None
    max_resubmits: int = DEFAULT_MAX_RESUBMITS
    srun_mpi: str | None = None
    mpiexec: str | None = None
    mpiexec_flags: str = ""
    pbs_resources: str = "select"
    directives: tuple = field(default_factory=tuple)


# --------------------------------------------------------------------------
# wall time


#: Slurm's wall-time formats (sbatch(1) ``--time``), with Slurm's meaning:
#: ``minutes``, ``minutes:seconds``, ``hours:minutes:seconds``, ``days-hours``,
#: ``days-hours:minutes``, ``days-hours:minutes:seconds``. As in Slurm's
#: ``time_str2secs``, no field has an upper bound (``90:00`` is 90 minutes).
_WALLTIME = re.compile(r"(?:(?P<days>\d+)-)?(?P<rest>\d+(?::\d+){0,2})")
WALLTIME_FORMATS = ("minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
                    "days-hours:minutes", "days-hours:minutes:seconds")


def parse_walltime(text: str, field_name: str = "--time") -> int:
    """Seconds in a wall time written in one of Slurm's formats.

    ``10:00`` is ten minutes (``minutes:seconds``), as ``sbatch --time``
    reads it, not ten hours; ``10:00:00`` is ten hours. The same meaning
    is used for PBS, whose script gets ``walltime=hh:mm:ss``.

    Raises
    ------
    InputError
        Not one of :data:`WALLTIME_FORMATS`, or not positive (Slurm's ``0``,
        ``-1``, ``UNLIMITED`` and ``INFINITE`` mean no limit, and the fit
        needs one to checkpoint before it).
    """
    s = str(text).strip()
    m = _WALLTIME.fullmatch(s)
    if not m:
        if s.upper() in ("-1", "UNLIMITED", "INFINITE"):
            raise InputError(f"the fit needs a finite wall time to checkpoint before it, "
                             f"got {text!r}", field=field_name)
        raise InputError(f"wall time must be one of Slurm's formats "
                         f"({', '.join(WALLTIME_FORMATS)}), got {text!r}", field=field_name)
    parts = [int(p) for p in m.group("rest").split(":")]
    if m.group("days") is not None:
        hours, minutes, secs = (parts + [0, 0])[:3]
        seconds = int(m.group("days")) * 86400 + hours * 3600 + minutes * 60 + secs
    elif len(parts) == 3:
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    else:
        seconds = parts[0] * 60 + (parts[1] if len(parts) == 2 else 0)
    if seconds <= 0:
        raise InputError(f"the fit needs a finite wall time to checkpoint before it, "
                         f"got {text!r}", field=field_name)
    return seconds


def slurm_granted_seconds(seconds: int) -> int:
    """The wall time Slurm grants for ``seconds``: whole minutes, rounded up."""
    return -(-int(seconds) // 60) * 60


def format_walltime(seconds: int) -> str:
    """``HH:MM:SS`` (hours may exceed 24; Slurm and PBS both accept that)."""
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


def default_signal_seconds(walltime_seconds: int) -> int:
    """Warning before the limit, s: a tenth of the wall time, within 60-600 s,
    and half the wall time when that is shorter."""
    margin = min(600, max(60, walltime_seconds // 10))
    if margin >= walltime_seconds:
        margin = max(1, walltime_seconds // 2)
    return int(margin)


# --------------------------------------------------------------------------
# templates


def templates_root():
    """The package's ``templates/jobs`` folder (a Traversable)."""
    return resources.files("hpcxt").joinpath("templates", "jobs")


def template_names(scheduler: str) -> dict[str, str]:
    """Template path (relative to :func:`templates_root`) of each stage."""
    _check_choice(scheduler, SCHEDULERS, "--scheduler")
    return {stage: f"{scheduler}/{stage}.{SUFFIX[scheduler]}" for stage in STAGES}


def read_template(relpath: str) -> str:
    node = templates_root()
    for part in relpath.split("/"):
        node = node.joinpath(part)
    return node.read_text()


def render_text(text: str, context: dict, _depth: int = 0) -> str:
    """Fill ``{{name}}``, ``{{name|q}}`` and ``{{include path}}`` in ``text``.

    A ``#SBATCH``/``#PBS`` line with an empty placeholder is dropped, and so
    is a line that is nothing but an empty placeholder. A multi-line value
    on a line of its own replaces that line.

    Raises
    ------
    KeyError
        A placeholder not in ``context`` (a template bug, not user input).
    """
    if _depth > 4:
        raise RecursionError("template includes nest too deeply")
    out = []
    for line in text.splitlines():
        empty = False

        def fill(m):
            nonlocal empty
            if m.group("include"):
                return render_text(read_template(m.group("include")), context,
                                   _depth + 1).rstrip("\n")
            name = m.group("name")
            if name not in context:
                raise KeyError(f"template placeholder {{{{{name}}}}} has no value")
            value = context[name]
            if value is None or value == "" or value == ():
                empty = True
                return "''" if m.group("quote") else ""
            if isinstance(value, (list, tuple)):
                value = "\n".join(str(v) for v in value)
            value = str(value)
            return shlex.quote(value) if m.group("quote") else value

        filled = _PLACEHOLDER.sub(fill, line)
        if empty and (line.lstrip().startswith(_DIRECTIVE) or not filled.strip()):
            continue
        out.append(filled)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# context


def _check_choice(value, choices, field_name):
    if value not in choices:
        raise InputError(f"must be one of {', '.join(choices)}, got {value!r}", field=field_name)


def _check_word(value, field_name):
    """Directive values go into the script unquoted: no spaces or quotes."""
    if value is not None and (not str(value) or re.search(r"[\s'\"\\$`;]", str(value))):
        raise InputError(f"must be one word without quotes or spaces, got {value!r}",
                         field=field_name)


def _current_venv() -> str | None:
    return sys.prefix if sys.prefix != getattr(sys, "base_prefix", sys.prefix) else None


#: Run by the scripts' python: which MPI library its mpi4py loads (without
#: MPI_Init) and which libmpi files the ``mpich`` wheel installed.
_MPI_PROBE = r"""
import importlib.metadata as md, json, os
import mpi4py
mpi4py.rc.initialize = False
mpi4py.rc.finalize = False
from mpi4py import MPI
loaded = set()
try:
    with open("/proc/self/maps") as fh:
        for line in fh:
            path = line.split(None, 5)[-1].strip()
            if os.path.basename(path).startswith("libmpi"):
                loaded.add(os.path.realpath(path))
except OSError:
    loaded = None
try:
    dist = md.distribution("mpich")
    wheel = {os.path.realpath(dist.locate_file(f)) for f in dist.files or ()
             if os.path.basename(str(f)).startswith("libmpi")}
except md.PackageNotFoundError:
    wheel = set()
print(json.dumps({"library": MPI.Get_library_version().strip().splitlines()[0],
                  "loaded": None if loaded is None else sorted(loaded),
                  "mpich_wheel": sorted(wheel)}))
"""


@functools.lru_cache(maxsize=8)
def mpi_library_of(python: str) -> dict | None:
    """What MPI library ``python``'s mpi4py uses, or None if that cannot be told here.

    ``python`` must be a path (a bare ``python`` of a conda environment that
    is not active here would name another interpreter).

    Returns
    -------
    dict or None
        ``library`` (first line of ``MPI.Get_library_version()``), ``loaded``
        (resolved paths of the libmpi files mapped into the process, None
        where /proc is missing) and ``mpich_wheel`` (libmpi files of the
        installed ``mpich`` wheel, empty without it).
    """
    if os.sep not in python or not os.access(python, os.X_OK):
        return None
    try:
        proc = subprocess.run([python, "-c", _MPI_PROBE], capture_output=True, text=True,
                              timeout=60, env=dict(os.environ, OMP_NUM_THREADS="1"))
        info = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    return info if isinstance(info, dict) else None


def uses_mpich_wheel(info: dict | None) -> bool:
    """Whether mpi4py runs on the MPICH of the ``mpich`` wheel (see :func:`mpi_library_of`).

    The library must say MPICH and, where the loaded files are known, be one
    of the wheel's: a site's MPICH (Cray MPICH says MPICH too) talks to
    ``srun`` through the site's own plugin.
    """
    if not info or "MPICH" not in str(info.get("library", "")).upper():
        return False
    wheel = set(info.get("mpich_wheel") or ())
    if not wheel:
        return False
    loaded = info.get("loaded")
    return loaded is None or bool(wheel.intersection(loaded))


def _srun_mpi(requested: str | None, python: str) -> str | None:
    """The ``srun --mpi=`` plugin: as asked, else pmi2 for the MPICH wheel.

    MPICH's wheel brings hydra's ``mpiexec`` and no Slurm plugin: under a
    bare ``srun`` every rank would start as a separate one-rank job.
    """
    info = mpi_library_of(python)
    if not uses_mpich_wheel(info):
        return requested
    if requested is None:
        log.info("jobs: %s runs mpi4py on the MPICH wheel (%s): srun gets --mpi=pmi2 "
                 "(choose another with --mpi)", python, info["library"])
        return "pmi2"
    if requested not in ("pmi2", "pmix") and not requested.startswith("pmix"):
        log.warning("jobs: %s runs mpi4py on the MPICH wheel, which srun starts only with "
                    "--mpi=pmi2 or pmix; with --mpi=%s every rank may run alone",
                    python, requested)
    return requested


def job_name(cluster_name: str) -> str:
    """Cluster name as a scheduler job name: letters, digits, ``-``, ``_``."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", str(cluster_name)).strip("_") or "hpcxt"
    return name[:40]


def _checked_resources(o: JobOptions, jobs_dir: Path) -> tuple[int, int, int]:
    """Refuse bad options with one InputError; return what the job asks for.

    Returns
    -------
    ntasks_per_node : int
        MPI ranks per node.
    seconds : int
        Wall time, s (as Slurm grants it, for Slurm).
    signal_seconds : int
        How long before the wall time the job checkpoints, s.
    """
    _check_choice(o.scheduler, SCHEDULERS, "--scheduler")
    _check_choice(o.pbs_resources, PBS_RESOURCES, "--pbs-resources")
    for value, name in ((o.nodes, "--nodes"), (o.max_resubmits, "--max-resubmits")):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "--max-resubmits" else 1):
            raise InputError(f"must be a positive integer, got {value!r}", field=name)
    ntpn = o.ntasks_per_node if o.ntasks_per_node is not None else (os.cpu_count() or 1)
    if isinstance(ntpn, bool) or not isinstance(ntpn, int) or ntpn < 1:
        raise InputError(f"must be a positive integer, got {ntpn!r}", field="--ntasks-per-node")
    seconds = parse_walltime(o.time)
    if o.scheduler == "slurm":
        seconds = slurm_granted_seconds(seconds)
    signal = default_signal_seconds(seconds) if o.signal_seconds is None else o.signal_seconds
    if isinstance(signal, bool) or not isinstance(signal, int) or not 0 < signal < seconds:
        raise InputError(f"must be between 1 s and the wall time ({seconds} s), got {signal!r}",
                         field="--signal-seconds")
    if o.scheduler == "slurm" and signal > 65535:
        raise InputError("Slurm's --signal takes at most 65535 s", field="--signal-seconds")
    _check_word(o.account, "--account")
    _check_word(o.partition, "--partition")
    _check_word(o.srun_mpi, "--mpi")
    for m in o.modules:
        _check_word(m, "--module")
    if o.venv and o.conda_env:
        raise InputError("give --venv or --conda-env, not both", field="--conda-env")
    if re.search(r"\s", str(jobs_dir)):
        raise InputError("the jobs folder goes into #SBATCH/#PBS lines and must not contain "
                         "spaces", path=jobs_dir, field="workdir")
    return ntpn, seconds, signal


def _environment(o: JobOptions) -> tuple[list[str], str, str | None, str]:
    """The job's environment: setup lines, python, srun's MPI plugin, PBS launcher.

    Returns
    -------
    setup : list of str
        Shell lines run before hpcxt (modules, conda or venv activation).
    python : str
        The python that runs hpcxt.
    srun_mpi : str or None
        ``srun --mpi=`` plugin (None: the site's default).
    mpiexec : str
        PBS launcher: the venv's mpiexec if it has one, else ``mpiexec``.
    """
    setup = [f"module load {m}" for m in o.modules]
    venv = o.venv if o.venv is not None else (None if o.conda_env else _current_venv())
    python = o.python
    if o.conda_env:
        setup += ['eval "$(conda shell.bash hook)"', f"conda activate {shlex.quote(o.conda_env)}"]
        python = python or "python"
    elif venv:
        venv = str(Path(venv).expanduser().resolve())
        setup.append(f"source {shlex.quote(venv + '/bin/activate')}")
        python = python or f"{venv}/bin/python"
    python = python or sys.executable
    srun_mpi = _srun_mpi(o.srun_mpi, python) if o.scheduler == "slurm" else o.srun_mpi
    mpiexec = o.mpiexec
    if mpiexec is None:
        candidate = Path(venv) / "bin" / "mpiexec" if venv else None
        mpiexec = str(candidate) if candidate is not None and candidate.exists() else "mpiexec"
    return setup, python, srun_mpi, mpiexec


def _directives(o: JobOptions, ntpn: int) -> tuple[str, list[str]]:
    """PBS resource request and the extra #SBATCH/#PBS lines (``--directive``)."""
    if o.pbs_resources == "select":
        pbs_resources = f"select={o.nodes}:ncpus={ntpn}:mpiprocs={ntpn}"
    else:
        pbs_resources = f"nodes={o.nodes}:ppn={ntpn}"
    prefix = "#SBATCH" if o.scheduler == "slurm" else "#PBS"
    directives = []
    for d in o.directives:
        d = str(d).strip()
        if "\n" in d or not d:
            raise InputError(f"one option per directive, got {d!r}", field="--directive")
        directives.append(d if d.startswith(prefix) else f"{prefix} {d}")
    return pbs_resources, directives


def build_context(cfg, options: JobOptions, jobs_dir: Path) -> dict:
    """Everything the templates need except the per-script values."""
    o = options
    ntpn, seconds, signal = _checked_resources(o, jobs_dir)
    setup, python, srun_mpi, mpiexec = _environment(o)
    pbs_resources, directives = _directives(o, ntpn)
    return {
        "hpcxt_version": __version__,
        "job_name": job_name(cfg.cluster.name),
        "config": str(Path(cfg.path).resolve()),
        "workdir": str(cfg.workdir_path),
        "jobs_dir": str(jobs_dir),
        "nodes": o.nodes,
        "ntasks_per_node": ntpn,
        "ntasks": o.nodes * ntpn,
        "time": format_walltime(seconds),
        "time_seconds": seconds,
        "signal_seconds": signal,
        "account": o.account,
        "partition": o.partition,
        "extra_directives": tuple(directives),
        "env_setup": tuple(setup) or "# (no modules or environment to load)",
        "python": python,
        "max_resubmits": o.max_resubmits,
        "srun_flags": f"--mpi={srun_mpi}" if srun_mpi else "",
        "mpiexec": mpiexec,
        "mpiexec_flags": o.mpiexec_flags,
        "pbs_resources": pbs_resources,
    }


def render_jobs(cfg, options: JobOptions, jobs_dir=None) -> dict[str, Path]:
    """Render the scalemap, fit and run scripts into ``<workdir>/jobs/``.

    Parameters
    ----------
    cfg : hpcxt.io.config.Config
        Loaded config (its ``path`` is what the scripts run).
    options : JobOptions
    jobs_dir : path, optional
        Where to write; default ``<workdir>/jobs``.

    Returns
    -------
    dict
        Stage name (``scalemap``, ``fit``, ``run``) to the written script.
    """
    if cfg.path is None:
        raise InputError("the job scripts need a config file on disk", field="config")
    jobs_dir = Path(jobs_dir) if jobs_dir is not None else WorkDir.of(cfg).jobs
    jobs_dir = Path(os.path.abspath(jobs_dir))
    context = build_context(cfg, options, jobs_dir)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for stage, relpath in template_names(options.scheduler).items():
        path = jobs_dir / Path(relpath).name
        text = render_text(read_template(relpath), dict(context, stage=stage, script=str(path)))
        with atomic_write(path, fsync=False) as tmp:
            tmp.write_text(text)
            tmp.chmod(0o755)
        written[stage] = path
    return written


# --------------------------------------------------------------------------
# submission


def _clean_env() -> dict:
    """The submitting environment without a chain's counters, so that a new
    submission starts a new chain."""
    env = dict(os.environ)
    for key in ("HPCXT_ATTEMPT", "HPCXT_START_STAGE"):
        env.pop(key, None)
    return env


def submit_script(scheduler: str, script, depends_on: str | None = None) -> str:
    """Submit one script; return the job id.

    Parameters
    ----------
    scheduler : {'slurm', 'pbs'}
    script : path
    depends_on : str, optional
        Job id that must end successfully first (``afterok``).

    Raises
    ------
    HpcxtError
        The submit command is missing or refused the job.
    """
    _check_choice(scheduler, SCHEDULERS, "--scheduler")
    script = Path(script)
    command = SUBMIT_COMMAND[scheduler]
    exe = shutil.which(command)
    if exe is None:
        raise HpcxtError(f"{command} not found: submit on the cluster's login node, "
                         f"or run '{command} {script}' there")
    if scheduler == "slurm":
        cmd = [exe, "--parsable"]
        if depends_on:
            cmd.append(f"--dependency=afterok:{depends_on}")
    else:
        cmd = [exe]
        if depends_on:
            cmd += ["-W", f"depend=afterok:{depends_on}"]
    cmd.append(str(script))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=script.parent,
                          env=_clean_env(), timeout=120)
    text = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise HpcxtError(f"{command} {script} failed (status {proc.returncode}): {text}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise HpcxtError(f"{command} {script} printed no job id: {text}")
    # sbatch --parsable prints "id" or "id;cluster"; qsub prints "id[.server]".
    return lines[-1].split(";")[0].strip()


def submit_jobs(scheduler: str, scripts: dict, what: str = "run") -> list[tuple[str, str]]:
    """Submit ``what`` (run, fit, scalemap, or mpi: scalemap then fit).

    Returns
    -------
    list of (stage, job id)
    """
    _check_choice(what, SUBMIT_CHOICES, "--submit")
    if what == "mpi":
        first = submit_script(scheduler, scripts["scalemap"])
        second = submit_script(scheduler, scripts["fit"], depends_on=first)
        return [("scalemap", first), ("fit", second)]
    return [(what, submit_script(scheduler, scripts[what]))]


# --------------------------------------------------------------------------
# progress of the fit, for the scripts' decisions


def fit_progress(cfg) -> tuple[int, int]:
    """Regions with a final status (ok or failed) and all regions.

    ``(0, 0)`` when the fit has not written ``results.h5`` yet. The file is
    only ever replaced whole (written aside, then renamed), so this reads a
    complete checkpoint even while a fit runs.
    """
    from .stages.fit import results_path
    from .io.checkpoint import read_results
    path = results_path(cfg)
    if not path.exists():
        return 0, 0
    res = read_results(path)
    return int(res.n_final), int(len(res))


def main(argv=None) -> int:
    """``python -m hpcxt.jobs progress CONFIG``: print ``FINAL TOTAL``."""
    from .io.config import load_config
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "progress":
        print("usage: python -m hpcxt.jobs progress CONFIG", file=sys.stderr)
        return 2
    try:
        final, total = fit_progress(load_config(args[1], check_files=False))
    except HpcxtError as exc:
        print(f"hpcxt: error: {exc}", file=sys.stderr)
        return exc.exit_status
    print(final, total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
