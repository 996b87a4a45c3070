"""The work directory: every path of every stage, atomic writes, fingerprints.

One place for the layout of ``<workdir>``::

    prep/bundle.h5          events, images, responses        (hpcxt prep)
    prep/stages.json        prep's stage record
    prep/file_hashes.json   cached content hashes of the input files
    prep/summary.json       what prep removed, by reason
    prep/clean/<obsid>.<fingerprint>.h5   cleaned events of one observation,
                            named by the fingerprint of what made them
    prep/*.fits             counts, background, exposure, mask images for ds9
    obs/<obsid>/            CIAO products of one observation  (ciao backend)
    obs/merged/             merge_obs image to draw regions on (ciao backend)
    tmp/                    per-call CIAO parameter and scratch folders
    acb/scalemap.fits       radius reaching the target S/N   (hpcxt scalemap)
    acb/regions.h5          the region table
    fit/results.h5          one row per region, checkpointed  (hpcxt fit)
    fit/model_check.json    the model evaluated here before: environment fingerprint
    maps/*.fits, *.png      the maps                          (hpcxt maps)
    maps/summary.json       the maps' stage record and summary
    maps/regions.reg        the fitted regions for ds9
    export/results.<fmt>    one row per region                (hpcxt export)
    jobs/                   rendered Slurm/PBS scripts

and, beside a simulated project's config (not in the workdir), the truth of
``hpcxt simulate``: :class:`SimulationTruth`.

and the two helpers every writer shares: :func:`atomic_write` (write aside
under a name unique to this writer, fsync, rename, fsync the folder) and
:func:`fingerprint` (a short SHA-256 of a JSON-able value).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import uuid
from pathlib import Path

from ..errors import InputError

#: Length of every fingerprint, hex characters.
FINGERPRINT_CHARS = 16


def fingerprint(obj) -> str:
    """SHA-256 (first 16 hex) of ``obj`` as canonical JSON (sorted keys).

    Values JSON cannot encode (paths, numpy scalars) are encoded by ``str``.
    """
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:FINGERPRINT_CHARS]


def _fsync_path(path: Path) -> None:
    """fsync a file or folder by path (h5py and astropy give no descriptor)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # folders cannot be opened on every platform
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders
    finally:
        os.close(fd)


def temporary_name(path) -> Path:
    """A name beside ``path`` that no other writer uses (host, pid, random)."""
    path = Path(path)
    tag = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{path.name}.{tag}.tmp")


