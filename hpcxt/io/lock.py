"""One writer per work directory: ``<workdir>/.hpcxt.lock``.

``hpcxt prep``, ``scalemap``, ``fit`` and ``run`` hold the lock while they
write; a second of them on the same work directory (a requeued or
duplicated batch job, a second terminal) is refused with one line naming
the job that holds it (command, host, pid, start time), exit status 2.
``status`` and ``maps`` only read what the fit checkpoints, so they run
beside a fit without the lock.

What this relies on, so that it also works on the shared file systems of
clusters (NFS, Lustre, GPFS, BeeGFS), where ``flock``/``fcntl`` locks are
either not shared between nodes (Lustre mounted ``localflock``, NFS without
``lockd``) or silently local:

* **Exclusive create.** The lock is taken by ``open(O_CREAT | O_EXCL)``,
  which exactly one process wins on a local file system, on NFSv3 and later
  (the exclusive create is done by the server) and on Lustre and GPFS. No
  ``flock``/``fcntl`` is used.
* **Heartbeat by mtime.** The holder touches the lock file every
  ``heartbeat`` seconds from a background thread. A lock whose holder ran
  on another host is stale when its mtime is older than ``stale_after``
  seconds (config key ``lock_stale_seconds``, default 600): the nodes'
  clocks must agree to well within that (NTP keeps them within a second).
* **Process ids on this host.** A lock taken on this host is stale as soon
  as its process is gone (or its pid was reused by a process that started
  later, told by the start time in ``/proc``); a live holder is never
  overridden, however old its heartbeat.
* **Taking over a stale lock** goes through a second exclusive create
  (``.hpcxt.lock.takeover``), so of several jobs that find the same stale
  lock exactly one replaces it; the others wait for it and are then
  refused. A takeover file older than a minute (its maker died within the
  takeover, which takes milliseconds) is removed. Two jobs that both find
  such a dead takeover file in the same instant could both remove it: the
  one case (a job dying inside another's takeover window) not covered.

The lock file holds JSON: host, pid, command, start time, a random token,
and the Slurm or PBS job id when there is one. The processes that ``hpcxt
run`` starts (the MPI stages under ``mpiexec``) inherit the token in the
environment variable :data:`TOKEN_ENV` and run under their parent's lock
instead of refusing themselves; a token that does not match the lock file
counts for nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from ..errors import InputError
from .workdir import WorkDir

log = logging.getLogger("hpcxt.lock")

LOCK_NAME = ".hpcxt.lock"
#: Environment variable through which ``hpcxt run`` hands its lock to the
#: stages it launches.
TOKEN_ENV = "HPCXT_LOCK_TOKEN"
#: Default age (s) of the heartbeat after which another host's lock is stale.
DEFAULT_STALE_SECONDS = 600.0
#: A lock file still empty this long after its creation was left by a
#: process that died between creating and writing it.
_EMPTY_GRACE_SECONDS = 10.0
#: How long to wait for another job's takeover of a stale lock to finish, s.
_TAKEOVER_WAIT_SECONDS = 5.0
#: A takeover file lives for milliseconds; one this old was left by a job
#: that died during its takeover.
_TAKEOVER_STALE_SECONDS = 60.0


def _proc_stat(pid: int) -> tuple[str | None, str | None]:
    """(state, start time in clock ticks since boot) of a process on this host, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, None
    # Fields 3 and 22; the command name (field 2) may hold spaces, so count after ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    return (fields[0] if fields else None), (fields[19] if len(fields) > 19 else None)


def _proc_start(pid: int) -> str | None:
    return _proc_stat(pid)[1]


