"""CIAO backend of ``hpcxt prep``: from Chandra observation ids to products.

For each configured observation id this runs, in ``<workdir>/obs/<obsid>/``,
the CIAO steps of ClusterPyXT's stages 1-3, one *stage* at a time:

=============  ===============================================================
stage          CIAO tools
=============  ===============================================================
download       ``download_chandra_obsid`` (skipped when the data are there)
repro          ``chandra_repro`` (``check_vf_pha`` from the config)
acis_i         ``dmcopy [ccd_id=0:3]``: ACIS-I events only (ACIS-S chips are
               not supported by this backend yet)
deflare        ``dmcopy [energy=9000:12000]`` (point sources excluded),
               ``dmextract [bin time=::259.28] opt=ltc1``,
               ``deflare method=clean``, ``dmcopy [@gti]``
background     ``blanksky``, or ``acis_bkgrnd_lookup`` + ``pget`` +
               ``dmmerge`` + ``reproject_events`` (``match`` = the events)
exposure       ``fluximage`` with the configured band and binning
response       ``specextract weight=yes correctpsf=no`` over the spectrum
               region: one global ARF and RMF per observation
=============  ===============================================================

With more than one observation, ``merge_obs`` also makes a merged image in
``<workdir>/obs/merged/`` for drawing the region files on. The products are
then handed to the ``products`` backend (energy filter, point sources, crop,
merge, bundle) by :func:`hpcxt.driver.run_prep`.

Robustness, which is the point of this module:

* every tool call gets its own parameter-file directory
  (``PFILES="<workdir>/tmp/pfiles/<pid>-<n>;<CIAO's system dirs>"``) and its
  own temporary directory, so parallel runs never share ``.par`` files;
* every call's command line and output go to ``<obsid>/logs/<stage>.log``;
* a non-zero exit, a time-out, or an output file that is missing, unreadable
  or empty stops the run with a one-line :class:`CiaoError` naming the tool,
  the observation and the log file (``hpcxt`` prints it and exits with
  status 2);
* a stage is recorded as done in ``<obsid>/stages.json`` (written to a
  temporary file and renamed) only after its outputs have been verified, so
  a re-run skips finished stages and resumes at the one that failed. A stage
  whose settings or inputs changed is redone, and so is every stage after it;
* tools never wait for a prompt (stdin is closed) and the download has a
  time limit, so nothing hangs forever;
* independent observations run in parallel processes (``prep.ciao.nproc``).

The stand-in executables in ``tests/ciao_standins/`` imitate these tools for
the test suite; they are not a way to run the pipeline.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import EXIT_INPUT_ERROR, HpcxtError, InputError

log = logging.getLogger("hpcxt.prep.ciao")

#: Tools the backend calls in every configuration (``auto`` needs them on PATH).
REQUIRED_TOOLS = ("download_chandra_obsid", "chandra_repro", "dmcopy", "dmextract",
                  "deflare", "fluximage", "specextract")
#: Tools of the optional routes (background lookup, merged image).
OPTIONAL_TOOLS = ("blanksky", "acis_bkgrnd_lookup", "pget", "dmmerge", "reproject_events",
                  "merge_obs")

#: Per-observation stages, in order.
STAGES = ("download", "repro", "acis_i", "deflare", "background", "exposure", "response")
#: Stages that need no region drawn by the user (run before the merged image).
_PHASE1 = STAGES[:-1]

STAGE_RECORD = "stages.json"
RECORD_VERSION = 1

_call_counter = itertools.count(1)


class CiaoError(HpcxtError):
    """A CIAO tool failed, timed out, or left no usable output.

    Printed by ``hpcxt`` as one line that names the tool, the observation and
    the log file holding the tool's command line and output; exit status 2,
    like every other error the user has to act on.
    """

    exit_status = EXIT_INPUT_ERROR

    def __init__(self, tool: str, obsid: str, log_file, detail: str):
        # Keep args equal to the constructor's so the error survives pickling
        # from a worker process.
        super().__init__(tool, obsid, str(log_file), detail)
        self.tool = tool
        self.obsid = obsid
        self.log_file = str(log_file)
        self.detail = detail

    def __str__(self) -> str:
        return (f"{self.tool} {self.detail} for observation {self.obsid}; "
                f"see {self.log_file}")


# --------------------------------------------------------------------------
# environment: is CIAO here, which version, where are its parameter files


def ciao_available() -> bool:
    """True when CIAO's tools are on PATH (what ``prep.backend: auto`` checks)."""
    return all(shutil.which(tool) for tool in REQUIRED_TOOLS)


def system_pfiles(environ=None) -> str:
    """The system part of CIAO's ``PFILES`` (the read-only default .par dirs).

    CIAO sets ``PFILES="<user dir>;<system dirs>"``. The system part comes
    from the current ``PFILES`` (after the ``;``) or, failing that, from
    ``$ASCDS_INSTALL/contrib/param`` and ``$ASCDS_INSTALL/param``. Empty when
    neither is known.
    """
    env = os.environ if environ is None else environ
    current = env.get("PFILES", "")
    if ";" in current:
        return current.split(";", 1)[1]
    install = env.get("ASCDS_INSTALL")
    if install:
        dirs = [str(Path(install) / sub) for sub in ("contrib/param", "param")
                if (Path(install) / sub).is_dir()]
        if dirs:
            return ":".join(dirs)
    # A PFILES without ';' lists directories that are both read and written;
    # reading defaults from them is still right.
    return current


