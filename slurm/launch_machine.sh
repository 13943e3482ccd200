#!/usr/bin/env bash
# One machine of a multi-node job (started by srun in slurm/train_multinode.sh, one task per node):
# `accelerate launch` with this task's machine rank, supervised like a single-node launch.
#   bash slurm/launch_machine.sh SCRIPT [args...]
set -uo pipefail
. slurm/common.sh
load_site  # this node's own shell: its modules and variables too
machines=${SLURM_NTASKS:?launch_machine.sh runs inside srun}
rank=${SLURM_PROCID:?launch_machine.sh runs inside srun}  # read here, in the task: each task has its own
main_host=$(first_node "$SLURM_JOB_NODELIST")
port=${MAIN_PROCESS_PORT:-$(( 20000 + SLURM_JOB_ID % 20000 ))}
if [ "$machines" -gt 1 ]; then
    check_addresses "$main_host" "$(hostname)"
    # Every node meets every other before the launch, within PREFLIGHT_TIMEOUT_S, on the port after the training's.
    ( trap '' USR1; exec python harness/preflight.py --main-host "$main_host" --port $(( port + 1 )) \
        --machine-rank "$rank" --machines "$machines" --timeout "${PREFLIGHT_TIMEOUT_S:-60}" ) || exit 2
fi
config_file=${LAUNCH_CONFIG:-launch_configs/multi_node.yaml}
per_machine=$(processes_per_node 1)
extra=()
# DeepSpeed across nodes through torchrun on every node, as here, rather than its pdsh/ssh launcher.
grep -q '^distributed_type: *DEEPSPEED' "$config_file" && extra=(--deepspeed_multinode_launcher standard)
say "machine $rank of $machines on $(hostname -s): $per_machine process(es), $config_file ${extra[*]}, main $main_host:$port"
export HARNESS_CPU_THREADS=${HARNESS_CPU_THREADS:-$(threads_per_process "$per_machine" "${SLURM_CPUS_PER_TASK:-}")}
supervise accelerate launch --quiet --config_file "$config_file" --num_machines "$machines" --machine_rank "$rank" \
    --main_process_ip "$main_host" --main_process_port "$port" --num_processes $(( machines * per_machine )) \
    --num_cpu_threads_per_process "$HARNESS_CPU_THREADS" "${extra[@]}" "$@"
# A requested stop is not a failure of this machine (srun would end the others' step for it): the batch script
# reads the outcome from the run's summary.
[ "$GOT_USR1" = 1 ] && exit 0
exit "$SUPERVISED_RC"
