"""The exceptions loramix raises. The library raises them; only the CLI turns them into one-line errors."""

from __future__ import annotations

import difflib


def first_line(error: BaseException, limit: int | None = 200) -> str:
    """The first line of an exception's message (its type's name when it has none), at most `limit` characters:
    what a one-line error quotes of a dependency's failure."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:limit]


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


class BaseLoadError(LoramixError):
    """A base loramix cannot load."""


class PromptFileError(LoramixError):
    """A prompt file that cannot be read, or (with --strict) has bad rows."""


class DatasetError(LoramixError):
    """A dataset folder loramix cannot train on."""


class RecipeError(LoramixError):
    """A recipe key or value that loramix cannot train with."""


class TrainError(LoramixError):
    """A training run that cannot start or go on."""


class TrainInterrupted(TrainError):
    """Ctrl-C during training, after a checkpoint of the last finished step was written."""


class CheckpointError(LoramixError):
    """A checkpoint that cannot be resumed from."""


class TraineeError(LoramixError):
    """A base and recipe that do not fit together."""


class QuantizeError(LoramixError):
    """A quantization that cannot be done: unknown mode, or a model that already carries adapters."""


class FaceSpecError(LoramixError):
    """A face spec or dataset request that names something this module cannot draw."""


class JudgeError(LoramixError):
    """Images the judge cannot read, or judge weights it cannot load."""


class RequestError(LoramixError):
    """A request to `loramix serve` that it refuses, with the HTTP status that says why (400, 403, 404)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class DependencyError(LoramixError):
    """A dependency failed in a way that points at its version, not at the user's input."""
