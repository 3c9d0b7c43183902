"""`loramix compose`: weighted combinations of LoRA files."""

from __future__ import annotations

import math
from dataclasses import dataclass

import click

from loramix.errors import LoramixError

METHODS = ("exact", "ties", "dare", "dare_ties")
DTYPES = ("fp32", "fp16", "bf16")


@dataclass
class WeightedFile:
    path: str
    weight: float


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


@click.command()
@click.argument("specs", nargs=-1, required=True, metavar="FILE[:WEIGHT]...")
@click.option("-o", "--output", required=True, type=click.Path(), help="The composed LoRA file.")
@click.option("--method", type=click.Choice(METHODS), default="exact", show_default=True,
              help="exact: Σ wᵢ·ΔWᵢ. ties/dare/dare_ties: peft's merges of the full ΔWᵢ (not additive).")
@click.option("--rank", type=click.IntRange(min=1),
              help="Reduce to this rank by truncated SVD and report the error. Default: exact keeps the sum of "
                   "ranks; ties/dare use the sum of ranks too.")
@click.option("--density", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Fraction of each ΔW kept by ties/dare.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of dare's random pruning.")
@click.option("--format", "file_format", type=click.Choice(["diffusers", "kohya"]), default="diffusers",
              show_default=True, help="Key naming of the output: diffusers, or kohya for A1111/ComfyUI.")
@click.option("--dtype", type=click.Choice(DTYPES),
              help="Output precision. Default: the inputs' dtype when they agree, else fp32.")
def compose(specs, output, method, rank, density, seed, file_format, dtype) -> None:
    """Combine LoRA files with weights: `loramix compose a.safetensors:0.7 b.safetensors:0.5 -o ab.safetensors`.

    The default is exact: the result's ΔW is Σ wᵢ·(αᵢ/rᵢ)·Bᵢ·Aᵢ for every module, by concatenating ranks.
    """
    import torch

    from loramix.compose import compose_exact, compose_merge, compose_svd
    from loramix.formats import read_adapter, write_adapter

    weighted_files = [parse_weight_spec(s) for s in specs]
    adapters = [read_adapter(wf.path) for wf in weighted_files]
    weighted = [(a, wf.weight) for a, wf in zip(adapters, weighted_files)]
    names = [wf.path for wf in weighted_files]
    report = None
    if method == "exact" and rank is None:
        result = compose_exact(weighted, names=names)
    elif method == "exact":
        result, report = compose_svd(weighted, rank, names=names)
    else:
        merge_rank = rank or sum(max(a.ranks) for a in adapters)
        result, report = compose_merge(weighted, method=method, rank=merge_rank, density=density, seed=seed,
                                       names=names)
    out_dtype = _output_dtype(dtype, adapters, torch)
    for module in result.modules.values():
        module.down, module.up = module.down.to(out_dtype), module.up.to(out_dtype)
    recipe = " ".join(f"{wf.path}:{wf.weight:g}" for wf in weighted_files)
    write_adapter(result, output, format=file_format,
                  metadata={"loramix_composed_from": recipe, "loramix_compose_method": method})
    click.echo(f"wrote {output}: {len(result.modules)} modules, rank {', '.join(map(str, result.ranks))}, "
               f"{file_format} naming, {str(out_dtype).removeprefix('torch.')}")
    if report is not None:
        click.echo(f"truncation error (relative Frobenius): {report.overall_error:.3e} overall, "
                   f"{max(report.module_errors.values()):.3e} worst module")


def _output_dtype(choice, adapters, torch):
    if choice is not None:
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[choice]
    dtypes = {t.dtype for a in adapters for m in a.modules.values() for t in (m.down, m.up)}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32
