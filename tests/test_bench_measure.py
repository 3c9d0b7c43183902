"""bench/measure.py reads a command's own peak RSS even after the benchmark has grown, where a plain Popen reads
the benchmark's.

The scenario runs in a fresh Python so that this test process's size (torch, the session's models) plays no
part: it starts the launcher, then holds a big buffer as a first run of bench_real_bases.py held the bases it
built, then measures commands that allocate a known size.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,  # a subprocess that starts five Pythons; about a second
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's ru_maxrss of Linux")]

BENCH = Path(__file__).resolve().parents[1] / "bench"
MiB = 2**20
HELD, KNOWN = 600 * MiB, 200 * MiB
MARGIN = 16 * MiB  # over a bare interpreter's peak; what allocating a bytearray may add besides its bytes

SCENARIO = """
import json, os, subprocess, sys
sys.path.insert(0, sys.argv[1])
from measure import Launcher

held, known, log = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
allocate = [sys.executable, "-c", f"data = bytearray(b'1') * {known}"]  # written, so every page is resident
exit_with = [sys.executable, "-c", "import os, sys; sys.exit(int(os.environ['CODE']))"]
with Launcher() as launcher:
    big = bytearray(b"1") * held
    bare = launcher.run([sys.executable, "-c", "pass"], log)
    known_run = launcher.run(allocate, log)
    failed = launcher.run(exit_with, log, {**os.environ, "CODE": "3"})
    try:
        launcher.run(["/nonexistent/command"], log)
        unstartable = ""
    except RuntimeError as error:
        unstartable = str(error)
naive = subprocess.Popen(allocate)
_, _, usage = os.wait4(naive.pid, 0)
naive.returncode = 0
print(json.dumps({"bare": bare.peak_bytes, "known": known_run.peak_bytes, "seconds": known_run.seconds,
                  "known_code": known_run.returncode, "failed_code": failed.returncode,
                  "unstartable": unstartable, "naive": usage.ru_maxrss * 1024}))
"""


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    log = tmp_path_factory.mktemp("measure") / "command.log"
    process = subprocess.run([sys.executable, "-c", SCENARIO, str(BENCH), str(HELD), str(KNOWN), str(log)],
                             capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout)


def test_a_known_allocation_reads_right_after_the_parent_has_grown(measured):
    bare, known = measured["bare"], measured["known"]
    assert bare < 64 * MiB, f"a bare interpreter read {bare / MiB:.0f} MiB: the parent's {HELD / MiB:.0f} MiB leaked in"
    assert KNOWN <= known <= KNOWN + bare + MARGIN, \
        f"{known / MiB:.1f} MiB for {KNOWN / MiB:.0f} MiB allocated and a bare interpreter's {bare / MiB:.1f} MiB"
    assert measured["known_code"] == 0 and measured["seconds"] > 0


def test_the_exit_code_comes_back_and_a_command_that_cannot_start_raises(measured):
    assert measured["failed_code"] == 3
    assert "could not start" in measured["unstartable"] and "nonexistent" in measured["unstartable"]


def test_a_plain_popen_from_the_grown_process_reads_its_parents_mark(measured):
    """Why the launcher exists: the same command started from the big process itself reports at least the
    parent's high-water mark (the kernel carries it through fork and exec)."""
    assert measured["naive"] >= HELD
