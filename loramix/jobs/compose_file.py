"""A weighted composition of LoRA files written as one file: what `loramix compose -o` writes and what
`loramix serve` saves, through this one function so the two cannot differ."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from loramix.choices import DEFAULT_FORMAT, FUSION, RECORDED_METHODS
from loramix.errors import LoramixError
from loramix.lora.compose import SvdReport, compose_by_method, summed_rank
from loramix.lora.specs import WeightedFile
from loramix.models.precision import BY_NAME


@dataclass(frozen=True)
class WrittenComposition:
    path: str
    modules: int
    ranks: list[int]  # empty for whole differences (full-diff)
    dtype: torch.dtype
    report: SvdReport | None  # the truncation errors, when there was a truncation


def write_composition(files: list[WeightedFile], output: str | os.PathLike, method: str = "exact",
                      rank: int | None = None, density: float = 0.5, seed: int = 0,
                      file_format: str = DEFAULT_FORMAT, dtype: str | None = None,
                      allow_nonfinite: bool = False, grams: list[dict] | None = None) -> WrittenComposition:
    """Read `files` (with their block weights), compose them by `method` and write the result atomically,
    recording its inputs (paths as given, with their weights) and method in the header. `full-diff` writes each
    module's whole ΔW, which LyCORIS modules need to be summed exactly. `fusion` and `ziplora` need each
    file's Gram matrices (`grams`, from loramix.render.activations); fusion is written at `rank` (default: the
    sum of the input ranks) unless `full-diff`, ziplora at rank Σ rᵢ unless `rank` is given."""
    from loramix.formats.metadata import composition_metadata
    from loramix.formats.read import read_weighted
    from loramix.formats.write import write_adapter

    weighted = read_weighted(files)
    adapters = [a for a, _ in weighted]
    names = [wf.path for wf in files]
    if method in RECORDED_METHODS and grams is None:
        raise LoramixError(f"{method} needs the Gram matrices of each LoRA's layer inputs: record them first")
    if method == FUSION:
        from loramix.lora.fusion import compose_fusion

        whole = file_format == "full-diff"
        result, report = compose_fusion(weighted, grams, None if whole else rank or summed_rank(weighted), names)
    elif method in RECORDED_METHODS:
        from loramix.lora.ziplora import compose_ziplora

        result, report = compose_ziplora(weighted, grams, rank, names)
    else:
        result, report = compose_by_method(weighted, method, rank, density, seed, names, allow_nonfinite,
                                           dense=file_format == "full-diff")
    out_dtype = output_dtype(dtype, adapters)
    result.modules = {key: module.to(out_dtype) for key, module in result.modules.items()}
    recipe = " ".join(wf.spec for wf in files)
    write_adapter(result, output, format=file_format, metadata=composition_metadata(recipe, method))
    return WrittenComposition(str(output), len(result.modules), result.ranks, out_dtype, report)


def output_dtype(choice: str | None, adapters) -> torch.dtype:
    """The dtype asked for, else the inputs' when they agree, else fp32."""
    if choice is not None:
        return BY_NAME[choice]
    dtypes = {t.dtype for a in adapters for m in a.modules.values() for t in m.tensors}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32
