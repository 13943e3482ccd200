"""Predictions from a finished run (what ``infer.py`` runs): its config, its weights files (calibrated by their
temperature unless ``--no-calibration``), its own split lists, any images, or a folder labeled by class folders ->
per-sample CSV, text report, confusion matrix, report.html, metrics."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path


from harness.config.loading import load_config
from harness.config.naming import name_value
from harness.config.schema import Config
from harness.data.cache import image_cache
from harness.data.images import IMG_EXTENSIONS, bad_images, image_files, image_files_under
from harness.data.loaders import eval_loader
from harness.data.builtin import data_root
from harness.data.splits import DataSplits, Samples
from harness.errors import CheckpointError, DataError
from harness.evaluation.calibration import reliability
from harness.evaluation.evaluate import evaluate
from harness.evaluation.predictions import Predictions
from harness.evaluation.scores import classification_report
from harness.evaluation.tta import TTA_SETS, unseen_views
from harness.inference.trained import trained_model
from harness.models.inputs import ModelInputs
from harness.reporting.outputs import write_split_outputs
from harness.reporting.page import ReportInputs, write_report
from harness.reporting.tables import format_table
from harness.runtime.accelerator import build_accelerator
from harness.runtime.collective import leave_together
from harness.runtime.logs import setup_logging
from harness.storage.atomic import write_atomic
from harness.storage.rundir import RunDir, check_outputs

logger = logging.getLogger(__name__)
OUTPUTS = ("predictions.csv", "classification_report.txt", "confusion_matrix.png", "metrics.json", "report.html")


def infer(args: argparse.Namespace) -> int:
    runs = [RunDir(Path(path)) for path in (args.ensemble or [args.run])]
    for rundir in runs:
        if not rundir.config.is_file():
            raise CheckpointError(f"{'--ensemble' if args.ensemble else '--run'} {rundir.root}: not a run directory "
                                  "(no config.yaml)")
    rundir, cfg = runs[0], load_config(runs[0].config)
    members = [trained_model(member.weights_file(args.checkpoint)) for member in runs]
    meta = members[0][1]
    _check_ensemble(runs, [member_meta for _, member_meta in members])
    # Default: the precision the run trained in (from its run config or its launch config).
    trained = cfg.train.mixed_precision or meta.get("mixed_precision") or "no"
    accelerator = build_accelerator(args.mixed_precision or trained)
    setup_logging(accelerator)

    samples, root, name = _samples(args, rundir, cfg, meta["classes"])
    out = Path(args.out) if args.out else rundir.inference(_folder_name(args, name, samples, runs, trained, accelerator))
    check_outputs([out / name for name in OUTPUTS], args.force, "--out DIR writes elsewhere")  # before any work
    warnings = _unseen_views(args.tta, cfg)
    batch_size = args.batch_size or cfg.train.eval_batch_size or cfg.train.batch_size
    # A disk cache serves inference too; building one in memory for a single pass would gain nothing.
    cache = image_cache("disk", root, samples, cfg.data) if cfg.data.cache == "disk" and not args.images else None
    temperatures = _temperatures(args, runs, [member_meta for _, member_meta in members])
    *models, loader = accelerator.prepare(*[model for model, _ in members],
                                          eval_loader(cfg.data, root, samples, batch_size, cfg.train.seed, cache))
    preds = evaluate(accelerator, models, loader, ModelInputs(models[0], cfg.data), TTA_SETS[args.tta or "identity"],
                     temperatures)
    if accelerator.is_main_process:
        facts = {"run": str(rundir.root), "split": name, "checkpoint": args.checkpoint, "epoch": meta.get("epoch"),
                 "images": len(preds), "mixed_precision": accelerator.mixed_precision,
                 "num_processes": accelerator.num_processes, "tta": args.tta,
                 "ensemble": [str(member.root) for member in runs] if args.ensemble else None,
                 "calibrated": temperatures is not None, "temperature": temperatures, "warnings": warnings}
        _write_outputs(preds, meta["classes"], [path for path, _ in samples], root, out, facts, args.show)
    leave_together(accelerator)
    return 0


def _temperatures(args: argparse.Namespace, runs: list[RunDir], metas: list[dict]) -> list[float] | None:
    """Each model's temperature (from its weights file), unless ``--no-calibration``; said in the log. None (the
    model's own probabilities) when a model has none: its weights predate calibration, or are ``last``, for which
    no temperature is fitted, or its validation split could fit none."""
    if args.no_calibration:
        logger.info("probabilities as the model gives them (--no-calibration)")
        return None
    lacking = [f"{rundir.weights_file(args.checkpoint)}: "
               + meta.get("uncalibrated", "no temperature (one is fitted for the best weights at the end of a run)")
               for rundir, meta in zip(runs, metas) if not meta.get("temperature")]
    if lacking:
        logger.info(f"probabilities uncalibrated: {'; '.join(lacking)}")
        return None
    temperatures = [float(meta["temperature"]) for meta in metas]
    logger.info(f"probabilities calibrated: logits divided by the temperature {', '.join(f'{t:.4f}' for t in temperatures)}"
                " fitted on the run's validation split (--no-calibration: the model's own)")
    return temperatures


def _unseen_views(tta: str | None, cfg: Config) -> list[str]:
    """A warning (logged, and returned for metrics.json) when the views of ``--tta`` are of a kind the training never
    showed the model."""
    missing = unseen_views(tta, cfg.data.augmentations) if tta else []
    if not missing:
        return []
    warning = (f"--tta {tta}: the run trained without {' nor '.join(missing)} (data.augmentations), so the model never "
               "saw such views of its images; averaging over them may lower the accuracy")
    logger.warning(warning)
    return [warning]


def _check_ensemble(runs: list[RunDir], metas: list[dict]) -> None:
    """The members of an ensemble must predict the same classes, in the same order, from the same inputs."""
    first = metas[0]
    for rundir, meta in zip(runs[1:], metas[1:]):
        if meta["classes"] != first["classes"]:
            theirs, ours = set(meta["classes"]), set(first["classes"])
            differ = (f"only {runs[0].root} has {sorted(ours - theirs)}, only {rundir.root} has {sorted(theirs - ours)}"
                      if theirs != ours else "the same classes in another order")
            raise CheckpointError(f"--ensemble: {rundir.root} and {runs[0].root} predict different classes ({differ})")
        for key in ("image_size", "mean", "std"):
            if meta[key] != first[key]:
                raise CheckpointError(f"--ensemble: {rundir.root} has {key} {meta[key]}, {runs[0].root} {first[key]}: "
                                      "the members of an ensemble share one preprocessing")


def _folder_name(args: argparse.Namespace, split: str, samples: Samples, runs: list[RunDir], trained: str,
                 accelerator) -> str:
    """<what>_<checkpoint>[_<precision>][_tta-<set>][_ensemble<n>-<hash of the runs>]."""
    name = f"{_subject(args, split, samples)}_{args.checkpoint}"
    if accelerator.mixed_precision != trained:
        name += f"_{accelerator.mixed_precision}"
    if args.tta:
        name += f"_tta-{args.tta}"
    if args.ensemble:
        members = "\n".join(str(rundir.root.resolve()) for rundir in runs)
        name += f"_ensemble{len(runs)}-{hashlib.sha1(members.encode()).hexdigest()[:6]}"
    return name


def _subject(args: argparse.Namespace, split: str, samples: Samples) -> str:
    """What an inference predicted, for its folder's name: the split, or the images by the folder or file given
    and a hash of the whole list (another set of images gets another folder)."""
    if args.labeled:
        given, kind = name_value(args.labeled), "labeled"
    elif args.images:
        given, kind = name_value(args.images[0]) if len(args.images) == 1 else f"{len(args.images)}-paths", "images"
    else:
        return split
    digest = hashlib.sha1("\n".join(path for path, _ in samples).encode()).hexdigest()[:6]
    return f"{kind}-{given}-{digest}"


def prediction_table(preds: Predictions, classes: list[str], paths: list[str], rows: int) -> str:
    """The first ``rows`` predictions as a table: path, label (for labeled images), prediction, confidence."""
    if rows == 0 or not len(preds):
        return ""
    shown = range(min(rows, len(preds)))
    table = [["path"] + (["label"] if preds.labeled else []) + ["prediction", "confidence"]]
    table += [[paths[preds.indices[i]]] + ([classes[preds.labels[i]]] if preds.labeled else [])
              + [classes[preds.predicted[i]], f"{preds.confidence[i]:.4f}"] for i in shown]
    more = f"\n... {len(preds) - len(shown)} more in predictions.csv" if len(preds) > len(shown) else ""
    return format_table(table) + more + "\n"


def _samples(args: argparse.Namespace, rundir: RunDir, cfg: Config, classes: list[str]) -> tuple[Samples, Path, str]:
    """What to predict: the given images (unlabeled), a folder of them labeled by their class folders, or one of
    the run's own splits; their root and name."""
    if args.images or args.labeled:
        samples = labeled_folder(Path(args.labeled), classes) if args.labeled else [
            (str(path), -1) for path in image_files(args.images, "--images")]
        option = "--labeled" if args.labeled else "--images"
        problems = bad_images(Path("/"), [path for path, _ in samples], cfg.data.max_image_pixels)
        if problems:  # all named at once, before anything is predicted
            raise DataError(f"{option}: {len(problems)} image(s) cannot be used: "
                            + "; ".join(f"{path} ({why})" for path, why in sorted(problems.items())))
        return samples, Path("/"), "labeled" if args.labeled else "images"
    splits = DataSplits.load(rundir.splits, data_root(cfg.data))
    if args.split not in splits.splits:
        raise DataError(f"--split {args.split}: this run has the splits {', '.join(splits.splits)}")
    return splits.splits[args.split], splits.root, args.split


