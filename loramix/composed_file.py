"""A weighted composition of LoRA files written as one file: what `loramix compose -o` writes and what
`loramix serve` saves, through this one function so the two cannot differ."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from loramix.compose import SvdReport, compose_by_method
from loramix.specs import WeightedFile

DTYPE_NAMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class WrittenComposition:
    path: str
    modules: int
    ranks: list[int]
    dtype: torch.dtype
    report: SvdReport | None  # the truncation errors, when there was a truncation


def write_composition(files: list[WeightedFile], output: str | os.PathLike, method: str = "exact",
                      rank: int | None = None, density: float = 0.5, seed: int = 0, file_format: str = "diffusers",
                      dtype: str | None = None, allow_nonfinite: bool = False) -> WrittenComposition:
    """Read `files`, compose them by `method` and write the result atomically, recording its inputs (paths as
    given, with their weights) and method in the header."""
    from loramix.formats import read_adapter, write_adapter
    from loramix.formats.metadata import composition_metadata

    adapters = [read_adapter(wf.path) for wf in files]
    weighted = [(a, wf.weight) for a, wf in zip(adapters, files)]
    result, report = compose_by_method(weighted, method, rank, density, seed, [wf.path for wf in files],
                                       allow_nonfinite)
    out_dtype = output_dtype(dtype, adapters)
    for module in result.modules.values():
        module.down, module.up = module.down.to(out_dtype), module.up.to(out_dtype)
    recipe = " ".join(f"{wf.path}:{wf.weight:g}" for wf in files)
    write_adapter(result, output, format=file_format, metadata=composition_metadata(recipe, method))
    return WrittenComposition(str(output), len(result.modules), result.ranks, out_dtype, report)


def output_dtype(choice: str | None, adapters) -> torch.dtype:
    """The dtype asked for, else the inputs' when they agree, else fp32."""
    if choice is not None:
        return DTYPE_NAMES[choice]
    dtypes = {t.dtype for a in adapters for m in a.modules.values() for t in (m.down, m.up)}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32
