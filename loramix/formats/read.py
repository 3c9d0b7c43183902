"""Reading a LoRA file of any naming the ecosystem uses (kohya, diffusers/peft, LyCORIS) into one `LoraAdapter`.

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

from loramix.choices import COMPONENTS
from loramix.errors import AdapterFileError
from loramix.formats import diffusers as dfs
from loramix.formats import kohya, lycoris
from loramix.formats.metadata import DIFFUSERS_LORA_CONFIG, SS_BASE_MODEL_VERSION, orthogonal_slot
from loramix.formats.safetensors_file import load_safetensors
from loramix.formats.write import SDXL_VERSION, version_from_shapes
from loramix.lora.adapter import CLIP_LEVEL, LoraAdapter, LoraModule, canonical_path
from loramix.lora.blocks import with_block_weights
from loramix.lora.orthogonal import check_distinct_slots
from loramix.lora.schedule import refuse_schedules
from loramix.lora.specs import WeightedFile

PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"


# Key fragments of adapter types loramix does not read, with the name users know them by.
_OTHER_TYPES = (
    ("lora_mid", "LoCon with a Tucker factor (LyCORIS)"), ("oft_", "OFT"),
    ("lora_magnitude_vector", "peft DoRA"), ("ia3_", "IA3"),
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
    adapter = LoraAdapter(modules, dict(metadata), source_format)
    sdxl_names = any(kohya.is_sdxl_text_encoder_key(key) for key in tensors)
    adapter.base_version = SDXL_VERSION if sdxl_names else metadata.get(SS_BASE_MODEL_VERSION) or \
        version_from_shapes(adapter)
    return adapter


def read_weighted(files: list[WeightedFile]) -> list[tuple[LoraAdapter, float]]:
    """Each file read, with its block weights applied, beside its weight: for writing a file or a checkpoint,
    which take one weight per LoRA."""
    refuse_schedules(files, "a written file")
    adapters = [read_adapter(wf.path) for wf in files]
    check_distinct_slots([(wf.path, orthogonal_slot(a.metadata)) for wf, a in zip(files, adapters)])
    return [(with_block_weights(adapter, wf.lbw, wf.path), wf.weight) for wf, adapter in zip(files, adapters)]


def _refuse_other_types(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    if not tensors:
        raise AdapterFileError(path, "holds no tensors: not a LoRA")
    for fragment, name in _OTHER_TYPES:
        if any(fragment in key for key in tensors):
            raise AdapterFileError(path, f"is a {name} adapter, not a LoRA; loramix reads LoRA only")
    if any(key.endswith("." + lycoris.DIFF_BIAS) for key in tensors):
        raise AdapterFileError(path, "holds bias differences (LyCORIS 'full' diff_b); loramix reads weight "
                                     "differences only")
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
        if kohya_parts is not None and kohya_parts[2] in (kohya.DOWN, kohya.UP, kohya.ALPHA, *lycoris.SUFFIXES):
            component, flat, suffix = kohya_parts
            which = {kohya.DOWN: "down", kohya.UP: "up", kohya.ALPHA: "alpha"}.get(suffix, suffix)
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
        if name in modules:
            raise AdapterFileError(path, f"module {name} appears twice, with and without '{CLIP_LEVEL}'")
        if lycoris.is_lycoris(parts):
            alpha = _scalar(path, name, parts["alpha"]) if "alpha" in parts else None
            pair = None
            if "down" in parts or "up" in parts:
                pair = _lora_module(path, name, parts, alpha_configs, component, module_path)
            modules[name] = lycoris.build(path, name, parts, alpha, pair)
            continue
        modules[name] = _lora_module(path, name, parts, alpha_configs, component, module_path)
    return modules, families.pop()


def _lora_module(path, name, parts, alpha_configs, component, module_path) -> LoraModule:
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
    return LoraModule(down=down, up=up, alpha=alpha)


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