def _pid_alive(pid: int, proc_start: str | None) -> bool:
    """Whether process ``pid`` of this host is still the one that took the lock and runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    state, start = _proc_stat(pid)
    if state in ("Z", "X"):
        return False  # killed, not yet reaped (MPI ranks orphaned by a killed launcher)
    if proc_start is not None and start is not None and start != proc_start:
        return False  # the pid was reused by a later process
    return True


def describe(info: dict) -> str:
    """``fit on host h, pid 123, started 2026-01-01 12:00:00``."""
    job = f", job {info['job_id']}" if info.get("job_id") else ""
    return (f"{info.get('command', '?')} on host {info.get('host', '?')}, pid "
            f"{info.get('pid', '?')}{job}, started {info.get('started', '?')}")


class WorkdirLock:
    """The lock of one work directory, held by this process.

    Parameters
    ----------
    workdir : path
        The work directory (created if missing; must be writable).
    command : str
        What holds it (``fit``, ``scalemap``, ``prep``, ``run``), for messages.
    stale_after : float
        Seconds without a heartbeat after which another host's lock is stale.
    heartbeat : float, optional
        Seconds between touches of the lock file (default ``stale_after/10``,
        at most 60).
    token : str, optional
        A parent's token (:data:`TOKEN_ENV`): when the lock file holds it,
        this process runs under that lock without taking or releasing it.
    """

    def __init__(self, workdir, command: str, stale_after: float = DEFAULT_STALE_SECONDS,
                 heartbeat: float | None = None, token: str | None = None):
        self.workdir = WorkDir(workdir)
        self.path = self.workdir.root / LOCK_NAME
        self.takeover_path = self.path.with_name(LOCK_NAME + ".takeover")
        self.command = command
        self.stale_after = float(stale_after)
        self.heartbeat = (float(heartbeat) if heartbeat
                          else min(60.0, max(0.05, self.stale_after / 10.0)))
        self.parent_token = token
        self.token: str | None = None
        self.inherited = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def child_token(self) -> str | None:
        """The token to hand to the processes this job starts (:data:`TOKEN_ENV`)."""
        return self.parent_token if self.inherited else self.token

    # -- reading

    def read(self) -> dict | None:
        """The lock file's content: {} when empty or unreadable, None when there is none."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            info = json.loads(text)
        except ValueError:
            return {}
        return info if isinstance(info, dict) else {}

    def _age(self) -> float | None:
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    def stale_reason(self, info: dict) -> str | None:
        """Why the lock described by ``info`` is stale, or None when its holder may be alive."""
        age = self._age()
        if age is None:
            return "gone"
        if not info:
            return (f"empty lock file {age:.0f} s old" if age > _EMPTY_GRACE_SECONDS else None)
        if info.get("host") == socket.gethostname():
            try:
                pid = int(info.get("pid"))
            except (TypeError, ValueError):
                return "no pid in the lock file"
            if not _pid_alive(pid, info.get("proc_start")):
                return f"process {pid} is gone"
            return None
        if age > self.stale_after:
            return (f"no heartbeat for {age:.0f} s (more than lock_stale_seconds = "
                    f"{self.stale_after:g})")
        return None

    # -- taking and giving back

    def _create(self) -> bool:
        """Try to create the lock file exclusively; True when this process now holds it."""
        token = uuid.uuid4().hex
        info = {"host": socket.gethostname(), "pid": os.getpid(), "command": self.command,
                "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                "started_unix": time.time(), "token": token,
                "proc_start": _proc_start(os.getpid()),
                "job_id": os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID") or ""}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps(info, indent=1).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.token = token
        return True

    def _refuse(self, info: dict, extra: str = "") -> InputError:
        holder = describe(info) if info else "a job that is starting"
        return InputError(f"another hpcxt job is writing to this work directory: {holder}"
                          f"{extra}; wait for it, or if it is dead remove {self.path}",
                          path=self.workdir.root)

    def _take_over(self, info: dict, reason: str) -> bool:
        """Replace the stale lock ``info``; True when this process now holds the lock."""
        try:
            fd = os.open(self.takeover_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                age = time.time() - self.takeover_path.stat().st_mtime
            except FileNotFoundError:
                return False
            if age > _TAKEOVER_STALE_SECONDS:
                with contextlib.suppress(FileNotFoundError):
                    self.takeover_path.unlink()
            return False
        os.close(fd)
        try:
            # Under the takeover file nobody else replaces the lock: check that
            # it is still the stale one before removing it.
            if self.read() != info:
                return False
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            if not self._create():
                return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.takeover_path.unlink()
        log.warning("%s: took over the stale lock of %s (%s)", self.workdir.root,
                    describe(info) if info else "an unknown job", reason)
        return True

    def acquire(self) -> "WorkdirLock":
        """Take the lock, or raise InputError naming the job that holds it.

        Raises
        ------
        InputError
            The work directory is not writable, or another live job holds
            the lock.
        """
        self.workdir.check_writable()
        try:
            return self._acquire()
        except OSError as exc:  # e.g. a folder where the lock file should be
            raise InputError(f"cannot use the lock file {self.path} ({exc.strerror or exc})",
                             path=self.workdir.root, field="workdir") from None

    def _acquire(self) -> "WorkdirLock":
        if self.parent_token:
            info = self.read()
            if info and info.get("token") == self.parent_token:
                self.inherited = True
                return self
        # A stale lock can be in the middle of being taken over by another
        # job (for milliseconds): wait for that to end rather than name the
        # dead job.
        deadline = time.monotonic() + _TAKEOVER_WAIT_SECONDS
        while True:
            if self._create():
                self._start_heartbeat()
                return self
            info = self.read()
            if info is None:
                continue  # removed since we tried
            reason = self.stale_reason(info)
            if reason is None:
                raise self._refuse(info)
            if self._take_over(info, reason):
                self._start_heartbeat()
                return self
            if time.monotonic() > deadline:
                raise self._refuse(info, f" (stale: {reason}; another job is taking it over, "
                                         f"or remove {self.takeover_path})")
            time.sleep(0.05)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still this process's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self.inherited or self.token is None:
            return
        info = self.read()
        if info and info.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        else:
            log.warning("%s: the lock was no longer this job's when it finished "
                        "(taken over as stale?)", self.workdir.root)
        self.token = None

    # -- heartbeat

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="hpcxt-lock-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except OSError:
                log.warning("%s: cannot refresh the lock file's heartbeat", self.path)


@contextlib.contextmanager
def workdir_lock(workdir, command: str, stale_after: float = DEFAULT_STALE_SECONDS,
                 heartbeat: float | None = None, token: str | None = None):
    """Hold the work directory's lock for the ``with`` block; see :class:`WorkdirLock`.

    ``token`` defaults to the environment's :data:`TOKEN_ENV` (set by
    ``hpcxt run`` for the stages it launches).
    """
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    lock = WorkdirLock(workdir, command, stale_after=stale_after, heartbeat=heartbeat,
                       token=token).acquire()
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def collective_workdir_lock(comm, workdir, command: str, **kwargs):
    """:func:`workdir_lock` for an MPI stage: rank 0 takes it, a refusal reaches every rank.

    Collective over ``comm``. Rank 0 takes the lock before the collective
    work starts and gives it back when the ``with`` block ends; every rank
    raises the same InputError when rank 0 could not take it.
    """
    with contextlib.ExitStack() as stack:
        lock, refusal = None, None
        if comm is None or comm.Get_rank() == 0:
            try:
                lock = stack.enter_context(workdir_lock(workdir, command, **kwargs))
            except InputError as exc:
                refusal = exc
        if comm is not None and comm.Get_size() > 1:
            refusal = comm.bcast(refusal, root=0)
        if refusal is not None:
            raise refusal
        yield lock
