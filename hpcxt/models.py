"""Absorbed thermal-plasma models through Sherpa's XSPEC interface.

Outside CIAO, Sherpa is built against the XSPEC model library packaged as
``xspectrampoline``; that library must be imported (or ``HEADAS`` set) before
``sherpa.astro.xspec``. APEC and MEKAL additionally need AtomDB data files,
which only CIAO ships; without them they evaluate to zeros, and some
(xsmeka, or xsapec inside a fit) take their process down, so
:func:`check_model` evaluates a model once in a child process and says
whether it is usable here, and if not, why and what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .errors import ModelUnavailable

log = logging.getLogger("hpcxt.models")

#: XSPEC's solar abundance tables (its ``abund`` command, Sherpa's ``set_xsabund``).
ABUNDANCE_TABLES = ("angr", "aspl", "feld", "aneb", "grsa", "wilm", "lodd", "lpgp", "lpgs",
                    "felc")
#: XSPEC's own default (Anders & Grevesse 1989), used when a config names none.
DEFAULT_ABUNDANCE_TABLE = "angr"

#: Model components that take the plasma's abundance and redshift.
_HAS_ABUNDANCE = {"xsapec": "Abundanc", "xsmekal": "Abundanc"}
#: Emission components with an abundance ``fit.free`` can thaw (and table models that have one).
MODELS_WITH_ABUNDANCE = tuple(sorted(_HAS_ABUNDANCE))
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


#: A table model in ``fit.model``: ``atable{/path/to/model.fits}`` (XSPEC's syntax).
_TABLE_RE = re.compile(r"^atable\{(?P<path>[^{}]+)\}$")

#: How the parameters of a table model are recognised (names compared
#: case-insensitively): as XSPEC's APEC names them (``kT``, ``Abundanc``,
#: ``Redshift``), with a few common spellings. ``kT`` is required; a table
#: without an abundance parameter cannot free it; other interpolation
#: parameters stay frozen at their INITIAL value from the file.
TABLE_PARAMETER_NAMES = {
    "kT": ("kt",),
    "abundance": ("abundanc", "abundance", "abund", "metallicity"),
    "redshift": ("redshift", "z"),
}


def parse_model(expr: str) -> tuple[str, str, str | None]:
    """``absorption*emission`` split into its parts.

    Returns
    -------
    absorption : str
    emission : str
        ``"xsapec"``, ``"xsbremss"``, ... or ``"atable"`` for a table model.
    table_path : str or None
        The table model's file (as written in the expression), else None.
    """
    absname, _, emname = (p.strip() for p in expr.partition("*"))
    m = _TABLE_RE.match(emname)
    if m:
        return absname, "atable", m.group("path").strip()
    return absname, emname, None


def table_role(name: str) -> str | None:
    """``"kT"``, ``"abundance"``, ``"redshift"`` or None for a table parameter's name."""
    low = name.strip().lower()
    for role, names in TABLE_PARAMETER_NAMES.items():
        if low in names:
            return role
    return None


@dataclass(frozen=True)
class TableParameter:
    """One interpolation parameter of an OGIP table model (PARAMETERS extension).

    ``values`` are the tabulated values (the grid the table covers);
    ``role`` is what hpcxt uses it for (:func:`table_role`).
    """

    name: str
    values: tuple
    role: str | None

    @property
    def grid_range(self) -> tuple[float, float]:
        return float(self.values[0]), float(self.values[-1])


def read_table_parameters(path) -> list[TableParameter]:
    """The interpolation parameters of an OGIP (92-009) XSPEC table model file.

    Read with astropy, without Sherpa, so the config can be checked before
    any fit. Raises ``ValueError`` (with what is wrong) for a file that is
    not a table model.
    """
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            if "PARAMETERS" not in hdul or "SPECTRA" not in hdul or "ENERGIES" not in hdul:
                raise ValueError("not an XSPEC table model (needs PARAMETERS, ENERGIES and "
                                 "SPECTRA extensions, OGIP 92-009)")
            hdu = hdul["PARAMETERS"]
            nint = int(hdu.header.get("NINTPARM", len(hdu.data)))
            out = []
            for row in hdu.data[:nint]:
                name = str(row["NAME"]).strip()
                nval = int(row["NUMBVALS"])
                values = tuple(float(v) for v in np.ravel(row["VALUE"])[:nval])
                out.append(TableParameter(name, values, table_role(name)))
            return out
    except OSError as exc:
        raise ValueError(f"not a readable FITS file ({exc})") from None


