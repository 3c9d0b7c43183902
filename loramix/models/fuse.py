"""Adding LoRA updates into a model's weights (W ← W + w·ΔW): exact on full-precision weights."""

from __future__ import annotations

import torch

from loramix.errors import IncompatibleAdaptersError
from loramix.lora import LoraModule, path_spellings
from loramix.lycoris import flat


def resolve_module(model: torch.nn.Module, module_path: str,
                   modules: dict[str, torch.nn.Module] | None = None) -> torch.nn.Module:
    """The module at an adapter's path; text-encoder paths match with or without their `text_model.` level
    (transformers 5 flattened CLIPTextModel, and adapter files keep the older spelling). Pass `modules`,
    `dict(model.named_modules())`, when resolving many paths in one model."""
    modules = dict(model.named_modules()) if modules is None else modules
    for candidate in path_spellings(module_path):
        if candidate in modules:
            return modules[candidate]
    raise IncompatibleAdaptersError(f"the model has no module {module_path}")


@torch.no_grad()
def fuse_into(model: torch.nn.Module, modules: dict[str, LoraModule], weight: float = 1.0) -> None:
    """W ← W + weight·ΔW for each module, given by its path inside `model`."""
    index = dict(model.named_modules())
    for module_path, lora in modules.items():
        add_delta(resolve_module(model, module_path, index), lora, weight, module_path)


@torch.no_grad()
def add_delta(layer: torch.nn.Module, lora: LoraModule, weight: float = 1.0, name: str = "") -> None:
    """W ← W + weight·ΔW, in the layer's own dtype: the one place loramix adds an update into a weight."""
    shape = tuple(layer.weight.shape)
    if flat(shape) != lora.flat_shape:  # a LoHa/LoKr conv kernel comes flat: (out, in·kh·kw)
        raise IncompatibleAdaptersError(f"module {name}: the LoRA changes a weight of shape "
                                        f"{lora.weight_shape}, the model's is {shape}")
    layer.weight += weight * lora.delta().reshape(shape).to(layer.weight.dtype)
