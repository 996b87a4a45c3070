"""Running one CIAO tool: private parameter files, a log, a time limit, checks."""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from ...errors import EXIT_INPUT_ERROR, HpcxtError
from ._env import system_pfiles

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


def yes(flag: bool) -> str:
    """CIAO's spelling of a boolean parameter."""
    return "yes" if flag else "no"


def remove_files(paths) -> None:
    """Delete the files among ``paths`` (folders and missing paths are left)."""
    for p in paths:
        p = Path(p)
        if p.is_file() or p.is_symlink():
            p.unlink()


def file_problem(path: Path) -> str | None:
    """'missing', 'empty' or None."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_file() and path.stat().st_size == 0:
        return "empty"
    return None


def fits_problem(path: Path, extnames=(), min_rows: int = 0, image: bool = False) -> str | None:
    """Why a FITS product is unusable (missing, unreadable, no rows), or None.

    ``extnames`` lists the extensions that must exist (a tuple entry means
    any one of its names); each must have at least ``min_rows`` rows.
    ``image`` asks for a non-empty primary image instead.
    """
    problem = file_problem(path)
    if problem:
        return problem
    from astropy.io import fits
    try:
        with fits.open(path) as hdul:
            if image:
                data = hdul[0].data
                return "no image in the primary HDU" if data is None or data.size == 0 else None
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
        """Append a comment line to the stage log."""
        with open(self.log_file, "a") as fh:
            fh.write(f"# {text}\n")

    def fail(self, tool: str, detail: str) -> CiaoError:
        """The error to raise for ``tool`` (noted in the log too)."""
        self.note(f"{tool}: {detail}")
        return CiaoError(tool, self.obsid, self.log_file, detail)

    @contextlib.contextmanager
    def call_dirs(self):
        """A fresh (pfiles, scratch) pair of folders, removed on exit.

        For one call, or for a session of calls that must see each other's
        parameter files (``acis_bkgrnd_lookup`` then ``pget``). The scratch
        folder is also the place to point a tool's ``tmpdir`` at.
        """
        tag = f"{os.getpid()}-{next(_call_counter)}"
        dirs = (self.tmp_root / "pfiles" / tag, self.tmp_root / "work" / tag)
        for d in dirs:
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
        try:
            yield dirs
        finally:
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)

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
            Files the call must leave behind (non-empty). Removed first, so
            that a file of an earlier run never passes for this call's.
        cwd : Path, optional
            Working directory (``download_chandra_obsid`` writes there).
        timeout : float, optional
            Seconds; defaults to the runner's.
        call_dirs : (Path, Path), optional
            From :meth:`call_dirs`, when calls share parameter files or the
            tool's ``tmpdir`` must be known; by default each call gets fresh
            ones.

        Returns
        -------
        str
            The call's output (stdout and stderr).
        """
        remove_files(outputs)
        if call_dirs is None:
            with self.call_dirs() as dirs:
                return self.run(tool, args, outputs, cwd, timeout, call_dirs=dirs)
        argv = [tool, *map(str, args)]
        status, output = self._execute(argv, call_dirs, cwd,
                                       self.timeout if timeout is None else timeout)
        if status != 0:
            raise CiaoError(tool, self.obsid, self.log_file, f"exited with status {status}")
        for out in outputs:
            problem = file_problem(Path(out))
            if problem:
                raise self.fail(tool, f"left no usable output {out} ({problem})")
        return output

    def _execute(self, argv: list[str], call_dirs, cwd, timeout) -> tuple[int, str]:
        """Start, wait for and log one call; returns (exit status, output)."""
        pdir, wdir = call_dirs
        env = dict(os.environ, PFILES=f"{pdir};{system_pfiles()}", ASCDS_WORK_PATH=str(wdir))
        tool = argv[0]
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
                raise CiaoError(tool, self.obsid, self.log_file,
                                "was not found on PATH (is CIAO initialised?)") from None
            except OSError as exc:
                fh.write(f"# {tool}: cannot start: {exc}\n")
                raise CiaoError(tool, self.obsid, self.log_file,
                                f"could not be started ({exc.strerror})") from None
            try:
                status = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                fh.write(f"\n# {tool}: stopped after {timeout:g} s\n")
                raise CiaoError(tool, self.obsid, self.log_file,
                                f"timed out after {timeout:g} s") from None
            except BaseException:
                _kill_group(proc)
                raise
            fh.write(f"# exit status {status} after {time.monotonic() - t0:.1f} s\n")
        with open(self.log_file) as fh:
            fh.seek(start)
            return status, fh.read()
