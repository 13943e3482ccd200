#!/usr/bin/env bash
# A real SLURM cluster on this machine (Debian's slurmctld, slurmd, slurm-client and munge), for the `slurm`
# tests and for trying the scripts in slurm/ by hand. Needs root.
#   bash scripts/slurm_local.sh install            # the Debian packages (what .ci/run does)
#   bash scripts/slurm_local.sh start              # install if needed, start the daemons, wait for the node (8 s)
#   bash scripts/slurm_local.sh start --nodes 2    # the same, and two more nodes, each a host of its own
#   bash scripts/slurm_local.sh start --nodes 3    # and a third, whose own name resolves to a loopback address
#   bash scripts/slurm_local.sh stop [--network]   # cancel the jobs, stop the daemons this script started; with
#                                                  # --network, remove the nodes' namespaces, bridge and names
# The machine itself is the node of partition `debug` (the default). With --nodes 2, partition `two` holds
# node1 and node2: each slurmd runs in a network namespace of its own (its own address, 10.77.0.11 and
# 10.77.0.12, on a bridge with the machine at 10.77.0.1) and a UTS namespace (its own host name), so a job
# across them meets over a network as on a cluster; they share the machine's file systems (as nodes share a
# cluster's). /etc/hosts names them (between "# slurm_local" markers). With --nodes 3, partition `loopback`
# holds node1 and node3 (10.77.0.13), whose slurmd sees an /etc/hosts of its own that maps node3 to 127.0.1.1,
# as Debian's installer writes a host's own name: a job across nodes must refuse it in one line.
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
SPOOL_DIR=/var/spool/slurmd   # one per node: slurmd-<node>
BRIDGE=slurm-br0
NET=10.77.0                   # the bridge's network: the machine .1, nodeN .1N
LOOPBACK_NODE=node3           # with --nodes 3: its own name resolves to 127.0.1.1 on it
HOSTS_MARK="# slurm_local"

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
    for b in slurmctld slurmd sbatch srun scontrol munged ip nsenter unshare; do command -v "$b" >/dev/null || missing=1; done
    [ "$missing" = 1 ] || return 0
    [ "$(id -u)" = 0 ] || die "installing SLURM needs root (apt-get install slurmctld slurmd slurm-client munge iproute2)"
    log "installing slurmctld slurmd slurm-client munge iproute2 util-linux (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge iproute2 util-linux >/dev/null
}

write_conf() {  # write_conf HOST PROCTRACK NODES: 1 if the config is unchanged
    local host=$1 proctrack=$2 nodes=$3 new controller=127.0.0.1
    [ "$nodes" -ge 2 ] && controller=$NET.1  # reachable from the namespaced nodes too
    new=$(mktemp)
    cat > "$new" <<CONF
# Written by scripts/slurm_local.sh: a cluster on this machine for tests.
ClusterName=localci
SlurmctldHost=${host}(${controller})
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CryptoType=crypto/munge
AuthInfo=cred_expire=10
StateSaveLocation=${STATE_DIR}
SlurmdSpoolDir=${SPOOL_DIR}-%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd-%n.log
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
# A finished job's record stays a day, so that the tests can read it however long after its end they look.
MinJobAge=86400
KillWait=30
SlurmctldTimeout=30
SlurmdTimeout=30
# More CPUs than the machine has (at least 8), so that the tests' one-CPU jobs run side by side.
SlurmdParameters=config_overrides
NodeName=${host} NodeAddr=127.0.0.1 CPUs=$(cpus) RealMemory=$(memory) State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
    local n
    for n in $(seq 1 "$(namespaced "$nodes")"); do
        echo "NodeName=node$n NodeAddr=$NET.1$n CPUs=$(cpus) RealMemory=$(memory) State=UNKNOWN" >> "$new"
    done
    [ "$nodes" -ge 2 ] && echo "PartitionName=two Nodes=node1,node2 MaxTime=INFINITE State=UP" >> "$new"
    [ "$nodes" = 3 ] && echo "PartitionName=loopback Nodes=node1,$LOOPBACK_NODE MaxTime=INFINITE State=UP" >> "$new"
    if [ "$proctrack" = cgroup ]; then
        printf 'CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n' > /etc/slurm/cgroup.conf
    fi
    if cmp -s "$new" "$CONF"; then rm -f "$new"; return 1; fi
    install -m 644 "$new" "$CONF"
    rm -f "$new"
    log "wrote $CONF (node $host$(for n in $(seq 1 "$(namespaced "$nodes")"); do echo -n ", node$n"; done), proctrack/$proctrack)"
}

namespaced() { echo $(( $1 >= 2 ? $1 : 0 )); }  # namespaced NODES: how many nodes besides the machine

cpus() { echo $(( $(nproc) > 8 ? $(nproc) : 8 )); }
memory() { awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo; }

