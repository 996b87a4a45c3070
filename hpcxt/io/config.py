"""Config schema, loading and validation.

A config is a YAML file (``hpcxt init`` writes a commented template). Loading
checks types, ranges, choices and file existence, resolves paths relative to
the config file's folder, and reports *every* problem at once, each with its
field path (``observations[1].arf: file not found: ...``). Unknown keys are
errors with a did-you-mean, because a typo that silently falls back to a
default costs a day of cluster time.

The loaded config is a :class:`Config`: nested read-only attribute access
(``cfg.fit.target_sn``) over plain dicts, plus :meth:`Config.section_hash`
that stages use to tell whether their inputs changed.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, InputError

# --------------------------------------------------------------------------
# schema


@dataclass(frozen=True)
class Spec:
    """One config field: its kind, default and checks.

    kind: 'str', 'int', 'float', 'bool', 'path', 'band', 'intlist', 'choice',
    'section' (nested dict of Specs), 'list' (list of sections), 'int_or_auto',
    'float_or_null'.
    """

    kind: str
    default: Any = None
    required: bool = False
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    exclusive_min: bool = False
    must_exist: bool = False
    folder: bool = False
    children: dict = field(default_factory=dict)
    doc: str = ""


def _s(kind, default=None, **kw) -> Spec:
    return Spec(kind, default, **kw)


MODEL_ABSORPTION = ("xsphabs", "xswabs", "xstbabs")
MODEL_EMISSION = ("xsapec", "xsbremss", "xsmekal")

OBSERVATION = {
    "obsid": _s("str", required=True, doc="Chandra observation id"),
    "events": _s("path", must_exist=True, doc="level-2 event file (reprocessed, cleaned)"),
    "background": _s("path", must_exist=True, doc="blank-sky background events reprojected to this observation"),
    "exposure_map": _s("path", must_exist=True, doc="exposure map (cm**2 s) with sky WCS"),
    "arf": _s("path", must_exist=True, doc="global ARF of this observation"),
    "rmf": _s("path", must_exist=True, doc="global RMF of this observation"),
}

SCHEMA: dict[str, Spec] = {
    "cluster": _s("section", required=True, children={
        "name": _s("str", required=True, doc="cluster name, used in file names and titles"),
        "redshift": _s("float", required=True, min=0.0, max=10.0),
        "nh": _s("float", required=True, min=0.0, max=100.0, doc="Galactic column, 1e22 cm^-2"),
        "abundance": _s("float", 0.3, min=0.0, max=10.0, doc="metallicity, solar units"),
    }),
    "workdir": _s("path", "work", doc="where every stage writes; relative to the config file"),
    "lock_stale_seconds": _s("float", 600.0, min=1.0,
                             doc="s; the work-directory lock of a job on another host whose "
                                 "heartbeat is older than this is taken over"),
    "observations": _s("list", required=True, children=OBSERVATION),
    "prep": _s("section", {}, children={
        "backend": _s("choice", "auto", choices=("auto", "products", "ciao")),
        "energy_band": _s("band", [0.7, 8.0], min=0.1, max=15.0, doc="keV, images and scale map"),
        "ccds": _s("intlist", [0, 1, 2, 3], min=0, max=9, doc="ACIS-I is 0-3"),
        "bin": _s("int", 4, min=1, max=64, doc="sky pixels per image pixel (4 = 1.968 arcsec)"),
        "crop_region": _s("path", None, must_exist=True, doc="DS9 region file: the area to map"),
        "point_sources": _s("path", None, must_exist=True, doc="DS9 region file: sources to exclude"),
        "deflare": _s("section", {}, children={
            "enabled": _s("bool", True),
            "band": _s("band", [9.0, 12.0], min=0.1, max=15.0, doc="keV, light-curve band"),
            "bin_seconds": _s("float", 259.28, min=1.0, exclusive_min=False),
            "nsigma": _s("float", 3.0, min=1.0),
            "max_iterations": _s("int", 20, min=1),
        }),
        "background_scale_band": _s("band", [9.5, 12.0], min=0.1, max=15.0,
                                    doc="keV, band of the source/background count ratio"),
        "ciao": _s("section", {}, children={
            "download": _s("bool", True),
            "check_vf_pha": _s("bool", False),
            "nproc": _s("int", 1, min=1),
            "data_dir": _s("path", None),
            "spectrum_region": _s("path", None, must_exist=True),
            "download_timeout": _s("float", 3600.0, min=1.0,
                                   doc="s; a download_chandra_obsid run that takes longer is stopped"),
            "tool_timeout": _s("float_or_null", None, min=1.0, exclusive_min=False,
                               doc="s; limit for any other CIAO tool (null: none)"),
            "background_method": _s("choice", "blanksky", choices=("blanksky", "lookup"),
                                    doc="blanksky, or acis_bkgrnd_lookup + dmmerge + reproject_events"),
            "expmap_energy": _s("float", 2.3, min=0.1, max=15.0,
                                doc="keV, monochromatic energy of the fluximage exposure maps"),
            "merged_image": _s("bool", True,
                               doc="merge_obs image of all observations, to draw region files on"),
        }),
    }),
    "acb": _s("section", {}, children={
        "target_sn": _s("float", 50.0, min=0.0, exclusive_min=True),
        "max_radius": _s("float", 100.0, min=0.125, doc="image pixels"),
        "radius_step": _s("float", 0.125, min=0.0, exclusive_min=True, doc="image pixels"),
        "sn": _s("choice", "auto", choices=("auto", "counts", "background_subtracted")),
    }),
    "fit": _s("section", {}, children={
        "resolution": _s("choice", "high", choices=("high", "medium", "low")),
        "model": _s("str", "xsphabs*xsapec"),
        "kT_init": _s("float", 8.0, min=0.0, exclusive_min=True, doc="keV"),
        "kT_range": _s("band", [0.08, 64.0], min=0.01, max=100.0, doc="keV"),
        "energy_range": _s("band", [0.7, 8.0], min=0.1, max=15.0, doc="keV"),
        "statistic": _s("choice", "wstat", choices=("wstat", "cstat", "chi2gehrels")),
        "method": _s("choice", "levmar", choices=("levmar", "neldermead", "moncar")),
        "errors": _s("choice", "conf", choices=("conf", "covar", "none")),
        "error_sigma": _s("float", 1.0, min=0.0, exclusive_min=True),
        "min_obs_fraction": _s("float", 0.09, min=0.0, max=1.0),
        "min_counts": _s("int", 100, min=1, doc="source counts below which a region is not fitted"),
        "group_min_source": _s("int", 10, min=0,
                               doc="wstat: group channels to at least this many source counts"),
        "group_min_background": _s("int", 2, min=0,
                                   doc="wstat: ... and at least this many background counts"),
        "batch_size": _s("int_or_auto", "auto", min=1),
        "checkpoint_seconds": _s("float", 60.0, min=0.0),
        "apec_root": _s("path", None, must_exist=True, folder=True,
                        doc="AtomDB folder for xsapec (APECROOT)"),
    }),
    "maps": _s("section", {}, children={
        "max_frac_error": _s("float_or_null", None, min=0.0, exclusive_min=True),
        "drop_failed": _s("bool", True),
        "png": _s("bool", True),
    }),
}


# --------------------------------------------------------------------------
# the loaded config


class Section:
    """Read-only attribute view of a validated config section."""

    __slots__ = ("_data", "_name")

    def __init__(self, data: dict, name: str = ""):
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_name", name)

    def __getattr__(self, key):
        try:
            value = self._data[key]
        except KeyError:
            raise AttributeError(f"config has no field {self._name}{key}") from None
        if isinstance(value, dict):
            return Section(value, f"{self._name}{key}.")
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return [Section(v, f"{self._name}{key}[{i}].") for i, v in enumerate(value)]
        return value

    def __getitem__(self, key):
        return self.__getattr__(key)

    def __setattr__(self, key, value):
        raise AttributeError("config sections are read-only")

    def to_dict(self) -> dict:
        return copy.deepcopy(self._data)

    def __repr__(self) -> str:
        return f"Section({self._data!r})"


class Config(Section):
    """A validated config. ``path`` is the file it came from (or None)."""

    __slots__ = ("path",)

    def __init__(self, data: dict, path: Path | None):
        super().__init__(data, "")
        object.__setattr__(self, "path", path)

    @property
    def workdir_path(self) -> Path:
        return Path(self._data["workdir"])

    def stage_dir(self, stage: str) -> Path:
        """``<workdir>/<stage>``, not created."""
        return self.workdir_path / stage

    def section_hash(self, *names: str) -> str:
        """SHA-256 (hex, 16 chars) of the named top-level sections.

        Stages hash only what changes their output, so that e.g. editing
        ``maps.png`` does not invalidate a week of fits. A dotted name
        (``fit.resolution``) hashes one field.
        """
        picked = {}
        for name in names:
            node: Any = self._data
            for part in name.split("."):
                node = node[part]
            picked[name] = node
        blob = json.dumps(picked, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def obsids(self) -> list[str]:
        return [o["obsid"] for o in self._data["observations"]]


# --------------------------------------------------------------------------
# validation


def _did_you_mean(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _range_problem(spec: Spec, value: float) -> str | None:
    if spec.min is not None:
        if spec.exclusive_min and value <= spec.min:
            return f"must be > {spec.min}, got {value}"
        if not spec.exclusive_min and value < spec.min:
            return f"must be >= {spec.min}, got {value}"
    if spec.max is not None and value > spec.max:
        return f"must be <= {spec.max}, got {value}"
    return None


class _Validator:
    def __init__(self, base_dir: Path, check_files: bool):
        self.base_dir = base_dir
        self.check_files = check_files
        self.problems: list[str] = []

    def problem(self, where: str, text: str) -> None:
        self.problems.append(f"{where}: {text}")

    def section(self, raw, children: dict, where: str) -> dict:
        out = {}
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.problem(where or "config", f"must be a mapping of keys, got {type(raw).__name__}")
            raw = {}
        for key in raw:
            if key not in children:
                self.problem(f"{where}{key}" if where else str(key),
                             "unknown key" + _did_you_mean(str(key), children))
        for key, spec in children.items():
            path = f"{where}{key}"
            if key in raw and raw[key] is not None:
                out[key] = self.value(raw[key], spec, path)
            elif spec.required:
                self.problem(path, "required but missing")
                out[key] = None
            elif spec.kind == "section":
                out[key] = self.section({}, spec.children, path + ".")
            else:
                out[key] = self.value(copy.deepcopy(spec.default), spec, path, is_default=True)
        return out

    def value(self, v, spec: Spec, path: str, is_default: bool = False):
        kind = spec.kind
        if v is None and kind != "section":
            return None
        if kind == "section":
            return self.section(v, spec.children, path + ".")
        if kind == "list":
            if not isinstance(v, list) or not v:
                self.problem(path, "must be a non-empty list")
                return []
            return [self.section(item, spec.children, f"{path}[{i}].") for i, item in enumerate(v)]
        if kind == "str":
            if isinstance(v, (dict, list)):
                self.problem(path, f"must be a string, got {type(v).__name__}")
                return None
            return str(v)
        if kind == "choice":
            if v not in spec.choices:
                self.problem(path, f"must be one of {', '.join(spec.choices)}, got {v!r}"
                             + _did_you_mean(str(v), spec.choices))
            return v
        if kind == "bool":
            if not isinstance(v, bool):
                self.problem(path, f"must be true or false, got {v!r}")
            return v
        if kind in ("int", "int_or_auto"):
            if kind == "int_or_auto" and v == "auto":
                return v
            if isinstance(v, bool) or not isinstance(v, int):
                want = "an integer or 'auto'" if kind == "int_or_auto" else "an integer"
                self.problem(path, f"must be {want}, got {v!r}")
                return v
            msg = _range_problem(spec, v)
            if msg:
                self.problem(path, msg)
            return v
        if kind in ("float", "float_or_null"):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                self.problem(path, f"must be a number, got {v!r}")
                return v
            msg = _range_problem(spec, float(v))
            if msg:
                self.problem(path, msg)
            return float(v)
        if kind == "band":
            if (not isinstance(v, (list, tuple)) or len(v) != 2
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
                self.problem(path, f"must be [low, high] in keV, got {v!r}")
                return v
            lo, hi = float(v[0]), float(v[1])
            if not lo < hi:
                self.problem(path, f"low must be below high, got [{lo}, {hi}]")
            for x in (lo, hi):
                msg = _range_problem(spec, x)
                if msg:
                    self.problem(path, msg)
                    break
            return [lo, hi]
        if kind == "intlist":
            if not isinstance(v, list) or not v or not all(
                    isinstance(x, int) and not isinstance(x, bool) for x in v):
                self.problem(path, f"must be a non-empty list of integers, got {v!r}")
                return v
            for x in v:
                msg = _range_problem(spec, x)
                if msg:
                    self.problem(path, msg)
            return sorted(set(v))
        if kind == "path":
            if not isinstance(v, (str, os.PathLike)):
                self.problem(path, f"must be a file path, got {v!r}")
                return v
            p = Path(os.path.expandvars(os.path.expanduser(str(v))))
            if not p.is_absolute():
                p = self.base_dir / p
            p = Path(os.path.normpath(p))
            if spec.must_exist and self.check_files and not is_default:
                if not p.exists():
                    self.problem(path, f"file not found: {p}")
                elif p.is_dir() != spec.folder:
                    self.problem(path, f"is a {'file' if spec.folder else 'folder'}, not a "
                                       f"{'folder' if spec.folder else 'file'}: {p}")
            return str(p)
        raise AssertionError(f"unknown schema kind {kind}")  # a bug in SCHEMA, not user input


def _cross_checks(data: dict, v: _Validator) -> None:
    obs = data.get("observations") or []
    seen = {}
    backend = (data.get("prep") or {}).get("backend")
    for i, o in enumerate(obs):
        if not isinstance(o, dict):
            continue
        oid = o.get("obsid")
        if oid in seen:
            v.problem(f"observations[{i}].obsid", f"duplicate of observations[{seen[oid]}]")
        seen[oid] = i
        if backend == "products":
            for key in ("events", "exposure_map", "arf", "rmf"):
                if o.get(key) is None:
                    v.problem(f"observations[{i}].{key}", "required with prep.backend: products")
    model = (data.get("fit") or {}).get("model")
    if isinstance(model, str):
        parts = [p.strip() for p in model.split("*")]
        if len(parts) != 2 or parts[0] not in MODEL_ABSORPTION or parts[1] not in MODEL_EMISSION:
            v.problem("fit.model", "must be <absorption>*<emission> with absorption one of "
                      f"{', '.join(MODEL_ABSORPTION)} and emission one of "
                      f"{', '.join(MODEL_EMISSION)}, got {model!r}")
        else:
            data["fit"]["model"] = "*".join(parts)


def validate(raw: Any, base_dir: Path, path: Path | None = None,
             check_files: bool = True) -> Config:
    """Validate a parsed YAML document; raise ConfigError listing every problem."""
    v = _Validator(Path(base_dir), check_files)
    data = v.section(raw, SCHEMA, "")
    _cross_checks(data, v)
    if v.problems:
        raise ConfigError(path, v.problems)
    return Config(data, path)


def load_config(path, check_files: bool = True) -> Config:
    """Load and validate a YAML config file.

    Parameters
    ----------
    path : str or Path
        The config file. Relative paths inside it are taken from its folder.
    check_files : bool
        Check that input files exist (turned off by stages that read only
        the bundle, so fitting can run on a machine without the raw data).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError("config file not found", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot read config: {exc.strerror}", path=path) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not a YAML text file: byte {exc.start} is not UTF-8 (is it the "
                         "right file?)", path=path) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"not valid YAML: {where}{problem}", path=path) from None
    if raw is None:
        raise InputError("config file is empty", path=path)
    return validate(raw, path.resolve().parent, path=path, check_files=check_files)


