"""The precision a base loads in: asked for (`--dtype`, the recipe's `dtype`), or what fits the device.

    CUDA           bf16 where the GPU has it, else fp16
    Apple MPS      fp16
    CPU            fp32 while the base's weights in fp32 take at most a quarter of the machine's memory
                   (the toy base, SD 1.x and 2.x on most machines), else bf16 (SDXL: 13.9 GB in fp32, 7 in bf16)

A quarter leaves room for what loading and rendering hold beside the weights. The weights' size is read from
the safetensors headers alone, so choosing costs no loading.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from loramix.errors import BaseLoadError

BY_NAME = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_FP32_SHARE = 0.25  # the share of the machine's memory a base may take in fp32 before bf16 is chosen


def name_of(dtype: torch.dtype) -> str:
    return {value: name for name, value in BY_NAME.items()}[dtype]


def choose_dtype(choice: str | torch.dtype | None, weight_files: list[Path], device: torch.device) -> torch.dtype:
    """`choice` ("fp32", "fp16", "bf16", or a torch dtype) when given, else the default for `device` and the
    base's size."""
    if isinstance(choice, torch.dtype):
        return choice
    if choice is not None:
        if choice not in BY_NAME:
            raise BaseLoadError(f"dtype {choice!r}: choose one of {', '.join(BY_NAME)}")
        return BY_NAME[choice]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    import psutil

    fp32_bytes = 4 * parameter_count(weight_files)
    return torch.float32 if fp32_bytes <= CPU_FP32_SHARE * psutil.virtual_memory().total else torch.bfloat16


def parameter_count(weight_files: list[Path]) -> int:
    """How many numbers the safetensors files hold, from their headers (no tensor is read)."""
    return sum(sum(stored_counts(path).values()) for path in weight_files)


def stored_dtype(path: Path) -> torch.dtype:
    """The floating dtype most of a safetensors file's numbers are stored in."""
    counts = stored_counts(path)
    floating = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    stored = [name for name in sorted(counts, key=counts.get, reverse=True) if name in floating]
    return floating[stored[0]] if stored else torch.float32


def stored_counts(path: Path) -> dict[str, int]:
    """How many numbers a safetensors file stores in each dtype ("F16": …), read from its header."""
    from safetensors import safe_open

    counts: dict[str, int] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            piece = f.get_slice(key)
            counts[piece.get_dtype()] = counts.get(piece.get_dtype(), 0) + math.prod(piece.get_shape())
    return counts


def cast_floats(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast a model's floating tensors to `dtype` one at a time, so that the model never exists twice (as
    `model.to(dtype)` briefly has it: 10 GB at once for SDXL's UNet). Quantized codes are integers and stay."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.dtype.is_floating_point and tensor.dtype != dtype:
            tensor.data = tensor.data.to(dtype)