@dataclass
class PlasmaModel:
    """An absorbed thermal model and the parameters a fit uses.

    Attributes
    ----------
    model : sherpa model
        ``absorption * emission``.
    kT, norm : sherpa Parameter
        Free in every fit.
    abundance : sherpa Parameter or None
        The emission's abundance (None: the model has none); frozen unless
        built with ``free_abundance``.
    """

    model: object
    kT: object
    norm: object
    abundance: object = None


def _set(par, value: float, clamp: bool) -> None:
    if clamp:
        value = min(max(float(value), float(par.hard_min)), float(par.hard_max))
    par.val = value


def _table_emission(xspec, path: str, name: str):
    """The table model and its parameters by role (kT, abundance, redshift)."""
    from .lean_imports import sherpa_fits_backend
    sherpa_fits_backend()  # Sherpa reads the table through it
    table = xspec.read_xstable_model(f"{name}_atable", path)
    roles = {}
    for par in table.pars:
        role = table_role(par.name)
        if par.name.lower() == "norm":
            roles["norm"] = par
        elif role and role not in roles:
            roles[role] = par
        else:
            par.freeze()  # other interpolation parameters: the file's INITIAL value
    if "kT" not in roles:
        names = ", ".join(p.name for p in table.pars)
        raise ValueError(f"table model {path} has no parameter named kT (has: {names})")
    return table, roles


def build_model(expr: str, nh: float, abundance: float, redshift: float,
                kT: float = 8.0, norm: float = 1e-3, apec_root: str | None = None,
                name: str = "src", abundance_table: str = DEFAULT_ABUNDANCE_TABLE,
                free_abundance: bool = False, clamp: bool = False) -> PlasmaModel:
    """Build ``absorption*emission`` with nH and redshift frozen.

    Parameters
    ----------
    expr : str
        ``"xsphabs*xsapec"``, ``"xsphabs*xsbremss"``, ... or
        ``"xsphabs*atable{/path/model.fits}"`` (an OGIP XSPEC additive table
        model, read by Sherpa; its parameters' roles by name, see
        :data:`TABLE_PARAMETER_NAMES`). Validated by the config.
    nh : float
        Absorbing column, 1e22 cm^-2 (frozen).
    abundance : float
        Metallicity, solar (the value, or the start when free; ignored by
        models without one).
    redshift : float
        Redshift (frozen; ignored by models without one).
    kT : float
        Initial temperature, keV (free).
    norm : float
        Initial normalisation, XSPEC units (free).
    abundance_table : str
        XSPEC's solar abundance table (one of :data:`ABUNDANCE_TABLES`), set
        for the whole process: it applies to the absorption too.
    free_abundance : bool
        Thaw the abundance (``ValueError`` when the model has none).
    clamp : bool
        Move values outside a parameter's limits to the nearest limit
        (the model check's probe) instead of raising.

    Returns
    -------
    PlasmaModel
    """
    xspec = load_xspec(apec_root)
    _quiet_sherpa_logging()
    with native_output_silenced(1):
        xspec.set_xsabund(abundance_table)
    absname, emname, table_path = parse_model(expr)
    absorb = getattr(xspec, absname.replace("xs", "XS", 1))(f"{name}_abs")
    absorb.nH.val = nh
    absorb.nH.freeze()
    if table_path is not None:
        emit, roles = _table_emission(xspec, table_path, name)
    else:
        emit = getattr(xspec, emname.replace("xs", "XS", 1))(f"{name}_{emname}")
        roles = {"kT": emit.kT, "norm": emit.norm}
        if emname in _HAS_ABUNDANCE:
            roles["abundance"] = getattr(emit, _HAS_ABUNDANCE[emname])
        if _HAS_REDSHIFT.get(emname):
            roles["redshift"] = getattr(emit, _HAS_REDSHIFT[emname])
    abund = roles.get("abundance")
    if abund is not None:
        _set(abund, abundance, clamp)
        abund.freeze()
        if free_abundance:
            abund.thaw()
    elif free_abundance:
        raise ValueError(f"{expr} has no abundance parameter to free")
    if roles.get("redshift") is not None:
        _set(roles["redshift"], redshift, clamp)
        roles["redshift"].freeze()
    _set(roles["kT"], kT, clamp)
    roles["kT"].thaw()
    roles["norm"].val = norm
    return PlasmaModel(absorb * emit, roles["kT"], roles["norm"], abund)


