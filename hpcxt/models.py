"""Absorbed thermal-plasma models through Sherpa's XSPEC interface.

Outside CIAO, Sherpa is built against the XSPEC model library packaged as
``xspectrampoline``; that library must be imported (or ``HEADAS`` set) before
``sherpa.astro.xspec``. APEC and MEKAL additionally need AtomDB data files,
which only CIAO ships; without them they evaluate to zeros, so
:func:`model_evaluates` tells callers whether a model is usable here.
"""

from __future__ import annotations

import contextlib
import os
import sys
from functools import lru_cache

import numpy as np

from .errors import ModelUnavailable

#: XSPEC's solar abundance tables (its ``abund`` command, Sherpa's ``set_xsabund``).
ABUNDANCE_TABLES = ("angr", "aspl", "feld", "aneb", "grsa", "wilm", "lodd", "lpgp", "lpgs",
                    "felc")
#: XSPEC's own default (Anders & Grevesse 1989), used when a config names none.
DEFAULT_ABUNDANCE_TABLE = "angr"

#: Model components that take the plasma's abundance and redshift.
_HAS_ABUNDANCE = {"xsapec": "Abundanc", "xsmekal": "Abundanc"}
_HAS_REDSHIFT = {"xsapec": "redshift", "xsmekal": "redshift", "xsbremss": None}


@contextlib.contextmanager
def native_output_silenced(*fds: int):
    """Send what C libraries write to these file descriptors to /dev/null.

    The XSPEC library prints its abundance and cross-section tables when it
    loads, and complaints about missing AtomDB files when APEC evaluates,
    straight to file descriptors 1 and 2: ``contextlib.redirect_stdout`` does
    not reach them.
    """
    fds = fds or (1,)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    try:
        with open(os.devnull, "w") as null:
            for fd in fds:
                os.dup2(null.fileno(), fd)
        yield
    finally:
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
            os.close(copy)


@lru_cache(maxsize=None)
def load_xspec(apec_root: str | None = None):
    """Import ``sherpa.astro.xspec``, loading the XSPEC library first.

    Parameters
    ----------
    apec_root : str, optional
        AtomDB folder, passed to XSPEC as ``APECROOT`` (for xsapec outside CIAO).

    Returns
    -------
    module
        ``sherpa.astro.xspec``.
    """
    try:
        with native_output_silenced(1):
            try:
                import xspectrampoline  # noqa: F401
            except ImportError:
                pass  # CIAO's Sherpa, or HEADAS set by the user
            from sherpa.astro import xspec
    except ImportError as exc:
        raise ModelUnavailable(
            f"Sherpa's XSPEC models cannot be imported ({exc}); "
            "run 'make setup' or install hpcxt into CIAO's Python") from None
    if apec_root:
        xspec.set_xsxset("APECROOT", str(apec_root))
    return xspec


def _quiet_sherpa_logging() -> None:
    import logging
    for name in ("sherpa", "sherpa.fit", "sherpa.estmethods", "sherpa.astro.xspec"):
        logging.getLogger(name).setLevel(logging.ERROR)


def make_model(expr: str, nh: float, abundance: float, redshift: float,
               kT: float = 8.0, norm: float = 1e-3, apec_root: str | None = None,
               name: str = "src", abundance_table: str = DEFAULT_ABUNDANCE_TABLE):
    """Build ``absorption*emission`` with nH, abundance and redshift frozen.

    Parameters
    ----------
    expr : str
        ``"xsphabs*xsapec"``, ``"xsphabs*xsbremss"``, ... (validated by config).
    nh : float
        Absorbing column, 1e22 cm^-2 (frozen).
    abundance : float
        Metallicity, solar (frozen; ignored by xsbremss).
    redshift : float
        Redshift (frozen; ignored by xsbremss).
    kT : float
        Initial temperature, keV (free).
    norm : float
        Initial normalisation, XSPEC units (free).
    abundance_table : str
        XSPEC's solar abundance table (one of :data:`ABUNDANCE_TABLES`), set
        for the whole process: it applies to the absorption too.

    Returns
    -------
    model, kT_par, norm_par
        The product model and its two free parameters.
    """
    xspec = load_xspec(apec_root)
    _quiet_sherpa_logging()
    with native_output_silenced(1):
        xspec.set_xsabund(abundance_table)
    absname, emname = (p.strip() for p in expr.split("*"))
    absorb = getattr(xspec, absname.replace("xs", "XS", 1))(f"{name}_abs")
    emit = getattr(xspec, emname.replace("xs", "XS", 1))(f"{name}_{emname}")
    absorb.nH.val = nh
    absorb.nH.freeze()
    if emname in _HAS_ABUNDANCE:
        par = getattr(emit, _HAS_ABUNDANCE[emname])
        par.val = abundance
        par.freeze()
    if _HAS_REDSHIFT.get(emname):
        par = getattr(emit, _HAS_REDSHIFT[emname])
        par.val = redshift
        par.freeze()
    emit.kT.val = kT
    emit.norm.val = norm
    return absorb * emit, emit.kT, emit.norm


def model_evaluates(expr: str, apec_root: str | None = None) -> bool:
    """Whether ``expr`` gives a non-zero spectrum here (xsapec needs AtomDB)."""
    try:
        model, _, _ = make_model(expr, nh=0.03, abundance=0.3, redshift=0.1,
                                 kT=5.0, norm=1.0, apec_root=apec_root)
    except ModelUnavailable:
        return False
    edges = np.linspace(0.5, 8.0, 101)
    with native_output_silenced(1, 2):
        flux = np.asarray(model(edges[:-1], edges[1:]))
    return bool(np.all(np.isfinite(flux)) and flux.sum() > 0)
