"""The kernels built ahead of time give numba's JIT results bit for bit, without numba.

hpcxt/compiled.py: ``python -m hpcxt.compiled`` builds the entry points
into an extension module; a process that finds it never imports numba. Each
side runs in a fresh interpreter: one forced to the JIT, one given the
built module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).parent

FIT_REGIONS = """
import json, sys
sys.path.insert(0, {tests!r})
from hpcxt.lean_imports import import_fit_libraries
import_fit_libraries("xsphabs*xsbremss")
import numpy as np
from template_fixtures import responses, settings, simulate_region
from hpcxt import compiled, spectra, template_fit as tf
from hpcxt.engines import TemplateEngine
resps = responses(2)
band = tf.energy_band(settings(), resps[0])
rng = np.random.default_rng(11)
values = []
for stat in ("wstat", "cstat"):
    engine = TemplateEngine(settings(errors="conf", statistic=stat), resps)
    for kT, counts in ((2.0, 800), (7.0, 3000), (12.0, 1500)):
        reg = simulate_region(rng, resps, band, kT, counts, "rich", 2)
        rec = engine.fit(reg.spectra)
        values.append([float(getattr(rec, k)) for k in
                       ("kT", "kT_lo", "kT_hi", "norm", "norm_lo", "norm_hi", "stat")]
                      + [int(rec.engine)])
        sp = reg.spectra[0]
        values.append(spectra.group_counts(band, sp.counts, 10, sp.bkg_counts, 2).tolist())
print(json.dumps({{"mode": compiled.mode(), "numba": "numba" in sys.modules,
                   "values": values}}))
"""


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A folder holding the compiled module for this source (built here if not built)."""
    from hpcxt import compiled
    found = compiled.find_module()
    if found is not None:
        return found.parent
    path = compiled.build(tmp_path_factory.mktemp("kernels"))
    return path.parent


def _fit(env_extra: dict) -> dict:
    env = dict(os.environ, **env_extra)
    proc = subprocess.run([sys.executable, "-c", FIT_REGIONS.format(tests=str(TESTS))],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_compiled_kernels_equal_the_jit_and_leave_numba_out(kernel_dir):
    aot = _fit({"HPCXT_KERNEL_DIR": str(kernel_dir), "HPCXT_KERNELS": "auto"})
    jit = _fit({"HPCXT_KERNELS": "jit"})
    assert aot["mode"] == "aot" and not aot["numba"]
    assert jit["mode"] == "jit" and jit["numba"]
    assert aot["values"] == jit["values"]
    assert len(aot["values"]) == 12


def test_entry_checks_arguments_instead_of_crashing(kernel_dir, monkeypatch):
    from hpcxt import compiled
    monkeypatch.setattr(compiled, "_AOT", compiled._load(compiled.find_module([kernel_dir])))
    group = compiled.entry("group_flags", None)
    src = np.arange(10.0)
    grouping = np.ones(10, dtype=np.int16)
    # inputs of another dtype are converted where that is exact (a wrong dtype
    # given to the extension would crash the process), refused where not
    group(np.arange(10, dtype=np.int32), src, 5.0, np.zeros(10), 0.0, grouping)
    assert grouping.tolist() == [1, -1, -1, -1, 1, -1, 1, 1, 1, 1]
    with pytest.raises(TypeError, match="idx must be int64, not float64"):
        group(np.arange(10) + 0.7, src, 5.0, np.zeros(10), 0.0, grouping)
    # outputs are never silently copied
    with pytest.raises(TypeError, match="grouping must be a writeable"):
        group(np.arange(10), src, 5.0, np.zeros(10), 0.0, grouping.astype(np.int32))
    with pytest.raises(TypeError, match="src must be 1-d"):
        group(np.arange(10), src.reshape(2, 5), 5.0, np.zeros(10), 0.0, grouping)
    with pytest.raises(TypeError, match="takes 6 arguments"):
        group(np.arange(10), src)


def test_a_changed_source_is_never_run_from_an_old_module(tmp_path, monkeypatch):
    from hpcxt import compiled
    old = tmp_path / "_kernels_0123456789abcdef.so"
    old.write_bytes(b"")
    monkeypatch.setenv("HPCXT_KERNEL_DIR", str(tmp_path))
    assert compiled.search_dirs()[0] == tmp_path
    assert compiled.module_name() != "_kernels_0123456789abcdef"
    found = compiled.find_module()
    assert found is None or found.parent != tmp_path


def test_a_damaged_module_is_never_loaded(kernel_dir, tmp_path):
    """Loading a truncated or overwritten extension can kill the process (SIGBUS):
    each module is checked against the size and SHA-256 its build wrote beside it."""
    from hpcxt import compiled
    built = compiled.find_module([kernel_dir])
    assert compiled._check_file(built) == ""
    copy = tmp_path / built.name
    data = bytearray(built.read_bytes())
    copy.write_bytes(bytes(data))
    assert "no " + copy.name + ".sha256" in compiled._check_file(copy)
    (tmp_path / (built.name + ".sha256")).write_bytes(
        (kernel_dir / (built.name + ".sha256")).read_bytes())
    assert compiled._check_file(copy) == ""
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert "differs" in compiled._check_file(copy)
    # a process given only that folder compiles with numba and says why
    env = dict(os.environ, HPCXT_KERNEL_DIR=str(tmp_path), HPCXT_KERNELS="auto")
    code = ("import sys; from hpcxt import compiled; sys.path; "
            "print(compiled.mode(), compiled.LOAD_ERROR)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120, check=True).stdout
    assert out.startswith("aot skipped ") or out.startswith("jit ")
    assert "differs" in out


def test_drivers_build_the_kernels_only_when_missing(kernel_dir, monkeypatch):
    """hpcxt run (and the job scripts' --if-missing) before the fit's ranks start."""
    from hpcxt import compiled

    def no_build(*args):
        raise AssertionError("built although a valid module exists")

    monkeypatch.setattr(compiled, "build", no_build)
    monkeypatch.setenv("HPCXT_KERNEL_DIR", str(kernel_dir))
    assert compiled.ensure_built() is True
    monkeypatch.setenv("HPCXT_KERNELS", "jit")
    assert compiled.ensure_built() is False
    # a build that fails leaves the ranks to numba, without raising
    monkeypatch.setenv("HPCXT_KERNELS", "auto")
    monkeypatch.setattr(compiled, "_candidates", lambda dirs=None: iter(()))
    monkeypatch.setattr(compiled, "build", lambda: (_ for _ in ()).throw(OSError("no cc")))
    assert compiled.ensure_built() is False
