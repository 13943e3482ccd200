"""Using a trained model from Python: ``load_run("runs/x").predict(images)``.

The model is rebuilt from the run's weights files (``weights/best`` or ``weights/last``) and their metadata
alone, and an image goes through the run's own evaluation preprocessing: read as RGB, resized to
``data.image_size``, scaled and normalised with the run's mean and std, as ``infer.py`` does it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Union

import numpy as np
import torch
from PIL import Image

from harness.checkpointing.weights import read_weights
from harness.config.schema import DataConfig, ModelConfig
from harness.data.images import image_files, load_image, to_rgb
from harness.data.transforms import build_transform
from harness.errors import CheckpointError, DataError
from harness.evaluation.predictions import calibrated
from harness.models.inputs import ModelInputs
from harness.models.registry import build_model
from harness.storage.rundir import RunDir

ImageLike = Union[str, Path, Image.Image, torch.Tensor]


@dataclass
class Predicted:
    """The predictions for ``paths`` (or the images given, in order): the predicted class of each image and the
    probability of every class (``classes`` order). A label is a true class: these are predictions."""

    predictions: list[str]
    probabilities: np.ndarray  # images x classes, float32
    classes: list[str]
    paths: list[str | None]  # the file of each image; None for an image passed in memory
    temperature: float | None  # the logits were divided by it (calibrated probabilities); None: the model's own


def load_run(run: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu",
             calibrated: bool = True) -> TrainedModel:
    """The model of a finished run (``checkpoint``: ``best`` or ``last``) on ``device``, ready to predict; its
    probabilities calibrated by the temperature its weights file carries (the best weights of a run carry one)
    unless ``calibrated=False``."""
    if checkpoint not in ("best", "last"):
        raise ValueError(f"load_run: checkpoint must be 'best' or 'last', got {checkpoint!r}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"load_run: device {device!r} is not a device ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"load_run: device {device!r}, but torch sees no CUDA GPU here: use device='cpu'")
    model, meta = trained_model(RunDir(Path(run)).weights_file(checkpoint))
    return TrainedModel(model, meta, device, meta.get("temperature") if calibrated else None)


def trained_model(weights: Path) -> tuple[torch.nn.Module, dict]:
    """The model a weights file was written from, with those weights, and the file's metadata."""
    state_dict, meta = read_weights(weights)
    lacking = [key for key in ("model", "classes", "image_size", "mean", "std") if key not in meta]
    if lacking:
        raise CheckpointError(f"{weights}: its metadata lacks {lacking}: not a weights file a run wrote")
    model = build_model(ModelConfig(name=meta["model"], kwargs=meta.get("model_kwargs", {})), len(meta["classes"]))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights}: does not fit {meta['model']} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model, meta


class TrainedModel:
    def __init__(self, model: torch.nn.Module, meta: dict, device: torch.device, temperature: float | None) -> None:
        self.model, self.meta, self.device = model.to(device).eval(), meta, device
        self.temperature = temperature
        self.classes: list[str] = meta["classes"]
        data = DataConfig(image_size=meta["image_size"], mean=meta["mean"], std=meta["std"])
        self.transform = build_transform(data, train=False)
        self.inputs = ModelInputs(self.model, data)

    def predict(self, images: ImageLike | Iterable[ImageLike], batch_size: int = 64) -> Predicted:
        """Predictions for image files, folders of them (every image inside, sorted), PIL images or uint8
        ``C x H x W`` tensors (RGB), one or a list."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"predict: batch_size must be a whole number of at least 1, got {batch_size!r}")
        items = [images] if isinstance(images, (str, Path, Image.Image, torch.Tensor)) else list(images)
        paths, pictures = self._expand(items)
        probabilities = []
        with torch.inference_mode():
            for start in range(0, len(pictures), batch_size):
                batch = torch.stack([self._tensor(p) for p in pictures[start:start + batch_size]]).to(self.device)
                log_probs = self.model(self.inputs(batch)).float().log_softmax(dim=1).cpu()
                probabilities.append(calibrated(log_probs, self.temperature).exp())
        scores = torch.cat(probabilities).numpy() if probabilities else np.zeros((0, len(self.classes)), np.float32)
        return Predicted([self.classes[i] for i in scores.argmax(axis=1)], scores, self.classes, paths,
                         self.temperature)

    @staticmethod
    def _expand(items: list) -> tuple[list[str | None], list]:
        paths, pictures = [], []
        for item in items:
            if isinstance(item, (str, Path)):
                files = image_files([item], "predict:")
                paths += [str(f) for f in files]
                pictures += files
            elif isinstance(item, (Image.Image, torch.Tensor)):
                paths.append(None)
                pictures.append(item)
            else:
                raise DataError(f"predict: expected image paths, PIL images or uint8 tensors, got {type(item).__name__}")
        return paths, pictures

    def _tensor(self, picture) -> torch.Tensor:
        if isinstance(picture, Path):
            picture = load_image(picture)
        elif isinstance(picture, torch.Tensor):
            if picture.dtype != torch.uint8 or picture.ndim != 3 or picture.shape[0] != 3:
                raise DataError(f"predict: a tensor image must be uint8 3 x H x W (RGB), got {picture.dtype} "
                                f"{tuple(picture.shape)}")
            picture = Image.fromarray(picture.permute(1, 2, 0).numpy())
        else:
            picture = to_rgb(picture)
        return self.transform(picture)
