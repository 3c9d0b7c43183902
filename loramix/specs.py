"""LoRA files with weights, as users write them on the command line and in prompt files: `a.safetensors:0.7`.

Imports nothing heavy, so the CLI can parse them before torch is loaded."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

from loramix.errors import LoramixError


@dataclass(frozen=True)
class WeightedFile:
    path: str
    weight: float

    @property
    def name(self) -> str:
        """The name A1111 shows in `<lora:NAME:0.7>`: the file name without its suffix."""
        return Path(self.path).name.removesuffix(".safetensors")


def parse_weight_spec(spec: str) -> WeightedFile:
    """`a.safetensors:0.7` → (a.safetensors, 0.7); without `:` the weight is 1."""
    if ":" not in spec:
        return WeightedFile(spec, 1.0)
    path, _, text = spec.rpartition(":")
    if not path:
        raise LoramixError(f"weight spec {spec!r}: no file before ':'")
    if not text:
        raise LoramixError(f"weight spec {spec!r}: nothing after ':' (write e.g. {path}:0.7)")
    try:
        weight = float(text)
    except ValueError:
        raise LoramixError(f"weight spec {spec!r}: {text!r} is not a number") from None
    if not math.isfinite(weight):
        raise LoramixError(f"weight spec {spec!r}: the weight must be a finite number")
    return WeightedFile(path, weight)


def short_hash(path: str | os.PathLike) -> str:
    """The first 12 hex digits of the file's SHA-256: what A1111 records as a LoRA's hash."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]
