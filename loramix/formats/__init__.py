"""LoRA files in the two naming families of the ecosystem, read into one `LoraAdapter` and written back.

This package is the only place in loramix that knows key names.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import save_file

import loramix
from loramix.atomic import atomic_path
from loramix.choices import COMPONENTS, FORMATS
from loramix.errors import AdapterFileError, LoramixError
from loramix.formats import diffusers as dfs
from loramix.formats import kohya
from loramix.formats.metadata import (
    DIFFUSERS_LORA_CONFIG,
    KOHYA_LORA_MODULE,
    META_ALPHA,
    META_BASE,
    META_RANK,
    META_TARGETS,
    META_TRIGGER,
    META_VERSION,
    SAFETENSORS_FORMAT,
    SS_BASE_MODEL_VERSION,
    SS_NETWORK_ALPHA,
    SS_NETWORK_DIM,
    SS_NETWORK_MODULE,
)
from loramix.formats.safetensors_file import load_safetensors
from loramix.lora import CLIP_LEVEL, LoraAdapter, LoraModule, canonical_path, component_of, flat_path, path_of

PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"


# Key fragments of adapter types that are not LoRA, with the name users know them by.
_OTHER_TYPES = (
    ("hada_", "LoHa (LyCORIS)"), ("lokr_", "LoKr (LyCORIS)"), ("lora_mid", "LoCon with a Tucker factor (LyCORIS)"),
    ("oft_", "OFT"), ("dora_scale", "DoRA"), ("lora_magnitude_vector", "DoRA"), ("ia3_", "IA3"),
)
# A module path as the models name their modules: dotted Python names and indices, nothing a path could use.
_MODULE_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
_FULL_MODEL_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.",
                        "vae.", "text_model.embeddings.", "conv_in.", "time_embedding.")


def read_adapter(path: str | os.PathLike) -> LoraAdapter:
    """Read a LoRA `.safetensors` file (kohya or diffusers/peft naming) or a peft adapter folder."""
    path = Path(path)
    peft_config = None
    if path.is_dir():
        if not (path / PEFT_WEIGHTS).is_file():
            raise AdapterFileError(path, f"is a folder without {PEFT_WEIGHTS}: not a peft adapter folder")
        path = path / PEFT_WEIGHTS
    if path.name == PEFT_WEIGHTS and (path.parent / PEFT_CONFIG).is_file():
        peft_config = _read_json(path.parent / PEFT_CONFIG)
    tensors, metadata = load_safetensors(path)
    _refuse_other_types(path, tensors)
    modules, source_format = _parse(path, tensors, metadata, peft_config)
    return LoraAdapter(modules, dict(metadata), source_format)


def _refuse_other_types(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    if not tensors:
        raise AdapterFileError(path, "holds no tensors: not a LoRA")
    for fragment, name in _OTHER_TYPES:
        if any(fragment in key for key in tensors):
            raise AdapterFileError(path, f"is a {name} adapter, not a LoRA; loramix reads LoRA only")
    if any(key.endswith((".diff", ".diff_b")) for key in tensors):
        raise AdapterFileError(path, "holds full weight differences (LyCORIS 'full'), not a LoRA")
    if not any("lora" in key for key in tensors):
        looks_full = any(key.startswith(_FULL_MODEL_PREFIXES) for key in tensors)
        what = "a full model checkpoint" if looks_full else "not a LoRA"
        raise AdapterFileError(path, f"is {what}: none of its {len(tensors)} tensors has a LoRA name "
                                     f"(e.g. {_examples(tensors)})")


def _parse(path, tensors, metadata, peft_config) -> tuple[dict[str, LoraModule], str]:
    factors: dict[tuple[str, str], dict[str, torch.Tensor]] = defaultdict(dict)
    families, unknown = set(), []
    for key, tensor in tensors.items():
        kohya_parts = kohya.split_kohya_key(key)
        if kohya_parts is not None and kohya_parts[2] in (kohya.DOWN, kohya.UP, kohya.ALPHA):
            component, flat, suffix = kohya_parts
            which = {kohya.DOWN: "down", kohya.UP: "up", kohya.ALPHA: "alpha"}[suffix]
            module_path = kohya.kohya_module_path(component, flat)
            if not _MODULE_PATH.fullmatch(module_path):
                raise AdapterFileError(path, f"key {_shown(key)} does not name a module (letters, digits and '_' "
                                             "only)")
            factors[(component, module_path)][which] = tensor
            families.add("kohya")
            continue
        parsed = dfs.parse_key(key)
        if parsed is None:
            unknown.append(key)
            continue
        if not _MODULE_PATH.fullmatch(parsed.path):
            raise AdapterFileError(path, f"key {_shown(key)} does not name a module (letters, digits, '_' and "
                                         "'.' only)")
        factors[(parsed.component, parsed.path)][parsed.which] = tensor
        families.add("peft" if peft_config is not None else "diffusers")
    if unknown:
        raise AdapterFileError(path, f"has {len(unknown)} keys that are not LoRA factors loramix knows "
                                     f"(e.g. {_examples(unknown)}); nothing was read")
    if len(families) > 1:
        raise AdapterFileError(path, "mixes kohya and diffusers key names; loramix reads one naming per file")
    try:
        alpha_configs = dfs.alpha_configs_from_metadata(metadata)
    except (ValueError, RecursionError, AttributeError, TypeError):  # ValueError: bad JSON, 5000-digit numbers
        raise AdapterFileError(path, f"has unreadable {DIFFUSERS_LORA_CONFIG} metadata (not a JSON object)") from None
    if peft_config is not None:
        alpha_configs = dict.fromkeys(COMPONENTS, dfs.alpha_config_from_peft(peft_config))
    for component, config in alpha_configs.items():
        _check_alpha_config(path, PEFT_CONFIG if peft_config is not None else f"{component} in {DIFFUSERS_LORA_CONFIG}",
                            config)
    modules = {}
    for (component, module_path), parts in sorted(factors.items()):
        name = f"{component}.{canonical_path(component, module_path)}"
        if "down" not in parts or "up" not in parts:
            missing = "down (A)" if "down" not in parts else "up (B)"
            raise AdapterFileError(path, f"module {name} has no {missing} factor")
        down, up = parts["down"], parts["up"]
        _check_shapes(path, name, down, up)
        if "alpha" in parts:
            alpha = _scalar(path, name, parts["alpha"])
        else:
            alpha = alpha_configs.get(component, dfs.AlphaConfig()).alpha_for(module_path, down.shape[0])
            if not math.isfinite(alpha):
                raise AdapterFileError(path, f"module {name}: alpha is {alpha}")
        if name in modules:
            raise AdapterFileError(path, f"module {name} appears twice, with and without '{CLIP_LEVEL}'")
        modules[name] = LoraModule(down=down, up=up, alpha=alpha)
    return modules, families.pop()


def _check_alpha_config(path: Path, where: str, config: dfs.AlphaConfig) -> None:
    """α given in metadata is a finite number, and its patterns are module paths: a regular expression from a
    stranger's file could backtrack for hours (`(.*.*)*x`), so loramix does not match with them."""
    if config.lora_alpha is not None and not _finite_number(config.lora_alpha):
        raise AdapterFileError(path, f"{where}: lora_alpha {_shown(config.lora_alpha)} is not a finite number")
    if not isinstance(config.alpha_pattern, dict):
        raise AdapterFileError(path, f"{where}: alpha_pattern is not a JSON object")
    for pattern, value in config.alpha_pattern.items():
        if not _MODULE_PATH.fullmatch(pattern):
            raise AdapterFileError(path, f"{where}: alpha_pattern key {_shown(pattern)} is not a module path "
                                         "(loramix does not match regular expressions from files)")
        if not _finite_number(value):
            raise AdapterFileError(path, f"{where}: alpha_pattern value {_shown(value)} is not a finite number")


