"""The fit results' columns, declared once.

Every place that holds fit results derives from :data:`COLUMNS`: the record
of one region (:class:`hpcxt.fit.FitRecord`), the batch a worker sends
(:class:`hpcxt.fit.RecordBatch`), the master's table and ``results.h5``
(:mod:`hpcxt.io.checkpoint`), the identity check of resumed runs, the maps
and the table export. A new fitted quantity is one :class:`Column` here.

Pure numpy: no MPI, no HDF5.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np


class Status(enum.IntEnum):
    """The ``status`` column: where a region stands."""

    PENDING = 0
    OK = 1
    FAILED = 2


class Engine(enum.IntEnum):
    """The ``engine`` column: what produced a region's numbers."""

    NONE = 0              # not fitted (too few counts, no usable observation, pending)
    SHERPA = 1            # Sherpa's fit and error search
    TEMPLATE = 2          # the template engine, certified
    SHERPA_FALLBACK = 3   # the template engine could not certify it: Sherpa's answer
    SHERPA_TEMPLATES = 4  # Sherpa's fit and error search on the templates (path near a jump),
    #                       or only its covar of the norm at the template fit


@dataclass(frozen=True)
class Column:
    """One result column.

    Attributes
    ----------
    name : str
        Attribute, dataset and table column name.
    dtype : str
        numpy dtype (``object`` for text, stored as an index into a table
        of distinct strings).
    fill : object
        Value of a region not fitted yet.
    unit : str
        Astropy unit string ("" for dimensionless).
    description : str
        What it is, for file headers and the export.
    per_obs : bool
        Shape (n, nobs) instead of (n,).
    result : bool
        Part of the answer (compared between runs); False for bookkeeping
        that depends on the machine (wall time, worker rank).
    """

    name: str
    dtype: str
    fill: object
    unit: str
    description: str
    per_obs: bool = False
    result: bool = True

    @property
    def is_text(self) -> bool:
        return self.dtype == "object"

    def shape(self, n: int, nobs: int) -> tuple:
        return (int(n), int(nobs)) if self.per_obs else (int(n),)

    def empty(self, n: int, nobs: int) -> np.ndarray:
        """A column of ``n`` regions, every value ``fill``."""
        return np.full(self.shape(n, nobs), self.fill, dtype=self.dtype)

    def cast(self, values, n: int, nobs: int) -> np.ndarray:
        """``values`` as this column's dtype and shape."""
        if self.is_text:
            out = np.empty(int(n), dtype=object)
            out[:] = [str(v) for v in values]
            return out
        return np.asarray(values, dtype=self.dtype).reshape(self.shape(n, nobs))


COLUMNS: tuple[Column, ...] = (
    Column("kT", "float64", math.nan, "keV", "best-fit temperature"),
    Column("kT_lo", "float64", math.nan, "keV", "lower bound of kT (error_sigma)"),
    Column("kT_hi", "float64", math.nan, "keV", "upper bound of kT (error_sigma)"),
    Column("norm", "float64", math.nan, "cm**-5", "best-fit XSPEC normalisation"),
    Column("norm_lo", "float64", math.nan, "cm**-5", "lower bound of norm"),
    Column("norm_hi", "float64", math.nan, "cm**-5", "upper bound of norm"),
    Column("abundance", "float64", math.nan, "",
           "best-fit abundance, solar (fit.free: [abundance]; NaN when frozen)"),
    Column("abundance_lo", "float64", math.nan, "",
           "lower bound of the abundance (error_sigma; NaN: not found)"),
    Column("abundance_hi", "float64", math.nan, "",
           "upper bound of the abundance (error_sigma; NaN: not found)"),
    Column("stat", "float64", math.nan, "", "fit statistic at the best fit"),
    Column("dof", "int64", -1, "", "degrees of freedom (-1: not fitted)"),
    Column("counts", "int64", 0, "count", "source counts in the fit band", per_obs=True),
    Column("bkg_counts", "int64", 0, "count", "background counts in the fit band, same area",
           per_obs=True),
    Column("status", "int8", int(Status.PENDING), "", "0 pending, 1 ok, 2 failed"),
    Column("reason", "object", "", "", "why a region failed, or how it was fitted"),
    Column("engine", "int8", int(Engine.NONE), "",
           "0 not fitted, 1 Sherpa, 2 template, 3 Sherpa after the template engine, "
           "4 Sherpa's fit on the templates (or its covar of the norm at the template "
           "fit)"),
    Column("verify_dkT", "float64", math.nan, "",
           "sampled regions: (engine 2 or 4 - Sherpa) kT in units of Sherpa's kT error"),
    Column("verify_dnorm", "float64", math.nan, "",
           "sampled regions: (engine 2 or 4 - Sherpa) norm in units of Sherpa's norm error"),
    Column("verify_dbounds", "float64", math.nan, "",
           "sampled regions: largest |engine 2 or 4 - Sherpa| of the four bounds, in "
           "units of Sherpa's error of that parameter"),
    Column("fit_seconds", "float64", 0.0, "s", "wall time of the region's fit", result=False),
    Column("worker", "int16", -1, "", "MPI rank that fitted the region", result=False),
)

#: Column name -> :class:`Column`.
BY_NAME = {c.name: c for c in COLUMNS}
NAMES = tuple(BY_NAME)


def empty_columns(n: int, nobs: int) -> dict[str, np.ndarray]:
    """Every column for ``n`` regions, filled with the not-yet-fitted values."""
    return {c.name: c.empty(n, nobs) for c in COLUMNS}


def columns_from_records(records, nobs: int, **overrides) -> dict[str, np.ndarray]:
    """Columns from a list of objects that carry every column as an attribute.

    ``overrides`` replace a column's values (e.g. ``worker=rank``); a scalar
    is broadcast over the records.
    """
    n = len(records)
    out = {}
    for c in COLUMNS:
        if c.name in overrides:
            v = overrides[c.name]
            vals = [v] * n if np.ndim(v) == 0 and not c.is_text else v
        else:
            vals = [getattr(r, c.name) for r in records]
        out[c.name] = c.cast(vals, n, nobs) if n else c.empty(0, nobs)
    return out


def differing_columns(a: dict, b: dict) -> list[str]:
    """Names of result columns (``result=True``) that differ between two tables.

    NaNs compare equal; floats must be bit-identical.
    """
    diff = []
    for c in COLUMNS:
        if not c.result:
            continue
        x, y = a[c.name], b[c.name]
        if c.is_text:
            same = list(x) == list(y)
        else:
            same = x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
        if not same:
            diff.append(c.name)
    return diff


class ColumnAccess:
    """Mixin: the result columns in ``self.columns`` read as attributes.

    ``table.kT`` is ``table.columns["kT"]`` (a view: ``table.kT[ids] = v``
    writes into the table).
    """

    def __getattr__(self, name):
        # Only called when normal lookup fails; dunder names (pickle probes
        # them on an empty instance) must not recurse into ``columns``.
        if name.startswith("__"):
            raise AttributeError(name)
        columns = self.__dict__.get("columns")
        if columns is not None and name in columns:
            return columns[name]
        raise AttributeError(f"{type(self).__name__} has no column or attribute {name!r}")