def labeled_folder(folder: Path, classes: list[str]) -> Samples:
    """The images of ``folder``/<class>/ (any depth below it), each labeled with its class folder's class of the
    run. A folder that is not a class of the run, or an image outside every class folder, is refused in one line:
    scoring it against a label it does not have would be a wrong result."""
    if not folder.is_dir():
        raise DataError(f"--labeled {folder}: no such folder")
    folders = sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    unknown = [entry.name for entry in folders if entry.name not in classes]
    if unknown:
        raise DataError(f"--labeled {folder}: {', '.join(map(repr, unknown))} {'is not a class' if len(unknown) == 1 else 'are not classes'} "
                        f"of the run (its classes: {', '.join(classes[:20])}{', ...' if len(classes) > 20 else ''}): "
                        "rename or move the folder(s), or score them with --images (unlabeled)")
    loose = [entry.name for entry in folder.iterdir() if entry.is_file() and entry.suffix.lower() in IMG_EXTENSIONS]
    if loose:
        raise DataError(f"--labeled {folder}: {len(loose)} image(s) outside every class folder (e.g. {min(loose)}): "
                        f"put each under {folder}/<class>/")
    samples = [(str(path), classes.index(entry.name)) for entry in folders
               for path in sorted(image_files_under(entry))]
    if not samples:
        raise DataError(f"--labeled {folder}: no image files in its class folders ({', '.join(IMG_EXTENSIONS)})")
    return samples


