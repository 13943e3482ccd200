"""Inference from a finished run: its config, its exported weights, its own split lists (or any images)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from harness.accel import build_accelerator, setup_logging
from harness.checkpoint import load_weights
from harness.config import ModelConfig, load_config
from harness.data import IMG_EXTENSIONS, DataSplits, ImageListDataset, build_loader, build_transform
from harness.engine import evaluate
from harness.errors import CheckpointError, DataError
from harness.models import build_model
from harness.reporting import write_split_outputs
from harness.rundir import RunDir
from harness.training import data_root

logger = logging.getLogger(__name__)


def infer(args: argparse.Namespace) -> int:
    run = RunDir(Path(args.run))
    if not run.config.is_file():
        raise CheckpointError(f"--run {run.root}: not a run directory (no config.yaml)")
    cfg = load_config(run.config)
    state_dict, meta = load_weights(run.weights_file(args.checkpoint))
    classes = meta["classes"]
    # Default: the precision the run trained in (from its run config or its launch config).
    precision = args.mixed_precision or cfg.train.mixed_precision or meta.get("mixed_precision")
    accelerator = build_accelerator(precision, seed=cfg.train.seed)
    setup_logging(accelerator)

    model = build_model(ModelConfig(name=meta["model"], kwargs=meta.get("model_kwargs", {})), len(classes))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{run.weights_file(args.checkpoint)}: does not fit {meta['model']} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if args.images:
        samples = [(str(path), -1) for path in _image_files(args.images)]
        root, name = Path("/"), "images"
    else:
        splits = DataSplits.load(run.splits, data_root(cfg.data))
        if args.split not in splits.splits:
            raise DataError(f"--split {args.split}: this run has the splits {', '.join(splits.splits)}")
        samples, root, name = splits.splits[args.split], splits.root, args.split
    dataset = ImageListDataset(root, samples, build_transform(cfg.data, train=False))
    batch_size = args.batch_size or cfg.train.eval_batch_size or cfg.train.batch_size
    loader = build_loader(dataset, batch_size, shuffle=False, num_workers=cfg.data.num_workers, seed=cfg.train.seed)
    model, loader = accelerator.prepare(model, loader)

    preds = evaluate(accelerator, model, loader)
    out = Path(args.out) if args.out else run.inference(name)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_split_outputs(
            preds, classes, [path for path, _ in samples], report=out / "classification_report.txt",
            matrix_png=out / "confusion_matrix.png", csv_path=out / "predictions.csv",
            title=f"{run.name} - {name} ({args.checkpoint}, epoch {meta.get('epoch')})",
        )
        metrics = {"run": str(run.root), "split": name, "checkpoint": args.checkpoint, "epoch": meta.get("epoch"),
                   "images": len(preds), "mixed_precision": accelerator.mixed_precision,
                   "num_processes": accelerator.num_processes}
        if preds.labeled:
            metrics.update(accuracy=preds.accuracy(), loss=preds.loss())
            correct = int((preds.predicted == preds.labels).sum())
            print(f"{name}: accuracy {preds.accuracy():.4f} ({correct}/{len(preds)})\n\n{preds.report(classes)}")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        logger.info(f"{len(preds)} predictions written to {out / 'predictions.csv'}")
    return 0


def _image_files(items: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in items:
        path = Path(item).expanduser().resolve()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"--images {item}: no such file or folder")
    if not files:
        raise DataError(f"--images {' '.join(items)}: no image files found ({', '.join(IMG_EXTENSIONS)})")
    return files
