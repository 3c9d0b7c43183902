"""diffusers / peft naming, as diffusers' `load_lora_weights` reads it.

    unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight   A (r, in)
    unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight   B (out, r)

α is not a tensor: it sits in the header's `lora_adapter_metadata` JSON as peft `LoraConfig` fields per
component (`unet.lora_alpha`, `unet.alpha_pattern`, …), or in a peft folder's `adapter_config.json`; with
neither, α = r (scale 1), diffusers' convention. Older diffusers files name the factors `lora.down` /
`lora.up`, `lora_linear_layer.down` / `.up`, or `processor.to_q_lora.down`, and may store `.alpha` keys.
"""

from __future__ import annotations

import collections
import json
import math
import re
from dataclasses import dataclass

from loramix.choices import COMPONENTS
from loramix.formats.metadata import DIFFUSERS_LORA_CONFIG

_FACTOR = re.compile(
    r"^(?P<path>.+?)\.(?:(?P<peft>lora_[AB])|lora\.(?P<old>down|up)|lora_linear_layer\.(?P<linear>down|up))"
    r"\.weight$"
)
_PROCESSOR_FACTOR = re.compile(
    r"^(?P<path>.+?)\.(?:processor\.)?(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<which>down|up)\.weight$"
)
_UNET_PROJECTIONS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_CLIP_PROJECTIONS = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


@dataclass(frozen=True)
class FactorKey:
    component: str
    path: str
    which: str  # "down" (A), "up" (B) or "alpha"


_CLIP_TOP_LEVEL = ("text_model.", "encoder.layers.", "embeddings.", "final_layer_norm")


def split_component(key: str) -> tuple[str, str]:
    """`text_encoder.text_model…` → ("text_encoder", "text_model…"); peft's `base_model.model.` prefix and
    bare paths are told apart by what CLIP's modules are called."""
    for prefix in sorted(COMPONENTS, key=len, reverse=True):
        if key.startswith(prefix + "."):
            return prefix, key[len(prefix) + 1 :]
    key = key.removeprefix("base_model.model.")
    return ("text_encoder" if key.startswith(_CLIP_TOP_LEVEL) else "unet"), key


def parse_key(key: str) -> FactorKey | None:
    """What a diffusers/peft key holds, or None if it is not one."""
    if key.endswith(".alpha"):
        component, path = split_component(key[: -len(".alpha")])
        return FactorKey(component, path, "alpha")
    match = _PROCESSOR_FACTOR.match(key)
    if match:
        component, path = split_component(match["path"])
        names = _UNET_PROJECTIONS if component == "unet" else _CLIP_PROJECTIONS
        return FactorKey(component, f"{path}.{names[match['proj']]}", match["which"])
    match = _FACTOR.match(key)
    if match:
        component, path = split_component(match["path"])
        which = {"lora_A": "down", "lora_B": "up"}.get(match["peft"]) or match["old"] or match["linear"]
        return FactorKey(component, path, which)
    return None


def factor_key(component: str, path: str, which: str) -> str:
    return f"{component}.{path}.{'lora_A' if which == 'down' else 'lora_B'}.weight"


@dataclass
class AlphaConfig:
    """peft's way of giving α: one value, overridden per module by patterns."""

    lora_alpha: float | None = None
    alpha_pattern: dict | None = None
    use_rslora: bool = False

    def alpha_for(self, path: str, rank: int) -> float:
        alpha = self.lora_alpha if self.lora_alpha is not None else rank
        for pattern, value in (self.alpha_pattern or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", path):
                alpha = value
                break
        # rsLoRA scales by α/√r; loramix's single convention is α/r, so carry the same scale over.
        return float(alpha) * math.sqrt(rank) if self.use_rslora else float(alpha)


def alpha_configs_from_metadata(metadata: dict[str, str]) -> dict[str, AlphaConfig]:
    """Per component, α as diffusers' `save_lora_weights` records it in the header."""
    raw = metadata.get(DIFFUSERS_LORA_CONFIG)
    if raw is None:
        return {}
    fields = json.loads(raw)
    configs: dict[str, AlphaConfig] = {}
    for component in COMPONENTS:
        own = {k[len(component) + 1 :]: v for k, v in fields.items() if k.startswith(component + ".")}
        if own:
            configs[component] = alpha_config_from_peft(own)
    return configs


def alpha_config_from_peft(config: dict) -> AlphaConfig:
    return AlphaConfig(config.get("lora_alpha"), config.get("alpha_pattern") or {}, bool(config.get("use_rslora")))


def peft_config_fields(paths_ranks_alphas: list[tuple[str, int, float]]) -> dict:
    """The `LoraConfig` fields that reproduce these ranks and alphas: the most common value of each, and a
    pattern entry for every module that differs (as diffusers' own `get_peft_kwargs` does)."""
    r = collections.Counter(rank for _, rank, _ in paths_ranks_alphas).most_common(1)[0][0]
    lora_alpha = collections.Counter(alpha for _, _, alpha in paths_ranks_alphas).most_common(1)[0][0]
    return {
        "r": r,
        "lora_alpha": _plain_number(lora_alpha),
        "rank_pattern": {path: rank for path, rank, _ in paths_ranks_alphas if rank != r},
        "alpha_pattern": {path: _plain_number(a) for path, _, a in paths_ranks_alphas if a != lora_alpha},
        "target_modules": sorted(path for path, _, _ in paths_ranks_alphas),
    }


def _plain_number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def peft_factor_pairs(state: dict) -> dict[str, tuple]:
    """A model's peft LoRA state (`get_peft_model_state_dict`: `<path>.lora_A.weight`, `<path>.lora_B.weight`)
    as (down, up) per module path."""
    pairs = {}
    for key, down in state.items():
        if ".lora_A." in key:
            pairs[key.split(".lora_A.")[0]] = (down, state[key.replace(".lora_A.", ".lora_B.")])
    return pairs
