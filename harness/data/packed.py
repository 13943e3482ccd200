"""Packed data: an image folder mirrored into a few large tar shards, for cluster file systems (Lustre, GPFS, NFS)
where opening millions of small files is what a start and an epoch wait for.

A packed folder holds:

- ``shard-00000.tar`` ...: plain tar files whose members are the source's image files under their paths relative
  to it, in the order of the listing: ``tar -xf`` gives the folder back, and WebDataset (or any tar reader) reads
  them as samples keyed by path;
- ``pack.json``: what the walk of the source found (``harness.data.images``: the split folders, each one's classes
  and file count, what the link policy skipped) and the shards;
- ``files.npz``: for every file, in the listing's order, its path, its class, its shard, the offset and byte size
  of its data there, and the source file's size and modification time (arrays: a million files load in a fraction
  of a second, where JSON took two);
- ``index.npz``: the image check's verdicts on every file (``harness.data.index``), made while packing.

As ``data.root``, a packed folder gives exactly the listing, the verdicts and the bytes of its source, so a run on it
finds the same classes, splits and pixels, in the same order: the same weights. Reading opens each shard once per
process (loader workers inherit the open file) and reads a file's bytes with one ``pread``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from harness.data.index import Stat
from harness.errors import DataError

MANIFEST = "pack.json"
FILES = "files.npz"
INDEX = "index.npz"
FORMAT = "harness-pack"
VERSION = 2
NUMBERS = ("shard", "offset", "size", "source_size", "mtime_ns")  # files.npz's numbers, a column each


def is_packed(root: Path) -> bool:
    return (Path(root) / MANIFEST).is_file()


class Pack:
    """A packed folder, read: its listing, and each file's bytes by its path relative to the source."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            manifest = json.loads((self.root / MANIFEST).read_text(encoding="utf-8"))
            if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
                raise ValueError(f"format {manifest.get('format')} version {manifest.get('version')}, not "
                                 f"{FORMAT} {VERSION}")
            self.shards, self.found = manifest["shards"], manifest["listing"]
            with np.load(self.root / FILES) as files:
                joined = bytes(files["path"]).decode("utf-8")
                self.labels, numbers = files["label"].tolist(), files["numbers"]
            # Columns, and each path's row: a million objects made at every start would cost seconds.
            self.paths = joined.split("\0") if joined else []
            self.numbers = dict(zip(NUMBERS, numbers.T.tolist())) if len(numbers) else {key: [] for key in NUMBERS}
            self.rows = {path: row for row, path in enumerate(self.paths)}
            if numbers.shape != (len(self.paths), len(NUMBERS)) or len(self.rows) != len(self.paths) or \
                    len(self.labels) != len(self.paths) or sum(self.found["counts"].values()) != len(self.paths):
                raise ValueError(f"{FILES} does not hold one row per file of the listing")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile) as error:
            raise DataError(f"{self.root / MANIFEST}: a damaged pack ({type(error).__name__}: {error}): pack the "
                            "folder again with harness/pack.py") from None
        self._open: dict[int, int] = {}  # shard -> file descriptor, opened on first read

    @property
    def listing(self) -> dict:
        """What the walk of the source found, as ``harness.data.splits.list_images`` gives it, with the skips."""
        files, start = {}, 0
        for group, count in self.found["counts"].items():
            names = self.found["classes"][group]
            files[group] = [(names[label], path) for label, path in
                            zip(self.labels[start:start + count], self.paths[start:start + count])]
            start += count
        return {"present": self.found["present"], "classes": self.found["classes"], "files": files,
                "skipped": self.found["skipped"], "outside": self.found["outside"]}

    def __getstate__(self) -> dict:  # a spawned worker opens the shards again
        return {**self.__dict__, "_open": {}}

    def read(self, path: str) -> bytes:
        row = self.rows[path]
        shard, size = self.numbers["shard"][row], self.numbers["size"][row]
        fd = self._open.get(shard)
        if fd is None:
            fd = self._open[shard] = os.open(self.root / self.shards[shard], os.O_RDONLY)
        data = os.pread(fd, size, self.numbers["offset"][row])
        if len(data) != size:
            raise DataError(f"{self.root / self.shards[shard]}: ends before {path} (a truncated shard): pack the "
                            "folder again")
        return data

    def stat(self, path: str) -> Stat:
        """The stat of ``path``'s source file when it was packed."""
        row = self.rows[path]
        return Stat(self.numbers["source_size"][row], self.numbers["mtime_ns"][row])

    def stats(self) -> dict[str, Stat]:
        return {path: Stat(size, mtime) for path, size, mtime in zip(self.paths, self.numbers["source_size"],
                                                                     self.numbers["mtime_ns"])}


def write_pack(source: Path, out: Path, listing: dict, stats: dict[str, Stat], shard_bytes: int,
               finish: Callable[[Path], None]) -> dict:
    """Mirror the image folder ``source``, as its ``listing`` lists it (with each file's ``stats``), into the packed
    folder ``out``: made whole in a temporary folder beside it, ``finish(folder)`` adds to it (the index), then it
    is renamed into place. What was packed: files, shards, bytes."""
    tmp = out.with_name(f".{out.name}.packing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        paths = [path for group in listing["files"].values() for _, path in group]
        files = _write_shards(source, tmp, paths, stats, shard_bytes)
        shards = sorted(path.name for path in tmp.glob("shard-*.tar"))
        numbered = {group: {name: label for label, name in enumerate(names)} for group, names in listing["classes"].items()}
        labels = [numbered[group][name] for group, named in listing["files"].items() for name, _ in named]
        np.savez(tmp / FILES, path=np.frombuffer("\0".join(paths).encode("utf-8"), np.uint8),
                 label=np.array(labels, dtype=np.int32),
                 numbers=np.array([files[key] for key in NUMBERS], dtype=np.int64).T.reshape(-1, len(NUMBERS)))
        found = {key: value for key, value in listing.items() if key != "files"}
        found["counts"] = {group: len(named) for group, named in listing["files"].items()}
        (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "version": VERSION, "source": str(source),
                                                "shards": shards, "listing": found}), encoding="utf-8")
        finish(tmp)
        if out.exists():  # an earlier pack the caller was told to replace: only now that the new one is whole
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"files": len(paths), "shards": len(shards), "bytes": sum(files["size"])}


def _write_shards(source: Path, out: Path, paths: list[str], stats: dict[str, Stat], shard_bytes: int) -> dict:
    files: dict[str, list] = {key: [] for key in NUMBERS}
    shard, tar = -1, None
    try:
        for path in paths:
            if tar is None or tar.offset >= shard_bytes:
                if tar is not None:
                    tar.close()
                shard += 1
                tar = tarfile.open(out / f"shard-{shard:05d}.tar", "w", format=tarfile.PAX_FORMAT)
            data = (source / path).read_bytes()
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), stats[path].mtime_ns // 10**9, 0o644
            tar.addfile(info, io.BytesIO(data))
            offset = tar.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE  # the data ends the member
            for key, value in zip(NUMBERS, (shard, offset, len(data), stats[path].size, stats[path].mtime_ns)):
                files[key].append(value)
    finally:
        if tar is not None:
            tar.close()
    return files
