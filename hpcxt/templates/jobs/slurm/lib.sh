# ---- Slurm -----------------------------------------------------------------
HPCXT_JOB_ID=${SLURM_JOB_ID:-local-$$}

# The job's own --signal=B:USR1@N warns the batch shell before the limit.
hpcxt_start_timer() { :; }
hpcxt_stop_timer() { :; }

hpcxt_ntasks() { echo "${SLURM_NTASKS:-{{ntasks}}}"; }

# Replaces the calling (background) subshell with the MPI launch, so that a
# signal sent to $! reaches srun, which passes it on to every task.
# --kill-on-bad-exit=1: one failing rank ends the step instead of leaving
# the others waiting until the limit.
hpcxt_exec_mpi() {
    exec srun --kill-on-bad-exit=1 {{srun_flags}} "$HPCXT_PYTHON" -m mpi4py -m hpcxt "$@"
}

# hpcxt_submit_next STAGE ATTEMPT: submit this script again, to start once
# this job has ended; prints the new job id.
hpcxt_submit_next() {
    local dep=()
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        dep=(--dependency="afterany:$SLURM_JOB_ID")
    fi
    sbatch --parsable ${dep[@]+"${dep[@]}"} \
        --export="ALL,HPCXT_ATTEMPT=$2,HPCXT_START_STAGE=$1,HPCXT_MAX_RESUBMITS=$HPCXT_MAX_RESUBMITS,HPCXT_STALLED=$HPCXT_STALLED_NEXT" \
        "$HPCXT_SCRIPT"
}
