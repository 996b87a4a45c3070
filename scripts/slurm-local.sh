#!/usr/bin/env bash
# A one-machine Slurm for testing hpcxt's job scripts: munged, slurmctld and
# slurmd on 127.0.0.1, one partition "debug", no accounting, pmi2 for MPI.
#
#   scripts/slurm-local.sh start    install (Debian, as root) and start; reuses
#                                   a Slurm that already answers
#   scripts/slurm-local.sh stop     stop the daemons this script started
#   scripts/slurm-local.sh status   say whether Slurm answers
#
# `start` prints one line "slurm-local: started" or "slurm-local: running"
# (already up, reused). It exits 3 with the reason on stderr when it cannot
# run here (not root, not Debian, no apt-get, a site slurm.conf it must not
# touch), and 1 when the daemons fail to come up (the logs are named).
#
# No systemd needed: the daemons are started directly and stopped by the pid
# files they write. The node declares more CPUs than the machine has
# (SlurmdParameters=config_overrides), so jobs with more tasks than cores
# start instead of pending forever. SLURM_LOCAL_CPUS sets that number.
set -euo pipefail

CPUS=${SLURM_LOCAL_CPUS:-8}
CONF=/etc/slurm/slurm.conf
MARKER="# written by hpcxt scripts/slurm-local.sh"
PKGS=(slurm-wlm slurm-wlm-torque munge)
LOGDIR=/var/log/slurm
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid

say() { echo "slurm-local: $*"; }
cannot() { echo "slurm-local: cannot run here: $*" >&2; exit 3; }
fail() { echo "slurm-local: $*" >&2; exit 1; }

pid_alive() {  # pid_alive PIDFILE
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

slurm_answers() {
    command -v scontrol >/dev/null 2>&1 || return 1
    timeout 10 scontrol ping 2>/dev/null | grep -q "is UP" || return 1
    local state
    state=$(timeout 10 sinfo -h -o %T 2>/dev/null | head -n1)
    case "$state" in
        idle* | mixed* | allocated* | completing*) return 0 ;;
        *) return 1 ;;
    esac
}

check_platform() {
    [ "$(id -u)" = 0 ] || cannot "needs root to install and start munged, slurmctld and slurmd"
    [ -f /etc/debian_version ] || cannot "needs Debian (apt-get install slurm-wlm munge)"
    command -v apt-get >/dev/null 2>&1 || cannot "apt-get not found"
}

install_packages() {
    local missing=() pkg
    for pkg in "${PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]}"
    apt-get update -qq >/dev/null
    # policy-rc.d-less containers may try to start services: harmless, we
    # start the daemons ourselves below.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

write_conf() {
    local host first_job_id
    host=$(hostname -s)
    # Job ids restart at FirstJobId whenever the saved state is gone. MPI
    # libraries name shared-memory segments after the job step, and ranks
    # killed by MPI_Abort leave theirs in /dev/shm: a new job 2 meeting an
    # old job 2's segment fails in MPI_Init. Starting from the clock keeps
    # ids unique on this machine across re-installs.
    first_job_id=$(($(date +%s) / 2 % 60000000 + 1))
    if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
        cannot "$CONF exists and was not written by this script; not touching a site's Slurm"
    fi
    mkdir -p /etc/slurm
    cat >"$CONF.tmp" <<EOF
$MARKER
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmi2
ReturnToService=2
KillWait=10
MinJobAge=600
SlurmdParameters=config_overrides
FirstJobId=$first_job_id
MaxJobId=67000000
NodeName=$host NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    if pid_alive "$MUNGE_PID" && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
    chmod 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    rm -f "$MUNGE_PID" /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged

    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    fail "munged did not come up (see /var/log/munge/munged.log)"
}

start_slurm() {
    mkdir -p /var/spool/slurmctld /var/spool/slurmd "$LOGDIR"
    pid_alive "$CTLD_PID" || /usr/sbin/slurmctld
    pid_alive "$SLURMD_PID" || /usr/sbin/slurmd
    local host state
    host=$(hostname -s)
    for _ in $(seq 60); do
        if slurm_answers; then
            return 0
        fi
        state=$(timeout 5 sinfo -h -n "$host" -o %T 2>/dev/null | head -n1 || true)
        case "$state" in
            down* | drain*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    fail "slurm did not come up in 30 s (see $LOGDIR/slurmctld.log and $LOGDIR/slurmd.log)"
}

stop_pidfile() {  # stop_pidfile PIDFILE NAME
    local pid
    [ -s "$1" ] || return 0
    pid=$(cat "$1")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "slurm-local: $2 (pid $pid) did not exit; sending SIGKILL" >&2
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$1"
}

case "${1:-}" in
    start)
        if slurm_answers; then
            say "running"
            exit 0
        fi
        check_platform
        install_packages
        write_conf
        start_munge
        start_slurm
        say "started"
        ;;
    stop)
        [ "$(id -u)" = 0 ] || cannot "needs root to stop the daemons"
        if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
            cannot "$CONF was not written by this script; not stopping a site's Slurm"
        fi
        stop_pidfile "$SLURMD_PID" slurmd
        stop_pidfile "$CTLD_PID" slurmctld
        stop_pidfile "$MUNGE_PID" munged
        say "stopped"
        ;;
    status)
        if slurm_answers; then
            say "running"
        else
            say "not running"
            exit 1
        fi
        ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
