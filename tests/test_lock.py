"""One writer per work directory (hpcxt/io/lock.py, issue 11).

The lock's rules on their own first (taken, refused, stale by pid or by
heartbeat, taken over by exactly one of several), then the commands: two
fits on one work directory, started together and one after the other,
plain and ``--resume``; a lock left by a SIGKILLed fit; ``prep`` and an MPI
``scalemap`` refused while a lock is held.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import MPIEXEC, hpcxt_command, mpi_env, run_hpcxt
from fit_fixtures import make_fit_workdir
from hpcxt.errors import InputError
from hpcxt.io.checkpoint import read_results
from hpcxt.io.lock import LOCK_NAME, TOKEN_ENV, WorkdirLock, workdir_lock

ROOT = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(workdir: Path, **info) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_NAME
    base = {"host": socket.gethostname(), "pid": os.getpid(), "command": "fit",
            "started": "2026-01-01T00:00:00+00:00", "token": "t0"}
    path.write_text(json.dumps({**base, **info}))
    return path


# --------------------------------------------------------------------------
# the rules


def test_taken_refused_and_given_back(tmp_path):
    work = tmp_path / "work"
    with workdir_lock(work, "fit") as lock:
        info = json.loads((work / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "fit"
        assert info["host"] == socket.gethostname() and info["token"] == lock.token
        with pytest.raises(InputError) as exc:
            WorkdirLock(work, "scalemap").acquire()
        text = str(exc.value)
        assert text.startswith(f"{work}: another hpcxt job is writing to this work directory: "
                               f"fit on host {socket.gethostname()}, pid {os.getpid()}, "
                               f"started {info['started']}")
        assert "\n" not in text
    assert not (work / LOCK_NAME).exists()
    with workdir_lock(work, "prep"):
        pass


def test_a_dead_process_lock_on_this_host_is_taken_over(tmp_path, caplog):
    work = tmp_path / "work"
    write_lock(work, pid=dead_pid(), command="run")
    with caplog.at_level(logging.WARNING, logger="hpcxt.lock"):
        with workdir_lock(work, "fit") as lock:
            assert json.loads((work / LOCK_NAME).read_text())["token"] == lock.token
    assert "took over the stale lock of run" in caplog.text and "is gone" in caplog.text


def test_a_killed_but_unreaped_process_does_not_keep_a_lock(tmp_path):
    # MPI ranks whose launcher was killed are reparented and may stay zombies
    # for a while: os.kill(pid, 0) still succeeds on them.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z":
            time.sleep(0.01)
        write_lock(tmp_path, pid=child.pid)
        with workdir_lock(tmp_path, "fit"):
            pass
    finally:
        child.wait()


def test_a_reused_pid_does_not_keep_a_lock(tmp_path):
    # Our own pid, but another process start time: the pid was reused.
    write_lock(tmp_path, proc_start="1")
    with workdir_lock(tmp_path, "fit"):
        pass


def test_another_hosts_lock_is_stale_only_without_heartbeat(tmp_path, caplog):
    path = write_lock(tmp_path, host="node-elsewhere", pid=12345)
    with pytest.raises(InputError, match="fit on host node-elsewhere, pid 12345"):
        WorkdirLock(tmp_path, "fit", stale_after=60).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))
    with caplog.at_level(logging.WARNING, logger="hpcxt.lock"):
        with workdir_lock(tmp_path, "fit", stale_after=60):
            pass
    assert "no heartbeat for 120 s" in caplog.text


def test_a_live_process_on_this_host_is_never_overridden(tmp_path):
    path = write_lock(tmp_path)  # this very process
    old = time.time() - 10_000
    os.utime(path, (old, old))
    with pytest.raises(InputError, match="another hpcxt job"):
        WorkdirLock(tmp_path, "fit", stale_after=60).acquire()


def test_heartbeat_refreshes_the_lock(tmp_path):
    with workdir_lock(tmp_path, "fit", stale_after=1.0, heartbeat=0.05):
        path = tmp_path / LOCK_NAME
        old = time.time() - 100
        os.utime(path, (old, old))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 1.0


def test_a_lock_being_written_is_held(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")
    with pytest.raises(InputError, match="a job that is starting"):
        WorkdirLock(tmp_path, "fit").acquire()
    old = time.time() - 60
    os.utime(tmp_path / LOCK_NAME, (old, old))
    with workdir_lock(tmp_path, "fit"):
        pass


def test_a_parents_token_lets_its_stages_run(tmp_path):
    with workdir_lock(tmp_path, "run") as parent:
        with workdir_lock(tmp_path, "scalemap", token=parent.token) as child:
            assert child.inherited and child.child_token == parent.token
        assert (tmp_path / LOCK_NAME).exists()  # the child leaves the parent's lock alone
        with pytest.raises(InputError, match="run on host"):
            WorkdirLock(tmp_path, "fit", token="not-the-token").acquire()
    assert not (tmp_path / LOCK_NAME).exists()


def test_one_of_many_takes_over_a_stale_lock(tmp_path):
    """Eight processes find the same stale lock at the same moment: one wins."""
    work = tmp_path / "work"
    write_lock(work, pid=dead_pid())
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from hpcxt.errors import InputError
        from hpcxt.io.lock import WorkdirLock
        time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
        try:
            lock = WorkdirLock({str(work)!r}, "fit").acquire()
        except InputError:
            sys.exit(2)
        time.sleep(1.0)
        lock.release()
    """)
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", script, str(start)], env=mpi_env())
             for _ in range(8)]
    codes = sorted(p.wait(timeout=60) for p in procs)
    assert codes == [0] + [2] * 7
    assert not (work / LOCK_NAME).exists()
    assert not (work / (LOCK_NAME + ".takeover")).exists()


