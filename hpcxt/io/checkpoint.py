"""results.h5: the fit results, checkpointed and resumable.

Layout of ``<workdir>/fit/results.h5`` (format version 1)::

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
    kT, kT_lo, kT_hi (n,)       float64  keV, NaN if unknown
    norm, norm_lo, norm_hi (n,) float64  XSPEC units, NaN if unknown
    stat             (n,)       float64  fit statistic, NaN if not fitted
    dof              (n,)       int64    -1 if not fitted
    counts           (n, nobs)  int64    source counts in the energy range
    bkg_counts       (n, nobs)  int64    background counts, same circle
    status           (n,)       int8     0 pending, 1 ok, 2 failed
    reason_id        (n,)       int32    index into reason_text
    reason_text      (m,)       str      distinct reasons; [0] is ""
    fit_seconds      (n,)       float64  wall time of each fit, s
    worker           (n,)       int16    MPI rank that fitted it (-1 pending)

Crash safety: :func:`write_results` writes the whole file to
``results.h5.tmp``, flushes and fsyncs it, closes it, renames it onto
``results.h5`` with :func:`os.replace` (atomic on POSIX) and fsyncs the
folder. A SIGKILL at any moment therefore leaves either the previous
complete checkpoint or the new one, never a mix; a stale ``.tmp`` is
ignored and overwritten. The file uses HDF5's default format (not
``libver='latest'``), which reopens cleanly after a crash, and readers open
it with ``locking=False`` so ``hpcxt status`` works while a fit runs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..errors import InputError
from .hdf5 import open_versioned

FORMAT_VERSION = 1
RESULTS_NAME = "results.h5"

#: Fit-section keys that change how a run goes, not what it computes.
NON_RESULT_KEYS = ("batch_size", "checkpoint_seconds")
#: Cluster keys that enter the fit (the name does not).
CLUSTER_KEYS = ("nh", "redshift", "abundance")

FLOAT_COLUMNS = ("kT", "kT_lo", "kT_hi", "norm", "norm_lo", "norm_hi", "stat", "fit_seconds")
STATUS_PENDING, STATUS_OK, STATUS_FAILED = 0, 1, 2


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
    blob = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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
class FitResults:
    """All rows of results.h5 in memory (the master's copy).

    Column shapes as in the module docstring; ``reason`` is an object array
    of str.
    """

    region_id: np.ndarray
    kT: np.ndarray
    kT_lo: np.ndarray
    kT_hi: np.ndarray
    norm: np.ndarray
    norm_lo: np.ndarray
    norm_hi: np.ndarray
    stat: np.ndarray
    dof: np.ndarray
    counts: np.ndarray
    bkg_counts: np.ndarray
    status: np.ndarray
    reason: np.ndarray
    fit_seconds: np.ndarray
    worker: np.ndarray
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
        n, nobs = int(n_regions), len(obsids)
        nan = np.full(n, np.nan)
        now = utc_now()
        return cls(region_id=np.arange(n, dtype=np.int64),
                   **{c: nan.copy() for c in FLOAT_COLUMNS if c != "fit_seconds"},
                   dof=np.full(n, -1, dtype=np.int64),
                   counts=np.zeros((n, nobs), dtype=np.int64),
                   bkg_counts=np.zeros((n, nobs), dtype=np.int64),
                   status=np.zeros(n, dtype=np.int8),
                   reason=np.full(n, "", dtype=object),
                   fit_seconds=np.zeros(n), worker=np.full(n, -1, dtype=np.int16),
                   obsids=list(obsids), config_hash=inputs_hash(fit_inputs),
                   fit_inputs=fit_inputs, region_table_hash=region_table_hash,
                   bundle_hash=bundle_hash, bundle_config_hash=bundle_config_hash,
                   started=now, updated=now, run_started=now)

    def __len__(self) -> int:
        return int(self.region_id.shape[0])

    # -- progress ---------------------------------------------------------

    @property
    def n_ok(self) -> int:
        return int(np.count_nonzero(self.status == STATUS_OK))

    @property
    def n_failed(self) -> int:
        return int(np.count_nonzero(self.status == STATUS_FAILED))

    @property
    def n_pending(self) -> int:
        return int(np.count_nonzero(self.status == STATUS_PENDING))

    @property
    def n_final(self) -> int:
        return len(self) - self.n_pending

    @property
    def complete(self) -> bool:
        return self.n_pending == 0

    def pending_ids(self) -> np.ndarray:
        """Region ids without a final status, ascending."""
        return np.flatnonzero(self.status == STATUS_PENDING).astype(np.int64)

    def rates(self) -> tuple[float, float]:
        """Fits per second: (last run, all runs); 0 when unknown."""
        run_dt = self.run_seconds - self.seconds_at_run_start
        run_n = self.n_final - self.final_at_run_start
        last = run_n / run_dt if run_dt > 0 and run_n > 0 else 0.0
        overall = self.n_final / self.run_seconds if self.run_seconds > 0 else 0.0
        return last, overall

    def failure_summary(self, top: int = 5) -> list[tuple[int, str]]:
        """Most common failure reasons, numbers replaced by N: [(count, text)]."""
        reasons = self.reason[self.status == STATUS_FAILED]
        c = Counter(re.sub(r"\d+(\.\d+)?([eE][-+]?\d+)?", "N", str(r)) for r in reasons)
        return [(n, text) for text, n in c.most_common(top)]

    # -- updates ------------------------------------------------------------

    def record(self, batch) -> None:
        """Store a :class:`hpcxt.fit.RecordBatch` (rows indexed by region id)."""
        ids = np.asarray(batch.region_id, dtype=np.int64)
        if ids.size == 0:
            return
        for name in ("kT", "kT_lo", "kT_hi", "norm", "norm_lo", "norm_hi", "stat",
                     "fit_seconds"):
            getattr(self, name)[ids] = getattr(batch, name)
        self.dof[ids] = batch.dof
        self.counts[ids] = batch.counts
        self.bkg_counts[ids] = batch.bkg_counts
        self.status[ids] = batch.status
        self.worker[ids] = batch.worker
        reasons = np.empty(ids.size, dtype=object)
        reasons[:] = list(batch.reason)
        self.reason[ids] = reasons

    def same_results(self, other: "FitResults") -> list[str]:
        """Names of the result columns that differ (fit_seconds, worker ignored).

        NaNs compare equal; floats must be bit-identical.
        """
        diff = []
        for name in ("region_id", "kT", "kT_lo", "kT_hi", "norm", "norm_lo", "norm_hi",
                     "stat", "dof", "counts", "bkg_counts", "status"):
            a, b = getattr(self, name), getattr(other, name)
            if a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                diff.append(name)
        if list(self.reason) != list(other.reason):
            diff.append("reason")
        return diff


# --------------------------------------------------------------------------
# writing


def _fsync_file(path: Path) -> None:
    """fsync by path (h5py gives no descriptor; Linux syncs the inode)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform/filesystem
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    texts = {"": 0}
    reason_id = np.empty(len(res), dtype=np.int32)
    for i, r in enumerate(res.reason):
        reason_id[i] = texts.setdefault(str(r), len(texts))
    columns = [("region_id", res.region_id), ("kT", res.kT), ("kT_lo", res.kT_lo),
               ("kT_hi", res.kT_hi), ("norm", res.norm), ("norm_lo", res.norm_lo),
               ("norm_hi", res.norm_hi), ("stat", res.stat), ("dof", res.dof),
               ("counts", res.counts), ("bkg_counts", res.bkg_counts),
               ("status", res.status), ("reason_id", reason_id),
               ("fit_seconds", res.fit_seconds), ("worker", res.worker)]
    with h5py.File(tmp, "w") as f:
        a = f.attrs
        a["format_version"] = FORMAT_VERSION
        a["hpcxt_version"] = __version__
        a["config_hash"] = res.config_hash
        a["fit_inputs"] = json.dumps(res.fit_inputs, sort_keys=True, default=str)
        a["region_table_hash"] = res.region_table_hash
        a["bundle_hash"] = res.bundle_hash
        a["bundle_config_hash"] = res.bundle_config_hash
        a["obsids"] = np.array(res.obsids, dtype="S")
        a["n_regions"] = len(res)
        a["n_ok"], a["n_failed"], a["n_pending"] = res.n_ok, res.n_failed, res.n_pending
        a["complete"] = bool(res.complete)
        a["started"], a["updated"] = res.started, res.updated
        a["run_started"] = res.run_started
        a["runs"], a["checkpoints"] = int(res.runs), int(res.checkpoints)
        a["run_seconds"] = float(res.run_seconds)
        a["final_at_run_start"] = int(res.final_at_run_start)
        a["seconds_at_run_start"] = float(res.seconds_at_run_start)
        a["checkpoint_seconds_total"] = float(res.checkpoint_seconds_total)
        a["nranks"] = int(res.nranks)
        half = len(columns) // 2
        for i, (name, data) in enumerate(columns):
            f.create_dataset(name, data=data)
            if i == half and midway is not None:
                f.flush()
                _fsync_file(tmp)
                midway()
        f.create_dataset("reason_text", data=list(texts), dtype=h5py.string_dtype("utf-8"))
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


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
    f = open_versioned(path, "fit results", "run 'hpcxt fit' first", FORMAT_VERSION, locking=False)
    with f:
        names = ("region_id", "kT", "kT_lo", "kT_hi", "norm", "norm_lo", "norm_hi", "stat",
                 "dof", "counts", "bkg_counts", "status", "reason_id", "reason_text",
                 "fit_seconds", "worker")
        missing = [n for n in names if n not in f]
        if missing:
            raise InputError("missing datasets " + ", ".join(missing), path=path,
                             field=missing[0])
        data = {n: f[n][()] for n in names}
        n = int(f.attrs["n_regions"])
        bad = [k for k, v in data.items() if k != "reason_text" and v.shape[:1] != (n,)]
        if bad:
            raise InputError(f"dataset length differs from n_regions={n}", path=path,
                             field=bad[0])
        texts = np.array([t.decode() if isinstance(t, bytes) else str(t)
                          for t in data.pop("reason_text")], dtype=object)
        reason = texts[data.pop("reason_id")] if n else np.zeros(0, dtype=object)
        a = f.attrs
        return FitResults(
            **data, reason=np.asarray(reason, dtype=object),
            obsids=[s.decode() for s in a["obsids"]],
            config_hash=_attr_str(a, "config_hash"),
            fit_inputs=json.loads(_attr_str(a, "fit_inputs", "{}")),
            region_table_hash=_attr_str(a, "region_table_hash"),
            bundle_hash=_attr_str(a, "bundle_hash"),
            bundle_config_hash=_attr_str(a, "bundle_config_hash"),
            started=_attr_str(a, "started"), updated=_attr_str(a, "updated"),
            run_started=_attr_str(a, "run_started"), runs=int(a.get("runs", 0)),
            checkpoints=int(a.get("checkpoints", 0)),
            run_seconds=float(a.get("run_seconds", 0.0)),
            final_at_run_start=int(a.get("final_at_run_start", 0)),
            seconds_at_run_start=float(a.get("seconds_at_run_start", 0.0)),
            checkpoint_seconds_total=float(a.get("checkpoint_seconds_total", 0.0)),
            nranks=int(a.get("nranks", 1)))