def make_model(expr: str, nh: float, abundance: float, redshift: float,
               kT: float = 8.0, norm: float = 1e-3, apec_root: str | None = None,
               name: str = "src", abundance_table: str = DEFAULT_ABUNDANCE_TABLE):
    """:func:`build_model` with the abundance frozen: ``(model, kT_par, norm_par)``."""
    pm = build_model(expr, nh, abundance, redshift, kT=kT, norm=norm, apec_root=apec_root,
                     name=name, abundance_table=abundance_table)
    return pm.model, pm.kT, pm.norm


def _probe_spectrum(expr: str, apec_root: str | None = None,
                    abundance_table: str = DEFAULT_ABUNDANCE_TABLE) -> np.ndarray:
    """``expr`` at kT 5 keV, norm 1 on 0.5-8 keV (75 bins): photons/cm^2/s per bin."""
    model = build_model(expr, nh=0.03, abundance=0.3, redshift=0.1, kT=5.0, norm=1.0,
                        apec_root=apec_root, abundance_table=abundance_table,
                        clamp=True).model
    edges = np.linspace(0.5, 8.0, 76)
    return np.asarray(model(edges[:-1], edges[1:]), dtype=float)


def model_evaluates(expr: str, apec_root: str | None = None) -> bool:
    """Whether ``expr`` gives a non-zero spectrum, evaluated in this process.

    Only for models known not to crash (``xsbremss``); a model that may
    take its process down (xsapec without AtomDB, xsmeka) is checked with
    :func:`check_model`.
    """
    try:
        with native_output_silenced(1, 2):
            flux = _probe_spectrum(expr, apec_root)
    except ModelUnavailable:
        return False
    return bool(np.all(np.isfinite(flux)) and flux.sum() > 0)


# --------------------------------------------------------------------------
# the check of a model in a child process

#: The line of the child's stdout that carries its result.
_PROBE_MARK = "hpcxt-model-probe: "
#: Longest a child may take to import Sherpa and evaluate the model, s.
PROBE_TIMEOUT = 300.0

#: The model that needs no data files (the demo's and the tests').
OFFLINE_MODEL = "xsphabs*xsbremss"

#: What to do when a model cannot be evaluated here, by emission component.
_ADVICE = {
    "xsapec": "point fit.apec_root at AtomDB's folder, use CIAO's Sherpa (it has AtomDB), "
              "or use {absorption}*xsbremss (no data files)",
    "xsmekal": "use CIAO's Sherpa (XSPEC's model data files), or use {absorption}*xsbremss "
               "(no data files)",
    "atable": "check that the table model file is an OGIP XSPEC additive table covering "
              "the fit band",
}
_DEFAULT_ADVICE = ("use CIAO's Sherpa, or Sherpa built against XSPEC's model library "
                   "('make setup')")


@dataclass(frozen=True)
class ModelVerdict:
    """Whether a model can be used here and, if not, why and what to do.

    Attributes
    ----------
    model : str
    usable : bool
    problem : str
        ``""`` when usable, else what happened ("evaluates to zero",
        "crashed the process that evaluated it (signal 11, SIGSEGV)", ...).
    advice : str
        What the user can do ("" when usable).
    """

    model: str
    usable: bool
    problem: str = ""
    advice: str = ""

    def __str__(self) -> str:
        if self.usable:
            return f"{self.model} evaluates here"
        return f"{self.model} {self.problem}; {self.advice}"


def _advice(expr: str) -> str:
    absorption, emission, _ = parse_model(expr)
    return _ADVICE.get(emission, _DEFAULT_ADVICE).format(absorption=absorption or "xsphabs")


def probe_command(expr: str, apec_root: str | None = None,
                  abundance_table: str = DEFAULT_ABUNDANCE_TABLE) -> list[str]:
    """The child process that evaluates ``expr`` once and prints the outcome.

    Any XSPEC ``absorption*emission`` pair is accepted here (the config
    allows fewer), so tests can probe a model that is known to crash.
    """
    request = json.dumps({"model": expr, "apec_root": apec_root,
                          "abundance_table": abundance_table})
    return [sys.executable, "-c",
            "import sys; from hpcxt.models import probe_main; sys.exit(probe_main(sys.argv[1]))",
            request]


