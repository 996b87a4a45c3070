"""results.h5: round trip, crash safety of the write-aside protocol, input hashes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from hpcxt.errors import InputError
from hpcxt.fit import FitRecord, RecordBatch
from hpcxt.schema import Status
from hpcxt.io.checkpoint import (FitResults, StagedResults, changed_keys, fit_inputs,
                                 inputs_hash, read_results, write_results)
from hpcxt.io.config import validate

INPUTS = {"cluster": {"nh": 0.03, "redshift": 0.1, "abundance": 0.3},
          "fit": {"model": "xsphabs*xsbremss", "kT_init": 8.0}}


def _batch(ids, status=Status.OK, reason="", nobs=2, kT=5.0):
    recs = []
    for i in ids:
        r = FitRecord(nobs, kT=kT + i, kT_lo=kT + i - 0.5, kT_hi=kT + i + 0.7, norm=1e-4 * i,
                      stat=100.0 + i, dof=90, status=status, reason=reason, fit_seconds=0.01)
        r.counts[:] = [10 * i, 3 * i]
        r.bkg_counts[:] = [i, 2 * i]
        recs.append(r)
    return RecordBatch.from_records(ids, recs, nobs, worker=3)


def _results(n=10):
    res = FitResults.new(n, ["100", "200"], INPUTS, region_table_hash="tabhash",
                         bundle_hash="bhash", bundle_config_hash="bchash")
    res.record(_batch([2, 5, 7]))
    res.record(_batch([3, 4], status=Status.FAILED, reason="too few counts (12 < 100)"))
    res.record(_batch([8], status=Status.FAILED, reason="RuntimeError: ünïcode ✓"))
    return res


def test_round_trip_keeps_every_column_and_attribute(tmp_path):
    res = _results()
    res.checkpoints, res.runs, res.run_seconds = 4, 2, 12.5
    path = write_results(tmp_path / "results.h5", res)
    back = read_results(path)
    assert back.same_results(res) == []
    assert list(back.reason) == list(res.reason)
    np.testing.assert_array_equal(back.worker, res.worker)
    np.testing.assert_array_equal(back.fit_seconds, res.fit_seconds)
    assert back.reason[8] == "RuntimeError: ünïcode ✓"
    assert back.reason[0] == "" and back.status[0] == 0
    assert (back.config_hash, back.region_table_hash, back.bundle_hash,
            back.bundle_config_hash) == (inputs_hash(INPUTS), "tabhash", "bhash", "bchash")
    assert back.fit_inputs == INPUTS
    assert (back.checkpoints, back.runs, back.run_seconds) == (4, 2, 12.5)
    assert (back.n_ok, back.n_failed, back.n_pending) == (3, 3, 4)
    assert not back.complete
    with h5py.File(path, "r", locking=False) as f:
        assert f.attrs["n_pending"] == 4 and not f.attrs["complete"]
        # Repeated reasons are stored once.
        assert len(f["reason_text"]) == 3


def test_staged_final_checkpoint_equals_a_whole_one(tmp_path):
    """Written ahead, then patched with rows fitted since (one of them with a
    reason not seen before): the same results and attributes as a whole
    write, and results.h5 untouched until the commit."""
    path = tmp_path / "results.h5"
    res = _results()
    write_results(path, res)
    before = path.read_bytes()
    staged = StagedResults(path, res)
    res.record(_batch([0, 9], kT=7.0))
    res.record(_batch([1], status=Status.FAILED, reason="a reason new since staging"))
    res.checkpoints, res.run_seconds = 5, 3.5
    assert path.read_bytes() == before and staged.file.tmp.exists()
    staged.commit(res, [0, 1, 9])
    assert not staged.file.tmp.exists()
    back = read_results(path)
    whole = read_results(write_results(tmp_path / "whole.h5", res))
    assert back.same_results(res) == [] and back.same_results(whole) == []
    assert list(back.reason) == list(res.reason) and back.reason[1] == "a reason new since staging"
    np.testing.assert_array_equal(back.fit_seconds, res.fit_seconds)
    assert (back.checkpoints, back.run_seconds, back.n_pending) == (5, 3.5, 1)
    # an abandoned stage leaves results.h5 as it was and no temporary file
    after = path.read_bytes()
    StagedResults(path, res).abandon()
    assert path.read_bytes() == after and list(tmp_path.glob(".*.tmp")) == []


def test_record_puts_rows_at_their_region_ids():
    res = _results()
    assert res.kT[5] == 10.0 and res.counts[7].tolist() == [70, 21]
    assert res.worker[2] == 3 and res.worker[0] == -1
    np.testing.assert_array_equal(res.pending_ids(), [0, 1, 6, 9])


def test_same_results_sees_a_one_bit_change():
    a, b = _results(), _results()
    assert a.same_results(b) == []
    b.kT[5] = np.nextafter(b.kT[5], 100.0)
    b.reason[3] = "other"
    assert a.same_results(b) == ["kT", "reason"]


def test_failure_summary_groups_numbers():
    res = _results()
    res.record(_batch([9], status=Status.FAILED, reason="too few counts (40 < 100)"))
    top = res.failure_summary()
    assert top[0] == (3, "too few counts (N < N)")
    assert top[1] == (1, "RuntimeError: ünïcode ✓")


def test_interrupted_write_leaves_previous_checkpoint(tmp_path):
    path = tmp_path / "results.h5"
    first = _results()
    write_results(path, first)
    second = _results()
    second.record(_batch([0, 1, 6, 9]))

    class Died(Exception):
        pass

    def die():
        raise Died

    with pytest.raises(Died):
        write_results(path, second, midway=die)
    # An error removes the writer's temporary file; the old checkpoint stays.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.h5"]
    assert read_results(path).same_results(first) == []
    write_results(path, second)
    assert read_results(path).complete


def test_sigkill_mid_write_leaves_a_readable_file(tmp_path):
    """A real SIGKILL while the temporary file is half written."""
    path = tmp_path / "results.h5"
    write_results(path, _results())
    code = textwrap.dedent(f"""
        import os, signal
        from hpcxt.io.checkpoint import read_results, write_results
        res = read_results({str(path)!r})
        res.status[:] = 1
        write_results({str(path)!r}, res,
                      midway=lambda: os.kill(os.getpid(), signal.SIGKILL))
    """)
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -9
    tmps = list(tmp_path.glob(".results.h5.*.tmp"))
    assert len(tmps) == 1 and tmps[0].stat().st_size > 0
    back = read_results(path)
    assert back.same_results(_results()) == []
    assert back.n_pending == 4


def test_read_results_reports_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_results(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(InputError, match="not a readable HDF5"):
        read_results(junk)
    path = write_results(tmp_path / "r.h5", _results())
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(InputError, match="format 99"):
        read_results(path)
    path = write_results(tmp_path / "r2.h5", _results())
    with h5py.File(path, "a") as f:
        del f["kT_hi"]
    with pytest.raises(InputError) as err:
        read_results(path)
    assert err.value.field == "kT_hi"


def _cfg(**fit):
    raw = {"cluster": {"name": "c", "redshift": 0.1, "nh": 0.03},
           "observations": [{"obsid": "1"}], "fit": fit}
    return validate(raw, ".", check_files=False)


def test_fit_inputs_ignore_run_settings_but_see_science_settings():
    base = fit_inputs(_cfg())
    assert inputs_hash(fit_inputs(_cfg(batch_size=7, checkpoint_seconds=5))) == inputs_hash(base)
    changed = fit_inputs(_cfg(kT_init=5.0))
    assert inputs_hash(changed) != inputs_hash(base)
    assert changed_keys(base, changed) == ["fit.kT_init (8.0 -> 5.0)"]
    other = _cfg()
    raw = other.to_dict()
    raw["cluster"]["nh"] = 0.05
    raw["cluster"]["name"] = "renamed"
    renamed = validate(raw, ".", check_files=False)
    assert changed_keys(base, fit_inputs(renamed)) == ["cluster.nh (0.03 -> 0.05)"]
