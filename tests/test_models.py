"""Spectral models: the abundance table, and the check of the configured model
in a child process (zeros or a crash refused before any fit)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from hpcxt.errors import ModelUnavailable


@pytest.fixture(scope="module")
def xspec():
    from hpcxt.models import load_xspec
    try:
        return load_xspec()
    except ModelUnavailable as exc:
        pytest.skip(f"needs Sherpa with XSPEC models ({exc})")


def test_make_model_sets_the_abundance_table(xspec):
    from hpcxt.models import make_model

    edges = np.linspace(0.3, 3.0, 55)

    def spectrum(table):
        model, _, _ = make_model("xsphabs*xsbremss", nh=1.0, abundance=0.3, redshift=0.1,
                                 kT=5.0, norm=1.0, abundance_table=table, name=f"t_{table}")
        return np.asarray(model(edges[:-1], edges[1:]))

    angr = spectrum("angr")
    assert xspec.get_xsabund() == "angr"
    wilm = spectrum("wilm")
    assert xspec.get_xsabund() == "wilm"
    # the absorption follows the table: wilm has less metals, so less absorption
    assert np.all(wilm >= angr) and wilm.sum() > 1.05 * angr.sum()
    model, _, _ = make_model("xsphabs*xsbremss", nh=1.0, abundance=0.3, redshift=0.1)
    assert xspec.get_xsabund() == "angr"   # XSPEC's default unless a config names one


def _segfault_command() -> list:
    return [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]


def test_check_model_says_which_models_evaluate_here(xspec):
    from hpcxt.models import check_model

    ok = check_model("xsphabs*xsbremss")
    assert ok.usable and ok.problem == "" and str(ok) == "xsphabs*xsbremss evaluates here"
    apec = check_model("xsphabs*xsapec")
    if apec.usable:
        pytest.skip("xsapec evaluates here (AtomDB is installed)")
    assert apec.problem.startswith("evaluates to zero here")
    assert "fit.apec_root" in apec.advice and "CIAO's Sherpa" in apec.advice
    assert "xsphabs*xsbremss" in apec.advice
    # the advice keeps the configured absorption
    assert "xswabs*xsbremss" in check_model("xswabs*xsmekal").advice


def test_check_model_survives_a_model_that_ends_its_process(xspec):
    """xsmeka without its data calls XSPEC's fatal-error exit (status 0, no result)."""
    from hpcxt.models import check_model, probe_command

    verdict = check_model("xsphabs*xsmeka", command=probe_command("xsphabs*xsmeka"))
    if verdict.usable:
        pytest.skip("xsmeka evaluates here (XSPEC's model data are installed)")
    assert verdict.problem == ("ended the process that evaluated it without a result "
                               "(an XSPEC fatal error)")


def test_check_model_reports_a_segmentation_fault():
    from hpcxt.models import check_model

    verdict = check_model("xsphabs*xsapec", command=_segfault_command())
    assert not verdict.usable
    assert verdict.problem == "crashed the process that evaluated it (signal 11, SIGSEGV)"
    assert str(verdict).startswith("xsphabs*xsapec crashed the process")


def test_model_environment_tracks_the_installation_and_atomdb(tmp_path):
    from hpcxt.models import model_environment

    a = model_environment()
    assert a == model_environment()
    assert a["python"] == sys.executable
    atomdb = tmp_path / "atomdb"
    atomdb.mkdir()
    with_db = model_environment(str(atomdb))
    assert with_db["apec_root"][0] == str(atomdb)
    atomdb.rmdir()
    assert model_environment(str(atomdb))["apec_root"] == [str(atomdb), "missing"]
