"""The exceptions loramix raises. The library raises them; only the CLI turns them into one-line errors."""

from __future__ import annotations

import difflib


def did_you_mean(name: str, known) -> str:
    """' (did you mean 'rank'?)' for the closest of `known` to a misspelt `name`, or '' when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class LoramixError(Exception):
    """Base class: every expected failure (bad input, bad file, impossible request) is one of these."""


class AdapterFileError(LoramixError):
    """A file is missing, unreadable, corrupt, or not a LoRA that loramix understands."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class IncompatibleAdaptersError(LoramixError):
    """Adapters that cannot be combined, e.g. two shapes for the same module."""


class OutputError(LoramixError):
    """An output path that cannot be written."""
