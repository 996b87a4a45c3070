"""Imports for fit ranks without the library parts a fit never uses.

A fit worker's memory is mostly its libraries (measured on the demo: 90
MiB of anonymous memory after importing numpy, h5py, mpi4py, numba and
Sherpa, before any data). Two of those imports are side effects nothing in
a fit uses:

* numba imports scipy to check its version, and Sherpa's optimiser module
  imports ``scipy.optimize`` to wrap it (it does without when scipy is
  absent): about 20 MiB. hpcxt needs scipy only to build the template
  engine's templates (one worker per node), which imports it then;
* Sherpa's ``sherpa.astro.io`` imports every FITS backend it finds, and its
  astropy backend loads astropy's FITS, table and units modules: about 20
  MiB. A fit reads no FITS file through Sherpa, except an XSPEC table model
  (``atable{...}``), which keeps the backend.

:func:`import_fit_libraries` imports numba (only where the kernels are not
built ahead of time, :mod:`hpcxt.compiled`) and Sherpa with those modules
made unimportable, then makes them importable again, so a later import of
scipy (the templates) or astropy works as usual. Results are unchanged
(the same fits, bit for bit; tests/test_lean_imports.py). Measured by
benchmarks/memory.py (see the README's performance section).
"""

from __future__ import annotations

import contextlib
import logging
import sys

#: Imported by the libraries a fit uses, but never used by a fit.
FIT_UNUSED = ("scipy",)
#: Sherpa's FITS readers: needed only to read an XSPEC table model.
SHERPA_FITS_BACKENDS = ("sherpa.astro.io.pyfits_backend", "sherpa.astro.io.crates_backend")


@contextlib.contextmanager
def unimportable(names):
    """Within the block, importing any of ``names`` raises ImportError.

    Names already imported stay as they are. On exit every name blocked here
    is importable again.
    """
    blocked = [n for n in names if n not in sys.modules]
    for name in blocked:
        sys.modules[name] = None
    try:
        yield
    finally:
        for name in blocked:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


def uses_table_model(model: str) -> bool:
    """Whether a ``fit.model`` expression has an XSPEC table model (read through Sherpa)."""
    return "atable{" in model.replace(" ", "")


def import_fit_libraries(model: str, sherpa: bool = True) -> None:
    """Import what a fit rank needs, leaving out what it never uses (see above).

    Where a library turns out to need a blocked module (another Sherpa or
    numba version), the partial imports are dropped and everything is
    imported in full, with a warning: memory, not correctness, is at stake.

    Parameters
    ----------
    model : str
        The run's ``fit.model``.
    sherpa : bool
        Import Sherpa too (fitting ranks; the master of an MPI fit does not
        fit and never imports it).
    """
    blocked = FIT_UNUSED + (() if uses_table_model(model) else SHERPA_FITS_BACKENDS)
    try:
        with unimportable(blocked):
            _import_libraries(sherpa)
    except ImportError as exc:
        if not any(exc.name == b or (exc.name or "").startswith(b + ".") for b in blocked):
            raise
        logging.getLogger("hpcxt").warning("fit libraries need %s here: imported in full "
                                           "(more memory per rank)", exc.name or exc)
        for name in [m for m in sys.modules if m.split(".")[0] in ("numba", "sherpa")]:
            del sys.modules[name]
        _import_libraries(sherpa)


def _import_libraries(sherpa: bool) -> None:
    io_log = logging.getLogger("sherpa.astro.io")
    level = io_log.level
    from . import compiled
    if compiled.mode() == "jit":  # with the kernels built ahead of time, no numba at all
        import numba  # noqa: F401
    if sherpa:
        # without a FITS backend Sherpa warns that it has none: expected here
        io_log.setLevel(logging.ERROR)
        try:
            import sherpa.astro.data  # noqa: F401
            import sherpa.astro.instrument  # noqa: F401
            import sherpa.fit  # noqa: F401
        finally:
            io_log.setLevel(level)


def sherpa_fits_backend():
    """Sherpa's I/O module with a FITS backend (for reading an XSPEC table model).

    Where this process imported Sherpa leanly (no FITS backend), the first
    backend that imports now (CIAO's crates, else astropy) is registered and
    made current.
    """
    import importlib

    import sherpa.astro.io as io
    if not io.backend.__name__.endswith("dummy_backend"):
        return io
    for name in ("crates", "pyfits"):
        try:
            module = importlib.import_module(f"sherpa.astro.io.{name}_backend")
        except ImportError:
            continue
        if hasattr(io, "set_io_backend"):  # Sherpa 4.18 and later
            io.IO_BACKENDS[name] = module
            io.set_io_backend(name)
        else:  # older Sherpa reads sherpa.astro.io.backend at each use
            io.backend = module
        break
    return io
