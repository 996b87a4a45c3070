"""Fit ranks import numba and Sherpa without scipy and Sherpa's FITS backend.

hpcxt/lean_imports.py: what a fit never uses is left out of a fit rank's
memory, and the fits are the same. Each case runs in a fresh interpreter
(the test process has scipy and astropy loaded already).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

FIT_ONE_REGION = """
import json, sys
sys.path.insert(0, {tests!r})
lean = {lean!r}
if lean:
    from hpcxt.lean_imports import import_fit_libraries
    import_fit_libraries({model!r})
loaded = sorted(m for m in ("scipy", "astropy") if m in sys.modules)
import numpy as np
from template_fixtures import responses, settings, simulate_region
from hpcxt import template_fit as tf
from hpcxt.engines import TemplateEngine
resps = responses(1)
band = tf.energy_band(settings(), resps[0])
reg = simulate_region(np.random.default_rng(3), resps, band, 6.0, 2500, "sparse", 1)
engine = TemplateEngine(settings(errors="conf"), resps)
rec = engine.fit(reg.spectra, verify=True)
backend = sys.modules["sherpa.astro.io"].backend.__name__.rsplit(".", 1)[-1]
print(json.dumps({{"loaded": loaded, "backend": backend, "values": [
    float(getattr(rec, k)) for k in ("kT", "kT_lo", "kT_hi", "norm", "norm_lo", "norm_hi",
                                     "stat", "verify_dkT", "verify_dnorm")]}}))
"""


def _run(lean: bool, model: str = "xsphabs*xsbremss") -> dict:
    code = FIT_ONE_REGION.format(tests=str(TESTS), lean=lean, model=model)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Cannot import usable I/O backend" not in proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_lean_fit_rank_leaves_out_scipy_and_astropy_and_fits_the_same():
    lean, full = _run(True), _run(False)
    # imported later for the templates (one worker per node builds them)
    assert lean["loaded"] == [] and lean["backend"] == "dummy_backend"
    assert full["backend"] == "pyfits_backend"
    assert lean["values"] == full["values"]


def test_table_models_keep_sherpas_fits_backend():
    from hpcxt.lean_imports import SHERPA_FITS_BACKENDS, uses_table_model
    assert uses_table_model("xsphabs * atable{ tables/apec.fits }")
    assert not uses_table_model("xsphabs*xsapec")
    code = ("import sys; from hpcxt.lean_imports import import_fit_libraries; "
            "import_fit_libraries('xsphabs*atable{t.fits}'); "
            "import sherpa.astro.io as io; print(io.backend.__name__, 'scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    assert out == [SHERPA_FITS_BACKENDS[0], "False"]


def test_unimportable_blocks_then_restores():
    from hpcxt.lean_imports import unimportable
    name = "tabnanny"  # a standard module nothing here imports
    assert name not in sys.modules
    with unimportable([name, "json"]):
        with pytest.raises(ImportError):
            __import__(name)
        assert sys.modules["json"] is json  # already imported: untouched
    assert name not in sys.modules
    assert __import__(name).__name__ == name


def test_full_imports_where_a_blocked_module_is_needed_and_table_backend_later():
    """A library that needs a blocked module: imported in full, with a warning.

    Then a table model in the same process gets Sherpa's FITS backend back.
    """
    code = ("import logging, sys; logging.basicConfig()\n"
            "import hpcxt.lean_imports as L\n"
            "L.FIT_UNUSED = ('scipy', 'sherpa.stats')  # sherpa.fit needs sherpa.stats\n"
            "L.import_fit_libraries('xsphabs*xsbremss')\n"
            "import sherpa.fit, sherpa.stats\n"
            "io = L.sherpa_fits_backend()\n"
            "print(io.backend.__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fit libraries need sherpa.stats here: imported in full" in proc.stderr
    assert proc.stdout.split() == ["sherpa.astro.io.pyfits_backend"]
    lean = ("import hpcxt.lean_imports as L; L.import_fit_libraries('xsphabs*xsbremss'); "
            "import sherpa.astro.io as io; b0 = io.backend.__name__; "
            "print(b0, L.sherpa_fits_backend().backend.__name__)")
    out = subprocess.run([sys.executable, "-c", lean], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    assert out == ["sherpa.astro.io.dummy_backend", "sherpa.astro.io.pyfits_backend"]
