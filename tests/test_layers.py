"""The layers stay apart: science kernels load neither MPI nor HDF5."""

from __future__ import annotations

import subprocess
import sys

import pytest

KERNELS = ("hpcxt.acb", "hpcxt.fit", "hpcxt.spectra", "hpcxt.maps", "hpcxt.schema",
           "hpcxt.rmf", "hpcxt.data", "hpcxt.models", "hpcxt.prep.products",
           "hpcxt.prep.intervals", "hpcxt.prep.regionfile", "hpcxt.prep.response",
           "hpcxt.compare")


@pytest.mark.parametrize("module", KERNELS)
def test_kernel_imports_neither_mpi4py_nor_h5py(module):
    code = (f"import sys, {module}; "
            "print(sorted({n.split('.')[0] for n in sys.modules} & {'mpi4py', 'h5py'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"{module} loads {proc.stdout.strip()}"


def test_the_guard_sees_a_module_that_loads_h5py():
    """The check above can fail: hpcxt.io.bundle does load h5py."""
    code = ("import sys, hpcxt.io.bundle; "
            "print(sorted({n.split('.')[0] for n in sys.modules} & {'mpi4py', 'h5py'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == "['h5py']"
