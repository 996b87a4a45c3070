"""Spectral models: the abundance table, and the check of the configured model
in a child process (zeros or a crash refused before any fit)."""

from __future__ import annotations

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
