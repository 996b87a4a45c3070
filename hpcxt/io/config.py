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
import json
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, InputError
from ..models import (ABUNDANCE_TABLES, DEFAULT_ABUNDANCE_TABLE, MODELS_WITH_ABUNDANCE,
                      parse_model, read_table_parameters)
from .workdir import WorkDir, fingerprint

# --------------------------------------------------------------------------
# schema


#: What the template writes for a key the user must fill in. Loading refuses
#: it wherever it is left, so nobody fits at a made-up redshift or nH.
PLACEHOLDER = "REQUIRED"


@dataclass(frozen=True)
class Spec:
    """One config field: its kind, default, checks and documentation.

    kind: 'str', 'int', 'float', 'bool', 'path', 'band', 'intlist', 'choice',
    'section' (nested dict of Specs), 'list' (list of sections), 'int_or_auto',
    'float_or_null', 'choicelist' (a list of distinct ``choices``), 'bins' (``acb`` or
    a path). ``doc`` is the field's comment in the template (every
    field has one); ``example`` is what the template shows instead of the
    default (``{name}`` and ``{obsid}`` are filled in).
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
    example: Any = None


def _s(kind, default=None, **kw) -> Spec:
    return Spec(kind, default, **kw)


MODEL_ABSORPTION = ("xsphabs", "xswabs", "xstbabs")
MODEL_EMISSION = ("xsapec", "xsbremss", "xsmekal", "atable{FILE}")
#: Parameters ``fit.free`` can thaw besides kT and norm.
FREE_PARAMETERS = ("abundance",)

_PRODUCT = "required with prep.backend: products"

OBSERVATION = {
    "obsid": _s("str", required=True, doc="Chandra observation id", example="{obsid}"),
    "events": _s("path", must_exist=True,
                 doc=f"level-2 event file, reprocessed and cleaned ({_PRODUCT})",
                 example="obs{obsid}/acisf{obsid}_repro_evt2.fits"),
    "background": _s("path", must_exist=True,
                     doc="blank-sky background events reprojected to this observation "
                         "(none: S/N sqrt(C) and cstat)",
                     example="obs{obsid}/acisf{obsid}_bkg_evt2.fits"),
    "exposure_map": _s("path", must_exist=True,
                       doc=f"exposure map, cm**2 s, with sky WCS ({_PRODUCT})",
                       example="obs{obsid}/acisf{obsid}_expmap.fits"),
    "arf": _s("path", must_exist=True, doc=f"global ARF of this observation ({_PRODUCT})",
              example="obs{obsid}/acisf{obsid}.arf"),
    "rmf": _s("path", must_exist=True, doc=f"global RMF of this observation ({_PRODUCT})",
              example="obs{obsid}/acisf{obsid}.rmf"),
}

SCHEMA: dict[str, Spec] = {
    "cluster": _s("section", required=True, doc="The cluster: nH, redshift and abundance are "
                  "frozen in every region's fit.", children={
        "name": _s("str", required=True, doc="cluster name, used in file names and titles",
                   example="{name}"),
        "redshift": _s("float", required=True, min=0.0, max=10.0,
                       doc="redshift z of the cluster (e.g. from NED); xsbremss ignores it"),
        "nh": _s("float", required=True, min=0.0, max=100.0,
                 doc="Galactic absorbing column, 1e22 cm^-2 (e.g. HEASARC's nH tool)"),
        "abundance": _s("float", 0.3, min=0.0, max=10.0,
                        doc="metallicity, solar units of fit.abundance_table (xsapec, xsmekal, "
                            "a table model's Abundanc); the start when fit.free has it"),
    }),
    "workdir": _s("path", "work", doc="where every stage writes; relative to this file's folder"),
    "lock_stale_seconds": _s("float", 600.0, min=1.0,
                             doc="s; the work-directory lock of a job on another host whose "
                                 "heartbeat is older than this is taken over"),
    "observations": _s("list", required=True, children=OBSERVATION, doc=(
        "One entry per Chandra observation. With prep.backend: products these are "
        "the products of CIAO (chandra_repro, deflare, blanksky + reproject_events, "
        "fluximage, specextract) or of ClusterPyXT stages 1-3. With backend ciao "
        "only obsid is needed.")),
    "prep": _s("section", {}, doc="Prep: events, images and responses into the bundle.",
               children={
        "backend": _s("choice", "auto", choices=("auto", "products", "ciao"),
                      doc="auto (products when product paths are given, else ciao when its "
                          "tools are on PATH) | products | ciao"),
        "energy_band": _s("band", [0.7, 8.0], min=0.1, max=15.0,
                          doc="keV, band of the images and the scale map"),
        "ccds": _s("intlist", [0, 1, 2, 3], min=0, max=9, doc="ACIS chips kept (ACIS-I is 0-3)"),
        "bin": _s("int", 4, min=1, max=64, doc="sky pixels per image pixel (4 = 1.968 arcsec)"),
        "crop_region": _s("path", None, must_exist=True,
                          doc="DS9 region file (box/circle/polygon): the area to map "
                              "(null: all)"),
        "point_sources": _s("path", None, must_exist=True,
                            doc="DS9 region file: point sources to exclude (null: none)"),
        "deflare": _s("section", {}, doc="Flares: CIAO deflare's two methods with their "
                      "parameters (deflare.par); both backends apply the chosen rule.",
                      children={
            "enabled": _s("bool", True, doc="remove the time bins of flares"),
            "method": _s("choice", "clean", choices=("clean", "sigma"),
                         doc="clean (lc_clean, deflare's default) | sigma (lc_sigma_clip)"),
            "band": _s("band", [9.0, 12.0], min=0.1, max=15.0, doc="keV, light-curve band"),
            "bin_seconds": _s("float", 259.28, min=1.0, exclusive_min=False,
                              doc="s, light-curve bin"),
            "nsigma": _s("float", 3.0, min=0.0, exclusive_min=True,
                         doc="clean: clip for the first mean; sigma: clipping threshold"),
            "scale": _s("float", 1.2, min=1.0, doc="clean: keep mean/scale < rate < mean*scale"),
            "stddev": _s("float_or_null", None, min=0.0, exclusive_min=True,
                         doc="clean: keep mean +- stddev*sqrt(mean/bin) instead of scale"),
            "mean": _s("float_or_null", None, min=0.0, exclusive_min=True,
                       doc="clean: the quiescent rate, ct/s, instead of estimating it"),
            "minfrac": _s("float", 0.1, min=0.0, max=1.0,
                          doc="clean: fail when fewer of the bins are good"),
            "minlength": _s("int", 3, min=1,
                            doc="sigma: shortest run of good bins kept"),
        }),
        "background_scale_band": _s("band", [9.5, 12.0], min=0.1, max=15.0,
                                    doc="keV, band of the source/background count ratio "
                                        "that scales the background"),
        "chunk_rows": _s("int", 2_000_000, min=1,
                         doc="event-file rows read and filtered at a time: prep's memory "
                             "holds the kept events and one chunk (~70 bytes a row), not "
                             "the whole file; the bundle does not depend on it"),
        "ciao": _s("section", {}, doc="Only with prep.backend: ciao.", children={
            "download": _s("bool", True,
                           doc="download_chandra_obsid when the data are not in data_dir"),
            "check_vf_pha": _s("bool", False,
                               doc="chandra_repro check_vf_pha (VFAINT background cleaning)"),
            "nproc": _s("int", 1, min=1, doc="observations processed in parallel"),
            "data_dir": _s("path", None,
                           doc="folder of the downloaded observations (null: <workdir>/obs)"),
            "spectrum_region": _s("path", None, must_exist=True,
                                  doc="region of the global ARF/RMF (null: the crop region)"),
            "download_timeout": _s("float", 3600.0, min=1.0,
                                   doc="s, stop a download_chandra_obsid that takes longer"),
            "tool_timeout": _s("float_or_null", None, min=1.0, exclusive_min=False,
                               doc="s, limit for every other CIAO tool (null: none)"),
            "background_method": _s("choice", "blanksky", choices=("blanksky", "lookup"),
                                    doc="blanksky | lookup (acis_bkgrnd_lookup + dmmerge + "
                                        "reproject_events)"),
            "expmap_energy": _s("float", 2.3, min=0.1, max=15.0,
                                doc="keV, monochromatic energy of the fluximage exposure maps"),
            "merged_image": _s("bool", True,
                               doc="merge_obs image of all observations, to draw region files on"),
            "binarfwmap": _s("int", 4, min=1,
                             doc="specextract: binning of mkwarf's weight map (1 = full "
                                 "resolution, needs much more memory over a large region)"),
        }),
    }),
    "acb": _s("section", {}, doc="Scale map: adaptive circular binning.", children={
        "target_sn": _s("float", 50.0, min=0.0, exclusive_min=True,
                        doc="signal-to-noise each circle must reach"),
        "max_radius": _s("float", 100.0, min=0.125,
                         doc="image pixels; a pixel not reaching target_sn within it "
                             "gets no region"),
        "radius_step": _s("float", 0.125, min=0.0, exclusive_min=True,
                          doc="image pixels, step of the radius grid"),
        "sn": _s("choice", "auto", choices=("auto", "counts", "background_subtracted"),
                 doc="auto: background_subtracted when prep made a background image, else "
                     "counts | counts: sqrt(C), ClusterPyXT's | background_subtracted: "
                     "(C-B)/sqrt(C+B)"),
    }),
    "fit": _s("section", {}, doc="Fit: one absorbed thermal model per region, kT and norm free.",
              children={
        "resolution": _s("choice", "high", choices=("high", "medium", "low"),
                         doc="high | medium | low: fit every 1st | 3rd | 5th pixel"),
        "bins": _s("bins", "acb", must_exist=True,
                   doc="acb: adaptive circular binning (the scale map) | a bin map (FITS "
                       "image of integer bin numbers on any celestial WCS, -1 or NaN "
                       "outside, as contbin and vtbin write) | a ds9 region file (one "
                       "region per bin): fit these bins instead"),
        "model": _s("str", "xsphabs*xsapec",
                    doc="xsapec needs AtomDB (apec_root, or CIAO's Sherpa); "
                        "xsphabs*xsbremss needs no data files; xsphabs*atable{file.fits}: "
                        "an XSPEC table model (parameters kT, Abundanc, Redshift by name; "
                        "path relative to this file's folder)"),
        "free": _s("choicelist", [], choices=FREE_PARAMETERS,
                   doc="parameters fitted besides kT and norm: [] | [abundance] (tied "
                       "across observations; cluster.abundance is the start)"),
        "abundance_table": _s("choice", DEFAULT_ABUNDANCE_TABLE, choices=ABUNDANCE_TABLES,
                              doc="solar abundances of the model and the absorption (XSPEC "
                                  "abund): angr, Anders & Grevesse 1989, is XSPEC's default; "
                                  "aspl, wilm, lodd, ..."),
        "kT_init": _s("float", 8.0, min=0.0, exclusive_min=True,
                      doc="keV, start of every region's fit"),
        "kT_range": _s("band", [0.08, 64.0], min=0.01, max=100.0, doc="keV, bounds of kT"),
        "energy_range": _s("band", [0.7, 8.0], min=0.1, max=15.0, doc="keV, band fitted"),
        "statistic": _s("choice", "wstat", choices=("wstat", "cstat", "chi2gehrels"),
                        doc="wstat (Poisson background) | cstat | chi2gehrels (subtracted)"),
        "method": _s("choice", "levmar", choices=("levmar", "neldermead", "moncar"),
                     doc="Sherpa optimiser: levmar | neldermead | moncar"),
        "errors": _s("choice", "conf", choices=("conf", "covar", "none"),
                     doc="conf | covar | none: how kT's error bounds are found"),
        "error_sigma": _s("float", 1.0, min=0.0, exclusive_min=True,
                          doc="confidence of the error bounds, sigma (1: 68%)"),
        "min_obs_fraction": _s("float", 0.09, min=0.0, max=1.0,
                               doc="leave an observation out of a region's fit below this "
                                   "coverage"),
        "min_counts": _s("int", 100, min=1, doc="regions with fewer source counts are not fitted"),
        "group_min_source": _s("int", 10, min=0,
                               doc="wstat: group channels to at least this many source counts"),
        "group_min_background": _s("int", 2, min=0,
                                   doc="... and background counts (W-stat is biased otherwise)"),
        "batch_size": _s("int_or_auto", "auto", min=1,
                         doc="regions handed to a worker at a time (auto: about 0.1 s of work)"),
        "checkpoint_seconds": _s("float", 60.0, min=0.0,
                                 doc="s, least time between checkpoints of results.h5 "
                                     "(0: after every batch)"),
        "engine": _s("choice", "template", choices=("template", "sherpa"),
                     doc="template: tabulated model, profile likelihood, about 1000 times "
                         "faster, each region certified or refitted with Sherpa | sherpa: "
                         "every region through Sherpa's fit and error search"),
        "verify_fraction": _s("float", 0.01, min=0.0, max=1.0,
                              doc="template engine: share of the regions (at least 20) also "
                                  "fitted with Sherpa, conf on kT and norm (about 0.2 s each: "
                                  "at 0.01 two to three times the template fits' own time); "
                                  "the differences are stored and reported"),
        "apec_root": _s("path", None, must_exist=True, folder=True,
                        doc="AtomDB folder for xsapec outside CIAO (XSPEC's APECROOT)"),
    }),
    "maps": _s("section", {}, doc="Maps: FITS images and PNG quick-looks.", children={
        "max_frac_error": _s("float_or_null", None, min=0.0, exclusive_min=True,
                             doc="blank fits whose fractional kT error is above this "
                                 "(null: keep all)"),
        "drop_failed": _s("bool", True,
                          doc="blank failed fits (false: keep the kT of a fit whose error "
                              "search failed)"),
        "png": _s("bool", True, doc="PNG quick-looks beside the FITS maps"),
        "expmap_threshold": _s("float", 0.015, min=0.0, max=1.0,
                               doc="flux images leave out pixels whose exposure is below "
                                   "this fraction of the peak (fluximage's expmapthresh)"),
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
        """``<workdir>/<stage>``, not created (see :class:`hpcxt.io.workdir.WorkDir`)."""
        return WorkDir(self.workdir_path).stage_dir(stage)

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
        return fingerprint(picked)

    @property
    def obsids(self) -> list[str]:
        return [o["obsid"] for o in self._data["observations"]]


# --------------------------------------------------------------------------
# validation


#: Keys that were removed, with what to do instead.
RETIRED = {
    "prep.deflare.max_iterations": "no longer used: CIAO's deflare has no iteration limit "
                                   "(method sigma clips until no bin changes); delete the key",
}


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
                path = f"{where}{key}" if where else str(key)
                self.problem(path, RETIRED.get(path) or
                             "unknown key" + _did_you_mean(str(key), children))
        for key, spec in children.items():
            path = f"{where}{key}"
            if isinstance(raw.get(key), str) and raw[key].strip() == PLACEHOLDER:
                self.problem(path, f"still the template's placeholder {PLACEHOLDER}: "
                             f"write the value ({spec.doc})")
                out[key] = None
            elif key in raw and raw[key] is not None:
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
        """The checked value of one field; problems are recorded, not raised.

        Parameters
        ----------
        v : object
            The value as read from YAML (or the schema's default).
        spec : Spec
        path : str
            Dotted key of the field, for the messages.
        is_default : bool
            ``v`` is the schema's default: a default path need not exist.
        """
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
        if kind == "bins":
            if v == "acb":
                return v
            return self.value(v, Spec("path", must_exist=True), path, is_default)
        if kind == "path":
            return self._path(v, spec, path, is_default)
        check = self._CHECKS.get(kind)
        if check is None:
            raise AssertionError(f"unknown schema kind {kind}")  # a bug in SCHEMA, not user input
        return check(self, v, spec, path)

    def _str(self, v, spec: Spec, path: str):
        if isinstance(v, (dict, list)):
            self.problem(path, f"must be a string, got {type(v).__name__}")
            return None
        return str(v)

    def _choice(self, v, spec: Spec, path: str):
        if v not in spec.choices:
            self.problem(path, f"must be one of {', '.join(spec.choices)}, got {v!r}"
                         + _did_you_mean(str(v), spec.choices))
        return v

    def _bool(self, v, spec: Spec, path: str):
        if not isinstance(v, bool):
            self.problem(path, f"must be true or false, got {v!r}")
        return v

    def _int(self, v, spec: Spec, path: str):
        """An integer in range, or (kind ``int_or_auto``) the string 'auto'."""
        kind = spec.kind
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

    def _float(self, v, spec: Spec, path: str):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.problem(path, f"must be a number, got {v!r}")
            return v
        msg = _range_problem(spec, float(v))
        if msg:
            self.problem(path, msg)
        return float(v)

    def _band(self, v, spec: Spec, path: str):
        """An energy band ``[low, high]`` in keV, as two floats."""
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

    def _intlist(self, v, spec: Spec, path: str):
        if not isinstance(v, list) or not v or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in v):
            self.problem(path, f"must be a non-empty list of integers, got {v!r}")
            return v
        for x in v:
            msg = _range_problem(spec, x)
            if msg:
                self.problem(path, msg)
        return sorted(set(v))

    def _choicelist(self, v, spec: Spec, path: str):
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            self.problem(path, f"must be a list of names, got {v!r}")
            return v
        for x in v:
            if x not in spec.choices:
                self.problem(path, f"{x!r} cannot be freed: one of "
                             f"{', '.join(spec.choices)}" + _did_you_mean(x, spec.choices))
        return sorted(set(v))

    def _path(self, v, spec: Spec, path: str, is_default: bool):
        """An absolute, normalised path (relative ones are to the config's folder)."""
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

    #: The check of each leaf kind (sections, lists, bins and paths are in :meth:`value`).
    _CHECKS = {"str": _str, "choice": _choice, "bool": _bool,
               "int": _int, "int_or_auto": _int, "float": _float, "float_or_null": _float,
               "band": _band, "intlist": _intlist, "choicelist": _choicelist}


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
    fit = data.get("fit") or {}
    kT_range, kT_init = fit.get("kT_range"), fit.get("kT_init")
    if (isinstance(kT_range, list) and len(kT_range) == 2 and isinstance(kT_init, float)
            and not kT_range[0] <= kT_init <= kT_range[1]):
        v.problem("fit.kT_init", f"{kT_init:g} keV is outside fit.kT_range "
                  f"[{kT_range[0]:g}, {kT_range[1]:g}] keV: the fit starts there")
    model = fit.get("model")
    if isinstance(model, str):
        absorption, emission, table = parse_model(model)
        if (absorption not in MODEL_ABSORPTION
                or (table is None and emission not in MODEL_EMISSION)):
            v.problem("fit.model", "must be <absorption>*<emission> with absorption one of "
                      f"{', '.join(MODEL_ABSORPTION)} and emission one of "
                      f"{', '.join(MODEL_EMISSION)}, got {model!r}")
        elif table is not None:
            p = Path(os.path.expandvars(os.path.expanduser(table)))
            p = Path(os.path.normpath(p if p.is_absolute() else v.base_dir / p))
            fit["model"] = f"{absorption}*atable{{{p}}}"
            _check_table_model(data, p, v)
        else:
            fit["model"] = f"{absorption}*{emission}"
            if "abundance" in (fit.get("free") or []) and emission not in MODELS_WITH_ABUNDANCE:
                v.problem("fit.free", f"{emission} has no abundance to free (models with one: "
                          f"{', '.join(MODELS_WITH_ABUNDANCE)}, or a table model with an "
                          "Abundanc parameter)")


def _check_table_model(data: dict, path: Path, v: "_Validator") -> None:
    """A table model in fit.model: the file, its kT parameter and grid, the free abundance."""
    fit = data["fit"]
    if not path.is_file():
        if v.check_files:
            v.problem("fit.model", f"table model file not found: {path}")
        return
    try:
        params = {p.role: p for p in reversed(read_table_parameters(path)) if p.role}
    except ValueError as exc:
        v.problem("fit.model", f"{path}: {exc}")
        return
    names = ", ".join(sorted(p.name for p in params.values())) or "none recognised"
    if "kT" not in params:
        v.problem("fit.model", f"{path}: the table has no parameter named kT ({names}); "
                  "hpcxt recognises kT, Abundanc and Redshift by name")
        return
    lo, hi = params["kT"].grid_range
    kT_range = fit.get("kT_range")
    if (isinstance(kT_range, list) and len(kT_range) == 2
            and not (lo <= kT_range[0] and kT_range[1] <= hi)):
        v.problem("fit.kT_range", f"[{kT_range[0]:g}, {kT_range[1]:g}] keV is outside the "
                  f"table model's kT grid {lo:g}-{hi:g} keV ({path.name}): choose a range "
                  "inside it")
    kT_init = fit.get("kT_init")
    if isinstance(kT_init, float) and not lo <= kT_init <= hi:
        v.problem("fit.kT_init", f"{kT_init:g} keV is outside the table model's kT grid "
                  f"{lo:g}-{hi:g} keV ({path.name})")
    if "abundance" in params:
        zlo, zhi = params["abundance"].grid_range
        z = (data.get("cluster") or {}).get("abundance")
        if isinstance(z, float) and not zlo <= z <= zhi:
            v.problem("cluster.abundance", f"{z:g} is outside the table model's abundance "
                      f"grid {zlo:g}-{zhi:g} ({path.name})")
    elif "abundance" in (fit.get("free") or []):
        v.problem("fit.free", f"the table model {path.name} has no abundance parameter "
                  f"(recognised: {names}; name it Abundanc)")


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


#: Column of the comments in the template, and its width.
_COMMENT_COLUMN = 28
_TEMPLATE_WIDTH = 100
_TEMPLATE_HEADER = """\
# hpcxt config for {name}. Paths are relative to this file's folder.
# Keys marked REQUIRED have no default: replace every value REQUIRED
# (hpcxt refuses to run with one left). Every other key shows its default;
# delete what you do not change.
"""


def _template_value(value) -> str:
    """A default or example as the YAML the template shows."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_template_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    return text if yaml.safe_load(text) == value else json.dumps(text)


def _template_lines(children: dict, indent: int, fill: dict, overrides: dict,
                    where: str = "", list_item: bool = False) -> list[str]:
    lines = []
    for i, (key, spec) in enumerate(children.items()):
        lead = " " * indent
        if list_item and i == 0:
            lead = " " * (indent - 2) + "- "
        if indent == 0 and lines:
            lines.append("")
        if spec.kind in ("section", "list"):
            wrapped = textwrap.wrap(spec.doc, 76 - indent)
            lines += [f"{' ' * indent}# {text}" for text in wrapped]
            lines.append(f"{lead}{key}:")
            if spec.kind == "list":
                lines += _template_lines(spec.children, indent + 4, fill, overrides,
                                         f"{where}{key}[0].", list_item=True)
            else:
                lines += _template_lines(spec.children, indent + 2, fill, overrides,
                                         f"{where}{key}.")
            continue
        path = f"{where}{key}"
        if path in overrides:
            value = _template_value(overrides[path])
        elif spec.example is not None:
            value = _template_value(str(spec.example).format(**fill))
        elif spec.required:
            value = PLACEHOLDER
        else:
            value = _template_value(spec.default)
        entry = f"{lead}{key}: {value}"
        note = f"REQUIRED: {spec.doc}" if spec.required else spec.doc
        if len(entry) < _COMMENT_COLUMN - 1 and _COMMENT_COLUMN + len(note) <= _TEMPLATE_WIDTH:
            lines.append(f"{entry:<{_COMMENT_COLUMN - 1}} # {note}")
        else:  # a long line: the comment goes above the key
            lines += [f"{' ' * indent}# {text}" for text in
                      textwrap.wrap(note, _TEMPLATE_WIDTH - indent - 2)]
            lines.append(entry)
    return lines


def render_template(name: str, obsid: str = "12345", redshift: float | None = None,
                    nh: float | None = None) -> str:
    """Commented config template for ``hpcxt init``, made from :data:`SCHEMA`.

    Every key is shown with its default and its ``doc`` as a comment;
    required keys say REQUIRED and, unless given here, hold the
    :data:`PLACEHOLDER` that loading refuses.

    Parameters
    ----------
    name : str
        Cluster name (``cluster.name``, the example paths).
    obsid : str
        Observation id of the example entry.
    redshift, nh : float, optional
        ``cluster.redshift`` and ``cluster.nh`` (1e22 cm^-2), if known.
    """
    overrides = {k: v for k, v in (("cluster.redshift", redshift), ("cluster.nh", nh))
                 if v is not None}
    fill = {"name": name, "obsid": obsid}
    body = _template_lines(SCHEMA, 0, fill, overrides)
    return _TEMPLATE_HEADER.format(name=name) + "\n" + "\n".join(body) + "\n"


def dump_config(data: dict) -> str:
    """YAML text of a config dict (used by the simulator and tests)."""
    return yaml.safe_dump(data, sort_keys=False)
