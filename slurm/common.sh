# Sourced by the scripts in slurm/: the repository and its venv, the allocation's process count, and the
# supervision that turns a SLURM stop signal into a checkpoint and a requeue. Not a batch script itself.
#
# Why each piece is there (the traps it avoids):
# - Launchers must not act on a stop signal: torchrun forwards SIGTERM but SIGKILLs its workers 30 s later, and
#   `accelerate launch` with one process (1.16 and later) installs its own SIGTERM handler, which stops its
#   child and SIGKILLs it 5 s later, in the middle of the checkpoint a stop saves. So launchers start with USR1
#   and TERM ignored and blocked (a blocked signal stays blocked across exec, whatever handler a program
#   installs), and the stop signal goes straight to every process of the launch's own process group: the
#   training processes unblock it as they install their own handlers (harness/signals.py), launchers never
#   see it. The outcome is read from the run's summary.json, never from the launcher's exit code.
# - `--signal=B:USR1@N` reaches only the batch shell, and bash runs a trap only once its foreground child
#   returns: everything runs in the background and the shell waits with `wait`, which a trap interrupts.
# - A USR1 that comes before the training installed its handler would be lost (ignored): it is repeated every
#   2 s until the training ends; the harness takes repeats as the same request.
# - With proctrack/linuxproc, a process whose parent died leaves the job's process tree and would survive it:
#   the launch runs in its own process group (which orphans keep), the script waits until that group is empty
#   and kills what is left before it exits.

HARNESS_RESEND_S=${HARNESS_RESEND_S:-2}
HARNESS_GRACE_S=${HARNESS_GRACE_S:-60}  # how long the group may outlive its launcher (a save in progress)

say() { echo "[slurm $(date +%H:%M:%S)] $*"; }
die() { echo "error: $*" >&2; exit 2; }

# Inside a batch job the script runs from a copy in the spool folder: the repository is the submit folder.
enter_repo() {
    [ -n "${SLURM_JOB_ID:-}" ] || die "$(basename "$0"): a batch script: submit it with sbatch"
    local repo=${HARNESS_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}
    cd "$repo" 2>/dev/null && [ -f harness/train.py ] \
        || die "$repo is not the harness repository: run sbatch from the repository root, or set HARNESS_DIR"
    load_site
    if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
        # shellcheck disable=SC1091
        . .venv/bin/activate
    fi
    command -v accelerate >/dev/null || die "accelerate not found: activate the venv before sbatch, or create .venv"
}

# What a cluster adds before anything runs (modules, a venv of its own, variables): slurm/site.sh when present,
# sourced by every script from the repository, on every node (docs/slurm.md; slurm/site.example.sh).
load_site() {
    [ -f slurm/site.sh ] || return 0
    # shellcheck disable=SC1091
    . slurm/site.sh || die "slurm/site.sh failed (exit status $?): fix it, or move it away to run without it"
}

# check_addresses MAIN_HOST OWN_HOST: before a launch across nodes, on each of them. The other nodes reach the
# main node by its name, and this node's processes by the address its own name resolves to (gloo binds there
# unless GLOO_SOCKET_IFNAME names an interface): a name that resolves to a loopback address (Debian's /etc/hosts
# maps a host's own name to 127.0.1.1) or to nothing would leave every node waiting for the others until a
# timeout. One line naming the node and the name instead, at once.
check_addresses() {
    local main=$1 own=$2 name address
    for name in "$main" $([ -z "${GLOO_SOCKET_IFNAME:-}" ] && echo "$own"); do
        address=$(getent ahostsv4 "$name" 2>/dev/null | awk 'NR == 1 {print $1}')
        [ -n "$address" ] || die "node $own: the name $name does not resolve here: add it to /etc/hosts or DNS"
        case "$address" in
            127.*) die "node $own: the name $name resolves to $address, a loopback address the other nodes cannot" \
                "reach: map $name to its network address in /etc/hosts or DNS$([ "$name" = "$own" ] && echo \
                ", or set GLOO_SOCKET_IFNAME to this node's interface (slurm/site.sh)")" ;;
        esac
    done
}

# first_node NODELIST: the first host of a SLURM host list (node[01-04,07],gpu1 -> node01), as
# `scontrol show hostnames` says, without scontrol (a container may lack it).
first_node() {
    sed -E 's/\[([0-9]+)[^]]*\]/\1/g; s/,.*//' <<< "$1"
}

