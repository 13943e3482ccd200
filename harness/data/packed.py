"""Packed data: an image folder mirrored into a few large tar shards, for cluster file systems (Lustre, GPFS, NFS)
where opening millions of small files is what a start and an epoch wait for.

A packed folder holds:

- ``shard-00000.tar`` ...: plain tar files whose members are the source's image files under their paths relative
  to it, in the order of the listing: ``tar -xf`` gives the folder back, and WebDataset (or any tar reader) reads
  them as samples keyed by path;
- ``pack.json``: what the walk of the source found (``harness.data.images``: the split folders, each one's classes
  and files, what the link policy skipped), and for every file its shard, the offset and byte size of its data
  there, and the source file's size and modification time;
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
from pathlib import Path
from typing import Callable

from harness.data.index import Stat
from harness.errors import DataError

MANIFEST = "pack.json"
INDEX = "index.npz"
FORMAT = "harness-pack"
VERSION = 1
COLUMNS = ("path", "shard", "offset", "size", "source_size", "mtime_ns")  # pack.json's files, one list each


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
            # Columns, and each path's row: a million objects made at every start would cost seconds.
            self.files = {key: manifest["files"][key] for key in COLUMNS}
            self.rows = {path: row for row, path in enumerate(self.files["path"])}
            if any(len(column) != len(self.rows) for column in self.files.values()):
                raise ValueError("columns of different lengths, or a path twice")
            self.shards, self.listing = manifest["shards"], manifest["listing"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"{self.root / MANIFEST}: a damaged pack ({type(error).__name__}: {error}): pack the "
                            "folder again with harness/pack.py") from None
        self._open: dict[int, int] = {}  # shard -> file descriptor, opened on first read

    def __getstate__(self) -> dict:  # a spawned worker opens the shards again
        return {**self.__dict__, "_open": {}}

    def paths(self) -> list[str]:
        return self.files["path"]

    def read(self, path: str) -> bytes:
        row = self.rows[path]
        shard, size = self.files["shard"][row], self.files["size"][row]
        fd = self._open.get(shard)
        if fd is None:
            fd = self._open[shard] = os.open(self.root / self.shards[shard], os.O_RDONLY)
        data = os.pread(fd, size, self.files["offset"][row])
        if len(data) != size:
            raise DataError(f"{self.root / self.shards[shard]}: ends before {path} (a truncated shard): pack the "
                            "folder again")
        return data

    def stat(self, path: str) -> Stat:
        """The stat of ``path``'s source file when it was packed."""
        row = self.rows[path]
        return Stat(self.files["source_size"][row], self.files["mtime_ns"][row])

    def stats(self) -> dict[str, Stat]:
        return {path: Stat(size, mtime) for path, size, mtime in zip(self.files["path"], self.files["source_size"],
                                                                     self.files["mtime_ns"])}


def write_pack(source: Path, out: Path, listing: dict, stats: dict[str, Stat], shard_bytes: int,
               finish: Callable[[Path], None]) -> dict:
    """Mirror the image folder ``source``, as its ``listing`` lists it (with each file's ``stats``), into the packed
    folder ``out``: made whole in a temporary folder beside it, ``finish(folder)`` adds to it (the index), then it
    is renamed into place. What was packed: files, shards, bytes."""
    tmp = out.with_name(f".{out.name}.packing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        files = _write_shards(source, tmp, [path for group in listing["files"].values() for _, path in group], stats,
                              shard_bytes)
        shards = sorted(path.name for path in tmp.glob("shard-*.tar"))
        (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "version": VERSION, "source": str(source),
                                                "shards": shards, "listing": listing, "files": files}),
                                    encoding="utf-8")
        finish(tmp)
        if out.exists():  # an earlier pack the caller was told to replace: only now that the new one is whole
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"files": len(files["path"]), "shards": len(shards), "bytes": sum(files["size"])}


def _write_shards(source: Path, out: Path, paths: list[str], stats: dict[str, Stat], shard_bytes: int) -> dict:
    files: dict[str, list] = {key: [] for key in COLUMNS}
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
            for key, value in zip(files, (path, shard, offset, len(data), stats[path].size,
                                          stats[path].mtime_ns)):
                files[key].append(value)
    finally:
        if tar is not None:
            tar.close()
    return files
