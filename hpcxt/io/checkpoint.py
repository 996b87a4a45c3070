"""results.h5: the fit results, checkpointed and resumable.

Layout of ``<workdir>/fit/results.h5`` (format version 2; version 1 had the
same columns without a declared schema)::

    /  attrs: format_version, hpcxt_version,
              config_hash      hash of the fit inputs (see fit_inputs)
              fit_inputs       those inputs as JSON (to name what changed)
              region_table_hash, bundle_hash (from regions.h5),
              bundle_config_hash (from bundle.h5),
              obsids, n_regions, n_ok, n_failed, n_pending, complete,
              started, updated (ISO 8601 UTC), runs, checkpoints,
              run_seconds (wall time of all fitting runs up to this
              checkpoint, s), run_started (ISO), final_at_run_start,
              seconds_at_run_start (run_seconds when the last run
              started), checkpoint_seconds_total (s spent writing
              checkpoints),
              nranks (of the last run)
    region_id        (n,)       int64    0..n-1 (row = region id)
    <column>         (n,) or (n, nobs)   one dataset per column of
                     :data:`hpcxt.schema.COLUMNS` (name, dtype, unit and
                     fill value are declared there); the text column
                     ``reason`` is stored as ``reason_id`` (int32, index
                     into) ``reason_text`` (distinct strings, [0] is "",
                     then the others sorted; a staged final checkpoint,
                     :class:`StagedResults`, appends strings new since).

Crash safety: :func:`write_results` writes the whole file aside under a
name unique to this writer, fsyncs it, renames it onto ``results.h5`` and
fsyncs the folder (:func:`hpcxt.io.workdir.atomic_write`). A SIGKILL at
any moment therefore leaves either the previous complete checkpoint or the
new one, never a mix; a stale temporary file is never read. The file uses HDF5's default format (not
``libver='latest'``), which reopens cleanly after a crash, and readers open
it with ``locking=False`` so ``hpcxt status`` works while a fit runs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..errors import InputError
from ..schema import COLUMNS, ColumnAccess, Status, differing_columns, empty_columns
from .hdf5 import open_versioned
from .workdir import StagedFile, atomic_write, fingerprint

FORMAT_VERSION = 2

#: Fit-section keys that change how a run goes, not what it computes.
NON_RESULT_KEYS = ("batch_size", "checkpoint_seconds")
#: Cluster keys that enter the fit (the name does not).
CLUSTER_KEYS = ("nh", "redshift", "abundance")



def utc_now() -> str:
    """Current time, ISO 8601 UTC to the second."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def fit_inputs(cfg) -> dict:
    """The config values that decide the fit results.

    ``cluster.nh``, ``redshift``, ``abundance`` and the whole ``fit`` section
    except :data:`NON_RESULT_KEYS` (batch size and checkpoint interval
    change how the run goes, not its results).
    """
    cluster = cfg.cluster.to_dict()
    fit = cfg.fit.to_dict()
    return {"cluster": {k: cluster.get(k) for k in CLUSTER_KEYS},
            "fit": {k: v for k, v in sorted(fit.items()) if k not in NON_RESULT_KEYS}}


