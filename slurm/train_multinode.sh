#!/usr/bin/env bash
# Train on several nodes: one srun task per node, each running `accelerate launch` for its machine rank, all
# meeting at the first node. Checkpoints, requeues itself and resumes like slurm/train.sh.
#   sbatch --nodes=4 --gres=gpu:8 slurm/train_multinode.sh configs/x.yaml [section.key=value ...]
#   LAUNCH_CONFIG=launch_configs/deepspeed_zero2.yaml sbatch --nodes=2 --gres=gpu:8 slurm/train_multinode.sh configs/x.yaml
# One machine per task: keep --ntasks-per-node=1 (the default below). Variables as in slurm/train.sh, except
# LAUNCH_CONFIG (default launch_configs/multi_node.yaml) and PROCESSES (per node; default: its GPUs, else 1);
# MAIN_PROCESS_PORT (default: derived from the job id).
#SBATCH --job-name=train-multinode
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -uo pipefail
. "${HARNESS_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh" 2>/dev/null \
    || { echo "error: slurm/common.sh not found: run sbatch from the repository root, or set HARNESS_DIR" >&2; exit 2; }
enter_repo
training_args train_multinode.sh "$@"
# The batch shell is the only process that gets the time-limit signal: it reaches the tasks through their step.
relay_to_steps() { scancel --signal="$1" "$SLURM_JOB_ID" 2>/dev/null; }
RELAY=relay_to_steps
# --export=ALL: the tasks get this shell's environment (its venv, site.sh's variables) also in a job submitted with
# --export=NONE, whose steps would otherwise start with SLURM's variables alone.
run_training srun --export=ALL --kill-on-bad-exit=1 bash slurm/launch_machine.sh "${TRAIN_ARGS[@]}"
