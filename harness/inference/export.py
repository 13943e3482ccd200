"""Exporting a finished run's model to run without the harness: ONNX (for onnxruntime and the like), a
``torch.export`` program (``.pt2``, for ``torch.export.load`` and AOTInductor) or TorchScript (deprecated by
PyTorch; for runtimes that still need it). The exported model takes the normalised batch (images x 3 x size x size,
float32: RGB scaled to 0-1, then ``(x - mean) / std``) and gives the logits, divided by the temperature the weights
carry (calibrated: their softmax gives calibrated probabilities) unless ``--no-calibration``; the image size, mean,
std, class names and temperature are recorded in the file (ONNX metadata ``harness``, the extra file
``harness.json`` of the other two) and beside it (``<file>.json``).

Then the export is checked: it and the PyTorch model predict the run's test split, and the largest difference
in logits and the share of predictions that agree are reported and recorded. A prediction that differs fails
the command (the file stays, for a look).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import warnings
from pathlib import Path
from typing import Callable

import torch

from harness.config.loading import load_config
from harness.data.loaders import eval_loader
from harness.data.builtin import data_root
from harness.data.splits import DataSplits
from harness.data.workers import batches_of
from harness.errors import CheckpointError, DataError, ExportMismatch, MissingDependency
from harness.inference.trained import trained_model
from harness.models.inputs import ModelInputs
from harness.runtime.logs import setup_logging
from harness.storage.atomic import atomic_path, write_atomic
from harness.storage.rundir import RunDir, check_outputs

logger = logging.getLogger(__name__)

ONNX_MODULES = ("onnx", "onnxruntime", "onnxscript")  # the exporter writes with onnx and onnxscript; the check runs onnxruntime
SUFFIX = {"onnx": ".onnx", "torch_export": ".pt2", "torchscript": ".torchscript.pt"}


class Calibrated(torch.nn.Module):
    """A classifier whose logits are divided by a temperature."""

    def __init__(self, model: torch.nn.Module, temperature: float) -> None:
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def export(args: argparse.Namespace) -> int:
    """The export command. What it needs is checked before anything is written: the run, the extra, its weights,
    the split to check on, the file to write (not over an earlier one without --force)."""
    setup_logging()
    rundir = RunDir(Path(args.run))
    if not rundir.config.is_file():
        raise CheckpointError(f"--run {rundir.root}: not a run directory (no config.yaml)")
    if args.format == "onnx":
        require(ONNX_MODULES, "--format onnx", "export")
    cfg = load_config(rundir.config)
    model, meta = trained_model(rundir.weights_file(args.checkpoint))
    temperature = None if args.no_calibration else meta.get("temperature")
    if temperature:
        model = Calibrated(model, float(temperature))
    model.eval()
    out = Path(args.out) if args.out else rundir.export(f"{args.checkpoint}{SUFFIX[args.format]}")
    check_outputs([out, out.with_name(out.name + ".json")], args.force, "--out FILE writes elsewhere")
    splits = DataSplits.load(rundir.splits, data_root(cfg.data))
    if args.split not in splits.splits:
        raise DataError(f"--split {args.split}: this run has the splits {', '.join(splits.splits)}")
    record = {**meta, "format": args.format, "input": "images x 3 x image_size x image_size, float32, RGB in 0-1 "
              "normalised with mean and std", "calibrated": bool(temperature),
              "output": f"logits divided by the temperature {temperature} (their softmax: calibrated probabilities), "
              "images x classes" if temperature else "logits, images x classes (uncalibrated)"}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        example = torch.zeros(2, 3, meta["image_size"], meta["image_size"])
        WRITERS[args.format](model, example, tmp, record)
    loader = eval_loader(cfg.data, splits.root, splits.splits[args.split], args.batch_size, cfg.train.seed)
    check = _compare(model, _runner(args.format, out), loader, ModelInputs(model, cfg.data))
    record["check"] = {"split": args.split, **check}
    write_atomic(out.with_name(out.name + ".json"), json.dumps(record, indent=2) + "\n")
    summary = (f"checked on the {check['images']} {args.split} images: predictions agree on {check['agree']}/"
               f"{check['images']}, largest logit difference {check['max_logit_difference']:.3g}")
    if check["agree"] != check["images"]:
        raise ExportMismatch(f"{out}: the exported model predicts otherwise than PyTorch ({summary})")
    logger.info(f"{out}: {args.format}, {record['output']}; {summary}")
    return 0


def require(modules: tuple[str, ...], what: str, extra: str) -> None:
    """Import ``modules`` or say, in one line, which are missing and which extra installs them."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependency(f"{what} needs {', '.join(missing)}, not installed: pip install -e '.[{extra}]'")


def _write_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, record: dict) -> None:
    import onnx

    for name in ("onnxscript", "onnx_ir"):  # their optimisation passes log every step
        logging.getLogger(name).setLevel(logging.WARNING)

    batch = torch.export.Dim("batch")
    program = torch.onnx.export(model, (example,), input_names=["images"], output_names=["logits"],
                                dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    program.save(str(path))
    saved = onnx.load(str(path))
    onnx.helper.set_model_props(saved, {"harness": json.dumps(record)})
    onnx.save(saved, str(path))


def _write_torch_export(model: torch.nn.Module, example: torch.Tensor, path: Path, record: dict) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path), extra_files={"harness.json": json.dumps(record)})


def _write_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path, record: dict) -> None:
    with warnings.catch_warnings():  # torch deprecates TorchScript, which still serves C++ and mobile runtimes
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path), _extra_files={"harness.json": json.dumps(record)})


WRITERS = {"onnx": _write_onnx, "torch_export": _write_torch_export, "torchscript": _write_torchscript}


def _runner(fmt: str, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported file, loaded as its users would, as a function of a normalised batch."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    if fmt == "torch_export":
        program = torch.export.load(str(path)).module()
        return lambda x: program(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path))
    return lambda x: loaded(x)


def _compare(model: torch.nn.Module, exported: Callable, loader, inputs: ModelInputs) -> dict:
    images = agree = 0
    largest = 0.0
    with torch.inference_mode():
        for batch, _, _ in batches_of(loader):
            x = inputs(batch)
            ours, theirs = model(x), exported(x)
            largest = max(largest, (ours - theirs).abs().max().item())
            agree += int((ours.argmax(1) == theirs.argmax(1)).sum())
            images += len(x)
    return {"images": images, "agree": agree, "max_logit_difference": largest}
