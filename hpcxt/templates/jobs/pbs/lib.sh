# ---- PBS Pro / Torque --------------------------------------------------------
# Slurm's qsub wrapper (slurm-wlm-torque) runs this script with SLURM_* but
# no PBS_* variables: fall back to those, then to the jobs folder.
HPCXT_JOB_ID=${PBS_JOBID:-${SLURM_JOB_ID:-local-$$}}
cd "${PBS_O_WORKDIR:-${SLURM_SUBMIT_DIR:-$HPCXT_JOBS_DIR}}" 2>/dev/null || cd "$HPCXT_JOBS_DIR" || exit 1
# PBS copies its own output file back only when the job ends: log here instead.
exec >>"$HPCXT_JOBS_DIR/$HPCXT_STAGE-$HPCXT_JOB_ID.out" 2>&1

# PBS sends SIGTERM at the limit and SIGKILL a few seconds later, too late
# for a clean hand-over: a timer of our own sends SIGUSR1 {{signal_seconds}} s
# before the wall time ({{time}}) instead.
HPCXT_TIMER_PID=""
hpcxt_start_timer() {
    local delay=$(({{time_seconds}} - {{signal_seconds}}))
    [ "$delay" -gt 0 ] || delay=1
    (
        sleeper=""
        trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
        sleep "$delay" &
        sleeper=$!
        wait "$sleeper" && kill -s USR1 "$$"
    ) &
    HPCXT_TIMER_PID=$!
}
hpcxt_stop_timer() {
    if [ -n "$HPCXT_TIMER_PID" ]; then
        kill "$HPCXT_TIMER_PID" 2>/dev/null || true
        HPCXT_TIMER_PID=""
    fi
}

hpcxt_ntasks() {
    if [ -n "${PBS_NODEFILE:-}" ] && [ -r "$PBS_NODEFILE" ]; then
        wc -l <"$PBS_NODEFILE" | tr -d ' '
    elif [ -n "${SLURM_NTASKS:-}" ]; then
        echo "$SLURM_NTASKS"
    else
        echo {{ntasks}}
    fi
}

# Replaces the calling (background) subshell with the MPI launch, so that a
# signal sent to $! reaches mpiexec, which passes it on to every rank.
hpcxt_exec_mpi() {
    exec {{mpiexec|q}} -n "$(hpcxt_ntasks)" {{mpiexec_flags}} "$HPCXT_PYTHON" -m mpi4py -m hpcxt "$@"
}

# hpcxt_submit_next STAGE ATTEMPT: submit this script again, to start once
# this job has ended; prints the new job id.
hpcxt_submit_next() {
    local dep=() parent=${PBS_JOBID:-${SLURM_JOB_ID:-}}
    if [ -n "$parent" ]; then
        dep=(-W "depend=afterany:$parent")
    fi
    (cd "$HPCXT_JOBS_DIR" && qsub -V \
        -v "HPCXT_ATTEMPT=$2,HPCXT_START_STAGE=$1,HPCXT_MAX_RESUBMITS=$HPCXT_MAX_RESUBMITS,HPCXT_STALLED=$HPCXT_STALLED_NEXT" \
        ${dep[@]+"${dep[@]}"} "$HPCXT_SCRIPT")
}
