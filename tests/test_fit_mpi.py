"""``hpcxt fit`` under MPI: same results on 1, 2, 3 ranks, crash safety, restart.

Each test builds a small synthetic workdir (tests/fit_fixtures.py: 36
regions, two observations, ``xsphabs*xsbremss``) and runs ``hpcxt fit`` in a
subprocess, under the venv's mpiexec where ``nprocs`` is given.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import hpcxt_command, mpi_env, run_hpcxt
from fit_fixtures import make_fit_workdir
from hpcxt.errors import EXIT_CHECKPOINTED
from hpcxt.schema import Status
from hpcxt.io.checkpoint import read_results

N_REGIONS = 36


def results(cfg: Path):
    return read_results(cfg.parent / "work" / "fit" / "results.h5")


def fit(cfg, *extra, nprocs=None, faults=None, timeout=240):
    """Run ``hpcxt fit``, with faults injected through tests/fault_launcher.py."""
    return run_hpcxt("fit", cfg, *extra, nprocs=nprocs, faults=faults, timeout=timeout)


def copy_workdir(src_cfg: Path, dst: Path) -> Path:
    """A copy of a fixture workdir without fit results."""
    shutil.copytree(src_cfg.parent, dst, ignore=shutil.ignore_patterns("fit"))
    return dst / "config.yaml"


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory) -> Path:
    """Inputs only (no fit yet): covar errors, checkpoint after every batch."""
    root = tmp_path_factory.mktemp("fitmpi_base")
    return make_fit_workdir(root, errors="covar", checkpoint_seconds=0.0, batch_size=2)


@pytest.fixture(scope="module")
def reference(base_cfg, tmp_path_factory):
    """Uninterrupted serial run (no MPI launcher): the results every run must match."""
    cfg = copy_workdir(base_cfg, tmp_path_factory.mktemp("fitmpi_ref") / "w")
    proc = fit(cfg)
    assert proc.returncode == 0, proc.stderr
    return results(cfg)


def _assert_same(res, ref):
    assert res.complete
    assert res.same_results(ref) == []


# --------------------------------------------------------------------------
# serial run, results, status


def test_serial_run_completes_with_expected_records(reference, base_cfg):
    ref = reference
    assert len(ref) == N_REGIONS and ref.complete
    assert ref.status[0] == Status.FAILED and ref.reason[0].startswith("too few counts (")
    assert ref.status[1] == Status.FAILED
    assert ref.reason[1] == "no observation covers >= min_obs_fraction (0.09)"
    ok = ref.status == Status.OK
    assert ok.sum() >= N_REGIONS - 4
    assert np.all(ref.kT_lo[ok] < ref.kT[ok]) and np.all(ref.kT[ok] < ref.kT_hi[ok])
    # Observation 1 does not cover the last column: its counts are 0 there.
    last_col = np.arange(N_REGIONS) % 6 == 5
    assert np.all(ref.counts[last_col, 1] == 0) and np.all(ref.counts[~last_col & ok, 1] > 0)
    assert np.all(ref.worker[2:] == 0)
    truth = np.load(base_cfg.parent / "kT_true.npy")
    sigma = np.where(ref.kT < truth, ref.kT_hi - ref.kT, ref.kT - ref.kT_lo)
    pulls = ((ref.kT - truth) / sigma)[ok]
    assert np.mean(np.abs(pulls) < 3) > 0.9


def test_status_and_up_to_date(reference, base_cfg, tmp_path):
    cfg = copy_workdir(base_cfg, tmp_path / "w")
    assert fit(cfg).returncode == 0
    proc = run_hpcxt("status", cfg)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"regions: {N_REGIONS}: " in out and " 0 pending (100.0% final)" in out
    assert "fits/s" in out and "time left: done" in out
    assert "1 x too few counts (N < N)" in out
    assert "1 x no observation covers >= min_obs_fraction (N)" in out
    before = (cfg.parent / "work" / "fit" / "results.h5").stat().st_mtime_ns
    again = fit(cfg)
    assert again.returncode == 0 and "up to date" in again.stderr
    assert (cfg.parent / "work" / "fit" / "results.h5").stat().st_mtime_ns == before


# --------------------------------------------------------------------------
# ranks


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2, 3])
def test_results_identical_for_1_2_3_ranks(reference, base_cfg, tmp_path, nprocs):
    cfg = copy_workdir(base_cfg, tmp_path / "w")
    proc = fit(cfg, nprocs=nprocs)
    assert proc.returncode == 0, proc.stderr
    res = results(cfg)
    _assert_same(res, reference)
    fitted = res.worker[res.worker >= 0]
    if nprocs == 1:
        assert set(fitted.tolist()) == {0}
    else:
        assert set(fitted.tolist()) <= set(range(1, nprocs)) and 0 not in fitted
    if nprocs == 3:
        assert "[rank 0]" in proc.stderr and "fits/s" in proc.stderr


@pytest.mark.mpi
def test_failing_fit_gives_failed_record_and_job_completes(reference, base_cfg, tmp_path):
    cfg = copy_workdir(base_cfg, tmp_path / "w")
    proc = fit(cfg, nprocs=3, faults={"fail_regions": [3, 7]})
    assert proc.returncode == 0, proc.stderr
    res = results(cfg)
    assert res.complete
    for i in (3, 7):
        assert res.status[i] == Status.FAILED
        assert res.reason[i] == f"RuntimeError: injected failure for region {i} (test hook)"
    others = np.setdiff1d(np.arange(N_REGIONS), [3, 7])
    np.testing.assert_array_equal(res.kT[others], reference.kT[others])


@pytest.mark.mpi
def test_dead_rank_aborts_the_job_quickly(base_cfg, tmp_path):
    """A SIGKILLed worker ends the job; a hang would hit the subprocess timeout.

    The timeout covers start-up (imports, bundle) on shared cores; MPICH
    aborts the remaining ranks within a fraction of a second of the kill.
    """
    cfg = copy_workdir(base_cfg, tmp_path / "w")
    # slowed fits: the other worker cannot take all the work before rank 2's
    # first batch (template fits take milliseconds)
    proc = fit(cfg, nprocs=3, faults={"kill_worker": 2, "fit_delay": 0.2}, timeout=90)
    assert proc.returncode != 0
    # What was checkpointed is still resumable.
    res = results(cfg)
    assert not res.complete


# --------------------------------------------------------------------------
# restart


def test_without_resume_an_unfinished_file_is_refused(base_cfg, tmp_path):
    cfg = copy_workdir(base_cfg, tmp_path / "w")
    proc = fit(cfg, faults={"kill_after_checkpoint": 4})
    assert proc.returncode == -signal.SIGKILL
    before = results(cfg)
    proc = fit(cfg)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("hpcxt: error: ") and "pass --resume" in lines[-1]
    assert "results.h5" in lines[-1]
    assert results(cfg).same_results(before) == []


def test_resume_with_changed_config_is_refused(base_cfg, tmp_path):
    cfg = copy_workdir(base_cfg, tmp_path / "w")
    proc = fit(cfg, faults={"kill_after_checkpoint": 3})
    assert proc.returncode == -signal.SIGKILL
    text = cfg.read_text()
    cfg.write_text(text.replace("kT_init: 8.0", "kT_init: 6.0"))
    proc = fit(cfg, "--resume")
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len([ln for ln in err if "error" in ln]) == 1
    assert err[-1].startswith("hpcxt: error: ")
    assert "config_hash: fit.kT_init (8.0 -> 6.0) changed since this file was written" \
        in err[-1]
    # Batch size and checkpoint interval are not part of the results.
    cfg.write_text(text.replace("batch_size: 2", "batch_size: 5"))
    proc = fit(cfg, "--resume")
    assert proc.returncode == 0, proc.stderr


def test_resume_with_changed_region_table_is_refused(base_cfg, tmp_path):
    from hpcxt.io.regions_table import read_regions, write_regions

    cfg = copy_workdir(base_cfg, tmp_path / "w")
    proc = fit(cfg, faults={"kill_after_checkpoint": 2})
    assert proc.returncode == -signal.SIGKILL
    path = cfg.parent / "work" / "acb" / "regions.h5"
    table = read_regions(path)
    table.radius_sky[5] *= 1.1
    write_regions(path, table)
    proc = fit(cfg, "--resume")
    assert proc.returncode == 2
    assert "region_table_hash: the region table" in proc.stderr.strip().splitlines()[-1]


#: One kill at each kind of moment (each a different code path on resume);
#: more moments of the same kind would test the same path again.
KILL_POINTS = [
    ("kill_in_checkpoint", 1),     # before any checkpoint exists
    ("kill_after_batches", 2),     # results received, not yet written
    ("kill_after_checkpoint", 3),  # between checkpoints
    ("kill_in_checkpoint", 4),     # halfway through writing the 4th
]


@pytest.mark.mpi
@pytest.mark.parametrize("hook,n", KILL_POINTS,
                         ids=[f"{h}-{n}" for h, n in KILL_POINTS])
def test_sigkill_then_resume_matches_uninterrupted_run(reference, base_cfg, tmp_path, hook, n):
    cfg = copy_workdir(base_cfg, tmp_path / "w")
    out = cfg.parent / "work" / "fit"
    proc = fit(cfg, nprocs=2, faults={hook: n})
    assert proc.returncode != 0, proc.stderr
    if hook == "kill_in_checkpoint":
        assert list(out.glob(".results.h5.*.tmp")), "the killed write left its temporary file"
    if (hook, n) == ("kill_in_checkpoint", 1):
        assert not (out / "results.h5").exists()
    else:
        partial = results(cfg)
        assert not partial.complete
    proc = fit(cfg, "--resume", nprocs=2)
    assert proc.returncode == 0, proc.stderr
    _assert_same(results(cfg), reference)


def _popen_fit(cfg, nprocs, faults, *extra):
    cmd = hpcxt_command("fit", cfg, *extra, nprocs=nprocs, faults=faults)
    return subprocess.Popen(cmd, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _kill_ranks_of(cfg):
    """SIGKILL every process whose command line names ``cfg`` (found through /proc)."""
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(cfg).encode() in argv and int(proc_dir.name) != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc_dir.name), signal.SIGKILL)


def _wait_for_progress(cfg, proc, min_final=4, timeout=120):
    """Wait until results.h5 shows some finished regions."""
    path = cfg.parent / "work" / "fit" / "results.h5"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        if path.exists():
            try:
                if results(cfg).n_final >= min_final:
                    return
            except Exception:
                pass  # being replaced right now
        time.sleep(0.05)
    raise AssertionError("no progress")


@pytest.mark.mpi
def test_sigkill_of_the_whole_job_at_a_random_moment(reference, base_cfg, tmp_path):
    cfg = copy_workdir(base_cfg, tmp_path / "w")
    proc = _popen_fit(cfg, 3, {"fit_delay": 0.02})
    _wait_for_progress(cfg, proc, min_final=2)
    time.sleep(random.Random(7).uniform(0.0, 1.5))
    os.killpg(proc.pid, signal.SIGKILL)
    # Hydra starts each rank in a session of its own, so killing mpiexec's
    # process group leaves the ranks running to the end; kill them too (the
    # work directory's lock would rightly refuse a resume while they run).
    _kill_ranks_of(cfg)
    proc.communicate(timeout=60)
    resumed = fit(cfg, "--resume", nprocs=3)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same(results(cfg), reference)


@pytest.mark.mpi
def test_scheduler_signal_checkpoints_and_exits_85(reference, base_cfg, tmp_path):
    """The wall-time warning under MPI (SIGTERM takes the same path: the
    master handles both alike; test_serial_run_stops_on_sigterm_with_85)."""
    cfg = copy_workdir(base_cfg, tmp_path / "w")
    proc = _popen_fit(cfg, 3, {"fit_delay": 0.3})
    _wait_for_progress(cfg, proc, min_final=3)
    # mpiexec forwards the signal to every rank, as a scheduler's would reach them.
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_CHECKPOINTED, err
    assert "continue with 'hpcxt fit --resume'" in err
    res = results(cfg)
    assert 0 < res.n_pending < N_REGIONS
    status = run_hpcxt("status", cfg)
    assert f"{res.n_pending} pending" in status.stdout and "complete: no" in status.stdout
    resumed = fit(cfg, "--resume", nprocs=3)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same(results(cfg), reference)


@pytest.mark.mpi
def test_workers_still_fitting_after_the_grace_period_are_not_waited_for(reference, base_cfg,
                                                                        tmp_path):
    """Checkpoint, then MPI_Abort(85) at once: no wait for the batches in flight."""
    cfg = copy_workdir(base_cfg, tmp_path / "w")
    proc = _popen_fit(cfg, 3, {"fit_delay": 1.5, "signal_grace": 0.3})
    _wait_for_progress(cfg, proc, min_final=2)
    # just after the first batches came in: both workers are early in their second
    # (batch_size 2 at 1.5 s a region: 3 s)
    proc.send_signal(signal.SIGUSR1)
    # a master that waited for them would hang here (a worker's last report
    # never received, the counter's collective close never completed)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_CHECKPOINTED, err
    assert "still fitting after 0.3 s; their regions stay pending, and the job ends with " \
           "status 85 (MPI_Abort)" in err
    partial = results(cfg)
    assert 0 < partial.n_pending < N_REGIONS
    # what was recorded is final and right (a resume is tested above)
    done = partial.status != Status.PENDING
    np.testing.assert_array_equal(partial.kT[done], reference.kT[done])


def test_serial_run_stops_on_sigterm_with_85(reference, base_cfg, tmp_path):
    cfg = copy_workdir(base_cfg, tmp_path / "w")
    proc = _popen_fit(cfg, None, {"fit_delay": 0.3})
    _wait_for_progress(cfg, proc, min_final=3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_CHECKPOINTED, err
    assert not results(cfg).complete
    resumed = fit(cfg, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _assert_same(results(cfg), reference)


# --------------------------------------------------------------------------
# end to end on the simulator's small preset


@pytest.mark.mpi
@pytest.mark.slow
def test_fit_recovers_simulated_cluster_temperatures(prepped_small, tmp_path):
    """scalemap + fit of the simulated cluster; pulls against the true kT map.

    Only regions whose circle lies inside one temperature zone (centre in
    the zone interiors of truth/zones.fits, radius within their margin)
    have a single true temperature.
    """
    from astropy.io import fits

    from hpcxt.io.regions_table import read_regions

    src = prepped_small.parent
    shutil.copytree(src, tmp_path / "sim", ignore=shutil.ignore_patterns("acb", "fit", "maps"))
    cfg = tmp_path / "sim" / "config.yaml"
    proc = run_hpcxt("scalemap", cfg, nprocs=2, timeout=600)
    assert proc.returncode == 0, proc.stderr
    proc = fit(cfg, nprocs=3, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    res = results(cfg)
    table = read_regions(cfg.parent / "work" / "acb" / "regions.h5")
    assert res.complete and len(res) == len(table)
    with fits.open(cfg.parent / "truth" / "temperature.fits") as t, \
            fits.open(cfg.parent / "truth" / "zones.fits") as z:
        kT_map, zones, h = t[0].data, z[0].data, t[0].header
        margin_arcsec = float(z[0].header["MARGIN"])
    col = np.floor((table.x - h["CRVAL1P"]) / h["CDELT1P"]).astype(int)
    row = np.floor((table.y - h["CRVAL2P"]) / h["CDELT2P"]).astype(int)
    truth, zone = kT_map[row, col].astype(float), zones[row, col]
    inside = (res.status == Status.OK) & (zone > 0) & (table.radius_sky * 0.492 <= margin_arcsec)
    assert inside.sum() >= 30
    assert len(set(zone[inside].tolist())) == 3
    assert res.n_failed <= 0.05 * len(res)
    sigma = np.where(res.kT < truth, res.kT_hi - res.kT, res.kT - res.kT_lo)
    pulls = ((res.kT - truth) / sigma)[inside]
    assert abs(pulls.mean()) < 0.3, pulls.mean()
    assert np.mean(np.abs(pulls) < 2) >= 0.95, np.mean(np.abs(pulls) < 2)


# --------------------------------------------------------------------------
# batch sizes with batch_size: auto (no MPI)


def test_auto_batch_size_is_guided_and_never_tiny():
    from hpcxt.fit_mpi import (MAX_AUTO_BATCH, MIN_BATCH_SECONDS, TARGET_BATCH_SECONDS,
                               auto_batch_size)

    # no fit time known yet: one region
    assert auto_batch_size(None, 100_000, 1023) == 1
    # about TARGET_BATCH_SECONDS of work; Sherpa-like fits one at a time
    assert auto_batch_size(0.01, 100_000, 1023) == int(TARGET_BATCH_SECONDS / 0.01) == 10
    assert auto_batch_size(0.17, 100_000, 1023) == 1
    # the tail: half a worker's share of what is left, down to one region
    assert auto_batch_size(1e-3, 300, 3) == 50
    assert auto_batch_size(0.17, 1, 1023) == 1
    # fast fits on many workers: half a share (49 regions) ...
    assert auto_batch_size(1e-3, 100_000, 1023) == 49
    # ... down to MIN_BATCH_SECONDS of work at the tail, so that no worker
    # takes from the counter more than a few hundred times a second
    assert auto_batch_size(1e-3, 10, 1023) == int(MIN_BATCH_SECONDS / 1e-3) == 5
    assert auto_batch_size(1e-7, 10**9, 2) == MAX_AUTO_BATCH


def test_a_resumed_run_tells_the_workers_its_fit_time_and_what_is_left():
    from hpcxt.fit_mpi import REPORT_SECONDS, RunOptions, _Master, resumed_mean_fit
    from hpcxt.io.checkpoint import FitResults
    res = FitResults.new(10_000, ["1"], {"fit": {}})
    assert resumed_mean_fit(res) is None  # a fresh run measures first
    plan = _Master(RunOptions("r.h5"), res, nworkers=1023).plan()
    assert plan.mean_fit is None and plan.report_seconds == REPORT_SECONDS
    assert len(plan.todo) == 10_000 and plan.todo.starts.size == 1  # one run of ids
    res.status[:3000] = Status.OK
    res.fit_seconds[:3000] = 1e-3
    res.fit_seconds[:10] = 5.0  # a few slow ones do not set the pace
    res.status[3000:3100] = Status.FAILED  # failed before fitting: no time
    res.status[5000] = Status.OK
    assert resumed_mean_fit(res) == 1e-3
    m = _Master(RunOptions("r.h5", checkpoint_seconds=0.0), res, nworkers=100)
    plan = m.plan()
    assert plan.mean_fit == 1e-3 and plan.report_seconds == 0.0
    assert np.array_equal(plan.todo[0:len(plan.todo)], res.pending_ids())
    assert plan.todo.starts.size == 2  # 3100..4999 and 5001..9999
    assert m.batch_size() == 35  # serially: half a worker's share of the 6,899 left


def test_workers_report_more_often_as_the_run_ends():
    from hpcxt.fit_mpi import REPORT_SECONDS, REPORT_SECONDS_PER_WORKER, Plan
    from hpcxt.parallel import IdRuns
    plan = Plan(IdRuns(np.arange(10)), None, None, REPORT_SECONDS, nworkers=100)
    assert plan.report_interval(None, 10**6) == REPORT_SECONDS  # nothing measured yet
    assert plan.report_interval(1e-3, 10**6) == REPORT_SECONDS  # 10 s left
    assert plan.report_interval(1e-3, 40_000) == pytest.approx(0.1)  # 0.4 s left
    # never more often than the master can take from all of them
    assert plan.report_interval(1e-3, 10) == pytest.approx(100 * REPORT_SECONDS_PER_WORKER)
    every_batch = Plan(IdRuns(np.arange(10)), None, None, 0.0, nworkers=100)
    assert every_batch.report_interval(1e-3, 10) == 0.0


def test_id_runs_and_the_one_rank_counter():
    from hpcxt.parallel import IdRuns, WorkCounter
    ids = np.array([3, 4, 5, 9, 12, 13], dtype=np.int64)
    runs = IdRuns(ids)
    assert len(runs) == 6 and runs.starts.tolist() == [0, 3, 4]
    for lo, hi in ((0, 6), (2, 5), (4, 4), (5, 9)):
        assert np.array_equal(runs[lo:hi], ids[lo:hi])
    assert len(IdRuns(np.zeros(0, np.int64))[0:3]) == 0

    class OneRank:
        def Get_size(self):
            return 1

    counter = WorkCounter(OneRank())
    assert [counter.take(2), counter.take(3), counter.value()] == [0, 2, 5]
    counter.stop()
    assert counter.take(1) >= WorkCounter.STOPPED
    counter.close()


COUNTER_SCRIPT = """
import sys, random
import numpy as np
from mpi4py import MPI
from hpcxt.parallel import WorkCounter
comm, n = MPI.COMM_WORLD, 100_000
for rma in (True, False):
    counter = WorkCounter(comm, rma=rma)
    mine = []
    if comm.Get_rank() == 0:
        # the root serves takes (a served counter) until every rank is done
        done, st = 0, MPI.Status()
        while done < comm.Get_size() - 1:
            if comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=st):
                w, tag = st.Get_source(), st.Get_tag()
                got = comm.recv(source=w, tag=tag)
                if tag == WorkCounter.TAG_TAKE:
                    counter.serve(w, got)
                else:
                    done += 1
    else:
        rng = random.Random(comm.Get_rank())
        while True:
            k = rng.randint(1, 7)
            start = counter.take(k)
            if start >= n:
                break
            mine.extend(range(start, min(start + k, n)))
        comm.send(None, dest=0, tag=99)
    taken = comm.gather(mine, root=0)
    if comm.Get_rank() == 0:
        flat = np.sort(np.concatenate([np.asarray(t, dtype=np.int64) for t in taken]))
        ok = np.array_equal(flat, np.arange(n))
        print(f"{'rma' if rma else 'served'} window={counter.win is not None} "
              f"exactly_once={ok} ranks_with_work={sum(1 for t in taken if t)}", flush=True)
    counter.close()
