"""hpcxt's compiled kernels: built ahead of time, or compiled by numba's JIT.

The per-region loops (the template engine's fit kernel in
:mod:`hpcxt.template_fit`, the channel grouping in :mod:`hpcxt.spectra`)
are numba functions. Compiled on first use by numba's JIT, they cost every
fit rank about 40 MiB of anonymous memory: 23 MiB to import numba and
17 MiB to load their machine code from numba's cache (measured with
benchmarks/memory.py; the README's performance section).

``python -m hpcxt.compiled`` compiles the entry points ahead of time
(``numba.pycc``, for a generic CPU of the machine's architecture, so that a
module built on a login node runs on every compute node) into one
extension module named after a hash of the kernels' source. A process that
finds the module for the source it runs (:func:`mode` ``"aot"``) calls it
and never imports numba; any other kernel it calls (tests and benchmarks
call a few directly) is compiled by numba on first use. Without the module
(not built, or the source changed since) every kernel is compiled by
numba's JIT, as before, with identical results (tests/test_compiled.py
compares them bit for bit).

Where the module is looked for, and built, in this order: ``$HPCXT_KERNEL_DIR``,
``hpcxt/_kernels/`` beside this file, ``$XDG_CACHE_HOME/hpcxt/kernels``
(default ``~/.cache/hpcxt/kernels``). A module is loaded only if its size
and SHA-256 match the ``.sha256`` file its build wrote beside it (a
damaged extension can kill the process on import); its name hashes the
source and the Python, numba, llvmlite and numpy versions.
``HPCXT_KERNELS=jit`` makes a process use numba's JIT whatever is built.

The extension does not check its arguments' types (a wrong dtype crashes
the process), so each entry point is called through :func:`entry`, which
converts or checks every argument against the exported signature first.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import operator
import os
import platform
import sys
from pathlib import Path

import numpy as np

#: The files whose source the compiled module is built from (with this one,
#: which holds the signatures).
SOURCES = ("template_fit.py", "spectra.py", "compiled.py")

#: Exported entry points: name -> (module, function, arguments). An argument
#: is (name, numpy type, ndim, written); ndim 0 is a scalar. Arrays are
#: C-contiguous.
EXPORTS = {
    "fit_kernel": ("hpcxt.template_fit", "_fit_kernel", (
        ("coef", "f8", 3, False), ("knots", "f8", 1, False), ("breaks", "f8", 1, False),
        ("src", "f8", 1, False), ("bkg", "f8", 1, False), ("gstart", "i1", 1, False),
        ("offsets", "i8", 1, False), ("used", "i1", 1, False), ("texp", "f8", 1, False),
        ("bscale", "f8", 1, False), ("code", "i8", 0, False), ("uA", "f8", 0, False),
        ("uB", "f8", 0, False), ("u_init", "f8", 0, False), ("delta", "f8", 0, False),
        ("errors", "i8", 0, False), ("out", "f8", 1, True))),
    "group_flags": ("hpcxt.spectra", "_group_flags", (
        ("idx", "i8", 1, False), ("src", "f8", 1, False), ("min_src", "f8", 0, False),
        ("bkg", "f8", 1, False), ("min_bkg", "f8", 0, False), ("grouping", "i2", 1, True))),
}

_HERE = Path(__file__).resolve().parent


def _toolchain() -> str:
    """Versions the compiled module depends on besides the source (no numba import)."""
    from importlib import metadata
    parts = [sys.version.split()[0], platform.machine()]
    for dist in ("numba", "llvmlite", "numpy"):
        try:
            parts.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist}=none")
    return " ".join(parts)


@functools.lru_cache(maxsize=None)
def source_hash() -> str:
    """16 hex digits of the SHA-256 of :data:`SOURCES` (names and bytes) and the
    toolchain (Python, machine, numba, llvmlite and numpy versions)."""
    h = hashlib.sha256(_toolchain().encode())
    for name in SOURCES:
        h.update(name.encode())
        h.update((_HERE / name).read_bytes())
    return h.hexdigest()[:16]


def module_name() -> str:
    """Name of the compiled module for the running source."""
    return f"_kernels_{source_hash()}"


def search_dirs() -> list[Path]:
    """Where the compiled module is looked for, in order (see the module docstring)."""
    dirs = []
    if os.environ.get("HPCXT_KERNEL_DIR"):
        dirs.append(Path(os.environ["HPCXT_KERNEL_DIR"]))
    dirs.append(_HERE / "_kernels")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    dirs.append(Path(cache) / "hpcxt" / "kernels")
    return dirs


def _candidates(dirs=None):
    name = module_name()
    for d in (search_dirs() if dirs is None else dirs):
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(d) / (name + suffix)
            if path.is_file():
                yield path


def find_module(dirs=None) -> Path | None:
    """Path of the compiled module for the running source, or None (first found)."""
    return next(_candidates(dirs), None)


def _digest(path: Path) -> str:
    return f"{path.stat().st_size} {hashlib.sha256(path.read_bytes()).hexdigest()}"


def _check_file(path: Path) -> str:
    """Why ``path`` must not be loaded ("" if it may): its size and SHA-256 must be
    those :func:`build` wrote beside it, since loading a truncated or
    overwritten extension can kill the process (SIGBUS) where Python cannot
    catch it."""
    stamp = path.with_name(path.name + ".sha256")
    try:
        want = stamp.read_text().strip()
    except OSError:
        return f"{path}: no {stamp.name} beside it (not written by python -m hpcxt.compiled)"
    if _digest(path) != want:
        return f"{path}: size or SHA-256 differs from {stamp.name} (damaged or overwritten)"
    return ""


def _load(path: Path):
    name = path.name.split(".")[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Why the compiled module is not in use ("" when none is built), or which
#: damaged candidates were skipped before the one in use.
LOAD_ERROR = ""


def _choose():
    global LOAD_ERROR
    if os.environ.get("HPCXT_KERNELS", "auto").lower() == "jit":
        LOAD_ERROR = "HPCXT_KERNELS=jit"
        return None
    problems = []
    for path in _candidates():
        why = _check_file(path)
        if not why:
            try:
                module = _load(path)
            except Exception as exc:  # another interpreter's, or damaged: try the next
                why = f"{path}: {type(exc).__name__}: {exc}"
            else:
                LOAD_ERROR = "; ".join(f"skipped {p}" for p in problems)
                return module
        problems.append(why)
    LOAD_ERROR = "; ".join(problems)
    return None


_AOT = _choose()


def mode() -> str:
    """``"aot"`` (the compiled module is in use) or ``"jit"`` (numba compiles)."""
    return "aot" if _AOT is not None else "jit"


def aot_path() -> str:
    """File of the compiled module in use ("" under the JIT)."""
    return getattr(_AOT, "__file__", "") or ""


class _Deferred:
    """A kernel left uncompiled until a caller outside the compiled module calls it.

    The first call compiles every deferred kernel of its module with numba
    (so that kernels calling each other see numba functions) and rebinds
    the module's names to them.
    """

    def __init__(self, func, options):
        self.py_func = func
        self.options = options

    def __call__(self, *args):
        module = sys.modules[self.py_func.__module__]
        _jit_module(module)
        return getattr(module, self.py_func.__name__)(*args)


def _jit_module(module) -> None:
    import numba
    for name, obj in list(vars(module).items()):
        if isinstance(obj, _Deferred):
            setattr(module, name, numba.njit(**obj.options)(obj.py_func))


def njit(**options):
    """``numba.njit(**options)``, or, with the compiled module in use, deferred."""
    if _AOT is None:
        import numba
        return numba.njit(**options)
    return lambda func: _Deferred(func, options)


def entry(name: str, kernel):
    """The exported kernel ``name`` with its arguments checked, or ``kernel`` itself (JIT).

    Input arrays are converted to the exported type where numpy casts them
    safely (no copy when they have it already: int32 to int64, float32 to
    float64); any other type, or a non-integral number for an integer, is a
    TypeError, never a truncation. Output arrays must have the exported type
    already (a converted copy would not receive the results).
    """
    if _AOT is None:
        return kernel
    compiled = getattr(_AOT, name)
    spec = EXPORTS[name][2]
    kinds = [(arg, np.dtype(t), ndim, written) for arg, t, ndim, written in spec]

    def call(*args):
        if len(args) != len(kinds):
            raise TypeError(f"{name}() takes {len(kinds)} arguments ({len(args)} given)")
        conv = []
        for value, (arg, dtype, ndim, written) in zip(args, kinds):
            if ndim == 0:
                conv.append(operator.index(value) if dtype.kind == "i" else float(value))
                continue
            if (type(value) is np.ndarray and value.dtype == dtype and value.ndim == ndim
                    and value.flags.c_contiguous and (value.flags.writeable or not written)):
                conv.append(value)  # the usual case, checked at the least cost
                continue
            if written:
                ok = (isinstance(value, np.ndarray) and value.dtype == dtype
                      and value.ndim == ndim and value.flags.c_contiguous
                      and value.flags.writeable)
                if not ok:
                    raise TypeError(f"{name}(): {arg} must be a writeable C-contiguous "
                                    f"{ndim}-d {dtype} array")
            else:
                value = np.asarray(value)
                if not np.can_cast(value.dtype, dtype, "safe"):
                    raise TypeError(f"{name}(): {arg} must be {dtype}, not {value.dtype}")
                value = np.ascontiguousarray(value, dtype=dtype)
                if value.ndim != ndim:
                    raise TypeError(f"{name}(): {arg} must be {ndim}-d, not {value.ndim}-d")
            conv.append(value)
        return compiled(*conv)

    call.__name__ = name
    call.__doc__ = getattr(getattr(kernel, "py_func", None), "__doc__", None)
    return call


def signature(spec) -> str:
    """numba's signature string of an :data:`EXPORTS` argument list (returning nothing)."""
    parts = []
    for _arg, t, ndim, _written in spec:
        parts.append(t if ndim == 0 else f"{t}[{', '.join([':'] * (ndim - 1) + ['::1'])}]")
    return f"void({', '.join(parts)})"


