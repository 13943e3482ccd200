#!/usr/bin/env bash
# Inference for a finished run: predictions, metrics and reports, as `accelerate launch harness/infer.py`.
#   sbatch slurm/infer.sh runs/<name> [infer.py options, e.g. --split val --checkpoint last]
# Variables: LAUNCH_CONFIG and PROCESSES as in slurm/train.sh. Near the time limit (or preempted) it stops and
# requeues itself; the next attempt starts the inference again (it writes each file whole, and replaces what
# an earlier attempt wrote).
#SBATCH --job-name=infer
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -uo pipefail
. "${HARNESS_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh" 2>/dev/null \
    || { echo "error: slurm/common.sh not found: run sbatch from the repository root, or set HARNESS_DIR" >&2; exit 2; }
enter_repo
[ $# -ge 1 ] || die "usage: sbatch slurm/infer.sh RUN_DIR [infer.py options]"
run=$1; shift
[ -f "$run/config.yaml" ] || die "$run: not a run directory (no config.yaml)"
procs=$(processes_per_node "${SLURM_NTASKS:-1}")
# Inference has nothing to save: a stop signal ends it at once (after USR1 the job runs again from the start).
relay_kill() { kill -KILL -- "-$GROUP" 2>/dev/null; }
RELAY=relay_kill
announce_attempt "inference for $run"
# infer.py refuses a folder that holds an earlier inference; a requeued attempt replaces its own job's outputs.
force=()
[ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && force=(--force)
export HARNESS_CPU_THREADS=${HARNESS_CPU_THREADS:-$(threads_per_process "$procs")}
supervise accelerate launch --quiet --config_file "${LAUNCH_CONFIG:-$(default_launch_config "$procs")}" \
    --num_processes "$procs" --num_cpu_threads_per_process "$HARNESS_CPU_THREADS" \
    harness/infer.py --run "$run" "${force[@]}" "$@"
[ "$GOT_USR1" = 1 ] && [ "$SUPERVISED_RC" != 0 ] && requeue
exit "$SUPERVISED_RC"
