"""Atomic writes (drsformer.files): a failed write leaves the old file and no temporary one; a finished write
is flushed to disk, data and folder entry, before anyone can see it under its name."""

from __future__ import annotations

import os

import pytest

from drsformer import files


def test_a_failed_write_leaves_the_old_file_and_nothing_else(tmp_path) -> None:
    target = tmp_path / "weights.pth"
    target.write_bytes(b"old")

    def half_then_fail(f) -> None:
        f.write(b"new, but only ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.write_atomic(target, half_then_fail)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["weights.pth"]


def test_a_write_is_synced_before_it_is_renamed_and_the_folder_after(tmp_path, monkeypatch) -> None:
    events: list[str] = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: (events.append("fsync " + os.readlink(f"/proc/self/fd/{fd}")), fsync(fd))
    )
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("rename"), replace(a, b)))
    files.write_bytes_atomic(tmp_path / "sub" / "a.png", b"pixels")
    assert (tmp_path / "sub" / "a.png").read_bytes() == b"pixels"
    assert [e.split(" ")[0] for e in events] == ["fsync", "rename", "fsync"]
    assert ".tmp.png" in events[0] and events[2].endswith("/sub")


def test_new_files_follow_the_umask(tmp_path) -> None:
    previous = os.umask(0o027)
    try:
        files.write_bytes_atomic(tmp_path / "x.json", b"{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o640


def test_a_link_to_the_same_file_leaves_one_name(tmp_path) -> None:
    source = tmp_path / "net_g_4.pth"
    source.write_bytes(b"w")
    files.link_or_copy_atomic(source, tmp_path / "net_g_latest.pth")
    files.link_or_copy_atomic(source, tmp_path / "net_g_latest.pth")  # the same inode again: no stray name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net_g_4.pth", "net_g_latest.pth"]
    assert os.path.samefile(source, tmp_path / "net_g_latest.pth")