class StagedFile:
    """A file written aside, possibly in several steps, then renamed onto its path.

    The two-step form of :func:`atomic_write`: write :attr:`tmp`, optionally
    :meth:`sync` it (so the final commit flushes only what changed after),
    change it again, then :meth:`commit` (fsync, atomic rename, folder
    fsync) or :meth:`abandon` it. Until the commit ``path`` is untouched,
    and a crash leaves at most a stale temporary file that nothing reads.

    Parameters
    ----------
    path : str or Path
        The final file; its folder is created.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_name(self.path)

    def sync(self) -> None:
        """Flush the temporary file to disk."""
        _fsync_path(self.tmp)

    def commit(self, fsync: bool = True) -> Path:
        """Rename the temporary file onto ``path`` (after an fsync)."""
        if fsync:
            self.sync()
        os.replace(self.tmp, self.path)
        if fsync:
            _fsync_path(self.path.parent)
        return self.path

    def abandon(self) -> None:
        """Remove the temporary file; ``path`` stays as it was."""
        with contextlib.suppress(OSError):
            self.tmp.unlink()


@contextlib.contextmanager
def atomic_write(path, fsync: bool = True):
    """Write ``path`` all at once: yields a temporary path to write to.

    On a clean exit the temporary file is (optionally) fsynced and renamed
    onto ``path`` with :func:`os.replace` (atomic on POSIX), and the folder
    is fsynced so the rename survives a power cut. On an exception the
    temporary file is removed and ``path`` is untouched. The temporary name
    is unique to this writer, so two writers never truncate each other's
    file (HDF5 truncates a file opened with mode ``w`` before it locks it).

    Parameters
    ----------
    path : str or Path
        The final file; its folder is created.
    fsync : bool
        Flush the file to disk before the rename (checkpoints, records).

    Yields
    ------
    Path
        Where to write.
    """
    staged = StagedFile(path)
    try:
        yield staged.tmp
        staged.commit(fsync=fsync)
    except BaseException:
        staged.abandon()
        raise


def write_text_atomic(path, text: str, fsync: bool = True) -> Path:
    """Write a text file through :func:`atomic_write`."""
    path = Path(path)
    with atomic_write(path, fsync=fsync) as tmp:
        tmp.write_text(text)
    return path


def write_json_atomic(path, data, fsync: bool = True) -> Path:
    """Write ``data`` as indented JSON through :func:`atomic_write`."""
    return write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True, default=str),
                             fsync=fsync)


class WorkDir:
    """Paths of one work directory. Nothing is created by asking for a path.

    Parameters
    ----------
    root : str or Path
        ``<workdir>``.
    """

    def __init__(self, root):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"WorkDir({str(self.root)!r})"

    @classmethod
    def of(cls, cfg) -> "WorkDir":
        """The work directory of a loaded config."""
        return cls(cfg.workdir_path)

    def check_writable(self) -> "WorkDir":
        """Create the work directory if needed and prove a file can be written in it.

        Every command that writes calls this before its first stage, so a
        work directory that points at a file, into /proc, or onto a
        read-only mount is one line (naming it) instead of a traceback from
        deep inside a stage.

        Raises
        ------
        InputError
            Field ``workdir``: not a folder, cannot be created, or not writable.
        """
        root = self.root
        if root.exists() and not root.is_dir():
            raise InputError("work directory is a file, not a folder", path=root,
                             field="workdir")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the work directory ({exc.strerror or exc})",
                             path=root, field="workdir") from None
        probe = temporary_name(root / ".write-test")
        try:
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
            probe.unlink()
        except OSError as exc:
            raise InputError(f"work directory is not writable ({exc.strerror or exc})",
                             path=root, field="workdir") from None
        return self

    def stage_dir(self, stage: str) -> Path:
        """``<workdir>/<stage>``."""
        return self.root / stage

    # prep
    @property
    def prep(self) -> Path:
        return self.root / "prep"

    @property
    def bundle(self) -> Path:
        return self.prep / "bundle.h5"

    @property
    def prep_stages(self) -> Path:
        return self.prep / "stages.json"

    @property
    def file_hashes(self) -> Path:
        return self.prep / "file_hashes.json"

    @property
    def prep_summary(self) -> Path:
        return self.prep / "summary.json"

    def clean_events(self, obsid: str, fp: str) -> Path:
        """Cleaned events of one observation made from inputs with fingerprint ``fp``.

        Named by the fingerprint, so a run with new inputs never overwrites
        the files an earlier, finished bundle was made from: a bad new input
        found later leaves the old ones in place, and going back to the old
        inputs finds them up to date.
        """
        return self.prep / "clean" / f"{obsid}.{fp}.h5"

    def prep_image(self, name: str) -> Path:
        return self.prep / f"{name}.fits"

    # CIAO products
    @property
    def obs(self) -> Path:
        return self.root / "obs"

    def obs_dir(self, obsid: str) -> Path:
        return self.obs / str(obsid)

    @property
    def obs_merged(self) -> Path:
        return self.obs / "merged"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    # scale map
    @property
    def acb(self) -> Path:
        return self.root / "acb"

    @property
    def scalemap(self) -> Path:
        return self.acb / "scalemap.fits"

    @property
    def regions(self) -> Path:
        return self.acb / "regions.h5"

    # fit
    @property
    def fit(self) -> Path:
        return self.root / "fit"

    @property
    def results(self) -> Path:
        return self.fit / "results.h5"

    @property
    def model_check(self) -> Path:
        return self.fit / "model_check.json"

    # maps
    @property
    def maps(self) -> Path:
        return self.root / "maps"

    @property
    def maps_summary(self) -> Path:
        return self.maps / "summary.json"

    def map_file(self, name: str, suffix: str = ".fits") -> Path:
        return self.maps / f"{name}{suffix}"

    @property
    def region_file(self) -> Path:
        return self.maps / "regions.reg"

    # export
    def export_table(self, suffix: str) -> Path:
        """``<workdir>/export/results.<suffix>``."""
        return self.root / "export" / f"results.{suffix}"

    # jobs
    @property
    def jobs(self) -> Path:
        return self.root / "jobs"


class SimulationTruth:
    """Paths of the truth that ``hpcxt simulate`` writes beside its config.

    ``<project>/truth/truth.yaml`` (zones: id and kT, everything injected),
    ``truth/zones.fits`` (zone interiors: 0 none, else the zone's id) and
    ``truth/temperature.fits`` (kT, keV), where ``<project>`` is the folder
    of the simulated config.yaml.

    Parameters
    ----------
    project_dir : str or Path
        The folder that holds config.yaml.
    """

    def __init__(self, project_dir):
        self.root = Path(project_dir) / "truth"

    @classmethod
    def of(cls, cfg) -> "SimulationTruth":
        """The truth beside a loaded config's file (which need not exist)."""
        return cls(Path(cfg.path).resolve().parent)

    @property
    def document(self) -> Path:
        return self.root / "truth.yaml"

    @property
    def zones(self) -> Path:
        return self.root / "zones.fits"

    @property
    def temperature(self) -> Path:
        return self.root / "temperature.fits"

    def exists(self) -> bool:
        """Whether a comparison can be made: truth.yaml and zones.fits are there."""
        return self.document.exists() and self.zones.exists()


class StageRecord:
    """A JSON record of finished stages: stage name -> fingerprint (and extras).

    The same record serves prep (``prep/stages.json``), each CIAO
    observation folder and the maps (``maps/summary.json``): a stage is
    done when its stored fingerprint equals the one of its current inputs
    and its outputs exist. A missing or unreadable record means nothing is
    done. Writes go through :func:`atomic_write`.

    Parameters
    ----------
    path : Path
        The JSON file.
    """

    def __init__(self, path):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self.done = data if isinstance(data, dict) else {}

    def get(self, stage: str):
        return self.done.get(stage)

    def is_done(self, stage: str, fp: str, *outputs) -> bool:
        """True when ``stage`` was recorded with fingerprint ``fp`` and every output exists."""
        return self.done.get(stage) == fp and all(Path(o).exists() for o in outputs)

    def mark(self, stage: str, fp) -> None:
        """Record ``stage`` as made from inputs with fingerprint ``fp``, on disk at once."""
        self.done[stage] = fp
        self.save()

    def forget(self, stage: str) -> None:
        if self.done.pop(stage, None) is not None:
            self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.done)


