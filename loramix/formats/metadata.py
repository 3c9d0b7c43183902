"""The header metadata of LoRA files: every key loramix writes or reads, spelled here and nowhere else.

loramix's own keys start `loramix_`; kohya's `ss_*` keys are written too, because A1111, ComfyUI and the
sharing sites show them. diffusers keeps its peft `LoraConfig` fields under `lora_adapter_metadata`.
"""

from __future__ import annotations

import json
import os

from loramix.util.hashes import file_hashes

# loramix's own keys.
META_VERSION, META_RANK, META_ALPHA = "loramix_version", "loramix_rank", "loramix_alpha"
META_TARGETS, META_BASE, META_TRIGGER = "loramix_targets", "loramix_base_model", "loramix_trigger_words"
META_RECIPE, META_STEPS = "loramix_recipe", "loramix_steps"
META_DATASET_SIZE, META_FINAL_LOSS = "loramix_dataset_size", "loramix_final_loss"
META_COMPOSED_FROM, META_COMPOSE_METHOD = "loramix_composed_from", "loramix_compose_method"
META_ORTHOGONAL_SLOT = "loramix_orthogonal_slot"  # the slot of orthogonal adaptation it trained in, if any

# kohya's keys, as its scripts write them.
SS_NETWORK_MODULE, SS_NETWORK_DIM, SS_NETWORK_ALPHA = "ss_network_module", "ss_network_dim", "ss_network_alpha"
SS_BASE_MODEL_VERSION, SS_OUTPUT_NAME, SS_STEPS = "ss_base_model_version", "ss_output_name", "ss_steps"
SS_NUM_TRAIN_IMAGES, SS_LEARNING_RATE = "ss_num_train_images", "ss_learning_rate"
SS_NETWORK_ARGS = "ss_network_args"
SS_TAG_FREQUENCY = "ss_tag_frequency"  # {folder: {tag: count}} over the training captions
KOHYA_LORA_MODULE, LYCORIS_MODULE = "networks.lora", "lycoris.kohya"
# kohya's precomputed hashes (`precalculate_safetensors_hashes`), which A1111 takes instead of hashing the file.
SSHS_MODEL_HASH, SSHS_LEGACY_HASH = "sshs_model_hash", "sshs_legacy_hash"
KOHYA_PREFIX = "ss_"

# diffusers' key for the peft LoraConfig fields, and the key safetensors' PyTorch writers set.
DIFFUSERS_LORA_CONFIG = "lora_adapter_metadata"
SAFETENSORS_FORMAT = "format"


def training_metadata(recipe: dict, name: str, base: str, trigger: str, steps: int, dataset_size: int,
                      final_loss: float, learning_rate: float) -> dict[str, str]:
    """What a trained LoRA records of its run, in loramix's keys and kohya's."""
    slot = recipe.get("orthogonal_slot")
    return {**({} if slot is None else {META_ORTHOGONAL_SLOT: str(slot)}),
        META_RECIPE: json.dumps(recipe, sort_keys=True), META_BASE: base, META_TRIGGER: trigger,
        META_STEPS: str(steps), META_DATASET_SIZE: str(dataset_size), META_FINAL_LOSS: f"{final_loss:.6g}",
        SS_OUTPUT_NAME: name, SS_STEPS: str(steps), SS_NUM_TRAIN_IMAGES: str(dataset_size),
        SS_LEARNING_RATE: str(learning_rate),
    }


def composition_metadata(sources: str, method: str) -> dict[str, str]:
    """What a composed LoRA records: its inputs with their weights (`a.safetensors:0.7 …`) and the method."""
    return {META_COMPOSED_FROM: sources, META_COMPOSE_METHOD: method}


def orthogonal_slot(metadata: dict[str, str]) -> int | None:
    """The orthogonal-adaptation slot a LoRA file says it trained in; None when it says none (or nothing
    readable: such a file is summed as any LoRA is)."""
    value = metadata.get(META_ORTHOGONAL_SLOT, "")
    return int(value) if value.isdigit() else None


def is_kohya_key(key: str) -> bool:
    """A key of kohya's training metadata, the only ones its hashes are computed with."""
    return key.startswith(KOHYA_PREFIX)


def shown_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The metadata a person reads: without diffusers' machine-only LoraConfig block."""
    return {key: value for key, value in metadata.items() if key != DIFFUSERS_LORA_CONFIG}


def short_hash(path: str | os.PathLike) -> str:
    """The hash A1111 writes for a LoRA in `Lora hashes` (see loramix.util.hashes)."""
    return file_hashes(path, SSHS_MODEL_HASH).a1111
