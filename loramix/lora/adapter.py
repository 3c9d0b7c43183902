"""The in-memory LoRA: one low-rank update per target module, whatever file format it came from.

LoRA (Hu et al. 2021, arXiv 2106.09685) leaves a frozen weight W alone and learns a low-rank change:

    W' = W + ΔW,   ΔW = (α / r) · B · A

        x ──► W ───────────────► (+) ──► y
        └───► A (r × in) ─► B (out × r) ─► · α/r ──┘

kohya calls A `lora_down` and B `lora_up`; peft calls them `lora_A` and `lora_B`. For a conv layer A is
a conv with the layer's kernel (r, in, kh, kw) and B a 1×1 conv (out, r, 1, 1); ΔW is then the product of
their flattened matrices reshaped to the layer's kernel.

This module imports only torch (and loramix's constants) and does no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from loramix.choices import COMPONENTS


@dataclass
class LoraModule:
    """The update for one target module: ΔW = (alpha / rank) · up · down."""

    down: torch.Tensor  # A: (r, in) or (r, in, kh, kw)
    up: torch.Tensor  # B: (out, r) or (out, r, 1, 1)
    alpha: float
    kind = "LoRA"

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def is_conv(self) -> bool:
        return self.down.dim() == 4

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The shape of the base weight this module changes: (out, in) or (out, in, kh, kw)."""
        return (self.up.shape[0], *self.down.shape[1:])

    @property
    def flat_shape(self) -> tuple[int, int]:
        """The weight as the matrix the maths sees: (out, in·kh·kw)."""
        return (self.up.shape[0], math.prod(self.down.shape[1:]))

    @property
    def num_params(self) -> int:
        return self.down.numel() + self.up.numel()

    @property
    def tensors(self) -> list[torch.Tensor]:
        return [self.down, self.up]

    def scaled(self, factor: float) -> LoraModule:
        """ΔW·factor, exactly: the factor goes into α, the stored factors stay as they are."""
        return replace(self, alpha=self.alpha * factor)

    def to(self, dtype: torch.dtype) -> LoraModule:
        return replace(self, down=self.down.to(dtype), up=self.up.to(dtype))

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """ΔW in the base weight's shape."""
        up = self.up.to(dtype).flatten(1)  # (out, r)
        down = self.down.to(dtype).flatten(1)  # (r, in·kh·kw)
        return (self.scale * (up @ down)).reshape(self.weight_shape)


@dataclass
class LoraAdapter:
    """A LoRA file's content: modules keyed `<component>.<module path>`, e.g.
    `unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`, in diffusers' module names."""

    modules: dict[str, LoraModule]  # or, read from LyCORIS files, the module types of loramix.lora.lycoris_modules
    metadata: dict[str, str] = field(default_factory=dict)
    source_format: str = "memory"  # "kohya", "diffusers", "peft" or "memory" for one built in code
    base_version: str = ""  # kohya's ss_base_model_version ("sd_v1", "sdxl_base_v1-0", …); "" when not known

    @property
    def components(self) -> list[str]:
        found = {component_of(key) for key in self.modules}
        return [c for c in COMPONENTS if c in found]

    @property
    def ranks(self) -> list[int]:
        return sorted({m.rank for m in self.modules.values() if m.rank is not None})

    @property
    def alphas(self) -> list[float]:
        return sorted({m.alpha for m in self.modules.values() if m.alpha is not None})

    @property
    def kinds(self) -> dict[str, int]:
        """How many modules of each type: LoRA, LoHa, LoKr, full, DoRA."""
        counts: dict[str, int] = {}
        for module in self.modules.values():
            counts[module.kind] = counts.get(module.kind, 0) + 1
        return counts

    @property
    def is_lora(self) -> bool:
        """Every module is two low-rank factors (what LoRA namings can hold)."""
        return all(m.kind == "LoRA" for m in self.modules.values())

    @property
    def num_params(self) -> int:
        return sum(m.num_params for m in self.modules.values())

    def of_component(self, component: str) -> dict[str, LoraModule]:
        """The modules of one component, keyed by their path inside it."""
        prefix = component + "."
        return {k[len(prefix) :]: m for k, m in self.modules.items() if k.startswith(prefix)}


CLIP_LEVEL = "text_model."  # the level transformers 5 dropped from CLIPTextModel


def component_of(key: str) -> str:
    return key.split(".", 1)[0]


def path_of(key: str) -> str:
    return key.split(".", 1)[1]


def canonical_path(component: str, module_path: str) -> str:
    """Text-encoder paths always start `text_model.`: transformers 5 flattened CLIPTextModel and dropped that
    level, but the files of the ecosystem (kohya's `lora_te_text_model_…`, older diffusers) keep it, and
    diffusers strips it again when the model has no such level. One spelling lets adapters of either kind
    be composed, and files written with it load with old and new transformers alike."""
    if component.startswith("text_encoder") and not module_path.startswith(CLIP_LEVEL):
        return CLIP_LEVEL + module_path
    return module_path


def flat_path(module_path: str) -> str:
    """The path without CLIP's `text_model.` level: how transformers 5 names the module, and a suffix that
    matches it with or without that level (as peft matches `target_modules`)."""
    return module_path.removeprefix(CLIP_LEVEL)


def path_spellings(module_path: str) -> tuple[str, ...]:
    """The ways a model may name the module at this path: as written, and with and without `text_model.`."""
    return (module_path, flat_path(module_path), CLIP_LEVEL + flat_path(module_path))
