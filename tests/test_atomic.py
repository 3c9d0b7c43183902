"""atomic_path: the old file or the new one, never a part; and no leftovers from writers that died."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loramix.util.atomic import atomic_path


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_the_next_write_removes_leftovers_of_dead_writers_only(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # its pid now names no process (reuse within this test is vanishingly unlikely)
    dead = tmp_path / f".out.bin.{finished.pid}.0badcafe.tmp"
    alive = tmp_path / f".out.bin.{os.getpid()}.0badf00d.tmp"
    other = tmp_path / f".other.bin.{finished.pid}.0badcafe.tmp"
    for leftover in (dead, alive, other):
        leftover.write_bytes(b"part")
    with atomic_path(tmp_path / "out.bin") as temp:
        temp.write_bytes(b"new")
    assert (tmp_path / "out.bin").read_bytes() == b"new"
    assert not dead.exists()
    assert alive.exists() and other.exists()  # a live writer's file, and another target's, are not ours to remove