def test_a_takeover_in_progress_is_waited_for_and_a_dead_one_removed(tmp_path, monkeypatch):
    import hpcxt.io.lock as lock_module

    monkeypatch.setattr(lock_module, "_TAKEOVER_WAIT_SECONDS", 0.3)
    write_lock(tmp_path, pid=dead_pid())
    takeover = tmp_path / (LOCK_NAME + ".takeover")
    takeover.write_text("")
    with pytest.raises(InputError, match="is gone; another job is taking it over, or remove"):
        WorkdirLock(tmp_path, "fit").acquire()
    old = time.time() - 120
    os.utime(takeover, (old, old))
    with workdir_lock(tmp_path, "fit"):
        assert not takeover.exists()


def test_workdir_that_is_a_file_is_refused_before_locking(tmp_path):
    (tmp_path / "work").write_text("not a folder")
    with pytest.raises(InputError, match="workdir: work directory is a file"):
        WorkdirLock(tmp_path / "work", "fit").acquire()


# --------------------------------------------------------------------------
# the commands


N_SIDE = 3  # 9 regions: a few seconds of fitting on one worker


@pytest.fixture(scope="module")
def fit_cfg(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lock_fit")
    return make_fit_workdir(root, n_side=N_SIDE, errors="covar", checkpoint_seconds=0.0,
                            batch_size=1)


def copy_workdir(cfg: Path, dst: Path) -> Path:
    shutil.copytree(cfg.parent, dst, ignore=shutil.ignore_patterns("fit"))
    return dst / "config.yaml"


def start_fit(cfg: Path, *extra, nprocs: int = 2, faults: dict | None = None) -> subprocess.Popen:
    cmd = hpcxt_command("fit", cfg, *extra, nprocs=nprocs, faults=faults)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mpi_env())


def lock_holder(work: Path, timeout: float = 60.0) -> int:
    """pid in the lock file, once a live process holds it (not a stale lock left behind)."""
    path = work / LOCK_NAME
    end = time.time() + timeout
    while time.time() < end:
        try:
            pid = int(json.loads(path.read_text())["pid"])
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError, KeyError):
            time.sleep(0.02)
    raise AssertionError(f"no live lock holder appeared in {work}")


def race(cfg: Path, *extra, stagger: bool):
    """Two fits on one work directory; returns (winner, loser) CompletedProcess-like tuples.

    The holder of the lock is stopped (SIGSTOP) while the other one starts
    and meets the lock, so the two always overlap however loaded the
    machine; results.h5 is read every few ms throughout and must always read.
    """
    if not MPIEXEC.exists():
        pytest.skip(f"needs the venv's mpiexec at {MPIEXEC} (pip install mpich)")
    work = cfg.parent / "work"
    results = work / "fit" / "results.h5"
    first = start_fit(cfg, *extra)
    if stagger:
        holder = lock_holder(work)
        os.kill(holder, signal.SIGSTOP)
        second = start_fit(cfg, *extra)
    else:
        second = start_fit(cfg, *extra)
        holder = lock_holder(work)
        os.kill(holder, signal.SIGSTOP)
    reads = 0
    try:
        loser = None
        end = time.time() + 120
        while loser is None and time.time() < end:
            for p in (first, second):
                if p.poll() is not None:
                    loser = p
            if results.exists():
                read_results(results)  # never unreadable, even mid-checkpoint
                reads += 1
            time.sleep(0.01)
    finally:
        os.kill(holder, signal.SIGCONT)
    assert loser is not None, "neither fit ended while the lock holder was stopped"
    winner = second if loser is first else first
    while winner.poll() is None:
        if results.exists():
            read_results(results)
            reads += 1
        time.sleep(0.01)
    out = {p: p.communicate(timeout=120) for p in (winner, loser)}
    return (winner.returncode, *out[winner]), (loser.returncode, *out[loser]), holder, reads