def _sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()[:FINGERPRINT_CHARS]


class FileHashes:
    """Content fingerprints of input files, cached so each version is read once.

    A file's fingerprint is its size and the SHA-256 of its content, not
    its path: a project folder that is copied, moved or mounted elsewhere
    keeps its stage records, while any change to a file's content re-runs
    the stages that read it. The hash of a file is cached (in a JSON file
    of the work directory) under its resolved path with its size, mtime
    and inode, and recomputed only when one of those changes.

    Parameters
    ----------
    cache_path : Path
        The JSON cache (e.g. ``<workdir>/prep/file_hashes.json``).
    """

    def __init__(self, cache_path):
        self.path = Path(cache_path)
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self.cache = data if isinstance(data, dict) else {}
        self.changed = False

    def fingerprint(self, path) -> list:
        """``[size, sha256]`` of a file; ``[None]`` for no file, ``["missing"]`` if absent."""
        if path is None:
            return [None]
        p = Path(path)
        try:
            st = p.stat()
            key = str(p.resolve())
        except OSError:
            return ["missing"]
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = self.cache.get(key)
        if isinstance(entry, list) and entry[:3] == stamp:
            return [st.st_size, entry[3]]
        try:
            digest = _sha256_file(p)
        except OSError:
            return ["unreadable"]
        self.cache[key] = stamp + [digest]
        self.changed = True
        return [st.st_size, digest]

    def save(self) -> None:
        """Write the cache if it changed (best effort: it is only a cache)."""
        if self.changed:
            with contextlib.suppress(OSError):
                write_json_atomic(self.path, self.cache, fsync=False)
            self.changed = False