# --------------------------------------------------------------------------
# template


TEMPLATE = """\
# hpcxt config for {name}. Paths are relative to this file's folder.
# Every key below shows its default; delete what you do not change.

cluster:
  name: {name}
  redshift: 0.1          # z, frozen in the fit (xsapec)
  nh: 0.03               # Galactic column density, 1e22 cm^-2, frozen
  abundance: 0.3         # solar units, frozen (xsapec)

workdir: work            # every stage writes below here
lock_stale_seconds: 600  # s; a job on another host that has not touched the
                         # work directory's lock for this long is taken as dead

# One entry per Chandra observation. With prep.backend: products these are
# the products of CIAO (chandra_repro, deflare, blanksky + reproject_events,
# fluximage, specextract) or ClusterPyXT stages 1-3. With backend ciao only
# obsid is needed.
observations:
  - obsid: "{obsid}"
    events: obs{obsid}/acisf{obsid}_repro_evt2.fits   # level-2 events
    background: obs{obsid}/acisf{obsid}_bkg_evt2.fits # blank-sky background, reprojected
    exposure_map: obs{obsid}/acisf{obsid}_expmap.fits # cm**2 s, sky WCS
    arf: obs{obsid}/acisf{obsid}.arf
    rmf: obs{obsid}/acisf{obsid}.rmf

prep:
  backend: auto          # auto (ciao when its tools are on PATH) | products | ciao
  energy_band: [0.7, 8.0]  # keV, for images and the scale map
  ccds: [0, 1, 2, 3]     # ACIS-I
  bin: 4                 # sky pixels per image pixel (4 = 1.968 arcsec)
  crop_region: null      # DS9 region file (box/circle/polygon): the area to map
  point_sources: null    # DS9 region file: point sources to exclude
  deflare:
    enabled: true
    band: [9.0, 12.0]    # keV, light curve of the particle background
    bin_seconds: 259.28  # light-curve bin, s
    nsigma: 3.0          # iterative sigma clipping
    max_iterations: 20
  background_scale_band: [9.5, 12.0]  # keV, source/background count ratio
  ciao:                  # only with backend ciao
    download: true
    check_vf_pha: false
    nproc: 1             # observations processed in parallel
    data_dir: null
    spectrum_region: null  # region for the global ARF/RMF (default: crop region)
    download_timeout: 3600 # s, stop a download_chandra_obsid that hangs
    tool_timeout: null     # s, limit for every other CIAO tool (null: none)
    background_method: blanksky  # blanksky | lookup (acis_bkgrnd_lookup + reproject_events)
    expmap_energy: 2.3     # keV, energy of the fluximage exposure maps
    merged_image: true     # merge_obs image of all observations to draw regions on

acb:
  target_sn: 50          # signal-to-noise each circle must reach
  max_radius: 100        # image pixels
  radius_step: 0.125     # image pixels
  sn: auto               # auto | counts (sqrt(C)) | background_subtracted ((C-B)/sqrt(C+B))

fit:
  resolution: high       # high | medium | low: fit every 1st | 3rd | 5th pixel
  model: xsphabs*xsapec  # xsapec needs AtomDB; xsphabs*xsbremss needs no data files
  kT_init: 8.0           # keV, start of every fit
  kT_range: [0.08, 64.0] # keV
  energy_range: [0.7, 8.0]  # keV
  statistic: wstat       # wstat (Poisson background) | cstat | chi2gehrels (subtracted)
  method: levmar         # levmar | neldermead | moncar
  errors: conf           # conf | covar | none
  error_sigma: 1.0
  min_obs_fraction: 0.09 # leave an observation out of a region's fit below this coverage
  min_counts: 100        # regions with fewer source counts are not fitted
  group_min_source: 10   # wstat: group channels to >= 10 source counts
  group_min_background: 2  # ... and >= 2 background counts (W-stat is biased otherwise)
  batch_size: auto       # regions handed to a worker at a time
  checkpoint_seconds: 60
  apec_root: null        # AtomDB folder for xsapec outside CIAO

maps:
  max_frac_error: null   # drop fits whose fractional kT error is above this
  drop_failed: true
  png: true
"""


def render_template(name: str, obsid: str = "12345") -> str:
    """Commented config template for ``hpcxt init``."""
    return TEMPLATE.format(name=name, obsid=obsid)


def dump_config(data: dict) -> str:
    """YAML text of a config dict (used by the simulator and tests)."""
    return yaml.safe_dump(data, sort_keys=False)
