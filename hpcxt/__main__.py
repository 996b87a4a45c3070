"""``python -m hpcxt`` (and ``python -m mpi4py -m hpcxt`` under mpiexec)."""

import sys

from .cli import main

sys.exit(main())
