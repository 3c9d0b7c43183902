"""Reading a model's weights from safetensors files one tensor at a time, without the pages read staying
resident: the files are mapped afresh every few hundred megabytes, so the memory of what was read goes back."""

from __future__ import annotations

from pathlib import Path

import torch

# Read this much through one mapping of a file, then map it afresh. Each opening parses the header again
# (56 ms for SDXL's single file), so a load that keeps what it reads at full size (rendering) takes bigger
# windows than one that quantizes it to an eighth (training), whose peak the window is a large part of.
REOPEN_BYTES = 64 * 2**20
REOPEN_BYTES_UNQUANTIZED = 1024 * 2**20


class TensorReader:
    """Tensors by name from one or more safetensors files, read one at a time."""

    def __init__(self, files: list[Path], reopen_bytes: int = REOPEN_BYTES):
        from safetensors import safe_open

        self._where: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    self._where[key] = path
                    self._shapes[key] = tuple(f.get_slice(key).get_shape())
        self._open: tuple[Path, object] | None = None
        self._read_since_open = 0
        self._reopen_bytes = reopen_bytes

    def keys(self) -> set[str]:
        return set(self._where)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape, as the headers give it (read once, when the reader was made)."""
        return dict(self._shapes)

    def get(self, key: str, device: torch.device) -> torch.Tensor:
        from safetensors import safe_open

        path = self._where[key]
        if self._open is None or self._open[0] != path or self._read_since_open > self._reopen_bytes:
            self.close()
            self._open = (path, safe_open(str(path), framework="pt"))
            self._read_since_open = 0
        tensor = self._open[1].get_tensor(key)
        self._read_since_open += tensor.numel() * tensor.element_size()
        return tensor.to(device)

    def close(self) -> None:
        self._open = None  # the mapping goes with the handle
