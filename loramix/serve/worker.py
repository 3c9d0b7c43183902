"""The one thread that renders: it owns the pipeline, and runs one task at a time in the order they came.

`loramix serve` runs the worker on the main thread, the thread that loaded the pipeline, and the web server in
another. Torch's OpenMP threads belong to the thread that first ran parallel work: a second thread running
torch gets a second team of threads competing with the first for the cores, and the toy base's many small ops
then render 2-2.5x slower on two cores (`bench/bench_serve.py` shows it). So every call into torch, reading a
LoRA file included, goes through the worker.

Each client (a browser tab) has one waiting slot per kind of task: a newer preview from the same tab takes
the place of its preview still waiting, whose caller is told it was superseded, so a slider dragged through
300 values queues at most one render per tab behind the one running. Tasks of different tabs wait side by
side, oldest first. A task whose caller went away (a closed tab) is dropped if it has not started.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
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
    def __init__(self):
        self._waiting: OrderedDict[tuple[str, str], tuple[Callable[[], object], Future]] = OrderedDict()
        # Every future handed out and not yet resolved, so that `stop` can fail one a Ctrl-C caught between
        # leaving the queue and running: its caller would otherwise wait forever, and so would the exit.
        self._unresolved: set[Future] = set()
        self._condition = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = WorkerStats()

    def start(self, name: str = "loramix-render") -> RenderWorker:
        """Run the tasks on a thread of the worker's own (tests; a server renders on its main thread: `run`)."""
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)
        self._thread.start()
        return self

    def run(self, while_alive: Callable[[], bool] = lambda: True) -> None:
        """Run the tasks on this thread until `stop`, or until `while_alive()` turns false (checked twice a
        second). A KeyboardInterrupt in a task fails that task's caller and ends the loop."""
        while True:
            with self._condition:
                while not self._waiting and not self._stopping and while_alive():
                    self._condition.wait(0.5)
                if self._stopping or not while_alive():
                    return
                _, (task, future) = self._waiting.popitem(last=False)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = task()
            except BaseException as e:  # the caller gets the error; the worker goes on serving
                future.set_exception(e)
                self.stats.failed += 1
                if not isinstance(e, Exception):
                    raise
            else:
                # Outside the try: a Ctrl-C landing while the result is handed over must end the loop as a
                # KeyboardInterrupt, not fail the finished future a second time (InvalidStateError, exit 1).
                self.stats.done += 1
                future.set_result(result)

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
            self._unresolved.add(future)
            future.add_done_callback(self._unresolved.discard)
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
        """Run `task` on the worker's thread and wait for it."""
        return self.submit(("", f"call-{id(task)}"), task).result()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the running task finish, fail the waiting ones, and end the loop (and its thread, if `start`ed)."""
        with self._condition:
            self._stopping = True
            self._waiting.clear()
            elsewhere = self._thread is not None and self._thread is not threading.current_thread() \
                and self._thread.is_alive()
            for future in list(self._unresolved):
                if future.running() and elsewhere:
                    continue  # the task running on the worker's own thread resolves it
                if future.running() or future.set_running_or_notify_cancel():
                    try:
                        future.set_exception(WorkerStopped("the server is stopping"))
                    except InvalidStateError:  # resolved meanwhile by the task's own thread
                        pass
            self._condition.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