# The job's own name for its run directory and log: the array task for arrays, else the job id.
job_tag() {
    if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then echo "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"; else echo "${SLURM_JOB_ID}"; fi
}

# Processes on this node: PROCESSES if set, else one per GPU of the allocation, else one per task.
processes_per_node() {
    local default=$1
    if [ -n "${PROCESSES:-}" ]; then echo "$PROCESSES"
    elif [ "${SLURM_GPUS_ON_NODE:-0}" -gt 0 ] 2>/dev/null; then echo "$SLURM_GPUS_ON_NODE"
    else echo "$default"
    fi
}

# The launch config for N processes on one node when LAUNCH_CONFIG is not set.
default_launch_config() {
    local gpu=$([ "${SLURM_GPUS_ON_NODE:-0}" -gt 0 ] 2>/dev/null && echo 1 || echo 0)
    case "$gpu,$1" in
        1,1) echo launch_configs/single_gpu.yaml ;; 1,*) echo launch_configs/multi_gpu.yaml ;;
        0,1) echo launch_configs/cpu.yaml ;; 0,*) echo launch_configs/cpu_ddp.yaml ;;
    esac
}

# threads_per_process N CPUS: CPU threads for each of N processes sharing CPUS (default: the job's CPUs here).
# The scripts export it as HARNESS_CPU_THREADS, which the training processes use on a CPU (and pass it to
# accelerate for OMP_NUM_THREADS).
threads_per_process() {
    local n=$(( ${2:-${SLURM_CPUS_ON_NODE:-$(nproc)}} / $1 ))
    echo $(( n > 0 ? n : 1 ))
}

# A stop signal can come at any moment, even before the launch: it is recorded, and relayed once there is a
# group to relay it to.
GOT_USR1=0 GOT_TERM=0 GROUP=""
on_signal() {
    local seen
    eval "seen=\$GOT_$1; GOT_$1=1"
    [ "$seen" = 1 ] && return 0  # a repeat: USR1 is resent by supervise until the training has stopped
    if [ "$1" = USR1 ]; then say "got SIGUSR1: asking the training to checkpoint and stop"; else say "got SIGTERM: the job is ending"; fi
    [ -n "$GROUP" ] && "${RELAY:-relay_to_group}" "$1"
    return 0
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

# supervise CMD...: run CMD in a process group of its own, deaf to USR1 and TERM, and wait for the whole group.
# A USR1 or TERM to this shell is relayed by RELAY (default: to every process of the group), USR1 again every
# HARNESS_RESEND_S until the group is gone. Sets SUPERVISED_RC, CMD's exit code.
BLOCK_STOP_SIGNALS='import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
os.execvp(sys.argv[1], sys.argv[1:])'
supervise() {
    RELAY=${RELAY:-relay_to_group}
    ( trap '' USR1 TERM; exec setsid python -c "$BLOCK_STOP_SIGNALS" "$@" ) &
    GROUP=$!
    local resender=""
    while :; do
        if [ "$GOT_USR1" = 1 ] && [ -z "$resender" ]; then
            ( trap - USR1 TERM
              while kill -0 -- "-$GROUP" 2>/dev/null; do sleep "$HARNESS_RESEND_S"; $RELAY USR1; done ) &
            resender=$!
        fi
        wait "$GROUP"
        SUPERVISED_RC=$?
        kill -0 "$GROUP" 2>/dev/null || break  # else a trap interrupted the wait: the launcher still runs
    done
    local waited=0
    while kill -0 -- "-$GROUP" 2>/dev/null && [ "$waited" -lt "$HARNESS_GRACE_S" ]; do
        sleep 1; waited=$((waited + 1))
    done
    if kill -0 -- "-$GROUP" 2>/dev/null; then
        say "processes of the launch outlived it by ${HARNESS_GRACE_S}s: killing them"
        kill -KILL -- "-$GROUP" 2>/dev/null
    fi
    if [ -n "$resender" ]; then kill "$resender" 2>/dev/null; wait "$resender" 2>/dev/null; fi
    GROUP=""
}

relay_to_group() { kill "-$1" -- "-$GROUP" 2>/dev/null; }

# training_args SCRIPT CONFIG [overrides and train.py options]: sets OUTPUT_DIR, RUN_NAME and TRAIN_ARGS (the
# script and its arguments for the launcher).
training_args() {
    local script=$1; shift
    [ $# -ge 1 ] || die "usage: sbatch slurm/$script CONFIG [section.key=value ...]"
    refuse_own_options "${@:2}"
    export OUTPUT_DIR=${OUTPUT_DIR:-runs} RUN_NAME=${RUN_NAME:-"{name}-j$(job_tag)"}
    TRAIN_ARGS=(harness/train.py --config "$1" --output-dir "$OUTPUT_DIR" --run-name "$RUN_NAME" "${@:2}")
}

# Arguments the scripts set themselves: refused on the command line, with the variable to use instead.
refuse_own_options() {
    local arg
    for arg in "$@"; do
        case "$arg" in
            --run-name|--run-name=*) die "$arg: the job names its run (RUN_NAME=... sbatch ... sets it; {name} is the default name)" ;;
            --output-dir|--output-dir=*) die "$arg: use OUTPUT_DIR=... sbatch ..." ;;
        esac
    done
}

