"""Every file the harness writes is replaced whole: a reader sees the old content or the new, never a mix."""

import threading

import pytest

from harness.storage.atomic import atomic_path, write_atomic


def test_write_replaces_the_content_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "summary.json"
    write_atomic(target, "old")
    write_atomic(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_failed_write_keeps_the_old_content_and_removes_its_temporary_file(tmp_path):
    target = tmp_path / "history.csv"
    write_atomic(target, "epoch\n1\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp, open(tmp, "w") as f:
            f.write("epoch\n1\n2")  # half of the new content written when the writer fails
            raise RuntimeError("disk full")
    assert target.read_text() == "epoch\n1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]


def test_the_temporary_file_is_hidden_beside_the_target(tmp_path):
    with atomic_path(tmp_path / "best.safetensors") as tmp:
        assert tmp == tmp_path / ".best.safetensors.tmp"
        tmp.write_bytes(b"x")
    assert (tmp_path / "best.safetensors").read_bytes() == b"x"


def test_a_concurrent_reader_never_sees_a_mix(tmp_path):
    target = tmp_path / "latest"
    versions = [f"step-{i:08d}\n" * 2000 for i in range(200)]  # 28 kB each: written in several chunks
    write_atomic(target, versions[0])
    seen, done = set(), threading.Event()

    def read():
        while not done.is_set():
            seen.add(target.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for text in versions[1:]:
            write_atomic(target, text)
    finally:
        done.set()
        reader.join()
    assert seen <= set(versions) and len(seen) > 1