def assert_refused(loser, holder: int):
    code, _, err = loser
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("hpcxt: error:")]
    assert len(lines) == 1, err[-3000:]
    assert "another hpcxt job is writing to this work directory: fit on host " \
        f"{socket.gethostname()}, pid {holder}, started " in lines[0]


@pytest.mark.mpi
@pytest.mark.parametrize("stagger", [False, True], ids=["together", "staggered"])
def test_two_fits_on_one_workdir(fit_cfg, tmp_path, stagger):
    cfg = copy_workdir(fit_cfg, tmp_path / "w")
    winner, loser, holder, reads = race(cfg, stagger=stagger)
    assert winner[0] == 0, winner[2][-3000:]
    assert_refused(loser, holder)
    res = read_results(cfg.parent / "work" / "fit" / "results.h5")
    assert res.complete and res.runs == 1 and len(res) == N_SIDE ** 2
    assert reads > 0
    assert not (cfg.parent / "work" / LOCK_NAME).exists()


@pytest.mark.mpi
@pytest.mark.parametrize("stagger", [False, True], ids=["together", "staggered"])
def test_two_resumes_on_one_workdir(fit_cfg, tmp_path, stagger):
    cfg = copy_workdir(fit_cfg, tmp_path / "w")
    # A serial fit that kills itself after its 3rd checkpoint, leaving its lock.
    proc = subprocess.run(hpcxt_command("fit", cfg, faults={"kill_after_checkpoint": 3}),
                          capture_output=True, text=True, timeout=120, env=mpi_env())
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (cfg.parent / "work" / LOCK_NAME).exists()
    before = read_results(cfg.parent / "work" / "fit" / "results.h5")
    assert not before.complete
    winner, loser, holder, _ = race(cfg, "--resume", stagger=stagger)
    assert winner[0] == 0, winner[2][-3000:]
    if stagger:  # alone at first, it found the killed run's lock (together, either may remove it)
        assert "took over the stale lock" in winner[2]
    assert_refused(loser, holder)
    res = read_results(cfg.parent / "work" / "fit" / "results.h5")
    assert res.complete and res.runs == 2  # the killed run and one resume, not two


@pytest.mark.mpi
def test_lock_of_a_sigkilled_fit_is_taken_over(fit_cfg, tmp_path):
    cfg = copy_workdir(fit_cfg, tmp_path / "w")
    work = cfg.parent / "work"
    job = start_fit(cfg, faults={"fit_delay": 0.2})
    holder = lock_holder(work)
    while not (work / "fit" / "results.h5").exists():
        time.sleep(0.02)
    os.kill(holder, signal.SIGKILL)  # the master, which holds the lock
    job.communicate(timeout=60)
    assert job.returncode != 0
    assert json.loads((work / LOCK_NAME).read_text())["pid"] == holder
    proc = run_hpcxt("fit", cfg, "--resume", nprocs=2, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"took over the stale lock of fit on host {socket.gethostname()}, pid {holder}" \
        in proc.stderr and f"process {holder} is gone" in proc.stderr
    assert read_results(work / "fit" / "results.h5").complete
    assert not (work / LOCK_NAME).exists()


def test_prep_is_refused_while_the_workdir_is_locked(fit_cfg, tmp_path):
    cfg = copy_workdir(fit_cfg, tmp_path / "w")
    with workdir_lock(cfg.parent / "work", "run"):
        proc = run_hpcxt("prep", cfg, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("hpcxt: error:")]
    assert len(err) == 1 and f"run on host {socket.gethostname()}, pid {os.getpid()}" in err[0]


@pytest.mark.mpi
def test_mpi_scalemap_refusal_reaches_every_rank(fit_cfg, tmp_path):
    cfg = copy_workdir(fit_cfg, tmp_path / "w")
    with workdir_lock(cfg.parent / "work", "fit"):
        t0 = time.time()
        proc = run_hpcxt("scalemap", cfg, nprocs=3, timeout=60)
        seconds = time.time() - t0
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("hpcxt: error:")]
    assert len(err) == 1 and f"fit on host {socket.gethostname()}, pid {os.getpid()}" in err[0]
    assert seconds < 50  # ended, not hung on the ranks that did not take the lock


def test_token_in_the_environment_is_honoured_only_when_it_matches(tmp_path, monkeypatch):
    with workdir_lock(tmp_path, "run") as parent:
        monkeypatch.setenv(TOKEN_ENV, parent.token)
        with workdir_lock(tmp_path, "fit") as child:
            assert child.inherited
        monkeypatch.setenv(TOKEN_ENV, "stale-token")
        with pytest.raises(InputError):
            with workdir_lock(tmp_path, "fit"):
                pass