# The run directory this job trains in: RUN_NAME with {name} standing for the harness's default name.
find_run_dir() {
    local pattern=${RUN_NAME//\{name\}/*} found=()
    shopt -s nullglob
    # shellcheck disable=SC2206
    found=("$OUTPUT_DIR"/$pattern)
    shopt -u nullglob
    [ "${#found[@]}" -eq 1 ] && [ -f "${found[0]}/config.yaml" ] && echo "${found[0]}"
}

# A field of a run's summary.json, or nothing.
summary_field() {
    python -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2]) or "")' "$1/summary.json" "$2" 2>/dev/null
}

# run_training LAUNCH...: one attempt of a training job. Supervise LAUNCH; if a USR1 made the run checkpoint
# and stop, requeue the job (its next attempt resumes the same run directory); else exit with the outcome.
run_training() {
    local started run status
    started=$(date +%s)
    announce_attempt "$*"
    supervise "$@"
    run=$(find_run_dir)
    if [ "$GOT_USR1" = 1 ] && { [ -z "$run" ] || [ "$(stat -c %Y "$run/summary.json" 2>/dev/null || echo 0)" -lt "$started" ]; }; then
        # Stopped before it trained (the signal came during the start-up): nothing was written, nothing is lost.
        if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then
            say "stopped before training started: requeued once (a first attempt may be signalled early by chance)"
            requeue
        fi
        say "not requeued: stopped before training started again (is the time limit shorter than the start-up?)"
        exit 1
    fi
    if [ -z "$run" ]; then
        say "no run directory matches $OUTPUT_DIR/$RUN_NAME: the training did not start (exit code $SUPERVISED_RC)"
        exit $(( SUPERVISED_RC ? SUPERVISED_RC : 1 ))
    fi
    status=$(summary_field "$run" status)
    say "run directory $run: ${status:-no summary}"
    if [ "$GOT_USR1" = 1 ] && [ "$status" = interrupted ]; then
        # Only this attempt's own checkpoint is a reason to requeue: else the next would stop the same way.
        if [ "$(stat -c %Y "$run/summary.json")" -ge "$started" ] \
            && [ "$(stat -c %Y "$run/checkpoints/latest" 2>/dev/null || echo 0)" -ge "$started" ]; then
            requeue
        fi
        say "not requeued: this attempt wrote no checkpoint (is the time limit shorter than the start-up?)"
        exit 1
    fi
    exit "$SUPERVISED_RC"
}

# The first line of every attempt in the output file (SLURM_RESTART_COUNT is unset on the first one).
announce_attempt() {
    say "job $(job_tag), attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 )), node $(hostname -s): $1"
}

requeue() {
    local id
    id=$(job_tag)  # an array task by its array id and index
    if ! command -v scontrol >/dev/null; then
        die "cannot requeue job $id: scontrol is not on PATH here (a container without SLURM's commands?); the run" \
            "checkpointed in $(find_run_dir): submit the job again with OUTPUT_DIR=$OUTPUT_DIR" \
            "RUN_NAME=$(basename "$(find_run_dir)") to continue it, or make scontrol available (slurm/site.sh)"
    fi
    say "requeueing job $id: the next attempt continues from the checkpoint"
    # The requeue ends this attempt with a SIGTERM to each of its processes: scontrol must outlive it to report.
    ( trap '' TERM; exec scontrol requeue "$id" ) || { say "scontrol requeue $id failed"; exit 1; }
    exit 0
}
