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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.data.index import Stat
from harness.errors import DataError

MANIFEST = "pack.json"
INDEX = "index.npz"
FORMAT = "harness-pack"
VERSION = 1


def is_packed(root: Path) -> bool:
    return (Path(root) / MANIFEST).is_file()


@dataclass
class Member:
    shard: int
    offset: int
    size: int
    stat: Stat  # of the source file


class Pack:
    """A packed folder, read: its listing, and each file's bytes by its path relative to the source."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            manifest = json.loads((self.root / MANIFEST).read_text(encoding="utf-8"))
            if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
                raise ValueError(f"format {manifest.get('format')} version {manifest.get('version')}, not "
                                 f"{FORMAT} {VERSION}")
            files = manifest["files"]
            self.members = {path: Member(shard, offset, size, Stat(source_size, mtime)) for
                            path, shard, offset, size, source_size, mtime in zip(
                                files["path"], files["shard"], files["offset"], files["size"], files["source_size"],
                                files["mtime_ns"], strict=True)}
            self.shards, self.listing = manifest["shards"], manifest["listing"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"{self.root / MANIFEST}: a damaged pack ({type(error).__name__}: {error}): pack the "
                            "folder again with harness/pack.py") from None
        self._open: dict[int, int] = {}  # shard -> file descriptor, opened on first read

    def __getstate__(self) -> dict:  # a spawned worker opens the shards again
        return {**self.__dict__, "_open": {}}

    def read(self, path: str) -> bytes:
        member = self.members[path]
        fd = self._open.get(member.shard)
        if fd is None:
            fd = self._open[member.shard] = os.open(self.root / self.shards[member.shard], os.O_RDONLY)
        data = os.pread(fd, member.size, member.offset)
        if len(data) != member.size:
            raise DataError(f"{self.root / self.shards[member.shard]}: ends before {path} (a truncated shard): pack "
                            "the folder again")
        return data

    def stats(self) -> dict[str, Stat]:
        return {path: member.stat for path, member in self.members.items()}


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
    files: dict[str, list] = {key: [] for key in ("path", "shard", "offset", "size", "source_size", "mtime_ns")}
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
