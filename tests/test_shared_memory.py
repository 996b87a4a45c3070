"""Data once per node in MPI shared memory: the helper, and the stages with and without it.

The helper (:mod:`hpcxt.shared`) is tested in-process on COMM_SELF and
COMM_WORLD and under mpiexec with the ranks split into two pretend nodes;
the stages are run with and without ``--no-shared-memory`` on 1, 2 and 3
ranks, and must give identical outputs.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import MPIEXEC, mpi_env, run_hpcxt
from fit_fixtures import make_fit_workdir
from hpcxt.io.checkpoint import read_results
from hpcxt.shared import ALIGN, node_shared, private_arrays, share_per_node, window_layout
from hpcxt.spectra import (EventIndex, RegionSpectra, fill_sorted_events,
                           sorted_events_layout)

ARRAYS = {"counts": np.arange(12.0).reshape(3, 4), "mask": np.array([True, False, True]),
          "pi": np.arange(5, dtype=np.int32), "empty": np.zeros(0)}


def _layout():
    return {name: (a.shape, a.dtype) for name, a in ARRAYS.items()}


def _fill(arrays):
    for name, view in arrays.items():
        view[...] = ARRAYS[name]


def _check_equal_and_read_only(got):
    assert sorted(got) == sorted(ARRAYS)
    for name, a in ARRAYS.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape
        np.testing.assert_array_equal(got[name], a)
        assert not got[name].flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        got["counts"][0, 0] = -1.0


# --------------------------------------------------------------------------
# the helper, in-process


def test_window_layout_aligns_every_array():
    entries, total = window_layout({"a": ((3,), np.int8), "b": ((2, 5), np.float64),
                                    "c": ((0,), np.int64)})
    offsets = {name: off for name, _, _, off in entries}
    assert offsets == {"a": 0, "b": ALIGN, "c": ALIGN + 2 * ALIGN}
    assert total == 3 * ALIGN
    assert [(name, shape, dt) for name, shape, dt, _ in entries] == [
        ("a", (3,), "|i1"), ("b", (2, 5), "<f8"), ("c", (0,), "<i8")]


@pytest.mark.parametrize("which", ["COMM_SELF", "COMM_WORLD"])
def test_share_per_node_in_process(which):
    from mpi4py import MPI

    comm = getattr(MPI, which)
    with node_shared(comm, _layout, _fill, what="test arrays") as shared:
        assert shared.shared
        assert shared.nbytes == sum(a.nbytes for a in ARRAYS.values())
        _check_equal_and_read_only(shared)
    assert len(shared) == 0 and not shared.shared


def test_private_arrays_are_the_same_read_only_arrays():
    private = private_arrays(_layout, _fill)
    assert not private.shared
    _check_equal_and_read_only(private)


def test_disabled_shares_nothing_and_calls_nothing():
    from mpi4py import MPI

    def fail():
        raise AssertionError("layout called")

    assert share_per_node(MPI.COMM_WORLD, fail, fail, enabled=False) is None


class NoSharedMemory:
    """COMM_SELF, except that it cannot make a shared-memory communicator."""

    def __init__(self, comm):
        self.comm = comm

    def Split_type(self, *args, **kwargs):
        raise NotImplementedError("MPI_Comm_split_type")

    def __getattr__(self, name):
        return getattr(self.comm, name)


def test_unavailable_shared_memory_falls_back_with_one_log_line(caplog):
    from mpi4py import MPI

    with caplog.at_level(logging.INFO, logger="hpcxt.shared"):
        with node_shared(NoSharedMemory(MPI.COMM_SELF), _layout, _fill) as shared:
            assert shared is None
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["shared memory unavailable (NotImplementedError: MPI_Comm_split_type): "
                     "every rank keeps its own arrays"]


def test_sorted_events_give_the_spectra_of_a_private_index(tmp_path):
    """RegionSpectra over pre-sorted columns (the shared path) equals its own sort."""
    from hpcxt.io.bundle import read_bundle
    from hpcxt.io.regions_table import read_regions

    make_fit_workdir(tmp_path, n_side=3)
    bundle = read_bundle(tmp_path / "work" / "prep" / "bundle.h5")
    table = read_regions(tmp_path / "work" / "acb" / "regions.h5")
    layout = sorted_events_layout(bundle.observations)
    assert sorted(layout) == sorted(f"obs{k}/{kind}/{c}" for k in (0, 1)
                                    for kind in ("src", "bkg") for c in ("x", "y", "pi"))
    events = private_arrays(lambda: layout,
                            lambda arrays: fill_sorted_events(bundle.observations, arrays))
    ours = RegionSpectra(bundle.observations, table, events=events)
    theirs = RegionSpectra(bundle.observations, table)
    for k in range(2):
        assert ours.obs[k][0].y is events[f"obs{k}/src/y"]  # the given columns, not copies
        assert np.all(np.diff(ours.obs[k][0].y) >= 0)
    for rid in range(len(table)):
        a, b = ours.spectra(rid), theirs.spectra(rid)
        assert [s.obs_index for s in a] == [s.obs_index for s in b]
        for sa, sb in zip(a, b):
            np.testing.assert_array_equal(sa.counts, sb.counts)
            np.testing.assert_array_equal(sa.bkg_counts, sb.bkg_counts)
    with pytest.raises(ValueError, match="differ in length"):
        EventIndex.from_sorted(np.zeros(2), np.zeros(3), np.zeros(3, np.int64))


# --------------------------------------------------------------------------
# the helper under mpiexec, on two pretend nodes

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from mpi4py import MPI
    sys.path.insert(0, sys.argv[1])
    from test_shared_memory import ARRAYS, _layout, _fill, _check_equal_and_read_only
    from hpcxt.shared import share_per_node

    comm = MPI.COMM_WORLD
    node = comm.Split(comm.Get_rank() % 2, comm.Get_rank())   # two pretend nodes
    calls = []
    def layout():
        calls.append(comm.Get_rank())
        return _layout()
    shared = share_per_node(comm, layout, _fill, node=node, filler=int(sys.argv[2]))
    _check_equal_and_read_only(shared)
    # the view lies in a memory mapping shared between processes
    addr = shared["counts"].ctypes.data
    for line in open("/proc/self/maps"):
        lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
        if lo <= addr < hi:
            perms = line.split()[1]
    leaders = comm.gather(calls, root=0)
    flags = comm.gather(perms[3], root=0)
    shared.free()
    node.Free()
    if comm.Get_rank() == 0:
        print("LEADERS", sorted(r for c in leaders for r in c), "PERMS", flags[0] + flags[2])
""")