def _finite_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _check_shapes(path: Path, name: str, down: torch.Tensor, up: torch.Tensor) -> None:
    if down.dim() not in (2, 4) or up.dim() != down.dim():
        raise AdapterFileError(path, f"module {name}: factors of shapes {tuple(down.shape)} and "
                                     f"{tuple(up.shape)} are not a LoRA pair")
    if down.numel() == 0 or up.numel() == 0:
        raise AdapterFileError(path, f"module {name}: factors of shapes {tuple(down.shape)} and "
                                     f"{tuple(up.shape)} are empty")
    if up.shape[1] != down.shape[0] or (up.dim() == 4 and tuple(up.shape[2:]) != (1, 1)):
        raise AdapterFileError(path, f"module {name}: up {tuple(up.shape)} does not fit down {tuple(down.shape)}")


def _scalar(path: Path, name: str, tensor: torch.Tensor) -> float:
    if tensor.numel() != 1:
        raise AdapterFileError(path, f"module {name}: alpha has shape {tuple(tensor.shape)}, expected a scalar")
    value = float(tensor.item())
    if not math.isfinite(value):
        raise AdapterFileError(path, f"module {name}: alpha is {value}")
    return value


def _read_json(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: UnicodeDecodeError, JSONDecodeError, …
        raise AdapterFileError(path, f"is not readable JSON ({_shown(e)})") from None
    if not isinstance(config, dict):
        raise AdapterFileError(path, "is not a JSON object")
    return config


def _examples(keys, count: int = 3) -> str:
    keys = list(keys)
    more = f", … {len(keys) - count} more" if len(keys) > count else ""
    return ", ".join(_shown(key) if not key.isprintable() or len(key) > 200 else key for key in keys[:count]) + more


def _shown(value, limit: int = 200) -> str:
    """A value from a file as it goes into a one-line message: quoted, escaped, and not a megabyte long."""
    try:
        text = ascii(value)
    except ValueError:  # an integer of more digits than Python prints
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_adapter(adapter: LoraAdapter, path: str | os.PathLike, format: str = "diffusers",
                  metadata: dict[str, str] | None = None) -> Path:
    """Write atomically in diffusers naming (what diffusers' `load_lora_weights` loads) or kohya naming (what
    A1111 and ComfyUI load), with metadata that both ecosystems' tools show."""
    if format not in FORMATS:
        raise LoramixError(f"unknown format {format!r}: choose one of {', '.join(FORMATS)}")
    if not adapter.modules:
        raise LoramixError("the adapter has no modules: nothing to write")
    tensors = _kohya_tensors(adapter) if format == "kohya" else _diffusers_tensors(adapter)
    given = {**adapter.metadata, **(metadata or {})}
    header = {**given, **describe(adapter, given), SAFETENSORS_FORMAT: "pt"}
    if format == "diffusers":
        header[DIFFUSERS_LORA_CONFIG] = json.dumps(_peft_metadata(adapter), indent=2, sort_keys=True)
    else:
        header.pop(DIFFUSERS_LORA_CONFIG, None)
    header = {str(k): str(v) for k, v in header.items()}
    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata=header)
    return Path(path)


