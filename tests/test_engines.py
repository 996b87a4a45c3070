"""The template engine inside a fit run: engine column, Sherpa fallback,
the verification sample and its report (issue 10).

The kernel itself is compared with Sherpa region by region in
tests/test_template.py; here the stage around it: which regions fall back,
which are verified, what results.h5, the log and ``hpcxt status`` say, and
that none of it depends on the number of ranks.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import run_hpcxt
from fit_fixtures import make_fit_workdir
from hpcxt.engines import verification_sample
from hpcxt.io.checkpoint import read_results
from hpcxt.schema import Engine, Status

#: kT_range ends below the hottest regions' truth (2-10 keV across the grid):
#: their best fit is at the edge, which the template engine does not certify.
FIT = {"errors": "conf", "verify_fraction": 0.25, "kT_range": [1.0, 7.0], "kT_init": 4.0}


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    cfg = make_fit_workdir(tmp_path_factory.mktemp("engines"), n_side=6, extra_fit=dict(FIT))
    proc = run_hpcxt("fit", cfg, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg, proc, read_results(cfg.parent / "work" / "fit" / "results.h5")


def test_engine_column_and_fallback(serial_run):
    cfg, proc, res = serial_run
    kT_true = np.load(cfg.parent / "kT_true.npy")
    fitted = res.engine != Engine.NONE
    assert set(np.unique(res.engine[fitted])) == {Engine.TEMPLATE, Engine.SHERPA_FALLBACK}
    fallback = res.engine == Engine.SHERPA_FALLBACK
    # the hottest regions, whose best fit is at the kT_range edge, and no cool one
    assert fallback[kT_true > 8.0].all() and not fallback[kT_true < 4.5].any()
    # Sherpa finds no upper bound below the edge either: its answer is kept
    for i in np.flatnonzero(fallback):
        assert res.status[i] == Status.FAILED and "kT upper bound not found" in res.reason[i]
    assert np.all(res.status[res.engine == Engine.TEMPLATE] == Status.OK)
    n_template, n_fallback = int((res.engine == Engine.TEMPLATE).sum()), int(fallback.sum())
    assert (f"engine: template for {n_template} regions, Sherpa on the templates for 0 whose "
            f"answer depends on Sherpa's path across a jump of the model, Sherpa for "
            f"{n_fallback} the template engine could not certify") in proc.stderr


def test_verification_sample_is_stored_and_reported(serial_run):
    cfg, proc, res = serial_run
    sample = verification_sample(len(res), FIT["verify_fraction"])
    assert sample.size == 20  # at least 20, though 25% of 36 is 9
    checked = np.isfinite(res.verify_dkT)
    # every template-fitted region of the sample, and no other region
    want = np.zeros(len(res), bool)
    want[sample] = True
    want &= res.engine == Engine.TEMPLATE
    np.testing.assert_array_equal(checked, want)
    for name in ("verify_dkT", "verify_dnorm", "verify_dbounds"):
        assert np.all(np.abs(getattr(res, name)[checked]) <= 0.1), name
    m = re.search(r"verified against Sherpa on (\d+) regions: largest difference "
                  r"([\d.]+) sigma in kT, ([\d.]+) in norm, ([\d.]+) in the bounds", proc.stderr)
    assert m and int(m.group(1)) == checked.sum(), proc.stderr[-2000:]
    assert float(m.group(2)) == pytest.approx(np.abs(res.verify_dkT[checked]).max(), abs=1e-3)
    status = run_hpcxt("status", cfg)
    assert status.returncode == 0, status.stderr
    assert m.group(0) in status.stdout


@pytest.mark.mpi
def test_engines_and_verification_identical_on_3_ranks(serial_run, tmp_path):
    cfg, _, ref = serial_run
    cfg3 = make_fit_workdir(tmp_path, n_side=6, extra_fit=dict(FIT))
    proc = run_hpcxt("fit", cfg3, nprocs=3, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = read_results(cfg3.parent / "work" / "fit" / "results.h5")
    assert res.same_results(ref) == []
    np.testing.assert_array_equal(res.engine, ref.engine)
    np.testing.assert_array_equal(res.verify_dbounds, ref.verify_dbounds)


@pytest.fixture(scope="module")
def hot_run(tmp_path_factory):
    """16 regions at 11-16 keV, around xsbremss's jump at 13.58 keV, fitted serially."""
    cfg = make_fit_workdir(tmp_path_factory.mktemp("hot"), **HOT)
    proc = run_hpcxt("fit", cfg, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg, proc, read_results(cfg.parent / "work" / "fit" / "results.h5")


HOT = dict(n_side=4, errors="conf", kT_true=np.linspace(11.0, 16.0, 16),
           extra_fit={"verify_fraction": 0.25})


def test_sherpa_on_the_templates_is_reported_and_verified(hot_run):
    """Path-dependent regions get engine 4; with verify_fraction 0.25 every one
    of them is checked against Sherpa on the folded model (5 x 0.25), within
    0.1 sigma, and the run reports them on a line of their own."""
    cfg, proc, res = hot_run
    mine = res.engine == Engine.SHERPA_TEMPLATES
    assert mine.sum() >= 3 and np.all(res.status[mine] == Status.OK)
    assert np.all(np.isfinite(res.verify_dkT[mine]))
    for name in ("verify_dkT", "verify_dnorm", "verify_dbounds"):
        assert np.all(np.abs(getattr(res, name)[mine]) <= 0.1), name
    assert f"Sherpa on the templates for {int(mine.sum())} whose answer" in proc.stderr
    assert re.search(rf"verified against Sherpa on {int(mine.sum())} regions \(Sherpa on the "
                     r"templates\): largest difference", proc.stderr), proc.stderr[-2000:]


@pytest.mark.mpi
def test_sherpa_on_the_templates_identical_on_3_ranks(hot_run, tmp_path):
    """As the serial run (one rank); test_fit_mpi runs the protocol on 1, 2 and 3."""
    cfg, _, ref = hot_run
    cfg_n = make_fit_workdir(tmp_path, **HOT)
    proc = run_hpcxt("fit", cfg_n, nprocs=3, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = read_results(cfg_n.parent / "work" / "fit" / "results.h5")
    assert res.same_results(ref) == []
    for name in ("engine", "verify_dkT", "verify_dnorm", "verify_dbounds"):
        np.testing.assert_array_equal(getattr(res, name), getattr(ref, name), err_msg=name)
