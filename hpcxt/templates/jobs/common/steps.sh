# ---- logging ----------------------------------------------------------------
# Every decision goes to the job's output and, one line each, to chain.log in
# the jobs folder: the history of the whole chain in one place.
hpcxt_log() {
    local line
    line="$(date '+%Y-%m-%d %H:%M:%S') job $HPCXT_JOB_ID attempt $HPCXT_ATTEMPT $HPCXT_STAGE: $*"
    echo "$line"
    echo "$line" >>"$HPCXT_JOBS_DIR/chain.log"
}

# ---- signals ------------------------------------------------------------------
# SIGUSR1 is the wall-time warning: during the fit it goes on to the MPI step,
# whose master writes a final checkpoint and stops; then this job hands over
# to a new one. SIGTERM means cancelled (or killed at the limit): it goes on
# to the step too, but nothing is resubmitted.
HPCXT_WARNED=0
HPCXT_TERMINATED=0
HPCXT_INTERRUPTED=0
HPCXT_FORWARD_USR1=0
HPCXT_STEP_PID=""
HPCXT_STEP_STATUS=0

hpcxt_on_signal() {
    HPCXT_INTERRUPTED=1
    if [ "$1" = USR1 ]; then
        HPCXT_WARNED=1
    else
        HPCXT_TERMINATED=1
    fi
    if [ -n "$HPCXT_STEP_PID" ] && { [ "$1" != USR1 ] || [ "$HPCXT_FORWARD_USR1" = 1 ]; }; then
        hpcxt_log "SIG$1 received: passed on to the running step"
        kill -s "$1" "$HPCXT_STEP_PID" 2>/dev/null || true
    else
        hpcxt_log "SIG$1 received"
    fi
}
trap 'hpcxt_on_signal USR1' USR1
trap 'hpcxt_on_signal TERM' TERM
trap 'hpcxt_stop_timer' EXIT

# hpcxt_run_step mpi|serial ARGS...: run `hpcxt ARGS` in the background so
# that signals reach this shell at once, and wait for it to end even when a
# signal interrupts the wait. Sets HPCXT_STEP_STATUS and returns it.
hpcxt_run_step() {
    local how=$1
    shift
    if [ "$how" = mpi ]; then
        hpcxt_exec_mpi "$@" &
    else
        "$HPCXT_PYTHON" -m hpcxt "$@" &
    fi
    HPCXT_STEP_PID=$!
    while :; do
        HPCXT_INTERRUPTED=0
        wait "$HPCXT_STEP_PID"
        HPCXT_STEP_STATUS=$?
        [ "$HPCXT_INTERRUPTED" = 1 ] || break
    done
    HPCXT_STEP_PID=""
    return "$HPCXT_STEP_STATUS"
}

# Prints "FINAL TOTAL": regions with a final status (ok or failed) and all
# regions; "0 0" before the fit has written its first checkpoint, "0 -1"
# when the results cannot be read (the fit itself will say why).
hpcxt_progress() {
    local out
    if out=$("$HPCXT_PYTHON" -m hpcxt.jobs progress "$HPCXT_CONFIG") && [ -n "$out" ]; then
        echo "$out"
    else
        echo "0 -1"
    fi
}

# hpcxt_stalled REASON: this job made no progress. Returns 0 (and counts it
# for the next job) when that is the first such job in a row, else logs why
# the chain ends and returns 1.
hpcxt_stalled() {
    if [ "$HPCXT_STALLED" -ge 1 ]; then
        hpcxt_log "not resubmitting: $1, and the job before made no progress either;" \
            "give the job more time (--time) or a shorter warning (--signal-seconds)"
        return 1
    fi
    hpcxt_log "fit: $1 (Slurm may warn up to a minute early); one more job will try"
    HPCXT_STALLED_NEXT=$((HPCXT_STALLED + 1))
    return 0
}

# hpcxt_resubmit STAGE: continue the chain in a new job from STAGE.
# Returns 3 when a job was submitted, 1 when not (the reason is logged).
hpcxt_resubmit() {
    local next=$((HPCXT_ATTEMPT + 1)) out
    if [ "$HPCXT_ATTEMPT" -gt "$HPCXT_MAX_RESUBMITS" ]; then
        hpcxt_log "not resubmitting: $HPCXT_MAX_RESUBMITS resubmissions done" \
            "(HPCXT_MAX_RESUBMITS); submit $HPCXT_SCRIPT again to go on"
        return 1
    fi
    if ! out=$(hpcxt_submit_next "$1" "$next" 2>&1); then
        hpcxt_log "not resubmitting: submission failed: $out"
        return 1
    fi
    hpcxt_log "resubmitted as job $out (attempt $next, from stage $1)"
    return 3
}

