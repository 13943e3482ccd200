"""Training throughput of a model through the same Accelerator set-up the harness uses (synthetic data).

    python bench/throughput.py --model resnet50 --image-size 224 --batch-size 64 --precision bf16 --channels-last

Prints images/s of the optimizer loop (forward, backward, step) after warm-up. A figure, never a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.accel import build_accelerator  # noqa: E402
from harness.config import ModelConfig  # noqa: E402
from harness.models import build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=["no", "fp16", "bf16"], default="bf16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()

    accelerator = build_accelerator(args.precision)
    model = build_model(ModelConfig(name=args.model), num_classes=1000)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model, optimizer = accelerator.prepare(model, optimizer)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=accelerator.device)
    images = images.to(memory_format=memory_format)
    labels = torch.randint(0, 1000, (args.batch_size,), device=accelerator.device)

    def step() -> None:
        with accelerator.autocast():
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    print(f"throughput: {args.model} {args.image_size}px batch {args.batch_size} {args.precision} "
          f"{'channels_last' if args.channels_last else 'contiguous'} on {accelerator.device}: "
          f"{args.steps * args.batch_size / seconds:.0f} images/s ({seconds / args.steps * 1000:.1f} ms/step)")


if __name__ == "__main__":
    main()
