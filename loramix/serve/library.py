"""The LoRA files a server may read: `*.safetensors` under the folders it was given, named by the client as
the path it lists (`FOLDER/sub/a.safetensors`), and nothing else.

A folder is named by its last part (`.` by nothing), so absolute folders never put a machine's paths in
names; command lines and saved recipes use the folder as it was given, which is what a command run from the
server's folder reads. A name is resolved without trusting it: it must be one of the folders' relative
paths, with no `..`, not absolute, and its real path (symlinks followed) must lie inside the real folder.
Files are read through the same reader as every command; what was read is kept per file signature (size,
mtime, inode), so a file replaced on disk is read again and one that no longer reads is listed with its error.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from loramix.errors import LoramixError, RequestError

LORA_SUFFIX = ".safetensors"
MAX_FILES = 2000  # a listing larger than this is cut: a page of thousands of sliders is no use
log = logging.getLogger("loramix.serve")


@dataclass(frozen=True)
class Signature:
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> Signature:
        stat = path.stat()
        return cls(stat.st_size, stat.st_mtime_ns, stat.st_ino)


@dataclass
class LoraEntry:
    """What the page lists about one file: what `inspect` knows, or the one-line error reading it gave."""

    name: str  # as the client names it, and as a command line does from the server's folder
    error: str | None = None
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "error": self.error, **self.info}


class LoraLibrary:
    def __init__(self, folders: list[str | os.PathLike]):
        if not folders:
            raise LoramixError("no LoRA folders to serve")
        self.folders: list[tuple[str, Path, str]] = []  # (label in names, real path, folder as given)
        for folder in folders:
            real = Path(folder).resolve()
            if not real.is_dir():
                raise LoramixError(f"{folder}: not a folder")
            label = _label(folder, {f[0] for f in self.folders})
            self.folders.append((label, real, _given(folder)))
        self._entries: dict[str, tuple[Signature, LoraEntry]] = {}
        self._listing = threading.Lock()  # two tabs may ask for the listing at once

    def names(self) -> list[str]:
        """Every LoRA file under the folders, as the client names it; links that lead outside are left out."""
        found = []
        for shown, real, _ in self.folders:
            for path in sorted(real.rglob("*" + LORA_SUFFIX)):
                if len(found) >= MAX_FILES:
                    return found
                if path.is_file() and path.resolve().is_relative_to(real):
                    found.append(_join(shown, path.relative_to(real).as_posix()))
        return found

    def resolve(self, name: object) -> Path:
        """The real path of a listed name; anything else is an error with an HTTP status (logged)."""
        if not isinstance(name, str) or not name or "\x00" in name:
            raise self._refuse(name, "a LoRA is named by the path the page lists", 400)
        pure = PurePosixPath(name.replace("\\", "/"))
        if pure.is_absolute() or Path(name).is_absolute():
            raise self._refuse(name, "absolute paths are not served", 403)
        if ".." in pure.parts:
            raise self._refuse(name, "'..' is not allowed in a LoRA name", 403)
        for shown, real, _ in self.folders:
            relative = _relative_to(pure, shown)
            if relative is None:
                continue
            candidate = real / relative
            if candidate.suffix != LORA_SUFFIX:
                raise self._refuse(name, f"only {LORA_SUFFIX} files are served", 403)
            resolved = candidate.resolve()
            if not resolved.is_relative_to(real):
                raise self._refuse(name, "it leads outside the served folder", 403)
            if not resolved.is_file():
                raise self._refuse(name, "no such LoRA file", 404)
            return resolved
        raise self._refuse(name, "not under a served folder", 404)

    def command_path(self, name: str) -> str:
        """The path of a listed name as a command run from the server's folder reads it."""
        pure = PurePosixPath(name)
        for shown, _, given in self.folders:
            relative = _relative_to(pure, shown)
            if relative is not None:
                return _join(given, relative.as_posix())
        raise self._refuse(name, "not under a served folder", 404)

    def entry(self, name: str, describe) -> LoraEntry:
        """The listing entry of `name`: `describe(path)` (read and inspect) once per version of the file."""
        try:
            path = self.resolve(name)
            signature = Signature.of(path)
        except (RequestError, OSError) as e:
            return LoraEntry(name, error=str(e))
        known = self._entries.get(name)
        if known is None or known[0] != signature:
            try:
                known = (signature, LoraEntry(name, info=describe(path)))
            except LoramixError as e:
                known = (signature, LoraEntry(name, error=str(e).replace(str(path), name)))
            self._entries[name] = known
        return known[1]

    def listing(self, describe) -> list[LoraEntry]:
        with self._listing:
            names = self.names()
            for gone in set(self._entries) - set(names):
                del self._entries[gone]
            return [self.entry(name, describe) for name in names]

    @staticmethod
    def _refuse(name: object, problem: str, status: int) -> RequestError:
        shown = ascii(name)[:200]
        log.warning("refused LoRA name %s: %s", shown, problem)
        return RequestError(f"LoRA {shown}: {problem}", status)


def _given(folder: str | os.PathLike) -> str:
    text = Path(folder).as_posix()
    return "" if text in (".", "") else text


def _label(folder: str | os.PathLike, taken: set[str]) -> str:
    """The folder's name in LoRA names: its last part, '' for the current folder, made unique."""
    given = _given(folder)
    base = Path(folder).resolve().name if given else ""
    if given and not Path(given).is_absolute() and ".." not in Path(given).parts:
        base = given  # a relative folder keeps its spelling, so names match command lines
    label, k = base, 2
    while label in taken:
        label, k = f"{base}-{k}", k + 1
    return label


def _join(shown: str, relative: str) -> str:
    return f"{shown}/{relative}" if shown else relative


def _relative_to(name: PurePosixPath, shown: str) -> PurePosixPath | None:
    if not shown:
        return name
    try:
        return name.relative_to(shown)
    except ValueError:
        return None