"""


@pytest.mark.mpi
def test_work_counter_hands_out_every_position_exactly_once(tmp_path):
    """Two ranks taking 1-7 positions at a time as fast as they can, through
    the RMA window and through messages served by rank 0: every position of
    100,000 handed out exactly once."""
    script = tmp_path / "counter.py"
    script.write_text(COUNTER_SCRIPT)
    proc = subprocess.run([*hpcxt_command(nprocs=3)[:-2], str(script)], env=mpi_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # (how the positions split between the two ranks is up to the scheduler:
    # on 2 loaded cores one rank can take them all)
    assert any(ln.startswith("rma window=True exactly_once=True") for ln in lines), proc.stdout
    assert any(ln.startswith("served window=False exactly_once=True") for ln in lines), \
        proc.stdout


@pytest.mark.mpi
def test_final_checkpoint_written_ahead_and_counter_served_by_messages(reference, base_cfg,
                                                                      tmp_path):
    """The master writes its final checkpoint ahead (here as soon as it can)
    and at the end patches in what was fitted since; the work counter is
    served by messages, as where MPI has no one-sided communication (the
    other MPI tests use its window): the same results."""
    cfg = copy_workdir(base_cfg, tmp_path / "w")
    cfg.write_text(cfg.read_text().replace("checkpoint_seconds: 0.0", "checkpoint_seconds: 60"))
    assert "checkpoint_seconds: 60" in cfg.read_text()
    proc = fit(cfg, nprocs=3, faults={"stage_final": 1e9, "fit_delay": 0.1,
                                      "counter_messages": True})
    assert proc.returncode == 0, proc.stderr
    assert "answers every take by message" in proc.stderr
    assert "final checkpoint written" in proc.stderr, proc.stderr
    line = proc.stderr.split("final checkpoint written")[1].splitlines()[0]
    meanwhile, at_end = (int(x) for x in re.findall(r"\((\d+) rows added meanwhile, (\d+) at "
                                                     r"the end\)", line)[0])
    # staged after the first report: the rows of later ones were added to it
    assert 0 < meanwhile + at_end < N_REGIONS, line
    _assert_same(results(cfg), reference)
    assert not list((cfg.parent / "work" / "fit").glob(".results.h5.*.tmp"))
