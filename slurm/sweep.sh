#!/usr/bin/env bash
# One run of a sweep per array task, each in its own run directory with its own checkpoints and requeue:
#   sbatch --array=0-3 slurm/sweep.sh configs/x.yaml sweeps/lr.yaml [section.key=value ...]
# The sweep file lists the runs (see sweeps/); `python -m harness.sweep sweeps/lr.yaml` prints them with their
# array indices. Afterwards: python harness/compare.py runs/*-j<array job id>_*
# Variables as in slurm/train.sh.
#SBATCH --job-name=sweep
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%A_%a.out
set -uo pipefail
. "${HARNESS_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh" 2>/dev/null \
    || { echo "error: slurm/common.sh not found: run sbatch from the repository root, or set HARNESS_DIR" >&2; exit 2; }
enter_repo
[ $# -ge 2 ] || die "usage: sbatch --array=0-N slurm/sweep.sh CONFIG SWEEP [section.key=value ...]"
[ -n "${SLURM_ARRAY_TASK_ID:-}" ] || die "slurm/sweep.sh runs as a job array: sbatch --array=0-N slurm/sweep.sh ..."
config=$1 sweep=$2; shift 2
overrides=$(python -m harness.sweep "$sweep" --config "$config" --task "$SLURM_ARRAY_TASK_ID") || exit 2
if [ -n "$overrides" ]; then mapfile -t overrides <<<"$overrides"; else overrides=(); fi
# The same process (so the batch signal still reaches it) becomes a training job with this task's overrides.
exec bash slurm/train.sh "$config" "${overrides[@]}" "$@"
