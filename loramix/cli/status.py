"""Telling the user what a long step is doing: status lines and progress bars on standard error, shown when it
is a terminal (a log or a pipe gets the command's results only, and an error stays a single line)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import click

from loramix.util.progress import Status


class TerminalStatus(Status):
    def __init__(self, shown: bool | None = None):
        self.shown = sys.stderr.isatty() if shown is None else shown

    def __call__(self, text: str) -> None:
        if self.shown:
            click.echo(f"{text} …", err=True)

    def bar(self, items: list, what: str) -> Iterable:
        from tqdm import tqdm

        return tqdm(items, desc=what, unit="layer", leave=False, disable=not self.shown)
