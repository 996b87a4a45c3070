# ---- environment -----------------------------------------------------------
# Module and conda shell functions trip over `set -u`: load them first.
{{env_setup}}

set -uo pipefail
HPCXT_STAGE={{stage|q}}
HPCXT_CONFIG={{config|q}}
HPCXT_JOBS_DIR={{jobs_dir|q}}
HPCXT_SCRIPT={{script|q}}
HPCXT_PYTHON={{python|q}}
# Resubmissions allowed after the first job of a chain, and where this job
# is in the chain (the resubmitting job sets both).
HPCXT_MAX_RESUBMITS=${HPCXT_MAX_RESUBMITS:-{{max_resubmits}}}
HPCXT_ATTEMPT=${HPCXT_ATTEMPT:-1}
HPCXT_START_STAGE=${HPCXT_START_STAGE:-}
# Jobs in a row, ending with the one before, that made no fit progress; the
# next job's count (reset by any progress).
HPCXT_STALLED=${HPCXT_STALLED:-0}
HPCXT_STALLED_NEXT=0
# One core per MPI rank.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
mkdir -p "$HPCXT_JOBS_DIR"
