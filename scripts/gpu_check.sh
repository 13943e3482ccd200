#!/usr/bin/env bash
# The checks that need CUDA, in under 7 minutes on one GPU: the tests marked `gpu` (fp16 with loss scaling,
# bf16, DeepSpeed on the GPU, FSDP2 in bf16 with a resume, NCCL DDP and FSDP2 over 2 GPUs when there are 2+) and
# one short run of the speed benchmark
# (bench/gpu.sh gives the full figures).
# Prints one PASS/FAIL line per check and the figures; exits non-zero if a check failed.
#   bash scripts/gpu_check.sh            (from the repository root, in the project's environment)
set -u
cd "$(dirname "$0")/.."
status=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
python -c "import torch, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'accelerate', accelerate.__version__)"

timeout 360 python -m pytest -o addopts="--strict-markers" -m gpu -rA -q -p no:cacheprovider tests/e2e/test_gpu.py > /tmp/gpu_check.log 2>&1
rc=$?
sed -n '/short test summary info/,$p' /tmp/gpu_check.log | grep -E "^(PASSED|FAILED|ERROR|SKIPPED)" | sed 's/^/check: /'
tail -1 /tmp/gpu_check.log
if [ $rc != 0 ] || ! grep -qE "[0-9]+ passed" /tmp/gpu_check.log; then status=1; fi

if timeout 240 python bench/speed.py --device cuda --data jpeg --images 3000 --image-size 128 --model resnet50 \
     --batch-size 128 --precision bf16 --workers 8 --epochs 3 --repeats 1 --channels-last --cache memory; then
  echo "check: PASS throughput"
else
  echo "check: FAIL throughput"; status=1
fi
echo "gpu_check: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
