"""Adding LoRA updates into a model's weights (W ← W + w·ΔW): exact on full-precision weights, and taking them
out again bit for bit."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loramix.errors import IncompatibleAdaptersError
from loramix.lora.adapter import LoraModule, path_spellings
from loramix.lora.lycoris_modules import flat


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
    layer.weight += weight * _delta_for(layer, lora, name)


def _delta_for(layer: torch.nn.Module, lora: LoraModule, name: str) -> torch.Tensor:
    """ΔW in the layer's shape and dtype; a LoHa/LoKr conv kernel comes flat, (out, in·kh·kw)."""
    shape = tuple(layer.weight.shape)
    if flat(shape) != lora.flat_shape:
        raise IncompatibleAdaptersError(f"module {name}: the LoRA changes a weight of shape "
                                        f"{lora.weight_shape}, the model's is {shape}")
    return lora.delta().reshape(shape).to(layer.weight.dtype)


@dataclass
class FusedUpdate:
    """What taking one fused update back out needs, W = (W + ΔW) − ΔW corrected where rounding lost bits of W:

    - `lora`: the update itself, its factors;
    - `steps`: for each weight, how many units in the last place the subtraction lands from W, as int8 (in
      half precision most weights need one; in fp32 almost none do, and `steps` is None);
    - `positions`, `values`: the weights set back outright (beyond ±127 steps, or all weights that need any
      correction when they are few).

    A weight keeps its bits through any number of rounds, with a byte per weight at most kept aside, not a copy.
    """

    lora: LoraModule
    steps: torch.Tensor | None
    positions: torch.Tensor
    values: torch.Tensor


MAX_STEP = 127  # the most units in the last place an int8 step holds


@torch.no_grad()
def fuse_reversibly(layer: torch.nn.Module, lora: LoraModule, name: str = "") -> FusedUpdate:
    """W ← W + ΔW as `add_delta` does it, returning what `unfuse` needs to restore W bit for bit."""
    weight = layer.weight
    delta = _delta_for(layer, lora, name)
    fused = weight + delta
    steps = (_bits(weight).long() - _bits(fused - delta).long()).flatten()  # 0 where W came back exactly
    listed_bytes = 8 + weight.element_size()  # a position and a value
    if int(steps.count_nonzero()) * listed_bytes <= steps.numel():  # listing them is cheaper than a byte each
        positions, steps8 = steps.nonzero().squeeze(1), None
    else:
        far = steps.abs() > MAX_STEP
        positions, steps8 = far.nonzero().squeeze(1), steps.masked_fill(far, 0).to(torch.int8)
    update = FusedUpdate(lora, steps8, positions, weight.flatten()[positions].clone())
    weight.copy_(fused)
    return update


@torch.no_grad()
def unfuse(layer: torch.nn.Module, update: FusedUpdate) -> None:
    """W ← W − ΔW, then each weight stepped back to W's bits: W as it was before `fuse_reversibly`."""
    weight = layer.weight
    weight -= _delta_for(layer, update.lora, "")
    if update.steps is not None:
        _bits(weight).view(-1).add_(update.steps.to(_bits(weight).dtype))
    weight.view(-1)[update.positions] = update.values


def kept_bytes(update: FusedUpdate) -> int:
    """Memory an update keeps for undoing it: its factors, steps and listed weights."""
    tensors = [*update.lora.tensors, update.steps, update.positions, update.values]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns as integers (a view): equal bits, not equal values (-0.0 is not 0.0)."""
    return tensor.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])
