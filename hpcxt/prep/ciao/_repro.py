"""Where chandra_repro put an observation's aspect solution, mask and modes.

chandra_repro copies every archive aspect file (``pcadf*_asol1.fits``) into
its output folder and, for old-format aspect data (``CONTENT=ASPSOL``) with
``asol_update=yes`` (its default), also writes a boresight-corrected
``pcadf<obsid>_repro_asol1.fits``. A glob of ``repro/*asol1.fits`` therefore
finds the corrected and the uncorrected files together, and a tool given both
mixes two pointings (up to 30 arcsec apart). The files to use are the ones
chandra_repro lists in ``<root>_asol1.lis`` and names in the new event file's
``ASOLFILE`` keyword, which is what merge_obs and blanksky read.
"""

from __future__ import annotations

from pathlib import Path

#: Folders, relative to an event file's folder, where CIAO scripts look for
#: the files named by its ``ASOLFILE``/``MASKFILE`` keywords (ciao-contrib's
#: ancillaryfiles search path).
SEARCH_PATH = (".", "repro", "primary", "secondary", "../repro", "../primary", "../secondary")


def _events_header(evt2: Path) -> dict:
    from astropy.io import fits
    with fits.open(evt2) as hdul:
        return dict(hdul["EVENTS"].header)


def _find(name: str, base: Path) -> Path | None:
    for sub in SEARCH_PATH:
        path = (base / sub / name).resolve()
        for candidate in (path, Path(f"{path}.gz")):
            if candidate.exists():
                return candidate
    return None


def keyword_files(evt2: Path, key: str) -> list[Path] | None:
    """The files an event file's ``*FILE`` keyword names, found as CIAO finds them.

    Returns None when the keyword is missing or ``NONE`` or a file it names
    cannot be found.
    """
    value = str(_events_header(evt2).get(key, "")).strip()
    if not value or value.upper() == "NONE":
        return None
    found = [_find(name.strip(), Path(evt2).parent) for name in value.split(",") if name.strip()]
    return found if found and all(found) else None


def asol_list_path(evt2: Path) -> Path:
    """``<root>_asol1.lis`` beside ``<root>_repro_evt2.fits``."""
    evt2 = Path(evt2)
    return evt2.with_name(evt2.name.replace("_repro_evt2.fits", "_asol1.lis"))


def read_stack(path: Path) -> list[Path]:
    """The files of a CIAO stack (``@list``) file; relative names are taken from its folder."""
    names = [ln.strip() for ln in Path(path).read_text().splitlines()]
    return [(Path(path).parent / n).resolve() for n in names if n and not n.startswith("#")]


def aspect_solutions(evt2: Path) -> tuple[list[Path], str]:
    """The aspect solution files chandra_repro used for ``evt2``, and where they were named.

    Returns
    -------
    files : list of Path
        Empty when neither the list nor the keyword gives existing files.
    source : str
        ``<root>_asol1.lis`` or ``ASOLFILE`` (for the log), or why neither.
    """
    stack = asol_list_path(evt2)
    if stack.exists():
        files = read_stack(stack)
        missing = [str(f) for f in files if not f.exists()]
        if files and not missing:
            return files, stack.name
        why = f"{stack.name} lists missing files {missing}" if missing else f"{stack.name} is empty"
    else:
        why = f"no {stack.name}"
    files = keyword_files(evt2, "ASOLFILE")
    if files:
        return files, "ASOLFILE"
    return [], f"{why}, and the ASOLFILE keyword of {Path(evt2).name} names no file found"


def vf_cleaned(evt2: Path, check_vf_pha: bool) -> bool:
    """True when ``evt2`` is VFAINT data cleaned with ``check_vf_pha=yes``.

    Then blank-sky background events need ``[status=0]`` too, as blanksky
    applies: its rule is ``DATAMODE == VFAINT`` and the ``CHKVFPHA``
    keyword (CIAO 4.16 and later), else what chandra_repro was told.
    """
    header = _events_header(evt2)
    if str(header.get("DATAMODE", "")).strip().upper() != "VFAINT":
        return False
    return bool(header.get("CHKVFPHA", check_vf_pha))
