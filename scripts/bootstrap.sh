#!/usr/bin/env bash
# Set up .venv for hpcxt, idempotently: Debian build packages for Sherpa,
# MPI from wheels (mpi4py + MPICH), the XSPEC model library (xspectrampoline),
# Sherpa built from source against it, then hpcxt itself in editable mode.
# A stamp file records what was installed, so a second run takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${HPCXT_VENV:-.venv}
PY=${PYTHON:-python3}

"$PY" - <<'PYEOF' || { echo "bootstrap: hpcxt needs Python >= 3.10 (found $("$PY" --version 2>&1))" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PYEOF

# Sherpa's source build needs a lexer/parser generator and FFTW.
wanted=(bison flex libfftw3-dev)
# `make test` also wants shellcheck for the job-script lint tests (the
# Slurm tests install Slurm themselves, when running as root).
[ "${HPCXT_BOOTSTRAP_TEST:-0}" = 1 ] && wanted+=(shellcheck)
missing=()
for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "bootstrap: installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
        echo "bootstrap: Debian packages are missing (Sherpa's build needs bison, flex, libfftw3-dev). Run:" >&2
        echo "    sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi

stamp_hash=$(cat constraints.txt pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
stamp="$VENV/.hpcxt-bootstrap-$stamp_hash"
# The compiled kernels (hpcxt/compiled.py) are named after their source, so
# they are checked at every run: a second or so when up to date, about 15 s
# to build. Without them every fit rank imports numba (about 40 MiB more).
kernels() {
    "$VENV/bin/python" -m hpcxt.compiled --if-missing ||
        echo "bootstrap: the compiled kernels did not build; numba's JIT will compile them" >&2
}
if [ -f "$stamp" ]; then
    kernels
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip
"$VPY" -m pip install -q -c constraints.txt \
    numpy astropy h5py PyYAML mpi4py mpich xspectrampoline regions tqdm matplotlib scipy numba setuptools pytest pytest-xdist

if ! "$VPY" -c "import xspectrampoline, sherpa.astro.xspec" 2>/dev/null; then
    xsdir=$("$VPY" - <<'PYEOF'
# find_spec, not import: importing the library prints XSPEC's start-up chatter
import glob, importlib.util, os
pkg = importlib.util.find_spec("xspectrampoline").submodule_search_locations[0]
hits = sorted(glob.glob(os.path.join(pkg, "LibXSPEC_*")))
print(hits[-1] if hits else "")
PYEOF
)
    if [ -z "$xsdir" ]; then
        echo "bootstrap: xspectrampoline carries no LibXSPEC_* directory" >&2
        exit 1
    fi
    echo "bootstrap: building Sherpa against the XSPEC model library in $xsdir (about a minute)"
    "$VPY" -m pip install -q --no-cache-dir -c constraints.txt \
        "-Csetup-args=-Dxspec-prefix=$xsdir" sherpa
fi
"$VPY" -m pip install -q -c constraints.txt -e .
rm -f "$VENV"/.hpcxt-bootstrap-*
touch "$stamp"
kernels
echo "bootstrap: $VENV ready"
