"""The hashes sharing sites and UIs show for a LoRA file, each as its tool defines it.

- A1111's `Lora hashes` infotext: the first 12 hex digits of the file's `sshs_model_hash` metadata when it has
  one, else of the SHA-256 of the bytes after the safetensors header (`hashes.sha256(…, use_addnet_hash=True)`,
  extensions-builtin/Lora/network.py). The header is left out so that editing metadata keeps the hash.
- AutoV2, which Civitai shows and matches: the first 10 hex digits of the SHA-256 of the whole file.
- kohya's `sshs_model_hash` (all of the addnet hash) and `sshs_legacy_hash` (the first 8 hex digits of the
  SHA-256 of the 64 KiB that start 1 MiB into the file, sd-webui-additional-networks' old hash), computed over
  the file with only the `ss_*` metadata (`precalculate_safetensors_hashes`).

Reads files in 1 MiB chunks; imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass

_CHUNK = 1 << 20
LEGACY_OFFSET, LEGACY_LENGTH = 0x100000, 0x10000


def addnet_hash(data: bytes) -> str:
    """SHA-256 (hex) of the bytes after the safetensors header."""
    (header_size,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + header_size:]).hexdigest()


def legacy_hash(data: bytes) -> str:
    """The first 8 hex digits of the SHA-256 of the 64 KiB from 1 MiB on (empty for a smaller file)."""
    return hashlib.sha256(data[LEGACY_OFFSET:LEGACY_OFFSET + LEGACY_LENGTH]).hexdigest()[:8]


@dataclass(frozen=True)
class FileHashes:
    sha256: str  # the whole file
    tensors_sha256: str  # the bytes after the header (kohya's addnet hash)
    metadata_hash: str | None  # sshs_model_hash from the header, if any

    @property
    def autov2(self) -> str:
        return self.sha256[:10]

    @property
    def a1111(self) -> str:
        """What A1111 writes in `Lora hashes`: the header's sshs_model_hash if set, else the tensors' hash."""
        return (self.metadata_hash or self.tensors_sha256)[:12]


def file_hashes(path: str | os.PathLike, metadata_key: str) -> FileHashes:
    """Both SHA-256s of a safetensors file in one read; `metadata_key` names the header's precomputed hash."""
    whole, tensors = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as f:
        start = f.read(8)
        whole.update(start)
        header_size = struct.unpack("<Q", start)[0] if len(start) == 8 else 0
        header = f.read(header_size)
        whole.update(header)
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            whole.update(chunk)
            tensors.update(chunk)
    try:
        metadata = json.loads(header).get("__metadata__") or {}
        given = metadata.get(metadata_key)
    except (ValueError, AttributeError):
        given = None
    return FileHashes(whole.hexdigest(), tensors.hexdigest(), given if isinstance(given, str) and given else None)
