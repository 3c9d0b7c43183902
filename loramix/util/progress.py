"""How a long job tells what it is doing, without knowing whether anyone shows it."""

from __future__ import annotations

from collections.abc import Iterable


class Status:
    """Where loading tells what it does: `status(text)` for a status line, `bar(items, what)` wraps a list in a
    progress bar. This one says nothing; the command line passes one that shows both."""

    def __call__(self, text: str) -> None:
        pass

    def bar(self, items: list, what: str) -> Iterable:
        return items