def _write_outputs(preds: Predictions, classes: list[str], paths: list[str], root: Path, out: Path, facts: dict,
                   show: int) -> None:
    """predictions.csv, and for labeled images the text report, the confusion matrix, report.html and the metrics
    in metrics.json; the first ``show`` predictions on the console."""
    out.mkdir(parents=True, exist_ok=True)
    name = facts["split"]
    confusion = write_split_outputs(
        preds, classes, paths, report=out / "classification_report.txt", matrix_png=out / "confusion_matrix.png",
        csv_path=out / "predictions.csv",
        title=f"{Path(facts['run']).name} - {name} ({facts['checkpoint']}, epoch {facts['epoch']})",
    )
    metrics = dict(facts)
    if preds.labeled:
        metrics.update(accuracy=preds.accuracy(), loss=preds.loss(), ece=reliability(preds).ece)
        write_report(out / "report.html", ReportInputs(
            title=f"{Path(facts['run']).name}: {name}, {facts['checkpoint']} weights (epoch {facts['epoch']})",
            split=name, classes=classes, preds=preds, paths=paths, root=root, temperature=facts["temperature"],
            confusion=confusion,
            facts=[(key, value) for key, value in facts.items() if value is not None and key != "warnings"]))
        correct = int((preds.predicted == preds.labels).sum())
        print(f"{name}: accuracy {preds.accuracy():.4f} ({correct}/{len(preds)})\n\n"
              + classification_report(preds, classes))
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(prediction_table(preds, classes, paths, show), end="")
    logger.info(f"{len(preds)} predictions written to {out / 'predictions.csv'}")