@pytest.mark.mpi
@pytest.mark.parametrize("filler,leaders", [(0, "[0, 1]"), (1, "[1, 2]")])
def test_share_per_node_fills_once_per_node_under_mpiexec(tmp_path, filler, leaders):
    import subprocess

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    cmd = [str(MPIEXEC), "-n", "3", sys.executable, "-m", "mpi4py", str(script),
           str(Path(__file__).parent), str(filler)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=mpi_env())
    assert proc.returncode == 0, proc.stderr
    # Ranks 0, 2 form one node and rank 1 the other: the filler of each
    # node (its first rank, or its second where it has one and filler is 1)
    # fills, and ranks 0 and 2 see one mapping shared between them (MPICH
    # gives a node of one rank private memory).
    assert f"LEADERS {leaders} PERMS ss" in proc.stdout, proc.stdout


# --------------------------------------------------------------------------
# the stages, shared and private, on 1 (in-process), 2 and 3 ranks

MODES = ((), ("--no-shared-memory",))


def _runs(tmp_path, run_in_process, run_under_mpiexec, caplog, what=("",)):
    """Yield (label, output) of each stage run: in-process on one rank, then mpiexec.

    ``what``: the ends of the "shared memory: ..." lines a shared run logs
    (the arrays it shares), none of which a private run logs.
    """
    from mpi4py import MPI

    for flags in MODES:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hpcxt"):
            out = run_in_process(MPI.COMM_SELF, shared_memory=not flags)
        lines = [r.getMessage() for r in caplog.records]
        for end in what:
            logged = any(m.startswith("shared memory:") and end in m for m in lines)
            assert logged == (not flags), (end, lines)
        yield (1, flags), out
    for nprocs in (2, 3):
        for flags in MODES:
            proc, out = run_under_mpiexec(nprocs, flags)
            assert proc.returncode == 0, proc.stderr
            for end in what:
                logged = bool(re.search(f"shared memory: .*{end}", proc.stderr))
                assert logged == (not flags), (end, proc.stderr)
            yield (nprocs, flags), out


@pytest.mark.mpi
def test_fit_same_results_with_and_without_shared_memory(tmp_path, caplog):
    from hpcxt.io.config import load_config
    from hpcxt.stages.fit import run_fit

    base = make_fit_workdir(tmp_path / "base", n_side=3, errors="none", batch_size=2)
    fresh = iter(range(100))

    def copy():
        work = tmp_path / f"run{next(fresh)}"
        shutil.copytree(base.parent, work)
        return work / "config.yaml"

    def results(cfg):
        return read_results(cfg.parent / "work" / "fit" / "results.h5")

    def in_process(comm, shared_memory):
        cfg = copy()
        assert run_fit(load_config(cfg, check_files=False), comm,
                       shared_memory=shared_memory) == 0
        return results(cfg)

    def under_mpiexec(nprocs, flags):
        cfg = copy()
        proc = run_hpcxt("fit", cfg, *flags, nprocs=nprocs, timeout=120)
        return proc, (results(cfg) if proc.returncode == 0 else None)

    reference = None
    for label, res in _runs(tmp_path, in_process, under_mpiexec, caplog,
                            what=("of sorted events once per node",
                                  "of fit templates once per node")):
        assert res.complete and res.n_ok >= 6, label
        reference = reference or res
        assert res.same_results(reference) == [], label


@pytest.fixture(scope="module")
def small_scalemap_workdir(prepped_small, tmp_path_factory) -> Path:
    """A private copy of the prepped small simulation (the runs write its acb/)."""
    dst = tmp_path_factory.mktemp("shm_scalemap") / "sim"
    shutil.copytree(prepped_small.parent, dst, ignore=shutil.ignore_patterns("acb", "fit"))
    return dst / "config.yaml"


@pytest.mark.mpi
def test_scalemap_identical_with_and_without_shared_memory(small_scalemap_workdir, tmp_path,
                                                           caplog):
    from hpcxt.io.config import load_config
    from hpcxt.stages.scalemap import run_scalemap

    cfg = small_scalemap_workdir
    acb_dir = cfg.parent / "work" / "acb"

    def outputs():
        got = {name: (acb_dir / name).read_bytes() for name in ("scalemap.fits", "regions.h5")}
        shutil.rmtree(acb_dir)
        return got

    def in_process(comm, shared_memory):
        run_scalemap(load_config(cfg, check_files=False), comm, shared_memory=shared_memory)
        return outputs()

    def under_mpiexec(nprocs, flags):
        proc = run_hpcxt("scalemap", cfg, *flags, nprocs=nprocs, timeout=120)
        return proc, (outputs() if proc.returncode == 0 else None)

    reference = None
    for label, got in _runs(tmp_path, in_process, under_mpiexec, caplog):
        reference = reference or got
        for name in got:
            assert got[name] == reference[name], (name, label)