# hpcxt_fit_stage: fit --resume (which also starts a fit with no results
# yet). Returns 0 when every region has a final status, 3 when the fit
# checkpointed at the wall-time warning and a new job will go on, else the
# failure's status.
hpcxt_fit_stage() {
    local before after total status kernels
    read -r before total <<<"$(hpcxt_progress)"
    if [ "$total" -gt 0 ] && [ "$before" -ge "$total" ]; then
        hpcxt_log "fit: all $total regions already have a final status"
        return 0
    fi
    if [ "$HPCXT_WARNED" = 1 ]; then
        # Slurm may send the warning up to a minute early: one job that made
        # no progress is retried, two in a row end the chain.
        hpcxt_stalled "the wall-time warning came before the fit started" || return 1
        hpcxt_resubmit fit
        return
    fi
    if [ "$total" = 0 ]; then
        hpcxt_log "fit: no results yet; starting on $(hpcxt_ntasks) tasks"
    else
        hpcxt_log "fit: $before of $total regions final; starting on $(hpcxt_ntasks) tasks"
    fi
    # The template engine's kernels compiled ahead of time, once per
    # installation (a second when they are): without them every fit rank
    # imports numba and compiles them itself (about 40 MiB more each).
    if kernels=$("$HPCXT_PYTHON" -m hpcxt.compiled --if-missing 2>&1); then
        case $kernels in *" built in "*) hpcxt_log "fit: ${kernels#hpcxt: }" ;; esac
    else
        hpcxt_log "fit: the compiled kernels did not build (${kernels##*$'\n'}); each rank compiles them with numba"
    fi
    HPCXT_FORWARD_USR1=1
    hpcxt_run_step mpi fit "$HPCXT_CONFIG" --resume
    status=$HPCXT_STEP_STATUS
    HPCXT_FORWARD_USR1=0
    read -r after total <<<"$(hpcxt_progress)"
    hpcxt_log "fit: step exited with status $status; $after of $total regions final"
    if { [ "$total" -gt 0 ] && [ "$after" -ge "$total" ]; } ||
        { [ "$status" = 0 ] && [ "$HPCXT_WARNED" = 0 ] && [ "$HPCXT_TERMINATED" = 0 ]; }; then
        hpcxt_log "fit: complete"
        return 0
    fi
    [ "$status" = 0 ] && status=1
    if [ "$HPCXT_TERMINATED" = 1 ]; then
        hpcxt_log "not resubmitting: stopped by SIGTERM (cancelled, or killed at the limit);" \
            "submit $HPCXT_SCRIPT again to resume"
        return "$status"
    fi
    if [ "$HPCXT_WARNED" = 0 ]; then
        hpcxt_log "not resubmitting: the fit failed (status $status) without a wall-time" \
            "warning; see $HPCXT_JOBS_DIR/$HPCXT_STAGE-$HPCXT_JOB_ID.out"
        return "$status"
    fi
    if [ "$after" -le "$before" ]; then
        hpcxt_stalled "no region finished in this job" || return "$status"
        hpcxt_resubmit fit
        return
    fi
    HPCXT_STALLED_NEXT=0
    hpcxt_log "fit: checkpointed at the wall-time warning ($((after - before)) regions done in this job)"
    hpcxt_resubmit fit
}

# hpcxt_fit_job: the whole of a fit-only job.
hpcxt_fit_job() {
    local rc
    hpcxt_start_timer
    hpcxt_fit_stage
    rc=$?
    case "$rc" in
        0 | 3) return 0 ;;
        *) return "$rc" ;;
    esac
}

# hpcxt_run_job: prep (serial), scalemap (MPI), fit (MPI, checkpointed and
# resubmitted), maps (serial); a resubmitted job starts at
# HPCXT_START_STAGE. A wall-time warning during a stage that cannot
# checkpoint lets it run on; if it ends in time, a new job takes the rest.
hpcxt_run_job() {
    local stage started=0 finished_here=0 rc
    local start=${HPCXT_START_STAGE:-prep}
    case "$start" in
        prep | scalemap | fit | maps) ;;
        *)
            hpcxt_log "HPCXT_START_STAGE must be prep, scalemap, fit or maps, got '$start'"
            return 2
            ;;
    esac
    hpcxt_start_timer
    hpcxt_log "run: starting at stage $start"
    for stage in prep scalemap fit maps; do
        [ "$stage" = "$start" ] && started=1
        [ "$started" = 1 ] || continue
        if [ "$HPCXT_WARNED" = 1 ] || [ "$HPCXT_TERMINATED" = 1 ]; then
            if [ "$HPCXT_TERMINATED" = 0 ] && [ "$finished_here" -gt 0 ]; then
                hpcxt_log "run: wall-time warning during the previous stage; going on in a new job"
                hpcxt_resubmit "$stage"
                rc=$?
                [ "$rc" = 3 ] && return 0
                return "$rc"
            fi
            hpcxt_log "not resubmitting: signalled before stage $stage with no stage finished in this job"
            return 1
        fi
        case "$stage" in
            fit)
                hpcxt_fit_stage
                rc=$?
                [ "$rc" = 3 ] && return 0
                [ "$rc" = 0 ] || return "$rc"
                ;;
            scalemap)
                hpcxt_log "scalemap: starting on $(hpcxt_ntasks) tasks"
                if ! hpcxt_run_step mpi scalemap "$HPCXT_CONFIG"; then
                    hpcxt_log "run: scalemap failed (status $HPCXT_STEP_STATUS); stopping"
                    return "$HPCXT_STEP_STATUS"
                fi
                ;;
            *)
                hpcxt_log "$stage: starting"
                if ! hpcxt_run_step serial "$stage" "$HPCXT_CONFIG"; then
                    hpcxt_log "run: $stage failed (status $HPCXT_STEP_STATUS); stopping"
                    return "$HPCXT_STEP_STATUS"
                fi
                ;;
        esac
        hpcxt_log "$stage: done"
        finished_here=$((finished_here + 1))
    done
    hpcxt_log "run: finished"
    return 0
}

# hpcxt_scalemap_job: the whole of a scale-map job (no checkpoint: give it
# the time it needs).
hpcxt_scalemap_job() {
    hpcxt_log "scalemap: starting on $(hpcxt_ntasks) tasks"
    if hpcxt_run_step mpi scalemap "$HPCXT_CONFIG"; then
        hpcxt_log "scalemap: done"
        return 0
    fi
    hpcxt_log "scalemap: failed (status $HPCXT_STEP_STATUS)"
    return "$HPCXT_STEP_STATUS"
}
