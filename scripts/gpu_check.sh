#!/usr/bin/env bash
# The checks that need CUDA, in under 6 minutes on one GPU: the tests marked `gpu` (fp16 with loss scaling,
# bf16, DeepSpeed on the GPU, NCCL DDP when there are 2+ GPUs) and a bf16 throughput figure.
# Prints one PASS/FAIL line per check and the figures; exits non-zero if a check failed.
#   bash scripts/gpu_check.sh            (from the repository root, in the project's environment)
set -u
cd "$(dirname "$0")/.."
status=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
python -c "import torch, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'accelerate', accelerate.__version__)"

timeout 300 python -m pytest -m gpu -rA -q -p no:cacheprovider tests/test_gpu.py > /tmp/gpu_check.log 2>&1
rc=$?
sed -n '/short test summary info/,$p' /tmp/gpu_check.log | grep -E "^(PASSED|FAILED|ERROR|SKIPPED)" | sed 's/^/check: /'
tail -1 /tmp/gpu_check.log
if [ $rc != 0 ] || ! grep -qE "[0-9]+ passed" /tmp/gpu_check.log; then status=1; fi

if timeout 120 python bench/throughput.py --model resnet50 --image-size 224 --batch-size 64 --precision bf16 --channels-last; then
  echo "check: PASS throughput"
else
  echo "check: FAIL throughput"; status=1
fi
echo "gpu_check: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
