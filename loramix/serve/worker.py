"""The one thread that renders: it owns the pipeline, and runs one task at a time in the order they came.

Each client (a browser tab) has one waiting slot per kind of task: a newer preview from the same tab takes
the place of its preview still waiting, whose caller is told it was superseded, so a slider dragged through
300 values queues at most one render per tab behind the one running. Tasks of different tabs wait side by
side, oldest first. A task whose caller went away (a closed tab) is dropped if it has not started.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from loramix.errors import LoramixError


class Superseded(LoramixError):
    """A newer request of the same client took this one's place before it started."""


class WorkerStopped(LoramixError):
    """The worker was stopped before the task ran."""


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    superseded: int = 0
    dropped: int = 0  # callers gone before their task started
    most_waiting: int = 0  # the longest the queue has been


class RenderWorker:
    def __init__(self, name: str = "loramix-render"):
        self._waiting: OrderedDict[tuple[str, str], tuple[Callable[[], object], Future]] = OrderedDict()
        self._condition = threading.Condition()
        self._stopping = False
        self.stats = WorkerStats()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, slot: tuple[str, str], task: Callable[[], object]) -> Future:
        """Queue `task` in `slot` (client, kind), superseding the slot's waiting task."""
        future: Future = Future()
        with self._condition:
            if self._stopping:
                raise WorkerStopped("the server is stopping")
            old = self._waiting.pop(slot, None)
            if old is not None and old[1].set_running_or_notify_cancel():
                old[1].set_exception(Superseded("a newer request took this one's place"))
                self.stats.superseded += 1
            self._waiting[slot] = (task, future)
            self.stats.most_waiting = max(self.stats.most_waiting, len(self._waiting))
            self._condition.notify()
        return future

    def drop(self, slot: tuple[str, str], future: Future) -> None:
        """The caller of `future` went away: forget its task if it has not started."""
        with self._condition:
            waiting = self._waiting.get(slot)
            if waiting is not None and waiting[1] is future:
                del self._waiting[slot]
                future.cancel()
                self.stats.dropped += 1

    @property
    def waiting(self) -> int:
        with self._condition:
            return len(self._waiting)

    def call(self, task: Callable[[], object]) -> object:
        """Run `task` on the worker's thread and wait for it (for set-up that must own the pipeline too)."""
        return self.submit(("", f"call-{id(task)}"), task).result()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the running task finish, fail the waiting ones, and end the thread."""
        with self._condition:
            self._stopping = True
            for _, future in self._waiting.values():
                if future.set_running_or_notify_cancel():
                    future.set_exception(WorkerStopped("the server is stopping"))
            self._waiting.clear()
            self._condition.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._waiting and not self._stopping:
                    self._condition.wait()
                if self._stopping:
                    return
                _, (task, future) = self._waiting.popitem(last=False)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(task())
                self.stats.done += 1
            except BaseException as e:  # the caller gets the error; the worker goes on serving
                future.set_exception(e)
                self.stats.failed += 1
