"""``hpcxt doctor``: what this machine can run.

Reports the MPI library behind mpi4py and the mpiexec that goes with it,
Sherpa and its XSPEC models (which of them evaluate, each checked in a
child process: xsapec needs AtomDB), whether the kernels are compiled ahead
of time (:mod:`hpcxt.compiled`), and CIAO when its tools are on PATH.
The last line says which models are usable here; the exit status is not 0
when the model that counts (the config's ``fit.model``, else the default)
is not.
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


def _model_lines(config=None):
    """Sherpa, XSPEC, and which models evaluate here (each checked in a child process).

    Returns
    -------
    lines : list of str
    verdicts : dict
        ``{"default": ModelVerdict, "configured": ModelVerdict or None}``
        (None when Sherpa's XSPEC models are missing altogether).
    usable : list of str
        The models that evaluate here.
    """
    try:
        import sherpa
    except ImportError as exc:
        return [_line(False, "Sherpa", f"cannot import: {exc}")], None, []
    lines = [_line(True, "Sherpa", sherpa.__version__)]
    from .errors import ModelUnavailable
    from .io.config import SCHEMA
    from .models import OFFLINE_MODEL, check_model, load_xspec
    try:
        version = load_xspec().get_xsversion()
        lines.append(_line(True, "XSPEC models", f"XSPEC {version}"))
    except ModelUnavailable as exc:
        lines.append(_line(False, "XSPEC models", str(exc)))
        return lines, None, []
    default = SCHEMA["fit"].children["model"].default
    rows = [("needs no data files", check_model(OFFLINE_MODEL)),
            ("the default fit.model", check_model(default))]
    if config is not None:
        f = config.fit
        rows.append((f"fit.model of {config.path}",
                     check_model(f.model, f.apec_root, f.abundance_table)))
    for role, v in rows:
        detail = "evaluates" if v.usable else f"{v.problem}; {v.advice}"
        lines.append(_line(v.usable, v.model, f"{role}: {detail}"))
    usable = sorted({v.model for _, v in rows if v.usable})
    return lines, {"default": rows[1][1], "configured": rows[2][1] if config else None}, usable


def _model_verdict(verdicts, usable, config) -> tuple[str, bool]:
    """The last line: which models are usable, and whether the one that counts is."""
    if verdicts is None:
        return "no spectral model can be evaluated here: Sherpa with XSPEC models is missing", False
    listed = ", ".join(usable) if usable else "none"
    default, configured = verdicts["default"], verdicts["configured"]
    if configured is not None:
        text = (f"fit.model {configured.model} of {config.path} is "
                f"{'usable' if configured.usable else 'NOT usable'} here; ")
        if not configured.usable:
            text += f"{configured.advice}; "
        return text + f"models usable here: {listed}", configured.usable
    if default.usable:
        return f"everything hpcxt needs is usable; models usable here: {listed}", True
    return (f"the default model {default.model} is NOT usable here: {default.advice}; "
            f"models usable here: {listed}"), False


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


def _kernel_lines():
    from . import compiled
    if compiled.mode() == "aot":
        skipped = f" ({compiled.LOAD_ERROR})" if compiled.LOAD_ERROR else ""
        return [_line(True, "compiled kernels", compiled.aot_path() + skipped)]
    why = compiled.LOAD_ERROR or "not built for this source: python -m hpcxt.compiled builds them"
    return [_line(None, "compiled kernels", f"numba's JIT ({why}; about 40 MiB more per fit rank)")]


def doctor_report(config=None) -> tuple[str, bool]:
    """Text report and whether hpcxt can run here.

    Parameters
    ----------
    config : hpcxt.io.config.Config, optional
        Also check its ``fit.model`` (with its ``apec_root`` and abundance
        table); that model then decides the verdict instead of the default.

    Returns
    -------
    text : str
        One line per component; the last says which models are usable here.
    ok : bool
        MPI works and the model that counts (the configured one, else the
        default ``fit.model``) evaluates here.
    """
    from . import __version__
    lines = [f"hpcxt {__version__} on Python {sys.version.split()[0]} ({sys.executable})"]
    mpi, mpi_ok = _mpi_lines()
    models, verdicts, usable = _model_lines(config)
    lines += mpi + models + _kernel_lines() + _ciao_lines()
    verdict, model_ok = _model_verdict(verdicts, usable, config)
    if not mpi_ok:
        verdict = "MPI is missing (see above); " + verdict.replace(
            "everything hpcxt needs is usable; ", "")
    lines.append(verdict)
    return "\n".join(lines), mpi_ok and model_ok