def probe_main(request: str) -> int:
    """The child's side of :func:`check_model`: evaluate, print one marked JSON line."""
    req = json.loads(request)
    try:
        flux = _probe_spectrum(req["model"], req.get("apec_root"),
                               req.get("abundance_table") or DEFAULT_ABUNDANCE_TABLE)
        out = {"sum": float(np.nansum(flux)), "finite": bool(np.all(np.isfinite(flux)))}
    except ModelUnavailable as exc:
        out = {"unavailable": str(exc)}
    except Exception as exc:  # a model Sherpa cannot build: reported, not a crash
        out = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.flush()
    print(_PROBE_MARK + json.dumps(out), flush=True)
    return 0


def _crash_text(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"crashed the process that evaluated it (signal {-returncode}, {name})"
    if returncode == 0:
        # XSPEC's "Fatal error" handler exits with status 0 (xsmeka without its data)
        return "ended the process that evaluated it without a result (an XSPEC fatal error)"
    return f"crashed the process that evaluated it (exit status {returncode})"


def check_model(expr: str, apec_root: str | None = None,
                abundance_table: str = DEFAULT_ABUNDANCE_TABLE,
                timeout: float = PROBE_TIMEOUT, command: list | None = None) -> ModelVerdict:
    """Evaluate ``expr`` once in a child process: usable, zeros, or a crash.

    XSPEC models without their data files either return zeros (xsapec,
    xsmekal) or take their process down (a segmentation fault, or XSPEC's
    fatal-error exit): a child process is the only safe place to find out.

    Parameters
    ----------
    expr : str
        ``absorption*emission``.
    apec_root : str, optional
        AtomDB folder (``fit.apec_root``).
    abundance_table : str
        XSPEC abundance table (``fit.abundance_table``).
    timeout : float
        Longest the child may take, s.
    command : list of str, optional
        The child's command line; default :func:`probe_command` (tests pass
        another through :meth:`hpcxt.hooks.RunHooks.model_probe_command`).

    Returns
    -------
    ModelVerdict
    """
    cmd = command or probe_command(expr, apec_root, abundance_table)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    advice = _advice(expr)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return ModelVerdict(expr, False, f"did not finish evaluating within {timeout:.0f} s",
                            advice)
    except OSError as exc:
        return ModelVerdict(expr, False, f"could not be evaluated: {exc}", advice)
    marked = [ln[len(_PROBE_MARK):] for ln in proc.stdout.splitlines()
              if ln.startswith(_PROBE_MARK)]
    if proc.returncode != 0 or not marked:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        log.debug("model check of %s: status %s, last output: %s", expr, proc.returncode,
                  " | ".join(tail))
        return ModelVerdict(expr, False, _crash_text(proc.returncode), advice)
    out = json.loads(marked[-1])
    if "unavailable" in out:
        return ModelVerdict(expr, False, "cannot be evaluated here: " + out["unavailable"],
                            _DEFAULT_ADVICE)
    if "error" in out:
        return ModelVerdict(expr, False, "cannot be built: " + out["error"], advice)
    if not out["finite"]:
        return ModelVerdict(expr, False, "evaluates to NaN or infinity here", advice)
    if not out["sum"] > 0:
        return ModelVerdict(expr, False, "evaluates to zero here (its data files are missing)",
                            advice)
    return ModelVerdict(expr, True)


def model_environment(apec_root: str | None = None) -> dict:
    """What decides whether a model evaluates here, read without importing Sherpa.

    The interpreter, the installs of Sherpa and of the XSPEC model library
    (version and a hash of their RECORD, which changes with every rebuild),
    ``HEADAS`` and ``ASCDS_INSTALL`` (CIAO), and the AtomDB folder's identity.
    A cached verdict is reused only while all of these are unchanged. The
    host name is left out on purpose: the nodes of one cluster share one
    installation, and a resumed job runs on other nodes.
    """
    import importlib.metadata as md

    env = {"python": sys.executable, "HEADAS": os.environ.get("HEADAS"),
           "ASCDS_INSTALL": os.environ.get("ASCDS_INSTALL")}
    for dist in ("sherpa", "xspectrampoline"):
        try:
            d = md.distribution(dist)
            record = d.read_text("RECORD") or ""
            env[dist] = [d.version, hashlib.sha256(record.encode()).hexdigest()[:16]]
        except md.PackageNotFoundError:
            env[dist] = None
    if apec_root:
        try:
            st = os.stat(apec_root)
            env["apec_root"] = [str(apec_root), st.st_ino, st.st_mtime_ns]
        except OSError:
            env["apec_root"] = [str(apec_root), "missing"]
    return env