def build(dest: Path | None = None) -> Path:
    """Compile the exported kernels ahead of time; returns the module's path.

    Runs in a fresh interpreter with the JIT forced (this process may have
    the compiled module loaded), without the compiler flags of the
    environment (a site's ``CFLAGS=-march=native`` would tie numba.pycc's C
    parts to this node's CPU). Needs setuptools and a C compiler. ``dest``
    defaults to the first directory of :func:`search_dirs` that can be
    created and written. The module appears under its final name only once
    complete, its size and SHA-256 beside it in ``<module>.sha256``
    (written first: a module without it is never loaded).
    """
    import shutil
    import subprocess
    import tempfile

    from .io.workdir import atomic_write, write_text_atomic
    if dest is None:
        dest = _writable_dir()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name = module_name()
    with tempfile.TemporaryDirectory(dir=dest, prefix=".build-") as tmp:
        env = {k: v for k, v in os.environ.items()
               if k not in ("CFLAGS", "CPPFLAGS", "LDFLAGS", "LDSHARED")}
        env["HPCXT_KERNELS"] = "jit"
        code = ("import sys; from hpcxt.compiled import _build_here; "
                "_build_here(sys.argv[1], sys.argv[2], sys.argv[3])")
        subprocess.run([sys.executable, "-c", code, name, tmp, str(_HERE)], check=True,
                       env=env)
        built = [p for p in Path(tmp).iterdir() if p.name.startswith(name + ".")]
        if len(built) != 1:
            raise RuntimeError(f"numba.pycc left {[p.name for p in Path(tmp).iterdir()]}")
        target = dest / built[0].name
        # the stamp first: a module without its stamp is never loaded
        write_text_atomic(target.with_name(target.name + ".sha256"), _digest(built[0]) + "\n")
        with atomic_write(target) as part:
            shutil.copyfile(built[0], part)
    if dest.resolve() == (_HERE / "_kernels").resolve():
        # this source tree's own folder: modules of its earlier sources are dead
        for old in dest.glob("_kernels_*"):
            if old.is_file() and not old.name.startswith(name + "."):
                old.unlink()
    return target