def _diffusers_tensors(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    tensors = {}
    for key, module in adapter.modules.items():
        component, module_path = component_of(key), path_of(key)
        tensors[dfs.factor_key(component, module_path, "down")] = _plain(module.down)
        tensors[dfs.factor_key(component, module_path, "up")] = _plain(module.up)
    return tensors


def _kohya_tensors(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    two_text_encoders = "text_encoder_2" in adapter.components
    tensors = {}
    for key, module in adapter.modules.items():
        prefix = kohya.kohya_prefix(component_of(key), two_text_encoders)
        name = f"{prefix}_{kohya.flatten_path(path_of(key))}"
        tensors[f"{name}.{kohya.DOWN}"] = _plain(module.down)
        tensors[f"{name}.{kohya.UP}"] = _plain(module.up)
        tensors[f"{name}.{kohya.ALPHA}"] = torch.tensor(module.alpha, dtype=module.down.dtype)
    return tensors


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
    ranks = [m.rank for m in adapter.modules.values()]
    alphas = [m.alpha for m in adapter.modules.values()]
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
    """kohya's `ss_base_model_version`, told from the text width the UNet's cross-attention reads."""
    if "text_encoder_2" in adapter.components:
        return "sdxl_base_v1-0"
    for key, module in adapter.modules.items():
        if key.startswith("unet.") and ".attn2.to_k" in key:
            width = module.weight_shape[1]
            return {768: "sd_v1", 1024: "sd_v2", 2048: "sdxl_base_v1-0"}.get(width, "unknown")
    for key, module in adapter.modules.items():
        if key.startswith("text_encoder.") and key.endswith("q_proj"):
            return {768: "sd_v1", 1024: "sd_v2"}.get(module.weight_shape[1], "unknown")
    return "unknown"
