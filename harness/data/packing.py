"""The pack command's body: an image folder mirrored into a packed folder (``harness.data.packed``), listed and
checked as a training would list and check it, so that a run on the packed folder finds what a run on the source
finds."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from harness.config.schema import DataConfig
from harness.data.images import bad_images
from harness.data.index import ImageIndex
from harness.data.packed import INDEX, is_packed, write_pack
from harness.data.splits import list_images
from harness.errors import DataError
from harness.runtime.logs import setup_logging

logger = logging.getLogger(__name__)


def pack(args: argparse.Namespace) -> int:
    setup_logging()
    source, out = Path(args.source).expanduser().resolve(), Path(args.out).expanduser().resolve()
    _refuse_what_cannot_be_packed(source, out, args.force)
    listing, found = list_images(source)
    listing.update(skipped=dict(found.skipped), outside=found.outside)
    paths = [path for files in listing["files"].values() for _, path in files]
    max_pixels = DataConfig().max_image_pixels

    def check(folder: Path) -> None:  # the verdicts a training would find, kept with the pack
        index = ImageIndex(folder / INDEX)
        bad = bad_images(source, paths, max_pixels, index, found.stats)
        index.save()
        (folder / f".{Path(INDEX).stem}.lock").unlink(missing_ok=True)
        if bad:
            logger.warning(f"{len(bad)} image(s) cannot be used (packed as they are; data.on_bad_image decides "
                           f"in training): {', '.join(sorted(bad)[:5])}{' ...' if len(bad) > 5 else ''}")

    packed = write_pack(source, out, listing, found.stats, args.shard_mb * 2**20, check)
    for note in [f"skipped {count} {reason}" for reason, count in sorted(found.skipped.items())]:
        logger.warning(f"{source}: {note}")
    logger.info(f"packed {packed['files']} images ({packed['bytes'] / 1e6:.1f} MB) from {source} into "
                f"{packed['shards']} shard(s) in {out}: train on it with data.root: {out}")
    return 0


def _refuse_what_cannot_be_packed(source: Path, out: Path, force: bool) -> None:
    """Everything checked before anything is written."""
    if not source.is_dir():
        raise DataError(f"{source}: not a folder")
    if is_packed(source):
        raise DataError(f"{source}: already a packed folder: train on it as it is")
    if out == source or out.is_relative_to(source) or source.is_relative_to(out):
        raise DataError(f"{out}: inside {source} (or holding it), where it would be read as a class folder: pack into "
                        "a folder outside the data")
    if out.exists() and not (force and is_packed(out)):
        what = "an earlier pack: add --force to replace it" if is_packed(out) else \
            "not a packed folder, which is never replaced: choose a new folder"
        raise DataError(f"{out}: exists, {what}")
