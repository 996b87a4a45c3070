"""``hpcxt doctor``: what this machine can run.

Reports the MPI library behind mpi4py and the mpiexec that goes with it,
Sherpa and its XSPEC models (which of them evaluate: xsapec needs AtomDB),
and CIAO when its tools are on PATH.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def _line(ok: bool | None, what: str, detail: str) -> str:
    mark = {True: "ok  ", False: "FAIL", None: "--  "}[ok]
    return f"  [{mark}] {what:<22} {detail}"


def _mpi_lines():
    lines, ok = [], True
    try:
        import mpi4py
        from mpi4py import MPI
        lib = MPI.Get_library_version().strip().splitlines()[0]
        lines.append(_line(True, "mpi4py", f"{mpi4py.__version__} ({Path(mpi4py.__file__).parent})"))
        lines.append(_line(True, "MPI library", f"{lib} (MPI {'.'.join(map(str, MPI.Get_version()))})"))
    except Exception as exc:  # an MPI library that fails to load raises RuntimeError or ImportError
        lines.append(_line(False, "mpi4py", f"cannot import: {exc}"))
        ok = False
    venv_mpiexec = Path(sys.executable).parent / "mpiexec"
    found = str(venv_mpiexec) if venv_mpiexec.exists() else shutil.which("mpiexec")
    if found:
        same = venv_mpiexec.exists()
        note = "" if same else " (not the venv's: make sure it is the MPI mpi4py was built with)"
        lines.append(_line(True, "mpiexec", found + note))
    else:
        lines.append(_line(False, "mpiexec", "not found (pip install mpich, or module load an MPI)"))
        ok = False
    return lines, ok


def _sherpa_lines():
    lines, ok = [], True
    try:
        import sherpa
        lines.append(_line(True, "Sherpa", sherpa.__version__))
    except ImportError as exc:
        return [_line(False, "Sherpa", f"cannot import: {exc}")], False
    from .models import load_xspec, model_evaluates
    from .errors import ModelUnavailable
    try:
        xspec = load_xspec()
        version = xspec.get_xsversion()
        lines.append(_line(True, "XSPEC models", f"XSPEC {version}"))
    except ModelUnavailable as exc:
        lines.append(_line(False, "XSPEC models", str(exc)))
        return lines, False
    for expr in ("xsphabs*xsbremss", "xsphabs*xsapec"):
        works = model_evaluates(expr)
        if works:
            lines.append(_line(True, expr, "evaluates"))
        else:
            hint = (" (needs AtomDB: set fit.apec_root, or use CIAO's Sherpa)"
                    if "apec" in expr else "")
            lines.append(_line(None if "apec" in expr else False, expr,
                               "evaluates to zero here" + hint))
            ok = ok and "apec" in expr
    return lines, ok


def _ciao_lines():
    try:
        from .prep.ciao import ciao_info
    except ImportError:
        ciao_info = None
    if ciao_info is not None:
        info = ciao_info()
        if info.get("available"):
            detail = f"{info.get('version', '?')}; CALDB {info.get('caldb', 'not set')}"
            return [_line(True, "CIAO", detail)]
        return [_line(None, "CIAO", info.get("reason", "not on PATH (prep.backend: products works without it)"))]
    tool = shutil.which("chandra_repro")
    if tool:
        return [_line(True, "CIAO", tool)]
    return [_line(None, "CIAO", "not on PATH (prep.backend: products works without it)")]


def doctor_report() -> tuple[str, bool]:
    """Text report and whether everything hpcxt needs is usable."""
    from . import __version__
    lines = [f"hpcxt {__version__} on Python {sys.version.split()[0]} ({sys.executable})"]
    ok = True
    for part in (_mpi_lines, _sherpa_lines):
        more, good = part()
        lines += more
        ok = ok and good
    lines += _ciao_lines()
    lines.append("everything hpcxt needs is usable" if ok else "something hpcxt needs is missing")
    return "\n".join(lines), ok
