"""The two peers the harness is measured against, each run as its own process by ``bench/speed.py``:

    python bench/loops.py ceiling|plain --data ROOT --out result.json [options]

- ``ceiling``: the model-bound ceiling, the same optimizer loop on random tensors already on the device;
- ``plain``: a plain hand-written PyTorch loop, torchvision ``ImageFolder`` + ``DataLoader`` (persistent
  workers, pinned memory on a GPU), training on ``ROOT/train`` and validating on ``ROOT/val`` every epoch,
  then testing on ``ROOT/test``: what the harness does, without its checkpoints and reports.

Both write one JSON object: per-epoch train-pass seconds and images, and the process's own wall time.
"""

from __future__ import annotations

import argparse
import json
import time

STARTED = time.perf_counter()

import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision import transforms as T  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=["ceiling", "plain"])
    parser.add_argument("--data", required=True, help="an ImageFolder root with train/, val/ and test/")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", action="store_true")
    return parser.parse_args()


class Loop:
    """Model, optimizer (SGD with momentum, a cosine schedule per update) and one training step, shared by both
    variants so that they differ only in where the batches come from."""

    def __init__(self, args: argparse.Namespace, num_classes: int, updates: int) -> None:
        self.device = torch.device(args.device)
        self.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        model = torchvision.models.get_model(args.model, weights=None, num_classes=num_classes)
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=args.lr, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=updates)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype is torch.float16)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def to_device(self, images: torch.Tensor, labels: torch.Tensor):
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return images, labels.to(self.device, non_blocking=True)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with self.autocast():
            loss = torch.nn.functional.cross_entropy(self.model(images), labels)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def ceiling(args: argparse.Namespace, result: dict) -> None:
    train = torchvision.datasets.ImageFolder(f"{args.data}/train")
    batches = -(-len(train) // args.batch_size)
    loop = Loop(args, len(train.classes), batches * args.epochs)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    labels = torch.randint(0, len(train.classes), (args.batch_size,), generator=generator)
    images, labels = loop.to_device(images, labels)
    loop.model.train()
    for _ in range(args.epochs):
        started = time.perf_counter()
        for _ in range(batches):
            loop.train_step(images, labels)
        loop.synchronize()
        result["epochs"].append({"seconds": time.perf_counter() - started, "images": batches * args.batch_size})


def plain(args: argparse.Namespace, result: dict) -> None:
    size = args.image_size
    normalize = [T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    train_tf = T.Compose([T.Resize((size, size)), T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip(),
                          *normalize])
    eval_tf = T.Compose([T.Resize((size, size)), *normalize])
    splits = {split: torchvision.datasets.ImageFolder(f"{args.data}/{split}", eval_tf) for split in ("val", "test")}
    train = torchvision.datasets.ImageFolder(f"{args.data}/train", train_tf)
    on_gpu = args.device.startswith("cuda")

    def loader(dataset, shuffle: bool, persistent: bool) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=shuffle,
                                           num_workers=args.workers, pin_memory=on_gpu,
                                           persistent_workers=persistent and args.workers > 0)

    train_loader = loader(train, shuffle=True, persistent=True)
    val_loader = loader(splits["val"], shuffle=False, persistent=True)
    loop = Loop(args, len(train.classes), len(train_loader) * args.epochs)

    def accuracy(data_loader) -> float:
        loop.model.eval()
        correct = total = 0
        with torch.inference_mode(), loop.autocast():
            for images, labels in data_loader:
                images, labels = loop.to_device(images, labels)
                correct += (loop.model(images).argmax(1) == labels).sum().item()
                total += len(labels)
        return correct / total

    for _ in range(args.epochs):
        loop.model.train()
        started = time.perf_counter()
        for images, labels in train_loader:
            loop.train_step(*loop.to_device(images, labels))
        loop.synchronize()
        result["epochs"].append({"seconds": time.perf_counter() - started, "images": len(train),
                                 "val_acc": accuracy(val_loader)})
    result["test_acc"] = accuracy(loader(splits["test"], shuffle=False, persistent=False))


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    result = {"variant": args.variant, "epochs": []}
    (ceiling if args.variant == "ceiling" else plain)(args, result)
    result["process_seconds"] = time.perf_counter() - STARTED
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
