"""``hpcxt compare``: a simulated project's temperature map against its truth.

Reads what ``hpcxt simulate`` wrote beside the config
(:class:`hpcxt.io.workdir.SimulationTruth`) and the temperature map of
``hpcxt maps``, and summarises the recovered kT per truth zone with the
kernel :func:`hpcxt.compare.compare_with_truth`. ``hpcxt maps`` (and
``hpcxt run``) print the same table when the project holds a truth; the
demo prints it after its run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import yaml

from ..compare import TOLERANCE, ZoneComparison, compare_with_truth, format_comparison
from ..errors import InputError
from ..io.workdir import SimulationTruth, WorkDir


@dataclass
class TruthComparison:
    """The per-zone comparison of one project and what it was made from.

    Attributes
    ----------
    rows : list of ZoneComparison
    model : str
        The simulator's spectral model (truth.yaml).
    preset : str
        The simulation preset.
    """

    rows: list
    model: str
    preset: str

    @property
    def ok(self) -> bool:
        """Every zone recovered within :data:`hpcxt.compare.TOLERANCE`."""
        return all(r.ok for r in self.rows)

    def table(self) -> str:
        return format_comparison(self.rows)

    def describe(self, name: str) -> str:
        """Title line, table, and verdict."""
        n_ok = sum(r.ok for r in self.rows)
        verdict = (f"every zone within {TOLERANCE:.0%} of the truth" if self.ok else
                   f"{len(self.rows) - n_ok} of {len(self.rows)} zones off by more than "
                   f"{TOLERANCE:.0%} (or without pixels)")
        return (f"{name}: recovered kT against the simulator's truth ({self.model} spectra, "
                f"preset {self.preset})\n{self.table()}\n{verdict}")


def _read_map(path, what: str):
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyWarning
    from astropy.wcs import WCS

    from ..io.fitsio import open_fits

    with open_fits(path, what) as hdul:
        hdu = hdul[0]
        if hdu.data is None or hdu.data.ndim != 2:
            raise InputError("no 2-D image in the primary HDU", path=path, field="PRIMARY")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            wcs = WCS(hdu.header, naxis=2)
        if not wcs.has_celestial:
            raise InputError("image has no celestial WCS", path=path, field="CTYPE1")
        return np.asarray(hdu.data, dtype=float), wcs


def has_truth(cfg) -> bool:
    """Whether the project's folder holds a simulator truth."""
    return cfg.path is not None and SimulationTruth.of(cfg).exists()


def compare_project(cfg) -> TruthComparison:
    """Compare ``<workdir>/maps/temperature.fits`` with the truth beside the config.

    Raises
    ------
    InputError
        No truth beside the config, no temperature map yet, or a truth
        file that cannot be read.
    """
    if cfg.path is None:
        raise InputError("needs a config file on disk (the truth lies beside it)", field="config")
    truth = SimulationTruth.of(cfg)
    if not truth.exists():
        raise InputError(f"no simulator truth ({truth.document}, {truth.zones}): 'hpcxt "
                         "compare' works on projects written by 'hpcxt simulate'", path=cfg.path)
    kT_path = WorkDir.of(cfg).map_file("temperature")
    if not kT_path.exists():
        raise InputError("not found; run 'hpcxt maps' first", path=kT_path)
    try:
        doc = yaml.safe_load(truth.document.read_text())
        zone_kT = {k: float(v["kT"]) for k, v in doc["zones"].items()}
        zone_ids = {k: int(v["id"]) for k, v in doc["zones"].items()}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"not a simulator truth ({type(exc).__name__}: {exc})",
                         path=truth.document, field="zones") from None
    kT_map, map_wcs = _read_map(kT_path, "temperature map")
    zones, zones_wcs = _read_map(truth.zones, "truth zones")
    rows: list[ZoneComparison] = compare_with_truth(kT_map, map_wcs, zones.astype(int),
                                                    zones_wcs, zone_kT, zone_ids)
    return TruthComparison(rows, str(doc.get("model", "?")), str(doc.get("preset", "?")))
