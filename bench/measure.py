"""Wall time and peak RSS of a command, measured by a process that never held anything big.

The kernel keeps a process's resident-set high-water mark across fork and exec (getrusage(2): usage is
preserved across execve). A command that a benchmark starts with subprocess (vfork), fork or posix_spawn after
it has built a model therefore reports, through wait4's ru_maxrss, at least the benchmark's own size, whatever
the command itself used.

`Launcher` starts a tiny Python child that imports only the standard library and runs each command from there:
what the command inherits is the launcher's few MiB, which a bare `python -c pass` shows. The launcher's own
exec already starts its mark anew; starting it before the benchmark grows is a second guard, so that nothing big
was ever in the launcher's line whatever a kernel carries.

    with Launcher() as launcher:
        ...                                   # build or load anything
        result = launcher.run(command, log_path, env)
        result.seconds, result.peak_gib, result.returncode
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RU_MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024  # Linux counts ru_maxrss in KiB, macOS in bytes


@dataclass(frozen=True)
class Measured:
    """One command run to its end: wall seconds from start to reaping, its peak RSS, its exit code
    (negative: killed by that signal)."""

    seconds: float
    peak_bytes: int
    returncode: int

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / 2**30


class Launcher:
    """A child process that runs commands for us and says what they cost; a context manager."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Launcher:
        self._process = subprocess.Popen([sys.executable, str(Path(__file__).resolve())],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            self._process.stdin.close()  # the launcher ends at the end of its input
            self._process.wait()
            self._process = None

    def run(self, command: list[str], log_path: str | Path, env: dict[str, str] | None = None) -> Measured:
        """Run `command` to its end with stdout and stderr in `log_path` and `env` (None: the launcher's own)."""
        if self._process is None:
            raise RuntimeError("the launcher is not started: use it in a `with` block")
        request = {"command": [str(part) for part in command], "log": str(log_path), "env": env}
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the launcher exited (code {self._process.wait()}) while running {command}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"could not start {command}: {reply['error']}")
        return Measured(**reply)


def measure(command: list[str], log_path: str, env: dict[str, str] | None) -> Measured:
    """Run in the launcher: start, wait4, and read the usage of that one child."""
    with open(log_path, "w") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: Popen must not wait for it again
    return Measured(seconds, usage.ru_maxrss * RU_MAXRSS_BYTES, process.returncode)


def serve() -> None:
    """The launcher's loop: one JSON request a line on stdin, one JSON reply a line on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the launcher with the benchmark, without a traceback
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = asdict(measure(request["command"], request["log"], request["env"]))
        except OSError as error:
            reply = {"error": f"{type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
