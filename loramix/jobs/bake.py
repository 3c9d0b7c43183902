"""Baking LoRAs into a checkpoint: W ← W + Σ wᵢ·bᵢ·ΔWᵢ for every module they change (bᵢ the block weight),
written as a new checkpoint in the base's own layout (a diffusers folder, or a single original-layout file).

The sum is the exact dense one of `compose --format full-diff`, so LoHa, LoKr and full differences bake as
they render; DoRA modules then renormalise the summed weight, in the order given, as the loaders apply them.
Every module is matched to a base weight of its shape before anything is written, and the new checkpoint
replaces the output only once it is complete. A quantized base is refused: adding ΔW to its codes would
re-quantize the update and lose most of it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loramix.errors import IncompatibleAdaptersError, LoramixError
from loramix.formats.checkpoint import CheckpointFile, checkpoint_files, is_quantized_key
from loramix.lora.adapter import LoraAdapter
from loramix.lora.compose import compose_dense
from loramix.lora.lycoris_modules import flat
from loramix.util.atomic import atomic_folder, atomic_path

QUANTIZED_DTYPES = ("I8", "U8")  # safetensors' names of the integer types quantized codes are stored in


@dataclass
class BakeReport:
    output: Path
    modules: int  # base weights changed


def bake(base: str | os.PathLike, weighted: list[tuple[LoraAdapter, float]], names: list[str],
         output: str | os.PathLike) -> BakeReport:
    """Write `base` with the weighted LoRAs added in to `output`, in the base's layout."""
    base = Path(base)
    files = checkpoint_files(base)
    additive = [(_only(a, lambda k: k != "DoRA"), w) for a, w in weighted]
    pairs = [(pair, name) for pair, name in zip(additive, names) if pair[0].modules]
    deltas = compose_dense([p for p, _ in pairs], [n for _, n in pairs]).modules if pairs else {}
    doras = [(_only(a, lambda k: k == "DoRA"), w) for a, w in weighted]
    wanted = {key: module.flat_shape for key, module in deltas.items()}
    for adapter, _ in doras:
        wanted.update({key: module.flat_shape for key, module in adapter.modules.items()})
    _check_fits(base, files, wanted, names)

    def baked(file: CheckpointFile) -> dict[str, torch.Tensor]:
        tensors = {}
        with safe_open(str(file.path), framework="pt") as f:
            for tensor_key in f.keys():
                tensor, key = f.get_tensor(tensor_key), file.module_of(tensor_key)
                if key in deltas:
                    tensor = (tensor.double() + deltas[key].delta(torch.float64).reshape(tensor.shape)).to(tensor.dtype)
                for adapter, weight in doras:
                    if key in adapter.modules:
                        tensor = adapter.modules[key].scaled(weight).applied(tensor)
                tensors[tensor_key] = tensor.contiguous()
        return tensors

    output = Path(output)
    if files[0].component is None:
        with atomic_path(output) as temp:
            save_file(baked(files[0]), str(temp), metadata=_metadata(files[0]))
    else:
        with atomic_folder(output) as temp:
            rewritten = {f.path.relative_to(base) for f in files}
            shutil.copytree(base, temp, dirs_exist_ok=True,
                            ignore=lambda folder, names: [n for n in names
                                                          if (Path(folder) / n).relative_to(base) in rewritten])
            for file in files:
                save_file(baked(file), str(temp / file.path.relative_to(base)), metadata=_metadata(file))
    return BakeReport(output, len(wanted))


def _only(adapter: LoraAdapter, keep) -> LoraAdapter:
    return LoraAdapter({k: m for k, m in adapter.modules.items() if keep(m.kind)}, adapter.metadata,
                       adapter.source_format, adapter.base_version)


def _metadata(file: CheckpointFile) -> dict[str, str] | None:
    with safe_open(str(file.path), framework="pt") as f:
        return f.metadata()


def _check_fits(base, files: list[CheckpointFile], wanted: dict[str, tuple[int, int]], names: list[str]) -> None:
    """Every module has a base weight of its shape, and the base is not quantized: checked on the headers alone."""
    shapes = {}
    for file in files:
        with safe_open(str(file.path), framework="pt") as f:
            for tensor_key in f.keys():
                if is_quantized_key(tensor_key) or f.get_slice(tensor_key).get_dtype() in QUANTIZED_DTYPES:
                    raise LoramixError(f"{base}: a quantized checkpoint ({tensor_key}): adding ΔW to quantized codes "
                                       "re-quantizes the update and loses most of it; bake into the full-precision "
                                       "base")
                key = file.module_of(tensor_key)
                if key is not None:
                    shapes[key] = tuple(f.get_slice(tensor_key).get_shape())
    for key, shape in wanted.items():
        if key not in shapes:
            raise IncompatibleAdaptersError(f"{base} has no weight for module {key}: the LoRAs ({', '.join(names)}) "
                                            "were made for another base")
        if flat(shapes[key]) != shape:
            raise IncompatibleAdaptersError(f"module {key} changes a weight of shape {shape}, {base}'s is "
                                            f"{shapes[key]}: the LoRAs were made for another base")
