#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine (Debian's slurmctld, slurmd, slurm-client and munge), for the
# `slurm` tests and for trying the scripts in slurm/ by hand. Needs root.
#   bash scripts/slurm_local.sh install   # the Debian packages (what .ci/run does)
#   bash scripts/slurm_local.sh start     # install if needed, start the daemons, wait for the node (about 8 s)
#   bash scripts/slurm_local.sh stop      # cancel the jobs, stop the daemons this script started
# Idempotent: start does only what is missing. Settings chosen for tests (see slurm.conf below): requeued jobs
# may start again after 10 s (AuthInfo=cred_expire; the default is 120 s), the scheduler runs every 5 s,
# finished jobs stay visible to scontrol for 5 minutes. SLURM_LOCAL_PROCTRACK=cgroup uses the cgroup-v1 freezer
# (kills every process of a job); the default, linuxproc, is the weakest tracking and what the scripts must
# survive.
set -euo pipefail

RUN_DIR=/run/slurm-local      # pid files of the daemons this script started: what stop kills
CONF=/etc/slurm/slurm.conf
LOG_DIR=/var/log/slurm
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd

log() { echo "[slurm_local $(date +%T)] $*"; }
die() { echo "[slurm_local $(date +%T)] error: $*" >&2; exit 1; }

# alive PIDFILE NAME: the file holds the pid of a live (not zombie) process called NAME
alive() {
    local pid state
    [ -s "$1" ] || return 1
    pid=$(tr -dc '0-9' < "$1" 2>/dev/null)
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
    state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

wait_alive() {  # wait_alive PIDFILE NAME SECONDS
    local i
    for ((i = 0; i < $3 * 10; i++)); do alive "$1" "$2" && return 0; sleep 0.1; done
    return 1
}

install_packages() {
    local missing=0 b
    for b in slurmctld slurmd sbatch srun scontrol munged; do command -v "$b" >/dev/null || missing=1; done
    [ "$missing" = 1 ] || return 0
    [ "$(id -u)" = 0 ] || die "installing SLURM needs root (apt-get install slurmctld slurmd slurm-client munge)"
    log "installing slurmctld slurmd slurm-client munge (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
    local host=$1 proctrack=$2 new
    new=$(mktemp)
    cat > "$new" <<CONF
# Written by scripts/slurm_local.sh: a one-node cluster on localhost for tests.
ClusterName=localci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CryptoType=crypto/munge
AuthInfo=cred_expire=10
StateSaveLocation=${STATE_DIR}
SlurmdSpoolDir=${SPOOL_DIR}
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/${proctrack}
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=300
KillWait=30
SlurmctldTimeout=30
SlurmdTimeout=30
# More CPUs than the machine has (at least 8), so that the tests' one-CPU jobs run side by side.
SlurmdParameters=config_overrides
NodeName=${host} NodeAddr=127.0.0.1 CPUs=$(( $(nproc) > 8 ? $(nproc) : 8 )) RealMemory=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    if [ "$proctrack" = cgroup ]; then
        printf 'CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n' > /etc/slurm/cgroup.conf
    fi
    if cmp -s "$new" "$CONF"; then rm -f "$new"; return 1; fi
    install -m 644 "$new" "$CONF"
    rm -f "$new"
    log "wrote $CONF (node $host, proctrack/$proctrack)"
}

start() {
    [ "$(id -u)" = 0 ] || die "starting SLURM daemons needs root"
    install_packages
    mkdir -p "$RUN_DIR" /etc/slurm "$LOG_DIR" "$STATE_DIR" "$SPOOL_DIR"
    # munge: the daemons' authentication
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown -R munge:munge /etc/munge && chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge
    install -d -o munge -g munge -m 711 /var/lib/munge
    if ! alive /run/munge/munged.pid munged; then
        rm -f /run/munge/munged.pid
        runuser -u munge -- /usr/sbin/munged
        wait_alive /run/munge/munged.pid munged 10 || die "munged did not start (/var/log/munge/munged.log)"
        cp /run/munge/munged.pid "$RUN_DIR/munged.pid"
    fi
    local host proctrack=${SLURM_LOCAL_PROCTRACK:-linuxproc}
    host=$(hostname -s)
    [ "$proctrack" = cgroup ] && [ ! -d /sys/fs/cgroup/freezer ] && proctrack=linuxproc
    if write_conf "$host" "$proctrack"; then  # a new config: daemons started with another one must restart
        stop_daemon slurmd /run/slurmd.pid
        stop_daemon slurmctld /run/slurmctld.pid
    fi
    if ! alive /run/slurmctld.pid slurmctld; then
        rm -f /run/slurmctld.pid
        slurmctld -c
        wait_alive /run/slurmctld.pid slurmctld 15 || { tail -20 "$LOG_DIR/slurmctld.log" >&2; die "slurmctld did not start"; }
        cp /run/slurmctld.pid "$RUN_DIR/slurmctld.pid"
    fi
    local i
    for ((i = 0; i < 150; i++)); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
    if ! alive /run/slurmd.pid slurmd; then
        rm -f /run/slurmd.pid
        slurmd
        wait_alive /run/slurmd.pid slurmd 15 || { tail -20 "$LOG_DIR/slurmd.log" >&2; die "slurmd did not start"; }
        cp /run/slurmd.pid "$RUN_DIR/slurmd.pid"
    fi
    local state="" resumed=0
    for ((i = 0; i < 120; i++)); do
        state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -1 || true)
        case "$state" in
            idle|mixed|allocated|completing) log "cluster up: node $host is $state"; return 0 ;;
            down*|drain*|fail*|inval*)
                [ "$resumed" = 1 ] || scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
                resumed=1 ;;
        esac
        sleep 0.5
    done
    tail -20 "$LOG_DIR/slurmd.log" >&2 || true
    die "node $host is not up after 60 s (state '$state')"
}

stop_daemon() {  # stop_daemon NAME PIDFILE
    alive "$2" "$1" || return 0
    local pid i
    pid=$(tr -dc '0-9' < "$2" 2>/dev/null)
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do alive "$2" "$1" || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

stop() {
    if command -v squeue >/dev/null && scontrol ping >/dev/null 2>&1; then
        local jobs i
        jobs=$(squeue -h -o %i | tr '\n' ' ')
        if [ -n "${jobs// /}" ]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs || true
            for ((i = 0; i < 90; i++)); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 1; done
        fi
    fi
    stop_daemon slurmd "$RUN_DIR/slurmd.pid"
    stop_daemon slurmctld "$RUN_DIR/slurmctld.pid"
    stop_daemon munged "$RUN_DIR/munged.pid"
    rm -f "$RUN_DIR"/*.pid
    log "stopped"
}

case "${1:-}" in
    install) install_packages ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