def _caldb_version(caldb: str | None) -> str | None:
    if not caldb:
        return None
    vfile = Path(caldb) / "docs" / "chandra" / "caldb_version" / "caldb_version.fits"
    if not vfile.exists():
        return None
    try:
        from astropy.io import fits
        with fits.open(vfile) as hdul:
            data = hdul[1].data
            return str(data["CALDB_VER"][-1]).strip()
    except Exception:  # a damaged CALDB index is reported as unknown, not fatal
        return None


def ciao_info() -> dict:
    """What ``hpcxt doctor`` reports about CIAO and its CALDB.

    Returns
    -------
    dict
        ``available`` (bool: every required tool on PATH), ``reason`` (why
        not, or a warning such as an unset CALDB; empty when all is well),
        ``version`` (first line of ``ciaover``; None when CIAO is absent),
        ``ascds_install``, ``caldb`` (path or None), ``caldb_version`` (or
        None), ``tools`` (tool name -> path or None), ``missing`` (required
        tools not found).
    """
    tools = {t: shutil.which(t) for t in REQUIRED_TOOLS + OPTIONAL_TOOLS}
    version = None
    ciaover = shutil.which("ciaover")
    if ciaover:
        try:
            proc = subprocess.run([ciaover], capture_output=True, text=True, timeout=30,
                                  stdin=subprocess.DEVNULL)
            lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
            version = lines[0] if lines else None
        except (OSError, subprocess.SubprocessError):
            version = None
    caldb = os.environ.get("CALDB")
    missing = [t for t in REQUIRED_TOOLS if not tools[t]]
    available = not missing
    if available and version is None:
        version = "CIAO (version unknown: no ciaover on PATH)"
    if not available:
        reason = ("not on PATH (prep.backend: products works without it)"
                  if len(missing) == len(REQUIRED_TOOLS)
                  else f"incomplete: {', '.join(missing)} not on PATH")
    elif not caldb:
        reason = "CALDB is not set: chandra_repro and specextract need it"
    else:
        reason = ""
    return {
        "available": available,
        "reason": reason,
        "version": version,
        "ascds_install": os.environ.get("ASCDS_INSTALL"),
        "caldb": caldb,
        "caldb_version": _caldb_version(caldb),
        "tools": tools,
        "missing": missing,
    }


# --------------------------------------------------------------------------
# one observation's plan: plain data, so it can go to a worker process


@dataclass
class ObsPlan:
    """Everything the CIAO stages of one observation need (picklable)."""

    obsid: str
    obsdir: str            # <workdir>/obs/<obsid>: products, logs, stages.json
    rawdir: str            # <data_dir>/<obsid>: what download_chandra_obsid writes
    data_dir: str          # folder download_chandra_obsid runs in
    tmp_root: str          # <workdir>/tmp: per-call PFILES and scratch dirs
    download: bool
    download_timeout: float
    tool_timeout: float | None
    check_vf_pha: bool
    ccd_filter: str        # DM syntax, e.g. 0:3
    deflare: dict
    background_method: str
    band: list             # keV
    expmap_energy: float   # keV
    bin: int               # sky pixels per image pixel
    point_sources: str | None
    spectrum_region: str | None
    force: bool = False

    @property
    def id5(self) -> str:
        """The obsid as Chandra file names spell it (zero-padded to 5 digits)."""
        return f"{int(self.obsid):05d}"


