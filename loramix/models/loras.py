"""LoRAs on a loaded pipeline, for rendering: read once, switched without reloading the base.

Two ways to put weighted LoRAs on a pipeline:

- **fused** (full-precision bases): the exact composition Σ wᵢ·ΔWᵢ (or its SVD / TIES / DARE merge) is added
  into the base weights, W ← W₀ + ΔW, so a denoising step costs what the base's does. Switching to another
  set first takes the update out again, W₀ = (W₀ + ΔW) − ΔW, and sets back the few weights where rounding
  lost bits of W₀ (`fuse.FusedUpdate`): nothing drifts however often it switches, and no copy of the touched
  weights is kept.
- **unfused** (quantized bases, and the generation-time methods that change the active LoRA during
  denoising): each file is a named peft adapter loaded by diffusers' `load_lora_weights`, and
  `set_adapters` picks the active ones and their weights. Adding ΔW into 4-bit codes would re-quantize it
  and lose most of the update, so a quantized base never fuses.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch

from loramix.choices import COMPONENTS
from loramix.errors import IncompatibleAdaptersError, LoramixError
from loramix.formats.metadata import orthogonal_slot, short_hash
from loramix.lora.adapter import LoraAdapter, component_of, path_of
from loramix.lora.blocks import with_block_weights
from loramix.lora.compose import compose_by_method
from loramix.lora.lycoris_modules import flat
from loramix.lora.orthogonal import check_distinct_slots
from loramix.lora.specs import WeightedFile
from loramix.models.fuse import FusedUpdate


class PipelineLoras:
    """The LoRAs on one pipeline. Files are read once; `apply` switches between sets of weighted files."""

    def __init__(self, pipeline, fuse: bool | None = None):
        self.pipeline = pipeline
        self.fuse = not is_quantized(pipeline) if fuse is None else fuse
        if self.fuse and is_quantized(pipeline):
            raise LoramixError("a quantized base cannot have LoRAs fused into it: its 4-bit weights would "
                               "re-quantize the update; use the unfused path")
        self._adapters: dict[str, LoraAdapter] = {}
        self._hashes: dict[str, str] = {}
        self._fused: dict[str, FusedUpdate] = {}  # module key → what taking its fused update out needs
        self._before_dora: dict[str, torch.Tensor] = {}  # module key → its weight before DoRA renormalised it
        self._modules: dict[str, dict[str, torch.nn.Module]] = {}  # component → its modules by path, walked once
        self._peft_names: dict[str, str] = {}  # file → adapter name loaded into the pipeline
        self._peft_loaded = 0  # names are never reused, even after a forgotten file's adapter is deleted
        self.active: tuple[WeightedFile, ...] = ()
        self._applied: tuple | None = ((), "exact", None, 0.5, 0)
        self.switch_seconds: list[float] = []

    def read(self, path: str) -> LoraAdapter:
        from loramix.formats.read import read_adapter

        key = str(Path(path).resolve())
        if key not in self._adapters:
            adapter = read_adapter(path)
            check_fits(adapter, self.pipeline, path)
            self._adapters[key] = adapter
        return self._adapters[key]

    def hash_of(self, path: str) -> str:
        key = str(Path(path).resolve())
        if key not in self._hashes:
            self._hashes[key] = short_hash(path)
        return self._hashes[key]

    def forget(self, path: str) -> None:
        """Drop what was read of `path` (its file changed on disk): the next use reads it again, and a set that
        holds it is put on afresh."""
        key = str(Path(path).resolve())
        self._adapters.pop(key, None)
        self._hashes.pop(key, None)
        name = self._peft_names.pop(key, None)
        if name is not None:
            self.pipeline.delete_adapters(name)
        if any(str(Path(wf.path).resolve()) == key for wf in self.active):
            self._applied = None  # the same request must fuse the new factors, not return early

    def apply(self, loras: list[WeightedFile] | tuple[WeightedFile, ...], method: str = "exact",
              rank: int | None = None, density: float = 0.5, seed: int = 0) -> float:
        """Make `loras` (and only them) act on the pipeline; returns the seconds it took."""
        loras = tuple(loras)
        request = (loras, method, rank, density, seed)
        if request == self._applied:
            return 0.0
        start = time.perf_counter()
        self.check_sum(loras)
        adapters = [(with_block_weights(self.read(wf.path), wf.lbw, wf.path), wf.weight) for wf in loras]
        if self.fuse:
            self._restore()
            if self._peft_names:  # named adapters loaded for a generation-time method stay out of the way
                self.pipeline.disable_lora()
            # DoRA renormalises the weight it lands on: it goes on last, onto the sum of the others, in order.
            additive = [((_without_dora(a), w), wf.path) for (a, w), wf in zip(adapters, loras)]
            additive = [(pair, path) for pair, path in additive if pair[0].modules]
            if additive:
                dense = not all(a.is_lora for (a, _), _ in additive)  # LoHa/LoKr add exactly only as whole ΔW
                self._fuse(compose_by_method([pair for pair, _ in additive], method, rank, density, seed,
                                             [path for _, path in additive], dense=dense)[0])
            for adapter, weight in adapters:
                self._apply_dora(adapter, weight)
        else:
            if any(not a.is_lora for a, _ in adapters):
                kinds = sorted({k for a, _ in adapters for k in a.kinds if k != "LoRA"})
                raise LoramixError(f"{', '.join(kinds)} modules cannot be loaded as peft LoRA adapters onto a "
                                   "quantized base: use --quantize none")
            if method != "exact":
                raise LoramixError(f"method {method} merges the LoRAs into the base weights, which a quantized "
                                   "base cannot take; use exact")
            self._set_peft([wf.path for wf in loras], [wf.weight for wf in loras])
        self.active, self._applied = loras, request
        seconds = time.perf_counter() - start
        self.switch_seconds.append(seconds)
        return seconds

    def check_sum(self, loras: tuple[WeightedFile, ...]) -> None:
        """Refuse a set that puts two LoRAs trained in one orthogonal slot together."""
        check_distinct_slots([(wf.path, orthogonal_slot(self.read(wf.path).metadata)) for wf in loras])

    def load_named(self, paths: list[str]) -> list[str]:
        """Load each file as a named, unfused peft adapter (for methods that switch during denoising)."""
        if self.fuse:
            self._restore()
        self.active, self._applied = (), ((), "exact", None, 0.5, 0)  # the caller picks what is active now
        names = []
        for path in paths:
            adapter = self.read(path)
            key = str(Path(path).resolve())
            if key not in self._peft_names:
                name = f"lora{self._peft_loaded}"
                self._peft_loaded += 1
                with warnings.catch_warnings():  # diffusers warns about every component the LoRA leaves alone
                    warnings.simplefilter("ignore")
                    self.pipeline.load_lora_weights(diffusers_state_dict(adapter), adapter_name=name)
                self._peft_names[key] = name
            names.append(self._peft_names[key])
        return names

    def _set_peft(self, paths: list[str], weights: list[float]) -> None:
        names = self.load_named(paths)
        if names:
            self.pipeline.enable_lora()
            self.pipeline.set_adapters(names, adapter_weights=weights)  # peft sums Σ wᵢ·ΔWᵢ, unfused
        elif self._peft_names:
            self.pipeline.disable_lora()

    @torch.no_grad()
    def _fuse(self, adapter: LoraAdapter) -> None:
        from loramix.models.fuse import fuse_reversibly

        for key, module in adapter.modules.items():
            self._fused[key] = fuse_reversibly(self.layer(key), module, name=key)

    def restore_bytes(self) -> int:
        """Memory kept to take the fused set out again (factors and the weights rounding moved)."""
        from loramix.models.fuse import kept_bytes

        return sum(kept_bytes(update) for update in self._fused.values())

    @torch.no_grad()
    def _apply_dora(self, adapter: LoraAdapter, weight: float) -> None:
        for key, module in adapter.modules.items():
            if module.kind == "DoRA":
                layer = self.layer(key)
                if key not in self._before_dora:  # not additive, so not undone by subtracting: a copy
                    self._before_dora[key] = layer.weight.detach().clone()
                layer.weight.copy_(module.scaled(weight).applied(layer.weight))

    @torch.no_grad()
    def _restore(self) -> None:
        from loramix.models.fuse import unfuse

        for key, before in self._before_dora.items():  # DoRA went on last, onto the sum: it comes off first
            self.layer(key).weight.copy_(before)
        self._before_dora.clear()
        for key, update in self._fused.items():
            unfuse(self.layer(key), update)
        self._fused.clear()

    def layer(self, key: str) -> torch.nn.Module:
        """The pipeline's layer that the module key names (`unet.down_blocks.0…to_q`), inside peft's wrapper."""
        from loramix.models.fuse import resolve_module

        component = component_of(key)
        model = getattr(self.pipeline, component)
        if component not in self._modules:  # peft may wrap a layer later; the wrapper's weight is this layer's
            self._modules[component] = dict(model.named_modules())
        return resolve_module(model, path_of(key), self._modules[component])


def check_memory(paths: list[str]) -> None:
    """Refuse, before anything renders, LoRA files that will not fit in the memory that is free: each file's
    factors stay in memory while rendering, beside what taking a fused set out again needs."""
    import psutil

    needed = sum(Path(path).stat().st_size for path in paths if Path(path).is_file())
    available = psutil.virtual_memory().available
    if 2 * needed > available:
        raise LoramixError(f"the {len(paths)} LoRA files take {needed / 2**30:.1f} GiB, about twice that in memory, "
                           f"but only {available / 2**30:.1f} GiB is free: use fewer LoRAs at once")


def check_fits(adapter: LoraAdapter, pipeline, source: str) -> None:
    """Refuse, naming the first module that does not fit, a LoRA made for another base."""
    from loramix.models.fuse import resolve_module

    indexes: dict[str, dict[str, torch.nn.Module]] = {}
    for key, module in adapter.modules.items():
        component = component_of(key)
        model = getattr(pipeline, component, None) if component in COMPONENTS else None
        if model is None:
            raise IncompatibleAdaptersError(f"{source}: it changes the {component}, which this base does not have")
        if component not in indexes:
            indexes[component] = dict(model.named_modules())
        try:
            layer = resolve_module(model, path_of(key), indexes[component])
        except IncompatibleAdaptersError:
            raise IncompatibleAdaptersError(f"{source}: this base has no module {key}; the LoRA was made for "
                                            "another base") from None
        shape = _weight_shape(layer)
        if flat(shape) != module.flat_shape:
            raise IncompatibleAdaptersError(f"{source}: module {key} changes a weight of shape "
                                            f"{module.weight_shape}, this base's is {shape}; the LoRA was made "
                                            "for another base")


def _without_dora(adapter: LoraAdapter) -> LoraAdapter:
    modules = {k: m for k, m in adapter.modules.items() if m.kind != "DoRA"}
    if len(modules) == len(adapter.modules):
        return adapter
    return LoraAdapter(modules, adapter.metadata, adapter.source_format, adapter.base_version)


def _weight_shape(layer: torch.nn.Module) -> tuple[int, ...]:
    base = getattr(layer, "base_layer", layer)  # a peft-wrapped layer
    if hasattr(base, "kernel_shape"):  # Conv2dNF4 keeps its weight packed
        return tuple(base.kernel_shape)
    if hasattr(base, "in_features") and hasattr(base, "out_features"):
        return (base.out_features, base.in_features)
    return tuple(base.weight.shape)


def diffusers_state_dict(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """The adapter in diffusers' peft naming with each α/r folded into B, so that `load_lora_weights` reads it
    right without metadata (it then takes α = r, a scale of 1)."""
    from loramix.formats.diffusers import factor_key

    state = {}
    for key, module in adapter.modules.items():
        component, module_path = component_of(key), path_of(key)
        state[factor_key(component, module_path, "down")] = module.down.float().contiguous()
        state[factor_key(component, module_path, "up")] = (module.up.float() * module.scale).contiguous()
    return state


def is_quantized(pipeline) -> bool:
    import bitsandbytes as bnb

    from loramix.models.quantize import Conv2dNF4

    quantized = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt, Conv2dNF4)
    for component in COMPONENTS:
        model = getattr(pipeline, component, None)
        if model is not None and any(isinstance(m, quantized) for m in model.modules()):
            return True
    return False
