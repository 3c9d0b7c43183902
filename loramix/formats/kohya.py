"""kohya sd-scripts naming, as A1111 and ComfyUI read it.

A module's dotted diffusers path becomes one name with every dot turned into an underscore, behind a prefix
per component, and each module stores three tensors:

    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight   A (r, in)
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight     B (out, r)
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha              α (scalar)

Turning the underscores back into dots needs to know which underscores belong to a name (`to_q`,
`down_blocks`); `_COMPOUND_NAMES` lists every such name of the SD 1.x/2.x/XL UNets and CLIP text
encoders, and a test checks the round trip over every module of those real architectures.

SDXL files from sd-scripts name UNet blocks as the original (SGM) code does (`input_blocks_4_1_…`);
those are mapped to diffusers' blocks for the standard two-layers-per-block layout of SD and SDXL.
loramix always writes diffusers-style names, which A1111 and ComfyUI load for SD 1.x and SDXL alike.
"""

from __future__ import annotations

import re

KOHYA_PREFIXES = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder",
                  "lora_te2": "text_encoder_2"}
DOWN, UP, ALPHA = "lora_down.weight", "lora_up.weight", "alpha"

# Names in diffusers' UNets and transformers' CLIP text models that contain an underscore.
_COMPOUND_NAMES = (
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "temp_attentions",
    "to_q", "to_k", "to_v", "to_out", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    "proj_in", "proj_out", "conv_in", "conv_out", "conv_norm_out", "conv_shortcut", "time_emb_proj",
    "time_embedding", "linear_1", "linear_2", "add_embedding", "class_embedding", "encoder_hid_proj",
    "norm_out", "norm_cross", "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
    "final_layer_norm", "layer_norm1", "layer_norm2", "token_embedding", "position_embedding",
    "text_projection",
)
_COMPOUND_TOKENS = sorted((name.split("_") for name in _COMPOUND_NAMES), key=len, reverse=True)


def flatten_path(path: str) -> str:
    return path.replace(".", "_")


def unflatten_path(flat: str) -> str:
    """`down_blocks_0_attentions_0_proj_in` → `down_blocks.0.attentions.0.proj_in`."""
    tokens = flat.split("_")
    parts: list[str] = []
    i = 0
    while i < len(tokens):
        for compound in _COMPOUND_TOKENS:
            if tokens[i : i + len(compound)] == compound:
                parts.append("_".join(compound))
                i += len(compound)
                break
        else:
            parts.append(tokens[i])
            i += 1
    return ".".join(parts)


def kohya_prefix(component: str, has_second_text_encoder: bool) -> str:
    if component == "unet":
        return "lora_unet"
    if component == "text_encoder_2":
        return "lora_te2"
    return "lora_te1" if has_second_text_encoder else "lora_te"


def split_kohya_key(key: str) -> tuple[str, str, str] | None:
    """`lora_unet_<flat>.lora_down.weight` → ("unet", "<flat>", "lora_down.weight"); None if not kohya."""
    name, dot, suffix = key.partition(".")
    if not dot:
        return None
    for prefix in ("lora_unet", "lora_te1", "lora_te2", "lora_te"):
        if name.startswith(prefix + "_"):
            return KOHYA_PREFIXES[prefix], name[len(prefix) + 1 :], suffix
    return None


def is_sdxl_text_encoder_key(key: str) -> bool:
    """`lora_te1_…` / `lora_te2_…`: names only SDXL files use."""
    return key.startswith(("lora_te1_", "lora_te2_"))


def kohya_module_path(component: str, flat: str) -> str:
    """The diffusers module path of a kohya module name, mapping SGM UNet block names when present."""
    if component == "unet":
        sgm = _sgm_to_diffusers(flat)
        if sgm is not None:
            return sgm
    return unflatten_path(flat)


# SGM's resnet layers inside a ResBlock, by their diffusers names.
_SGM_RESNET_LAYERS = {"in_layers_2": "conv1", "out_layers_3": "conv2", "emb_layers_1": "time_emb_proj",
                      "skip_connection": "conv_shortcut", "in_layers_0": "norm1", "out_layers_0": "norm2"}
_SGM_TOP_LEVEL = {"input_blocks_0_0": "conv_in", "out_2": "conv_out", "out_0": "conv_norm_out",
                  "time_embed_0": "time_embedding.linear_1",
                  "time_embed_2": "time_embedding.linear_2", "label_emb_0_0": "add_embedding.linear_1",
                  "label_emb_0_2": "add_embedding.linear_2"}
_SGM_BLOCK = re.compile(r"^(input_blocks|middle_block|output_blocks)_(?:(\d+)_)?(\d+)_(.+)$")
LAYERS_PER_BLOCK = 2  # SD 1.x, 2.x and SDXL all have two resnets per down block, three per up block


def _sgm_to_diffusers(flat: str) -> str | None:
    if flat in _SGM_TOP_LEVEL:
        return _SGM_TOP_LEVEL[flat]
    match = _SGM_BLOCK.match(flat)
    if match is None:
        return None
    kind, outer, inner, rest = match.groups()
    if kind == "middle_block":
        if outer is not None:
            return None
        block = {"0": "mid_block.resnets.0", "1": "mid_block.attentions.0", "2": "mid_block.resnets.1"}.get(inner)
        if block is None:
            return None
    elif outer is None:
        return None
    elif kind == "input_blocks":
        index = int(outer) - 1
        level, layer = divmod(index, LAYERS_PER_BLOCK + 1)
        if layer == LAYERS_PER_BLOCK:  # the last entry of each level is its downsampler
            block = f"down_blocks.{level}.downsamplers.0"
            rest = "conv" if rest == "op" else rest
        else:
            block = f"down_blocks.{level}.{'resnets' if inner == '0' else 'attentions'}.{layer}"
    else:
        level, layer = divmod(int(outer), LAYERS_PER_BLOCK + 1)
        inner_kind = {"0": "resnets", "1": "attentions", "2": "upsamplers"}.get(inner)
        if inner_kind is None:
            return None
        if inner_kind == "attentions" and rest == "conv":  # a level without attention has its upsampler at 1
            inner_kind = "upsamplers"
        block = f"up_blocks.{level}.{inner_kind}.{0 if inner_kind == 'upsamplers' else layer}"
    rest = _SGM_RESNET_LAYERS.get(rest, rest) if ".resnets." in block else rest
    return f"{block}.{unflatten_path(rest)}"