network() {  # network COUNT: the bridge, and node1 .. nodeCOUNT's network namespaces on it; their names in /etc/hosts
    local n
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        ip addr add "$NET.1/24" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    for n in $(seq 1 "$1"); do
        if ! ip netns list | grep -qw "node$n"; then
            ip netns add "node$n"
            ip link add "slurm-veth$n" type veth peer name eth0 netns "node$n"
            ip link set "slurm-veth$n" master "$BRIDGE"
            ip netns exec "node$n" ip addr add "$NET.1$n/24" dev eth0
        fi
        ip link set "slurm-veth$n" up
        ip netns exec "node$n" ip link set eth0 up
        ip netns exec "node$n" ip link set lo up
    done
    sed -i "/$HOSTS_MARK\$/d" /etc/hosts
    for n in $(seq 1 "$1"); do echo "$NET.1$n node$n $HOSTS_MARK"; done >> /etc/hosts
    # The loopback node's own view: its name first, at 127.0.1.1, then what every host knows.
    { echo "127.0.1.1 $LOOPBACK_NODE"; cat /etc/hosts; } > "$RUN_DIR/hosts-$LOOPBACK_NODE"
}

unnetwork() {
    local n
    sed -i "/$HOSTS_MARK\$/d" /etc/hosts
    for n in 1 2 3; do
        ip netns del "node$n" 2>/dev/null || true
        ip link del "slurm-veth$n" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
}

start_slurmd() {  # start_slurmd NODE [NETNS]: a slurmd for NODE, in NETNS and a host name of its own if given
    local pidfile=/run/slurmd-$1.pid
    alive "$pidfile" slurmd && return 0
    rm -f "$pidfile"
    mkdir -p "$SPOOL_DIR-$1"
    if [ "$1" = "$LOOPBACK_NODE" ]; then  # and a mount namespace, for an /etc/hosts of its own
        nsenter --net="/run/netns/$2" unshare --uts --mount --propagation private \
            sh -c "mount --bind $RUN_DIR/hosts-$1 /etc/hosts && hostname $1 && exec slurmd -N $1"
    elif [ -n "${2:-}" ]; then
        # nsenter, not ip netns exec: that one mounts a /sys of its own, without the cgroup file system slurmd needs
        nsenter --net="/run/netns/$2" unshare --uts sh -c "hostname $1 && exec slurmd -N $1"
    else
        slurmd -N "$1"
    fi
    wait_alive "$pidfile" slurmd 15 || { tail -20 "$LOG_DIR/slurmd-$1.log" >&2; die "slurmd of $1 did not start"; }
    cp "$pidfile" "$RUN_DIR/slurmd-$1.pid"
}

wait_up() {  # wait_up NODE
    local state="" resumed=0 i
    for ((i = 0; i < 120; i++)); do
        state=$(sinfo -h -n "$1" -o %T 2>/dev/null | head -1 || true)
        case "$state" in
            idle|mixed|allocated|completing) log "node $1 is $state"; return 0 ;;
            down*|drain*|fail*|inval*)
                [ "$resumed" = 1 ] || scontrol update NodeName="$1" State=RESUME >/dev/null 2>&1 || true
                resumed=1 ;;
        esac
        sleep 0.5
    done
    tail -20 "$LOG_DIR/slurmd-$1.log" >&2 || true
    die "node $1 is not up after 60 s (state '$state')"
}

start() {
    local nodes=1
    [ "${1:-}" = --nodes ] && nodes=${2:-}
    case "$nodes" in 1|2|3) ;; *) die "start [--nodes 1|2|3]" ;; esac
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
    local host proctrack=${SLURM_LOCAL_PROCTRACK:-linuxproc} node
    host=$(hostname -s)
    [ "$proctrack" = cgroup ] && [ ! -d /sys/fs/cgroup/freezer ] && proctrack=linuxproc
    [ "$nodes" -ge 2 ] && network "$nodes"
    if write_conf "$host" "$proctrack" "$nodes"; then  # a new config: daemons started with another one restart
        stop_slurmds
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
    local others
    others=$(for n in $(seq 1 "$(namespaced "$nodes")"); do echo "node$n"; done)
    start_slurmd "$host"
    for node in $others; do start_slurmd "$node" "$node"; done
    for node in "$host" $others; do wait_up "$node"; done
    log "cluster up"
}

stop_slurmds() {
    local pidfile
    for pidfile in "$RUN_DIR"/slurmd*.pid; do
        [ -e "$pidfile" ] && stop_daemon slurmd "$pidfile"
    done
    return 0
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
    stop_slurmds
    stop_daemon slurmctld "$RUN_DIR/slurmctld.pid"
    stop_daemon munged "$RUN_DIR/munged.pid"
    rm -f "$RUN_DIR"/*.pid
    # The namespaces stay unless asked (start reuses them): the tests stop the cluster while other tests' processes
    # still talk over this machine's network, which is not a moment to reconfigure it.
    [ "${1:-}" = --network ] && unnetwork
    log "stopped"
}

case "${1:-}" in
    install) install_packages ;;
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    *) echo "usage: $0 install | start [--nodes 2|3] | stop [--network]" >&2; exit 2 ;;
esac
