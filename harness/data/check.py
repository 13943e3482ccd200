"""The check of a data root's images against ``data.on_bad_image``: which cannot be used, and what then.

``error`` (the default) reads each new file's header before training (its pixel size, against
``data.max_image_pixels``); a file whose pixels alone are broken stops the run when it is first read, and then the
error names every file of the run that cannot be used (``refuse_bad_images``), as it does at the start. ``skip``
needs every bad file known before the first batch is drawn, so it decodes every new file before training. What was
checked is kept in the root's index (``harness.data.index``): the next run opens only new or changed files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from harness.config.schema import DataConfig
from harness.data.files import files_at
from harness.data.images import bad_images
from harness.data.index import Stat, load_index, read_index
from harness.data.packed import INDEX
from harness.errors import DataError
from harness.storage.cachedir import cache_root

logger = logging.getLogger(__name__)


def leave_out_bad_images(cfg: DataConfig, root: Path, named: dict[str, list], stats: dict[str, Stat]) -> dict[str, str]:
    """Check every image once (what the root's index knew is not checked again); stop naming every bad one, or
    leave them out (data.on_bad_image). A run that stops at a bad image (``error``) reads the headers only here:
    a file whose pixels alone are broken stops it when it is first read, and then too every bad file is named
    (``refuse_bad_images``). Leaving them out (``skip``) needs them known before the first batch is drawn, so it
    decodes every new file here."""
    paths = [path for files in named.values() for _, path in files]
    decode = cfg.on_bad_image == "skip"
    problems = _checked(cfg, root, paths, stats, decode)
    if problems and not decode:  # refused: every bad file is named, those whose pixels alone are broken too
        problems = _checked(cfg, root, paths, stats, decode=True)
    if problems and cfg.on_bad_image == "error":
        raise _refusal(root, problems, "Fix or remove them, or set data.on_bad_image=skip to leave them out")
    if problems:
        logger.warning(f"data: leaving out {len(problems)} image(s) that cannot be used (data.on_bad_image: skip); "
                       "the list goes to splits/skipped_images.csv")
        for files in named.values():
            files[:] = [(label, path) for label, path in files if path not in problems]
    return problems


def refuse_bad_images(cfg: DataConfig, root: Path, paths: list[str]) -> DataError | None:
    """Once a file of a run's splits (``paths`` under ``root``) could not be read: the error naming every one of them
    that cannot be used (each one decoded, unless the root's index knows it was); None if the check finds none (a
    file that was broken while it was read, and mended since)."""
    files = files_at(root)
    problems = _checked(cfg, root, paths, {path: files.stat(path) for path in paths}, decode=True)
    if not problems:
        return None
    return _refusal(root, problems, "Fix them, and the same command continues the run; or leave them out in a "
                    "new run: data.on_bad_image=skip, with --force or another --run-name")


def _checked(cfg: DataConfig, root: Path, paths: list[str], stats: dict[str, Stat], decode: bool) -> dict[str, str]:
    """``bad_images`` with the root's index: the cache folder's, or a packed folder's own (read only)."""
    files = files_at(root)
    index = load_index(cache_root(cfg.cache_dir), root) if files.reader() is None else read_index(root / INDEX)
    try:
        return bad_images(root, paths, cfg.max_image_pixels, index, stats, files.reader(), decode)
    finally:  # what was checked before a stop or an error is kept too
        index.save()


def _refusal(root: Path, problems: dict[str, str], fix: str) -> DataError:
    listed = "; ".join(f"{path} ({why})" for path, why in sorted(problems.items()))
    return DataError(f"{root}: {len(problems)} image(s) cannot be used: {listed}. {fix}")
