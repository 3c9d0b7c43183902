"""Reading a .safetensors file defensively: every way it can be wrong becomes an AdapterFileError.

Files come from strangers, so nothing here unpickles: pickle-based checkpoints are refused by name and by
their first bytes, whatever their extension.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from loramix.errors import AdapterFileError, first_line

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
# The float types LoRA factors are stored in; 8-bit floats are refused, as torch cannot multiply all of them.
FACTOR_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}


def load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the header's metadata of a safetensors file."""
    if not path.exists():
        raise AdapterFileError(path, "no such file")
    if not path.is_file():
        raise AdapterFileError(path, "not a file")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise AdapterFileError(path, f"{path.suffix} is a pickle format, which can run code when loaded; "
                                     "loramix never unpickles: convert it to .safetensors")
    header = _check_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:  # what safetensors raises for corrupt data
        raise AdapterFileError(path, f"not a valid safetensors file ({first_line(e)})") from e
    for key, tensor in tensors.items():
        if tensor.dtype not in FACTOR_DTYPES:
            raise AdapterFileError(path, f"tensor {key!r} has dtype {header[key]['dtype']}, expected floats "
                                         f"({', '.join(FACTOR_DTYPES.values())})")
    return tensors, metadata


def _check_header(path: Path) -> dict:
    size = path.stat().st_size
    with path.open("rb") as f:
        start = f.read(9)
        # A safetensors header of 640 bytes starts b"\x80\x02", as pickles do: its JSON's "{" tells them apart.
        if start.startswith(_PICKLE_MAGIC) and start[8:] != b"{":
            raise AdapterFileError(path, "is a pickle file (a torch checkpoint), which can run code when "
                                         "loaded; loramix never unpickles: convert it to .safetensors")
        if len(start) < 8:
            raise AdapterFileError(path, f"is {size} bytes, too short to be a safetensors file")
        (header_size,) = struct.unpack("<Q", start[:8])
        f.seek(8)
        if header_size > MAX_HEADER_BYTES:
            raise AdapterFileError(path, f"declares a {header_size}-byte header, over the "
                                         f"{MAX_HEADER_BYTES}-byte limit: not a valid safetensors file")
        if 8 + header_size > size:
            raise AdapterFileError(path, f"is truncated: its header needs {header_size} bytes, "
                                         f"the file has {size - 8} after the length")
        raw = f.read(header_size)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterFileError(path, "has a corrupt header (not JSON): not a valid safetensors file") from None
    if not isinstance(header, dict):
        raise AdapterFileError(path, "has a corrupt header (not a JSON object): not a valid safetensors file")
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise AdapterFileError(path, f"has a corrupt header entry for {key!r}")
        if offsets[1] > size - 8 - header_size:
            raise AdapterFileError(path, f"is truncated: tensor {key!r} ends past the end of the file")
    return header

