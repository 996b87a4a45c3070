"""``hpcxt export`` and ``hpcxt regions``: the fit results as a table, one region as text.

The table (:func:`hpcxt.export.results_table`) is written as

* ``fits``: a binary table (extension ``REGIONS``) with ``TUNITn`` and
  ``TCOMMn`` (description) cards and the fit's provenance in its header;
* ``ecsv``: astropy's Enhanced CSV (space separated, units and
  descriptions in its YAML header);
* ``csv``: comma-separated ECSV: a CSV file whose ``#`` header lines carry
  units and descriptions. ``Table.read(path, format="ascii.ecsv")`` reads
  the units back; ``pandas.read_csv(path, comment="#")`` reads the rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..export import provenance_cards, region_report, results_table
from ..io.bundle import read_bundle_grid
from ..io.checkpoint import fit_inputs
from ..io.workdir import WorkDir, atomic_write
from .maps import load_fit

log = logging.getLogger("hpcxt.export")

#: ``--format`` -> file suffix.
FORMATS = {"fits": "fits", "csv": "csv", "ecsv": "ecsv"}


def build_table(cfg):
    """The results table of a work directory, and its observation ids."""
    wd, res, table = load_fit(cfg)
    grid = read_bundle_grid(wd.bundle)
    cards = provenance_cards(res.fit_inputs or fit_inputs(cfg), table, cfg.cluster.name)
    meta = {key: value for key, value, _ in cards}
    meta["OBSIDS"] = ",".join(res.obsids)
    meta["COMPLETE"] = bool(res.complete)
    return results_table(table, res.columns, res.obsids, grid.wcs(), meta), list(res.obsids)


def _write_fits(t, path: Path) -> None:
    from astropy.io import fits

    t = t.copy(copy_data=False)
    for name in t.colnames:
        if t[name].dtype == np.int8:
            # astropy writes int8 as FITS logical (L): status 2 would read back True
            t[name] = t[name].astype(np.int16)
    with atomic_write(path, fsync=False) as tmp:
        t.write(tmp, format="fits", name="REGIONS")
        # TCOMMn: the descriptions for readers other than astropy (fv, TOPCAT)
        with fits.open(tmp, mode="update") as hdul:
            header = hdul["REGIONS"].header
            for i, name in enumerate(t.colnames, start=1):
                if t[name].description:
                    header.set(f"TCOMM{i}", t[name].description, after=f"TFORM{i}")


def run_export(cfg, fmt: str, output=None) -> Path:
    """Write the results table; returns its path.

    Parameters
    ----------
    cfg : Config
    fmt : {"fits", "csv", "ecsv"}
    output : path, optional
        Default ``<workdir>/export/results.<fmt>``.
    """
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}",
                         field="format")
    t, _ = build_table(cfg)
    path = Path(output) if output else WorkDir.of(cfg).export_table(FORMATS[fmt])
    if fmt == "fits":
        _write_fits(t, path)
    else:
        with atomic_write(path, fsync=False) as tmp:
            t.write(tmp, format="ascii.ecsv", delimiter="," if fmt == "csv" else " ")
    n_ok = int(np.count_nonzero(t["status_text"] == "ok"))
    log.info("export: %d regions (%d ok), %d columns -> %s", len(t), n_ok, len(t.colnames),
             path)
    return path


def describe_region(cfg, region_id: int) -> str:
    """``hpcxt regions CONFIG --id N``: every number of one region."""
    t, obsids = build_table(cfg)
    if not 0 <= int(region_id) < len(t):
        raise InputError(f"no region {region_id}: ids run from 0 to {len(t) - 1}",
                         field="--id")
    return region_report(t, int(region_id), obsids)