def inputs_hash(inputs: dict) -> str:
    """SHA-256 (16 hex) of :func:`fit_inputs`."""
    return fingerprint(inputs)


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(changed_keys(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return out


@dataclass
class FitResults(ColumnAccess):
    """All rows of results.h5 in memory (the master's copy).

    ``region_id`` is 0..n-1; ``columns`` holds every column of
    :data:`hpcxt.schema.COLUMNS` (readable as attributes: ``res.kT``);
    the rest is the file's metadata (see the module docstring).
    """

    region_id: np.ndarray
    columns: dict
    obsids: list = field(default_factory=list)
    config_hash: str = ""
    fit_inputs: dict = field(default_factory=dict)
    region_table_hash: str = ""
    bundle_hash: str = ""
    bundle_config_hash: str = ""
    started: str = ""
    updated: str = ""
    run_started: str = ""
    runs: int = 0
    checkpoints: int = 0
    run_seconds: float = 0.0
    final_at_run_start: int = 0
    seconds_at_run_start: float = 0.0
    checkpoint_seconds_total: float = 0.0
    nranks: int = 1

    @classmethod
    def new(cls, n_regions: int, obsids, fit_inputs: dict, region_table_hash: str = "",
            bundle_hash: str = "", bundle_config_hash: str = "") -> "FitResults":
        """Every region pending."""
        n = int(n_regions)
        now = utc_now()
        return cls(region_id=np.arange(n, dtype=np.int64),
                   columns=empty_columns(n, len(obsids)),
                   obsids=list(obsids), config_hash=inputs_hash(fit_inputs),
                   fit_inputs=fit_inputs, region_table_hash=region_table_hash,
                   bundle_hash=bundle_hash, bundle_config_hash=bundle_config_hash,
                   started=now, updated=now, run_started=now)

    def __len__(self) -> int:
        return int(self.region_id.shape[0])

    # -- progress ---------------------------------------------------------

    @property
    def n_ok(self) -> int:
        return int(np.count_nonzero(self.status == Status.OK))

    @property
    def n_failed(self) -> int:
        return int(np.count_nonzero(self.status == Status.FAILED))

    @property
    def n_pending(self) -> int:
        return int(np.count_nonzero(self.status == Status.PENDING))

    @property
    def n_final(self) -> int:
        return len(self) - self.n_pending

    @property
    def complete(self) -> bool:
        return self.n_pending == 0

    def pending_ids(self) -> np.ndarray:
        """Region ids without a final status, ascending."""
        return np.flatnonzero(self.status == Status.PENDING).astype(np.int64)

    def rates(self) -> tuple[float, float]:
        """Fits per second: (last run, all runs); 0 when unknown."""
        run_dt = self.run_seconds - self.seconds_at_run_start
        run_n = self.n_final - self.final_at_run_start
        last = run_n / run_dt if run_dt > 0 and run_n > 0 else 0.0
        overall = self.n_final / self.run_seconds if self.run_seconds > 0 else 0.0
        return last, overall

    def failure_summary(self, top: int = 5) -> list[tuple[int, str]]:
        """Most common failure reasons, numbers replaced by N: [(count, text)]."""
        reasons = self.reason[self.status == Status.FAILED]
        c = Counter(re.sub(r"\d+(\.\d+)?([eE][-+]?\d+)?", "N", str(r)) for r in reasons)
        return [(n, text) for text, n in c.most_common(top)]

    # -- updates ------------------------------------------------------------

    def record(self, batch) -> None:
        """Store a :class:`hpcxt.fit.RecordBatch` (rows indexed by region id)."""
        ids = np.asarray(batch.region_id, dtype=np.int64)
        if ids.size == 0:
            return
        for name, column in self.columns.items():
            column[ids] = batch.columns[name]

    def same_results(self, other: "FitResults") -> list[str]:
        """Names of the result columns that differ (fit_seconds, worker ignored).

        NaNs compare equal; floats must be bit-identical.
        """
        diff = [] if np.array_equal(self.region_id, other.region_id) else ["region_id"]
        return diff + differing_columns(self.columns, other.columns)


# --------------------------------------------------------------------------
# writing


def write_results(path, res: FitResults, midway=None) -> Path:
    """Write ``res`` to ``path`` atomically (temporary file, fsync, rename).

    Parameters
    ----------
    path : str or Path
        ``results.h5``; the temporary file is ``results.h5.tmp`` next to it.
    res : FitResults
    midway : callable, optional
        Called with no arguments after half of the datasets are written and
        flushed to the temporary file (a testing aid: the fit's kill-in-
        checkpoint hook SIGKILLs the process there).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    with atomic_write(path) as tmp:
        _write_file(tmp, res, midway)
    return path


def _write_file(tmp, res: FitResults, midway=None) -> dict:
    """Every dataset and attribute of ``res`` into a new file ``tmp``; returns the
    text tables written (column name -> list of distinct strings)."""
    datasets, tables = [("region_id", res.region_id)], {}
    for c in COLUMNS:
        if c.is_text:
            texts, ids = _encode_text(res.columns[c.name])
            tables[c.name] = texts
            datasets += [(f"{c.name}_id", ids), (f"{c.name}_text", texts)]
        else:
            datasets.append((c.name, res.columns[c.name]))
    with h5py.File(tmp, "w") as f:
        _write_attrs(f.attrs, res)
        half = len(datasets) // 2
        for i, (name, data) in enumerate(datasets):
            if name.endswith("_text"):
                f.create_dataset(name, data=data, dtype=h5py.string_dtype("utf-8"))
            else:
                f.create_dataset(name, data=data)
            if i == half and midway is not None:
                f.flush()
                midway()
    return tables


class StagedResults:
    """The last checkpoint of a run, written before the run ends and patched at the end.

    Writing results.h5 takes about 0.2 us per region on one rank (1.7 GB
    and about 2 s at 10^7 regions), and the last checkpoint used to start
    only after the last result came in, with every other rank idle. The
    fit's master instead writes the whole file aside (:class:`StagedResults`)
    while the workers fit the last regions, and flushes it to disk; while
    they fit it adds the rows that came in since (:meth:`patch`, the span
    between the lowest and highest changed region, the attributes and the
    text columns' new strings); at the end :meth:`commit` patches in the
    last rows, then fsyncs and renames the file into place. The
    file equals what :func:`write_results` would write, except that strings
    first seen after staging follow the sorted ones in the text tables.

    Crash safety is that of :func:`write_results`: ``path`` changes only by
    the final rename; a crash leaves a stale temporary file.

    Parameters
    ----------
    path : str or Path
        ``results.h5``.
    res : FitResults
        The results as they stand (rows still pending are written as pending).
    midway : callable, optional
        As for :func:`write_results`.
    """

    def __init__(self, path, res: FitResults, midway=None):
        self.file = StagedFile(path)
        self.h5 = None
        try:
            self.tables = _write_file(self.file.tmp, res, midway)
            self.file.sync()
            # kept open for the patches (opening a file costs milliseconds)
            self.h5 = h5py.File(self.file.tmp, "r+")
        except BaseException:
            self.abandon()
            raise

    def patch(self, res: FitResults, changed_ids, sync: bool = False) -> None:
        """Write the rows ``changed_ids`` and every attribute of ``res`` into the
        staged file (still aside); ``sync``: then flush it to disk."""
        ids = np.asarray(changed_ids, dtype=np.int64)
        f = self.h5
        try:
            _write_attrs(f.attrs, res)
            if ids.size:
                lo, hi = int(ids.min()), int(ids.max()) + 1
                for c in COLUMNS:
                    if c.is_text:
                        self._patch_text(f, c.name, res.columns[c.name][lo:hi], lo)
                    else:
                        f[c.name][lo:hi] = res.columns[c.name][lo:hi]
            if sync:
                f.flush()
                self.file.sync()
        except BaseException:
            self.abandon()
            raise

    def commit(self, res: FitResults, changed_ids) -> Path:
        """:meth:`patch`, then fsync and rename into place.

        Returns
        -------
        Path
            ``results.h5``.
        """
        self.patch(res, changed_ids)
        try:
            self.h5.close()
            self.h5 = None
            return self.file.commit()
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """Remove the staged file (results.h5 stays as it was)."""
        if self.h5 is not None:
            with contextlib.suppress(Exception):
                self.h5.close()
            self.h5 = None
        self.file.abandon()

    def _patch_text(self, f, name: str, values, lo: int) -> None:
        table = self.tables[name]
        index = {t: i for i, t in enumerate(table)}
        new = sorted({str(v) for v in values} - set(index))
        if new:
            table = table + new
            index.update({t: i for i, t in enumerate(table)})
            del f[f"{name}_text"]
            f.create_dataset(f"{name}_text", data=table, dtype=h5py.string_dtype("utf-8"))
            self.tables[name] = table
        codes = np.fromiter((index[str(v)] for v in values), dtype=np.int32, count=len(values))
        f[f"{name}_id"][lo:lo + codes.size] = codes


def _encode_text(values) -> tuple[list, np.ndarray]:
    """Distinct strings ([0] is "", the others sorted) and each row's index into them.

    No Python-level loop over the rows (a checkpoint of 10^6 regions spent
    0.2 s here, most of its time): hashing in ``set``, lookups in ``map``.
    """
    values = values.tolist() if isinstance(values, np.ndarray) else list(values)
    distinct = set(values)
    distinct.discard("")
    keys = sorted(distinct, key=str)
    index = {v: i for i, v in enumerate(keys, start=1)}
    index[""] = 0
    ids = np.fromiter(map(index.__getitem__, values), dtype=np.int32, count=len(values))
    return [""] + [str(k) for k in keys], ids


#: FitResults fields stored as file attributes: name -> type read back.
_META = {"config_hash": str, "region_table_hash": str, "bundle_hash": str,
         "bundle_config_hash": str, "started": str, "updated": str, "run_started": str,
         "runs": int, "checkpoints": int, "run_seconds": float, "final_at_run_start": int,
         "seconds_at_run_start": float, "checkpoint_seconds_total": float, "nranks": int}


def _write_attrs(a, res: FitResults) -> None:
    a["format_version"] = FORMAT_VERSION
    a["hpcxt_version"] = __version__
    a["fit_inputs"] = json.dumps(res.fit_inputs, sort_keys=True, default=str)
    a["obsids"] = np.array(res.obsids, dtype="S")
    a["n_regions"] = len(res)
    a["n_ok"], a["n_failed"], a["n_pending"] = res.n_ok, res.n_failed, res.n_pending
    a["complete"] = bool(res.complete)
    for name, kind in _META.items():
        a[name] = kind(getattr(res, name))


# --------------------------------------------------------------------------
# reading


def _attr_str(attrs, key, default=""):
    v = attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def read_results(path) -> FitResults:
    """Read results.h5 (without locking, so it works while a fit runs).

    Raises
    ------
    InputError
        Missing, unreadable, wrong format version or missing datasets.
    """
    path = Path(path)
    f = open_versioned(path, "fit results", "run 'hpcxt fit' first", FORMAT_VERSION,
                       locking=False)
    with f:
        names = ["region_id"]
        for c in COLUMNS:
            names += [f"{c.name}_id", f"{c.name}_text"] if c.is_text else [c.name]
        missing = [n for n in names if n not in f]
        if missing:
            raise InputError("missing datasets " + ", ".join(missing), path=path,
                             field=missing[0])
        try:
            data = {n: f[n][()] for n in names}
            n = int(f.attrs["n_regions"])
            a = dict(f.attrs)
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"unreadable fit results ({exc})", path=path) from None
    columns = {}
    for c in COLUMNS:
        if c.is_text:
            texts = np.array([t.decode() if isinstance(t, bytes) else str(t)
                              for t in data[f"{c.name}_text"]], dtype=object)
            ids = data[f"{c.name}_id"]
            if ids.shape != (n,) or (n and (ids.min() < 0 or ids.max() >= texts.size)):
                raise InputError(f"{c.name}_id does not index {c.name}_text", path=path,
                                 field=f"{c.name}_id")
            columns[c.name] = np.asarray(texts[ids] if n else np.zeros(0, dtype=object),
                                         dtype=object)
        else:
            columns[c.name] = data[c.name]
            if columns[c.name].shape[:1] != (n,):
                raise InputError(f"dataset length differs from n_regions={n}", path=path,
                                 field=c.name)
    meta = {name: kind(_attr_str(a, name) if kind is str else a.get(name, kind()))
            for name, kind in _META.items()}
    meta["nranks"] = int(a.get("nranks", 1))
    return FitResults(region_id=data["region_id"], columns=columns,
                      obsids=[s.decode() for s in a["obsids"]],
                      fit_inputs=json.loads(_attr_str(a, "fit_inputs", "{}")), **meta)
