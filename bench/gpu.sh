#!/usr/bin/env bash
# The GPU figures of bench/README.md in one command (about 8 minutes on one H200, data generation included):
# resnet50 at 128 px, batch 256, bf16, 8 workers, on 9,000 synthetic training JPEGs; the three ways
# (ceiling, plain loop, harness) as they are, then with channels_last and the harness's memory cache.
#   bash bench/gpu.sh            (from anywhere, in the project's environment, on a machine with a GPU)
set -eu
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
common=(--device cuda --data jpeg --images 11250 --image-size 128 --model resnet50 --batch-size 256
        --precision bf16 --workers 8 --epochs 4 --repeats "${REPEATS:-3}")
python bench/speed.py "${common[@]}"
python bench/speed.py "${common[@]}" --channels-last --cache memory