def _ccd_filter(ccds) -> str:
    """DM filter value for a list of CCD ids: [0, 1, 2, 3] -> '0:3'."""
    ccds = sorted(set(int(c) for c in ccds))
    parts, start, prev = [], ccds[0], ccds[0]
    for c in ccds[1:] + [None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        if c is not None:
            start = prev = c
    return ",".join(parts)


def _kev_filter(band) -> str:
    """DM energy filter value in eV for a band in keV: [9, 12] -> '9000:12000'."""
    return f"{band[0] * 1000:g}:{band[1] * 1000:g}"


def _band_label(band) -> str:
    return f"{band[0]:g}-{band[1]:g}"


def make_plans(cfg, workdir: Path, force: bool = False) -> list[ObsPlan]:
    """One :class:`ObsPlan` per configured observation; checks the CIAO settings."""
    prep = cfg.prep
    ciao = prep.ciao
    ccds = list(prep.ccds)
    acis_s = [c for c in ccds if c > 3]
    if acis_s:
        raise InputError(f"CCDs {acis_s} are ACIS-S: the ciao backend handles ACIS-I "
                         "(CCDs 0-3) only for now; use prep.backend: products for ACIS-S data",
                         path=cfg.path, field="prep.ccds")
    band = list(prep.energy_band)
    if not band[0] < ciao.expmap_energy < band[1]:
        raise InputError(f"must lie inside prep.energy_band {band} keV, got {ciao.expmap_energy}",
                         path=cfg.path, field="prep.ciao.expmap_energy")
    workdir = Path(workdir).resolve()
    obs_root = workdir / "obs"
    data_dir = Path(ciao.data_dir).resolve() if ciao.data_dir else obs_root
    deflare = prep.deflare.to_dict()
    plans = []
    for i, obs in enumerate(cfg.observations):
        obsid = str(obs.obsid).strip()
        if not obsid.isdigit() or int(obsid) <= 0:
            raise InputError(f"must be a Chandra observation id (a positive number) with "
                             f"prep.backend: ciao, got {obsid!r}",
                             path=cfg.path, field=f"observations[{i}].obsid")
        obsid = str(int(obsid))
        plans.append(ObsPlan(
            obsid=obsid,
            obsdir=str(obs_root / obsid),
            rawdir=str(data_dir / obsid),
            data_dir=str(data_dir),
            tmp_root=str(workdir / "tmp"),
            download=bool(ciao.download),
            download_timeout=float(ciao.download_timeout),
            tool_timeout=None if ciao.tool_timeout is None else float(ciao.tool_timeout),
            check_vf_pha=bool(ciao.check_vf_pha),
            ccd_filter=_ccd_filter(ccds),
            deflare=deflare,
            background_method=ciao.background_method,
            band=band,
            expmap_energy=float(ciao.expmap_energy),
            bin=int(prep.bin),
            point_sources=prep.point_sources,
            spectrum_region=ciao.spectrum_region or prep.crop_region,
            force=force,
        ))
    return plans


# --------------------------------------------------------------------------
# running one tool


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


class ToolRunner:
    """Runs CIAO tools for one observation and stage, logging every call.

    Parameters
    ----------
    obsid : str
        Named in errors.
    log_file : Path
        The stage log; each call appends its command line, ``PFILES`` and
        output.
    tmp_root : Path
        Per-call parameter and scratch directories are made below it and
        removed after the call.
    timeout : float or None
        Default time limit of a call, s.
    """

    def __init__(self, obsid: str, log_file: Path, tmp_root: Path, timeout: float | None = None):
        self.obsid = obsid
        self.log_file = Path(log_file)
        self.tmp_root = Path(tmp_root)
        self.timeout = timeout
        self.log_file.parent.mkdir(parents=True, exist_ok=True)

    def note(self, text: str) -> None:
        with open(self.log_file, "a") as fh:
            fh.write(f"# {text}\n")

    def new_call_dirs(self) -> tuple[Path, Path]:
        """A fresh (pfiles, scratch) pair of directories for one call or session."""
        tag = f"{os.getpid()}-{next(_call_counter)}"
        pdir = self.tmp_root / "pfiles" / tag
        wdir = self.tmp_root / "work" / tag
        for d in (pdir, wdir):
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
        return pdir, wdir

    def run(self, tool: str, args: list[str], outputs=(), cwd=None, timeout=None,
            call_dirs: tuple[Path, Path] | None = None) -> str:
        """Run ``tool ARGS``; raise :class:`CiaoError` unless it succeeds.

        Parameters
        ----------
        tool : str
            Executable name, found on PATH.
        args : list of str
            Arguments, CIAO style (``key=value``), passed without a shell.
        outputs : sequence of Path
            Files the call must leave behind (non-empty).
        cwd : Path, optional
            Working directory (``download_chandra_obsid`` writes there).
        timeout : float, optional
            Seconds; defaults to the runner's.
        call_dirs : (Path, Path), optional
            Shared parameter/scratch directories of a session of calls that
            must see each other's parameter files (``acis_bkgrnd_lookup``
            then ``pget``). By default each call gets fresh ones.

        Returns
        -------
        str
            The call's output (stdout and stderr).
        """
        # A file left by an earlier run must not pass for this call's output.
        _remove(outputs)
        own_dirs = call_dirs is None
        pdir, wdir = self.new_call_dirs() if own_dirs else call_dirs
        env = dict(os.environ)
        env["PFILES"] = f"{pdir};{system_pfiles()}"
        env["ASCDS_WORK_PATH"] = str(wdir)
        timeout = self.timeout if timeout is None else timeout
        argv = [tool, *map(str, args)]
        with open(self.log_file, "a") as fh:
            fh.write(f"$ {shlex.join(argv)}\n# PFILES={env['PFILES']}\n")
            if cwd is not None:
                fh.write(f"# cwd={cwd}\n")
            fh.flush()
            start = fh.tell()
            t0 = time.monotonic()
            try:
                proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                        stdout=fh, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            except FileNotFoundError:
                fh.write(f"# {tool}: not found on PATH\n")
                self._cleanup(own_dirs, pdir, wdir)
                raise CiaoError(tool, self.obsid, self.log_file,
                                "was not found on PATH (is CIAO initialised?)") from None
            except OSError as exc:
                fh.write(f"# {tool}: cannot start: {exc}\n")
                self._cleanup(own_dirs, pdir, wdir)
                raise CiaoError(tool, self.obsid, self.log_file,
                                f"could not be started ({exc.strerror})") from None
            try:
                status = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                fh.write(f"\n# {tool}: stopped after {timeout:g} s\n")
                self._cleanup(own_dirs, pdir, wdir)
                raise CiaoError(tool, self.obsid, self.log_file,
                                f"timed out after {timeout:g} s") from None
            except BaseException:
                _kill_group(proc)
                self._cleanup(own_dirs, pdir, wdir)
                raise
            fh.write(f"# exit status {status} after {time.monotonic() - t0:.1f} s\n")
        with open(self.log_file) as fh:
            fh.seek(start)
            output = fh.read()
        self._cleanup(own_dirs, pdir, wdir)
        if status != 0:
            raise CiaoError(tool, self.obsid, self.log_file, f"exited with status {status}")
        for out in outputs:
            problem = _file_problem(Path(out))
            if problem:
                self.note(f"{tool}: output {out}: {problem}")
                raise CiaoError(tool, self.obsid, self.log_file,
                                f"left no usable output {out} ({problem})")
        return output

    @staticmethod
    def _cleanup(own: bool, *dirs: Path) -> None:
        if own:
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop a tool and everything it started (CIAO scripts spawn children)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    except ProcessLookupError:
        pass


def _remove(paths) -> None:
    for p in paths:
        p = Path(p)
        if p.is_file() or p.is_symlink():
            p.unlink()


def _file_problem(path: Path) -> str | None:
    if not path.exists():
        return "missing"
    if path.is_file() and path.stat().st_size == 0:
        return "empty"
    return None


def _fits_problem(path: Path, extnames=(), min_rows: int = 0, image: bool = False) -> str | None:
    """Why a FITS product is unusable (missing, unreadable, no rows), or None."""
    problem = _file_problem(path)
    if problem:
        return problem
    from astropy.io import fits
    try:
        with fits.open(path) as hdul:
            if image:
                if hdul[0].data is None or hdul[0].data.size == 0:
                    return "no image in the primary HDU"
                return None
            names = [h.name.upper() for h in hdul]
            for want in extnames:
                options = [w.upper() for w in (want if isinstance(want, tuple) else (want,))]
                hit = next((n for n in options if n in names), None)
                if hit is None:
                    return f"no {' or '.join(options)} extension"
                if min_rows and (hdul[hit].data is None or len(hdul[hit].data) < min_rows):
                    return f"{hit} has fewer than {min_rows} rows"
    except (OSError, ValueError, TypeError) as exc:
        return f"not readable as FITS: {exc}"
    return None


# --------------------------------------------------------------------------
# the stage record


def _record_path(obsdir: Path) -> Path:
    return Path(obsdir) / STAGE_RECORD


def read_stage_record(obsdir) -> dict:
    """The ``stages.json`` of an observation folder ({} when absent or unreadable)."""
    path = _record_path(Path(obsdir))
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if data.get("version") != RECORD_VERSION or not isinstance(data.get("stages"), dict):
        return {}
    return data


def _write_stage_record(obsdir: Path, data: dict) -> None:
    path = _record_path(obsdir)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _signature(stage: str, settings: dict, inputs: dict) -> str:
    blob = json.dumps({"stage": stage, "settings": settings, "inputs": inputs},
                      sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _outputs_present(outputs: dict) -> bool:
    for value in outputs.values():
        for item in (value if isinstance(value, list) else [value]):
            if isinstance(item, str) and item.startswith("/") and _file_problem(Path(item)):
                return False
    return True


class StageBook:
    """Which stages of one folder are done; skips them, invalidates followers."""

    def __init__(self, obsdir: Path, obsid: str, order: tuple, force: bool = False):
        self.obsdir = Path(obsdir)
        self.obsid = obsid
        self.order = order
        self.obsdir.mkdir(parents=True, exist_ok=True)
        data = {} if force else read_stage_record(self.obsdir)
        self.data = data or {"version": RECORD_VERSION, "obsid": obsid, "stages": {}}
        if force:
            _write_stage_record(self.obsdir, self.data)

    def finished(self, stage: str, signature: str) -> dict | None:
        """Outputs of ``stage`` if it is recorded done with this signature and they exist."""
        entry = self.data["stages"].get(stage)
        if not entry or entry.get("signature") != signature:
            return None
        if not _outputs_present(entry.get("outputs", {})):
            return None
        return entry["outputs"]

    def starting(self, stage: str) -> None:
        """Forget ``stage`` and every later one before running it."""
        later = self.order[self.order.index(stage):]
        dropped = [s for s in later if self.data["stages"].pop(s, None) is not None]
        if dropped:
            _write_stage_record(self.obsdir, self.data)

    def done(self, stage: str, signature: str, outputs: dict, seconds: float) -> None:
        self.data["stages"][stage] = {
            "signature": signature,
            "outputs": outputs,
            "seconds": round(seconds, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _write_stage_record(self.obsdir, self.data)


# --------------------------------------------------------------------------
# the stages of one observation


def _glob_one(folder: Path, patterns) -> list[Path]:
    hits: list[Path] = []
    for pattern in patterns:
        hits.extend(sorted(folder.glob(pattern)))
    return hits


def _raw_data_problem(rawdir: Path) -> str | None:
    """What the downloaded data lack for chandra_repro, or None."""
    if not (rawdir / "secondary").is_dir() or not _glob_one(rawdir / "secondary", ["*evt1.fits*"]):
        return "no secondary/*evt1.fits*"
    if not _glob_one(rawdir / "primary", ["*evt2.fits*"]):
        return "no primary/*evt2.fits*"
    if not _glob_one(rawdir / "primary", ["*asol1.fits*"]):
        return "no primary/*asol1.fits*"
    return None


def stage_download(plan: ObsPlan, run: ToolRunner, prev: dict) -> dict:
    rawdir = Path(plan.rawdir)
    problem = _raw_data_problem(rawdir)
    if problem is None:
        run.note(f"data already in {rawdir}: no download")
    elif not plan.download:
        raise InputError(f"no Chandra data for observation {plan.obsid} in {rawdir} ({problem}); "
                         "download them with download_chandra_obsid or set "
                         "prep.ciao.download: true", field="prep.ciao.download")
    else:
        Path(plan.data_dir).mkdir(parents=True, exist_ok=True)
        run.run("download_chandra_obsid", [plan.obsid], cwd=plan.data_dir,
                timeout=plan.download_timeout)
        problem = _raw_data_problem(rawdir)
        if problem:
            run.note(f"download_chandra_obsid: {rawdir}: {problem}")
            raise CiaoError("download_chandra_obsid", plan.obsid, run.log_file,
                            f"left incomplete data in {rawdir} ({problem})")
    return {"rawdir": str(rawdir)}


def stage_repro(plan: ObsPlan, run: ToolRunner, prev: dict) -> dict:
    rawdir = Path(prev["download"]["rawdir"])
    outdir = Path(plan.obsdir) / "repro"
    evt2 = outdir / f"acisf{plan.id5}_repro_evt2.fits"
    bpix = outdir / f"acisf{plan.id5}_repro_bpix1.fits"
    run.run("chandra_repro", [f"indir={rawdir}", f"outdir={outdir}",
                              f"check_vf_pha={_yes(plan.check_vf_pha)}", "set_ardlib=no",
                              "cleanup=yes", "clobber=yes", "verbose=1"],
            outputs=[evt2, bpix])
    problem = _fits_problem(evt2, extnames=["EVENTS"], min_rows=1)
    if problem:
        raise CiaoError("chandra_repro", plan.obsid, run.log_file,
                        f"wrote an unusable {evt2} ({problem})")
    # chandra_repro writes a new aspect solution only when it applies a
    # boresight correction; otherwise the archive's is the one to use.
    asol = (_glob_one(outdir, ["*asol1.fits", "*asol1.fits.gz"])
            or _glob_one(rawdir / "primary", ["*asol1.fits", "*asol1.fits.gz"]))
    msk = (_glob_one(outdir, ["*msk1.fits", "*msk1.fits.gz"])
           or _glob_one(rawdir / "secondary", ["*msk1.fits", "*msk1.fits.gz"]))
    return {"evt2": str(evt2), "bpix": str(bpix), "asol": [str(a) for a in asol],
            "msk": str(msk[0]) if msk else ""}


def stage_acis_i(plan: ObsPlan, run: ToolRunner, prev: dict) -> dict:
    evt2 = prev["repro"]["evt2"]
    out = Path(plan.obsdir) / f"acisf{plan.id5}_acisI_evt2.fits"
    run.run("dmcopy", [f"{evt2}[events][ccd_id={plan.ccd_filter}]", str(out), "clobber=yes"],
            outputs=[out])
    problem = _fits_problem(out, extnames=["EVENTS"], min_rows=1)
    if problem:
        raise CiaoError("dmcopy", plan.obsid, run.log_file,
                        f"found no ACIS-I events (ccd_id={plan.ccd_filter}) in {evt2}: {problem}; "
                        "ACIS-S observations are not supported by the ciao backend yet")
    return {"events": str(out)}


def stage_deflare(plan: ObsPlan, run: ToolRunner, prev: dict) -> dict:
    events = prev["acis_i"]["events"]
    d = plan.deflare
    if not d["enabled"]:
        run.note("prep.deflare.enabled is false: events used as they are")
        return {"events": events, "gti": ""}
    folder = Path(plan.obsdir) / "deflare"
    folder.mkdir(parents=True, exist_ok=True)
    hi = folder / f"acisf{plan.id5}_hiE_evt.fits"
    lc = folder / f"acisf{plan.id5}_hiE.lc"
    gti = folder / f"acisf{plan.id5}_clean.gti"
    clean = Path(plan.obsdir) / f"acisf{plan.id5}_clean_evt2.fits"
    # The light curve is of the particle background: sources would add
    # their own variability, so they are left out when a region file exists.
    exclude = f"[exclude sky=region({plan.point_sources})]" if plan.point_sources else ""
    run.run("dmcopy", [f"{events}{exclude}[energy={_kev_filter(d['band'])}]", str(hi),
                       "clobber=yes"], outputs=[hi])
    run.run("dmextract", [f"infile={hi}[bin time=::{d['bin_seconds']:g}]", f"outfile={lc}",
                          "opt=ltc1", "clobber=yes"], outputs=[lc])
    problem = _fits_problem(lc, extnames=["LIGHTCURVE"], min_rows=1)
    if problem:
        raise CiaoError("dmextract", plan.obsid, run.log_file,
                        f"wrote an unusable light curve {lc} ({problem})")
    run.run("deflare", [f"infile={lc}", f"outfile={gti}", "method=clean",
                        f"nsigma={d['nsigma']:g}", "plot=no"], outputs=[gti])
    run.run("dmcopy", [f"{events}[@{gti}]", str(clean), "clobber=yes"], outputs=[clean])
    problem = _fits_problem(clean, extnames=["EVENTS"], min_rows=1)
    if problem:
        raise CiaoError("dmcopy", plan.obsid, run.log_file,
                        f"left no events after the GTI filter in {clean} ({problem})")
    return {"events": str(clean), "gti": str(gti), "lightcurve": str(lc)}


def stage_background(plan: ObsPlan, run: ToolRunner, prev: dict) -> dict:
    events = prev["deflare"]["events"]
    asol = prev["repro"]["asol"]
    out = Path(plan.obsdir) / f"acisf{plan.id5}_bkg_evt2.fits"
    if plan.background_method == "blanksky":
        pdir, wdir = run.new_call_dirs()
        try:
            run.run("blanksky", [f"evtfile={events}", f"outfile={out}",
                                 f"asolfile={','.join(asol)}", f"tmpdir={wdir}", "random=0",
                                 "clobber=yes", "verbose=1"],
                    outputs=[out], call_dirs=(pdir, wdir))
        finally:
            shutil.rmtree(pdir, ignore_errors=True)
            shutil.rmtree(wdir, ignore_errors=True)
    else:
        folder = Path(plan.obsdir) / "background"
        folder.mkdir(parents=True, exist_ok=True)
        # acis_bkgrnd_lookup returns its answer in its own parameter file:
        # pget must read the same PFILES directory, and nobody else may.
        pdir, wdir = run.new_call_dirs()
        try:
            run.run("acis_bkgrnd_lookup", [f"infile={events}"], call_dirs=(pdir, wdir))
            answer = run.run("pget", ["acis_bkgrnd_lookup", "outfile"], call_dirs=(pdir, wdir))
        finally:
            shutil.rmtree(pdir, ignore_errors=True)
            shutil.rmtree(wdir, ignore_errors=True)
        lines = [ln.strip() for ln in answer.splitlines() if ln.strip() and not ln.startswith("#")]
        files = [f for f in (lines[-1].split(",") if lines else []) if f.strip()]
        if not files:
            raise CiaoError("acis_bkgrnd_lookup", plan.obsid, run.log_file,
                            "found no blank-sky background file in the CALDB")
        stack = folder / "bkg_files.lis"
        stack.write_text("\n".join(f.strip() for f in files) + "\n")
        merged = folder / f"acisf{plan.id5}_bkg_merged.fits"
        run.run("dmmerge", [f"infile=@{stack}[subspace -expno]", f"outfile={merged}",
                            "clobber=yes"], outputs=[merged])
        run.run("reproject_events", [f"infile={merged}", f"outfile={out}",
                                     f"aspect={','.join(asol)}", f"match={events}", "random=0",
                                     "clobber=yes"], outputs=[out])
    problem = _fits_problem(out, extnames=["EVENTS"], min_rows=1)
    if problem:
        raise CiaoError(plan.background_method if plan.background_method == "blanksky"
                        else "reproject_events", plan.obsid, run.log_file,
                        f"wrote an unusable background {out} ({problem})")
    return {"background": str(out)}


def stage_exposure(plan: ObsPlan, run: ToolRunner, prev: dict) -> dict:
    events = prev["deflare"]["events"]
    repro = prev["repro"]
    folder = Path(plan.obsdir) / "fluximage"
    folder.mkdir(parents=True, exist_ok=True)
    outroot = folder / f"acisf{plan.id5}"
    label = _band_label(plan.band)
    bands = f"{plan.band[0]:g}:{plan.band[1]:g}:{plan.expmap_energy:g}"
    _remove(folder.glob(f"{outroot.name}_*"))
    pdir, wdir = run.new_call_dirs()
    try:
        run.run("fluximage", [f"infile={events}", f"outroot={outroot}", f"bands={bands}",
                              f"binsize={plan.bin}", f"asolfile={','.join(repro['asol'])}",
                              f"badpixfile={repro['bpix']}", f"maskfile={repro['msk']}",
                              "units=default", "expmapthresh=1.5%", "parallel=no",
                              f"tmpdir={wdir}", "cleanup=yes", "clobber=yes", "verbose=1"],
                call_dirs=(pdir, wdir))
    finally:
        shutil.rmtree(pdir, ignore_errors=True)
        shutil.rmtree(wdir, ignore_errors=True)
    expmap = _band_product(folder, f"{outroot.name}_{label}", "_thresh.expmap")
    image = _band_product(folder, f"{outroot.name}_{label}", "_flux.img")
    for path in (expmap, image):
        problem = _fits_problem(path, image=True) if path else "missing"
        if problem:
            raise CiaoError("fluximage", plan.obsid, run.log_file,
                            f"left no usable output {path or str(outroot) + '_*'} ({problem})")
    return {"exposure_map": str(expmap), "flux_image": str(image)}


def _band_product(folder: Path, stem: str, suffix: str) -> Path | None:
    """``<stem><suffix>``, or the one file ``<prefix>_*<suffix>`` if CIAO spelled the band
    differently (e.g. ``8.0`` for ``8``)."""
    exact = folder / f"{stem}{suffix}"
    if exact.exists():
        return exact
    prefix = stem.rsplit("_", 1)[0]
    hits = sorted(folder.glob(f"{prefix}_*{suffix}"))
    return hits[0] if len(hits) == 1 else None


def stage_response(plan: ObsPlan, run: ToolRunner, prev: dict) -> dict:
    events = prev["deflare"]["events"]
    repro = prev["repro"]
    region = plan.spectrum_region
    folder = Path(plan.obsdir) / "response"
    folder.mkdir(parents=True, exist_ok=True)
    outroot = folder / f"acisf{plan.id5}"
    _remove(folder.glob(f"{outroot.name}*"))
    pdir, wdir = run.new_call_dirs()
    try:
        run.run("specextract", [f"infile={events}[sky=region({region})]", f"outroot={outroot}",
                                "bkgfile=", f"asp={','.join(repro['asol'])}",
                                f"mskfile={repro['msk']}", f"badpixfile={repro['bpix']}",
                                "weight=yes", "weight_rmf=no", "correctpsf=no", "combine=no",
                                "bkgresp=no", "grouptype=NONE", "binspec=NONE", "parallel=no",
                                f"tmpdir={wdir}", "clobber=yes", "verbose=1"],
                call_dirs=(pdir, wdir))
    finally:
        shutil.rmtree(pdir, ignore_errors=True)
        shutil.rmtree(wdir, ignore_errors=True)
    # Weighted responses are <outroot>.arf/.rmf; CIAO before 4.5 called them .warf/.wrmf.
    arf = next((p for p in (Path(f"{outroot}.arf"), Path(f"{outroot}.warf")) if p.exists()),
               Path(f"{outroot}.arf"))
    rmf = next((p for p in (Path(f"{outroot}.rmf"), Path(f"{outroot}.wrmf")) if p.exists()),
               Path(f"{outroot}.rmf"))
    for path, ext in ((arf, "SPECRESP"), (rmf, ("MATRIX", "SPECRESP MATRIX"))):
        if _file_problem(path):
            run.note(f"specextract: output {path}: {_file_problem(path)}")
            raise CiaoError("specextract", plan.obsid, run.log_file,
                            f"left no usable output {path} ({_file_problem(path)})")
        problem = _fits_problem(path, extnames=[ext], min_rows=1)
        if problem:
            raise CiaoError("specextract", plan.obsid, run.log_file,
                            f"wrote an unusable response {path} ({problem})")
    return {"arf": str(arf), "rmf": str(rmf), "region": str(region)}


_STAGE_FUNCS = {
    "download": stage_download,
    "repro": stage_repro,
    "acis_i": stage_acis_i,
    "deflare": stage_deflare,
    "background": stage_background,
    "exposure": stage_exposure,
    "response": stage_response,
}


def _stage_settings(plan: ObsPlan, stage: str) -> dict:
    """The settings that change a stage's output (part of its signature)."""
    if stage == "download":
        return {"rawdir": plan.rawdir}
    if stage == "repro":
        return {"check_vf_pha": plan.check_vf_pha}
    if stage == "acis_i":
        return {"ccds": plan.ccd_filter}
    if stage == "deflare":
        return {"deflare": plan.deflare, "point_sources": plan.point_sources}
    if stage == "background":
        return {"method": plan.background_method}
    if stage == "exposure":
        return {"band": plan.band, "energy": plan.expmap_energy, "bin": plan.bin}
    if stage == "response":
        return {"region": plan.spectrum_region}
    raise KeyError(stage)


def run_stages(plan: ObsPlan, stages=STAGES) -> dict:
    """Run (or skip, when done) the given stages of one observation.

    Returns
    -------
    dict
        stage name -> that stage's outputs, for every stage up to the last
        one requested.
    """
    book = StageBook(Path(plan.obsdir), plan.obsid, STAGES, force=plan.force)
    logs = Path(plan.obsdir) / "logs"
    results: dict = {}
    last = max(STAGES.index(s) for s in stages)
    for stage in STAGES[:last + 1]:
        signature = _signature(stage, _stage_settings(plan, stage), results)
        done = book.finished(stage, signature)
        if done is not None:
            log.debug("observation %s: %s already done", plan.obsid, stage)
            results[stage] = done
            continue
        book.starting(stage)
        timeout = plan.tool_timeout
        runner = ToolRunner(plan.obsid, logs / f"{stage}.log", Path(plan.tmp_root), timeout)
        runner.note(f"=== {stage} of observation {plan.obsid}, "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')} ===")
        log.info("observation %s: %s ...", plan.obsid, stage)
        t0 = time.monotonic()
        outputs = _STAGE_FUNCS[stage](plan, runner, results)
        seconds = time.monotonic() - t0
        book.done(stage, signature, outputs, seconds)
        runner.note(f"=== {stage} done in {seconds:.1f} s ===")
        log.info("observation %s: %s done (%.1f s)", plan.obsid, stage, seconds)
        results[stage] = outputs
    return results


def _run_plan_phase(plan_dict: dict, stages: tuple) -> dict:
    """Worker-process entry point (module level, so it pickles)."""
    return run_stages(ObsPlan(**plan_dict), stages)


def _run_all(plans: list[ObsPlan], stages: tuple, nproc: int) -> list[dict]:
    """Run ``stages`` of every plan, ``nproc`` observations at a time.

    An observation that fails does not stop the others: their work is kept
    (and recorded) and the first failure, in config order, is raised after.
    """
    if nproc <= 1 or len(plans) <= 1:
        return [run_stages(p, stages) for p in plans]
    import multiprocessing
    results: list = [None] * len(plans)
    errors: list = [None] * len(plans)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(nproc, len(plans)), mp_context=ctx) as pool:
        futures = [pool.submit(_run_plan_phase, asdict(p), stages) for p in plans]
        for i, fut in enumerate(futures):
            try:
                results[i] = fut.result()
            except HpcxtError as exc:
                errors[i] = exc
    for exc in errors:
        if exc is not None:
            raise exc
    return results


# --------------------------------------------------------------------------
# the merged image for drawing regions


def _merged_image(plans: list[ObsPlan], phase1: list[dict], workdir: Path, cfg_tool_timeout,
                  force: bool) -> str | None:
    """``merge_obs`` of all cleaned event files: the image the user draws regions on."""
    folder = Path(workdir).resolve() / "obs" / "merged"
    events = [r["deflare"]["events"] for r in phase1]
    plan = plans[0]
    book = StageBook(folder, "merged", ("merge",), force=force)
    settings = {"band": plan.band, "energy": plan.expmap_energy, "bin": plan.bin}
    signature = _signature("merge", settings, {"events": events})
    done = book.finished("merge", signature)
    if done is not None:
        return done["flux_image"]
    book.starting("merge")
    label = _band_label(plan.band)
    obsids = ",".join(p.obsid for p in plans)
    runner = ToolRunner(obsids, folder / "logs" / "merge.log", Path(plan.tmp_root),
                        cfg_tool_timeout)
    runner.note(f"=== merge_obs of observations {obsids}, {time.strftime('%Y-%m-%d %H:%M:%S')} ===")
    log.info("observations %s: merge_obs ...", obsids)
    t0 = time.monotonic()
    bands = f"{plan.band[0]:g}:{plan.band[1]:g}:{plan.expmap_energy:g}"
    _remove(folder.glob("*_flux.img"))
    pdir, wdir = runner.new_call_dirs()
    try:
        runner.run("merge_obs", [f"infiles={','.join(events)}", f"outroot={folder}/",
                                 f"bands={bands}", f"binsize={plan.bin}", "parallel=no",
                                 f"tmpdir={wdir}", "cleanup=yes", "clobber=yes", "verbose=1"],
                   call_dirs=(pdir, wdir))
    finally:
        shutil.rmtree(pdir, ignore_errors=True)
        shutil.rmtree(wdir, ignore_errors=True)
    image = folder / f"{label}_flux.img"
    if not image.exists():
        hits = sorted(folder.glob("*_flux.img"))
        image = hits[0] if len(hits) == 1 else image
    problem = _fits_problem(image, image=True)
    if problem:
        raise CiaoError("merge_obs", obsids, runner.log_file,
                        f"left no usable output {image} ({problem})")
    book.done("merge", signature, {"flux_image": str(image)}, time.monotonic() - t0)
    return str(image)


# --------------------------------------------------------------------------
# the entry point the driver calls


def prepare_observations(cfg, workdir: Path, force: bool = False) -> list[dict]:
    """Run the CIAO stages of every configured observation.

    Parameters
    ----------
    cfg : hpcxt.io.config.Config
        The validated config (``prep`` and ``prep.ciao`` sections, obsids).
    workdir : Path
        The run's working directory; products go to ``<workdir>/obs/<obsid>/``.
    force : bool
        Redo every stage, ignoring the stage records (data already
        downloaded are still not downloaded again).

    Returns
    -------
    list of dict
        One per configured observation, in config order, with keys
        ``obsid``, ``events`` (cleaned ACIS-I level-2 events), ``background``
        (blank-sky events reprojected to the observation), ``exposure_map``
        (cm**2 s, binned by ``prep.bin``), ``arf``, ``rmf``: absolute paths of
        verified files, ready for the ``products`` backend.

    Raises
    ------
    CiaoError
        A tool failed, timed out or left no usable output; the message names
        the tool, the observation and the stage log.
    InputError
        A setting the CIAO route cannot use, missing data with downloads
        off, or no region for the global responses yet.
    """
    plans = make_plans(cfg, Path(workdir), force=force)
    nproc = int(cfg.prep.ciao.nproc)
    phase1 = _run_all(plans, _PHASE1, nproc)
    image = None
    if len(plans) > 1 and cfg.prep.ciao.merged_image:
        image = _merged_image(plans, phase1, Path(workdir), plans[0].tool_timeout, force)
    if plans[0].spectrum_region is None:
        view = image or phase1[0]["exposure"]["flux_image"]
        raise InputError(
            "the global ARF/RMF need a region: open " + view + " in DS9, draw the area to map "
            "(a box) and save it as a region file, then set prep.crop_region (and, for the "
            "point sources to exclude, prep.point_sources) and run hpcxt prep again; "
            "finished CIAO stages are not redone",
            path=cfg.path, field="prep.crop_region")
    # force applied to phase 1 already; phase 2 must not wipe its records
    plans = [ObsPlan(**{**asdict(p), "force": False}) for p in plans]
    final = _run_all(plans, ("response",), nproc)
    out = []
    for obs, res in zip(cfg.observations, final):
        out.append({
            "obsid": str(obs.obsid),
            "events": res["deflare"]["events"],
            "background": res["background"]["background"],
            "exposure_map": res["exposure"]["exposure_map"],
            "arf": res["response"]["arf"],
            "rmf": res["response"]["rmf"],
        })
    return out
