"""`loramix` commands in processes forked from a server that has already imported what they import.

A fresh `python -m loramix` spends about five seconds importing torch, diffusers, transformers, peft and
bitsandbytes before it does any work, and the kill tests start some thirty runs. Forked from a server that made
those imports once (multiprocessing's fork server, preloading this module), a run starts in a fraction of a
second and is still a process of its own, running the CLI's own `run()` from its arguments, which SIGKILL ends
at any moment. The kill tests' reference runs still start `python -m loramix` fresh, and the forked runs are
compared with them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from pathlib import Path

# What the fork server imports once, after this module (which quiets bitsandbytes' import-time notice as the CLI
# does) and before any run: diffusers imports its pipelines lazily, on the first load.
PRELOAD = ["diffusers.pipelines.pipeline_utils", "loramix.cli", "loramix.jobs.compose_file",
           "loramix.render.generate", "loramix.train.loop"]

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def _run_cli(args: list[str], stdout: str, stderr: str) -> None:
    """In the forked process: `loramix ARGS` with stdout and stderr in files, on one thread as the fresh
    processes run (the same float sums)."""
    for fd, path in ((1, stdout), (2, stderr)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(file, fd)
        os.close(file)
    import gc

    import torch

    from loramix.cli import run

    gc.freeze()  # the server's imports are no garbage: the run's collections need not walk them
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    sys.argv = ["loramix", *args]
    run()


class ForkedRun:
    """One forked `loramix` run, with the part of subprocess.Popen's interface the kill tests use."""

    def __init__(self, process, stdout: Path, stderr: Path):
        self.process, self.stdout_path, self.stderr_path = process, stdout, stderr

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode  # -9 when SIGKILLed, as Popen's

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signal: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal)

    def kill(self) -> None:
        self.process.kill()

    def wait(self, timeout: float | None = None) -> int | None:
        self.process.join(timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Waits for the end of the run (TimeoutError after `timeout` seconds) and returns its stdout and stderr."""
        if self.wait(timeout) is None:
            raise TimeoutError(f"the forked run {self.pid} is still running after {timeout} s")
        return tuple(path.read_text() if path.exists() else "" for path in (self.stdout_path, self.stderr_path))


class ForkedCli:
    """Starts forked `loramix` runs, their output kept under `folder`."""

    def __init__(self, folder: Path):
        self.folder, self.count = folder, 0
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload([__name__, *PRELOAD])

    def start(self, args: list[str]) -> ForkedRun:
        self.count += 1
        stdout, stderr = self.folder / f"{self.count}.out", self.folder / f"{self.count}.err"
        process = self.context.Process(target=_run_cli, args=(list(map(str, args)), str(stdout), str(stderr)))
        process.start()
        return ForkedRun(process, stdout, stderr)
