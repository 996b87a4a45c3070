"""Is CIAO here, which version and CALDB, and where are its parameter files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

#: Tools the backend calls in every configuration (``auto`` needs them on PATH).
REQUIRED_TOOLS = ("download_chandra_obsid", "chandra_repro", "dmcopy", "dmextract",
                  "deflare", "fluximage", "specextract")
#: Tools of the optional routes (background lookup, merged image).
OPTIONAL_TOOLS = ("blanksky", "acis_bkgrnd_lookup", "pget", "dmmerge", "reproject_events",
                  "merge_obs")
#: CIAO's own read-only parameter folders below ``$ASCDS_INSTALL``, in the
#: order CIAO's setup lists them after the ';' of PFILES.
SYSTEM_PARAM_DIRS = ("param", "contrib/param")


def missing_tools() -> list[str]:
    """The required CIAO tools that are not on PATH."""
    return [tool for tool in REQUIRED_TOOLS if not shutil.which(tool)]


def ciao_available() -> bool:
    """True when CIAO's tools are on PATH."""
    return not missing_tools()


def system_pfiles(environ=None) -> str:
    """The read-only part of ``PFILES`` for a call: CIAO's default .par folders.

    CIAO's documented form is ``PFILES="<rw>;<ro>"``: tools write learned
    parameters to the folders before the ';' and only read those after it.
    Each call gets its own writable folder (see :class:`ToolRunner`), and
    this function gives what follows the ';':

    * the inherited ``PFILES``'s part after its ';', when it has one;
    * else ``$ASCDS_INSTALL/param:$ASCDS_INSTALL/contrib/param`` (those
      that exist);
    * else the folders of the inherited ``PFILES`` that are named ``param``
      (CIAO's own), so that a user folder such as ``~/cxcds_param4`` with
      old learned values is not read.

    Returns an empty string when none is known.
    """
    env = os.environ if environ is None else environ
    current = env.get("PFILES", "")
    if ";" in current:
        return current.split(";", 1)[1]
    install = env.get("ASCDS_INSTALL")
    if install:
        dirs = [str(Path(install) / sub) for sub in SYSTEM_PARAM_DIRS
                if (Path(install) / sub).is_dir()]
        if dirs:
            return ":".join(dirs)
    # Without ';' every folder listed is read *and written*: keep only CIAO's own.
    return ":".join(d for d in current.split(":") if d and Path(d).name == "param")


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


def _ciaover() -> str | None:
    ciaover = shutil.which("ciaover")
    if not ciaover:
        return None
    try:
        proc = subprocess.run([ciaover], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    return lines[0] if lines else None


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
    missing = [t for t in REQUIRED_TOOLS if not tools[t]]
    available = not missing
    version = _ciaover()
    if available and version is None:
        version = "CIAO (version unknown: no ciaover on PATH)"
    caldb = os.environ.get("CALDB")
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
