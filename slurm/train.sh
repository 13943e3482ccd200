#!/usr/bin/env bash
# Train on one node, on all its GPUs (or one CPU process per task on a CPU node); checkpoints, requeues itself
# and resumes when the time limit nears or the job is preempted.
#   sbatch slurm/train.sh configs/x.yaml [section.key=value ...] [train.py options]
#   sbatch --gres=gpu:4 --cpus-per-task=32 slurm/train.sh configs/x.yaml
#   LAUNCH_CONFIG=launch_configs/deepspeed_zero2.yaml sbatch --gres=gpu:8 slurm/train.sh configs/x.yaml
# Variables: LAUNCH_CONFIG (default by the allocation: cpu, cpu_ddp, single_gpu or multi_gpu.yaml), PROCESSES
# (default: the node's GPUs, else the job's tasks), OUTPUT_DIR (runs), RUN_NAME ({name}-j<job id>; {name} is the
# harness's default run name), HARNESS_DIR (the repository; default: the folder sbatch ran in).
# Every #SBATCH line below is a default: an sbatch option on the command line wins.
#SBATCH --job-name=train
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -uo pipefail
. "${HARNESS_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh" 2>/dev/null \
    || { echo "error: slurm/common.sh not found: run sbatch from the repository root, or set HARNESS_DIR" >&2; exit 2; }
enter_repo
training_args train.sh "$@"
procs=$(processes_per_node "${SLURM_NTASKS:-1}")
export HARNESS_CPU_THREADS=${HARNESS_CPU_THREADS:-$(threads_per_process "$procs")}
run_training accelerate launch --quiet --config_file "${LAUNCH_CONFIG:-$(default_launch_config "$procs")}" \
    --num_processes "$procs" --num_cpu_threads_per_process "$HARNESS_CPU_THREADS" "${TRAIN_ARGS[@]}"
