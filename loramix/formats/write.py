"""Writing adapters: kohya naming (what A1111, ComfyUI, kohya and diffusers all load, the default), diffusers
naming, or LyCORIS full differences; with the metadata the tools of both ecosystems show, and kohya's
precomputed hashes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save, save_file

import loramix
from loramix.choices import DEFAULT_FORMAT, OUTPUT_FORMATS
from loramix.errors import LoramixError
from loramix.formats import diffusers as dfs
from loramix.formats import kohya, lycoris
from loramix.formats.metadata import (
    DIFFUSERS_LORA_CONFIG,
    KOHYA_LORA_MODULE,
    LYCORIS_MODULE,
    META_ALPHA,
    META_BASE,
    META_RANK,
    META_TARGETS,
    META_TRIGGER,
    META_VERSION,
    SAFETENSORS_FORMAT,
    SS_BASE_MODEL_VERSION,
    SS_NETWORK_ALPHA,
    SS_NETWORK_ARGS,
    SS_NETWORK_DIM,
    SS_NETWORK_MODULE,
    SSHS_LEGACY_HASH,
    SSHS_MODEL_HASH,
    is_kohya_key,
)
from loramix.lora.adapter import LoraAdapter, component_of, flat_path, path_of
from loramix.util.atomic import atomic_path
from loramix.util.hashes import addnet_hash, legacy_hash

SDXL_VERSION = "sdxl_base_v1-0"  # kohya's ss_base_model_version for SDXL


def write_adapter(adapter: LoraAdapter, path: str | os.PathLike, format: str = DEFAULT_FORMAT,
                  metadata: dict[str, str] | None = None) -> Path:
    """Write atomically in kohya naming (A1111, ComfyUI, kohya and diffusers load it), diffusers naming (what
    diffusers' `load_lora_weights` loads; ComfyUI has no map for it) or `full-diff` (ΔW whole, LyCORIS 'full'),
    with metadata that both ecosystems' tools show and kohya's `sshs_*` hashes of the tensors."""
    if format not in OUTPUT_FORMATS:
        raise LoramixError(f"unknown format {format!r}: choose one of {', '.join(OUTPUT_FORMATS)}")
    if not adapter.modules:
        raise LoramixError("the adapter has no modules: nothing to write")
    if format != "full-diff":
        other = next((k for k, m in adapter.modules.items() if m.kind != "LoRA"), None)
        if other is not None:
            raise LoramixError(f"module {other} is {adapter.modules[other].kind}, not two low-rank factors, so "
                               f"{format} LoRA naming cannot hold it: write --format full-diff (exact), or give "
                               "--rank R (its truncated SVD)")
    if format == "full-diff" and any(m.kind == "DoRA" for m in adapter.modules.values()):
        raise LoramixError("DoRA renormalises the weight it changes, so it has no ΔW to write as a difference")
    tensors = {"kohya": _kohya_tensors, "diffusers": _diffusers_tensors, "full-diff": _full_tensors}[format](adapter)
    given = {**adapter.metadata, **(metadata or {})}
    header = {**given, **describe(adapter, given), SAFETENSORS_FORMAT: "pt"}
    if format == "diffusers":
        header[DIFFUSERS_LORA_CONFIG] = json.dumps(_peft_metadata(adapter), indent=2, sort_keys=True)
    else:
        header.pop(DIFFUSERS_LORA_CONFIG, None)
    if format == "full-diff":
        header.update({SS_NETWORK_MODULE: LYCORIS_MODULE, SS_NETWORK_ARGS: json.dumps({"algo": "full"})})
    header = {str(k): str(v) for k, v in header.items()}
    header.update(kohya_hashes(tensors, header))
    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata=header)
    return Path(path)


def kohya_hashes(tensors: dict[str, torch.Tensor], header: dict[str, str]) -> dict[str, str]:
    """`sshs_model_hash` and `sshs_legacy_hash` as kohya's `precalculate_safetensors_hashes` computes them: over
    the file these tensors make with only the `ss_*` metadata, so that other metadata can change without
    changing the hashes. The model hash covers the bytes after the header, so it is the written file's too."""
    data = save(tensors, metadata={k: v for k, v in header.items() if is_kohya_key(k)})
    return {SSHS_MODEL_HASH: addnet_hash(data), SSHS_LEGACY_HASH: legacy_hash(data)}


def _diffusers_tensors(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    tensors = {}
    for key, module in adapter.modules.items():
        component, module_path = component_of(key), path_of(key)
        tensors[dfs.factor_key(component, module_path, "down")] = _plain(module.down)
        tensors[dfs.factor_key(component, module_path, "up")] = _plain(module.up)
    return tensors


def _kohya_name(adapter: LoraAdapter, key: str) -> str:
    """SDXL's first text encoder is `lora_te1_` whether or not the second is present: kohya's SDXL loader
    reads nothing of a `lora_te_` module."""
    prefix = kohya.kohya_prefix(component_of(key), is_sdxl(adapter))
    return f"{prefix}_{kohya.flatten_path(path_of(key))}"


def _kohya_tensors(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    tensors = {}
    for key, module in adapter.modules.items():
        name = _kohya_name(adapter, key)
        tensors[f"{name}.{kohya.DOWN}"] = _plain(module.down)
        tensors[f"{name}.{kohya.UP}"] = _plain(module.up)
        tensors[f"{name}.{kohya.ALPHA}"] = torch.tensor(module.alpha, dtype=module.down.dtype)
    return tensors


def _full_tensors(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """ΔW per module under `<kohya name>.diff`, in the dtype of the module's factors."""
    return {f"{_kohya_name(adapter, key)}.{lycoris.DIFF}": _plain(module.delta().to(module.tensors[0].dtype))
            for key, module in adapter.modules.items()}


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor safetensors accepts: contiguous, owning its memory (views into a shared buffer are refused)."""
    return tensor.detach().contiguous().clone()


def _peft_metadata(adapter: LoraAdapter) -> dict:
    """peft `LoraConfig` fields per component. peft matches these names as suffixes of module paths, so
    text-encoder paths go without `text_model.` and match CLIP with or without that level."""
    fields = {}
    for component in adapter.components:
        modules = adapter.of_component(component)
        config = dfs.peft_config_fields([(flat_path(p), m.rank, m.alpha)
                                         for p, m in modules.items()])
        fields.update({f"{component}.{k}": v for k, v in config.items()})
    return fields


def describe(adapter: LoraAdapter, given: dict[str, str] | None = None) -> dict[str, str]:
    """The header fields loramix writes about an adapter, kohya's `ss_*` among them so other tools show it.
    The base model and trigger words come from `given` metadata when it has them."""
    given = adapter.metadata if given is None else given
    ranks = [m.rank for m in adapter.modules.values() if m.rank is not None] or [0]
    alphas = [m.alpha for m in adapter.modules.values() if m.alpha is not None] or [1.0]
    rank = max(set(ranks), key=ranks.count)
    alpha = max(set(alphas), key=alphas.count)
    return {
        META_VERSION: loramix.__version__,
        META_RANK: ",".join(str(r) for r in adapter.ranks),
        META_ALPHA: ",".join(f"{a:g}" for a in adapter.alphas),
        META_TARGETS: ",".join(target_groups(adapter)),
        META_BASE: given.get(META_BASE, base_model_version(adapter)),
        META_TRIGGER: given.get(META_TRIGGER, ""),
        SS_NETWORK_MODULE: KOHYA_LORA_MODULE,
        SS_NETWORK_DIM: str(rank),
        SS_NETWORK_ALPHA: f"{alpha:g}",
        SS_BASE_MODEL_VERSION: base_model_version(adapter),
    }


def target_groups(adapter: LoraAdapter) -> list[str]:
    """Target modules grouped by kind, e.g. `unet:to_q`, `text_encoder:q_proj`, sorted within components."""
    groups = {(component_of(key), module_kind(path_of(key))) for key in adapter.modules}
    return [f"{c}:{kind}" for c in adapter.components for kind in sorted(k for g, k in groups if g == c)]


def module_kind(module_path: str) -> str:
    """The module's own name, `to_out.0` and `ff.net.0.proj` kept whole."""
    parts = module_path.split(".")
    if len(parts) >= 2 and parts[-1].isdigit():
        return ".".join(parts[-2:])
    if len(parts) >= 4 and parts[-4:-1] == ["ff", "net", "0"]:
        return "ff.net.0.proj"
    return parts[-1]


def base_model_version(adapter: LoraAdapter) -> str:
    """kohya's `ss_base_model_version`: what the file said, or its keys showed, when it was read; else told
    from the shapes."""
    return adapter.base_version or version_from_shapes(adapter)


def is_sdxl(adapter: LoraAdapter) -> bool:
    return base_model_version(adapter).startswith("sdxl")


def version_from_shapes(adapter: LoraAdapter) -> str:
    """The base told from the modules: a second text encoder, or the text width the UNet's cross-attention
    reads (768 SD 1.x, 1024 SD 2.x, 2048 SDXL), or the first text encoder's width."""
    if "text_encoder_2" in adapter.components:
        return SDXL_VERSION
    for key, module in adapter.modules.items():
        if key.startswith("unet.") and ".attn2.to_k" in key:
            width = module.flat_shape[1]
            return {768: "sd_v1", 1024: "sd_v2", 2048: SDXL_VERSION}.get(width, "unknown")
    for key, module in adapter.modules.items():
        if key.startswith("text_encoder.") and key.endswith("q_proj"):
            return {768: "sd_v1", 1024: "sd_v2"}.get(module.flat_shape[1], "unknown")
    return "unknown"