def _writable_dir() -> Path:
    for d in search_dirs():
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK):
            return d
    raise OSError("no writable directory for the compiled kernels: set HPCXT_KERNEL_DIR")


def _build_here(name: str, out_dir: str, source_dir: str) -> None:
    """In a JIT process: export :data:`EXPORTS` with numba.pycc into ``out_dir``.

    Refuses when this interpreter imports another hpcxt than the one that
    asked (``source_dir``), or one whose source hashes to another name: the
    module would carry kernels that are not the ones its name promises.
    """
    import importlib
    import warnings

    if _HERE != Path(source_dir).resolve() or module_name() != name:
        raise SystemExit(f"hpcxt.compiled: this interpreter imports hpcxt from {_HERE} "
                         f"(kernels {module_name()}), not {source_dir} ({name})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba.pycc's deprecation notice
        from numba.pycc import CC
    cc = CC(name)
    cc.output_dir = out_dir
    cc.verbose = False
    for export, (module, func, spec) in EXPORTS.items():
        kernel = getattr(importlib.import_module(module), func)
        cc.export(export, signature(spec))(kernel.py_func)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cc.compile()


def ensure_built(log=None) -> bool:
    """Build the module for the running source if no valid one is found; True if one is.

    For serial drivers before they start MPI ranks (``hpcxt run``, the job
    scripts run ``python -m hpcxt.compiled --if-missing``): built once per
    installation, every rank then loads it. Never raises: without it the
    ranks compile with numba. Respects ``HPCXT_KERNELS=jit``.
    """
    import logging
    log = log or logging.getLogger("hpcxt")
    if os.environ.get("HPCXT_KERNELS", "auto").lower() == "jit":
        return False
    if any(not _check_file(p) for p in _candidates()):
        return True
    try:
        import time
        t0 = time.perf_counter()
        path = build()
    except Exception as exc:  # no compiler, no setuptools, no writable folder
        log.warning("compiled kernels: not built (%s); each fit rank compiles them with numba",
                    " ".join(str(exc).split())[:200])
        return False
    log.info("compiled kernels: built in %.1f s (%s)", time.perf_counter() - t0, path)
    return True


def main(argv=None) -> int:
    """``python -m hpcxt.compiled [--if-missing] [--dir DIR]``: build the kernels."""
    import argparse
    import subprocess
    import time
    p = argparse.ArgumentParser(prog="python -m hpcxt.compiled",
                                description="Compile hpcxt's kernels ahead of time, so that "
                                            "fit ranks need not import numba.")
    p.add_argument("--if-missing", action="store_true",
                   help="do nothing when the module for this source is built already")
    p.add_argument("--dir", type=Path,
                   help="where to write it (default: the first writable of $HPCXT_KERNEL_DIR, "
                        "hpcxt/_kernels, ~/.cache/hpcxt/kernels); ranks find it there only "
                        "when HPCXT_KERNEL_DIR names it")
    args = p.parse_args(argv)
    found = next((f for f in _candidates(None if args.dir is None else [args.dir])
                  if not _check_file(f)), None)
    if args.if_missing and found is not None:
        print(f"hpcxt: compiled kernels up to date: {found}")
        return 0
    t0 = time.perf_counter()
    try:
        path = build(args.dir)
    except (subprocess.CalledProcessError, OSError, RuntimeError) as exc:
        print(f"hpcxt: the compiled kernels did not build ({exc}); they need setuptools "
              "and a C compiler (pip install setuptools). Without them each fit rank "
              "compiles the kernels with numba.", file=sys.stderr)
        return 1
    print(f"hpcxt: compiled kernels built in {time.perf_counter() - t0:.1f} s: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
