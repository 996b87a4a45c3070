"""``python -m hpcxt`` (and ``python -m mpi4py -m hpcxt`` under mpiexec)."""

import os
import sys

# One core per MPI rank: thread pools read these when numpy and Sherpa load,
# so they are set before anything imports them.
_command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
if _command in ("scalemap", "fit"):
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

from .cli import main  # noqa: E402

sys.exit(main())
