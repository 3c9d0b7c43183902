"""Block weights: a LoRA's strength per UNet block, as A1111's lora-block-weight extension (hako-mikan) and
kohya's `--lbws` give it.

Blocks are named after the original (SGM) UNet: BASE is the text encoder(s), INnn the `input_blocks`, MID the
middle block, OUTnn the `output_blocks`. The short lists name only the blocks an attention LoRA touches:

    SD 1.x, 17 values: BASE IN01 IN02 IN04 IN05 IN07 IN08 MID OUT03 … OUT11     (26: BASE IN00…IN11 MID OUT00…OUT11)
    SDXL,   12 values: BASE IN04 IN05 IN07 IN08 MID OUT00 … OUT05               (20: BASE IN00…IN08 MID OUT00…OUT08)

As in the extension, a block the short list leaves out gets 0, and a module in no block (time embedding,
conv_out) keeps 1. A block weight is one more scalar in Σ wᵢ·bᵢ·ΔWᵢ, so composition stays exact.
"""

from __future__ import annotations

import re

from loramix.errors import LoramixError
from loramix.lora.adapter import LoraAdapter, component_of, path_of

LAYERS_PER_LEVEL = 3  # input_blocks: 2 resnet/attention layers and a downsampler; output_blocks: 3 layers

SD1_IDS_26 = ("BASE", *(f"IN{i:02d}" for i in range(12)), "MID", *(f"OUT{i:02d}" for i in range(12)))
SD1_IDS_17 = ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "MID", *(f"OUT{i:02d}" for i in range(3, 12)))
SDXL_IDS_20 = ("BASE", *(f"IN{i:02d}" for i in range(9)), "MID", *(f"OUT{i:02d}" for i in range(9)))
SDXL_IDS_12 = ("BASE", "IN04", "IN05", "IN07", "IN08", "MID", *(f"OUT{i:02d}" for i in range(6)))
LAYOUTS = {"sd1": (SD1_IDS_17, SD1_IDS_26), "sdxl": (SDXL_IDS_12, SDXL_IDS_20)}

# The extension's named presets for the 17-value SD 1.x list.
PRESETS_SD1 = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0", "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0", "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0", "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0", "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1", "ALL0.5": ",".join(["0.5"] * 17),
}
PRESETS_SDXL = {"NONE": ",".join(["0"] * 12), "ALL": ",".join(["1"] * 12), "ALL0.5": ",".join(["0.5"] * 12)}
PRESETS = {"sd1": PRESETS_SD1, "sdxl": PRESETS_SDXL}

_LAYER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.")


def block_of(key: str) -> str | None:
    """The SGM block id of an adapter module (`unet.down_blocks.1.attentions.0.…` → IN04), None if in none."""
    if component_of(key) != "unet":
        return "BASE"
    path = path_of(key)
    if path.startswith("conv_in."):
        return "IN00"
    if path.startswith("mid_block."):
        return "MID"
    match = _LAYER.match(path)
    if match is None:
        return None
    kind, level, layer_kind, layer = match[1], int(match[2]), match[3], int(match[4])
    if kind == "down_blocks":
        offset = LAYERS_PER_LEVEL - 1 if layer_kind == "downsamplers" else layer
        return f"IN{1 + LAYERS_PER_LEVEL * level + offset:02d}"
    offset = LAYERS_PER_LEVEL - 1 if layer_kind == "upsamplers" else layer
    return f"OUT{LAYERS_PER_LEVEL * level + offset:02d}"


def architecture(adapter: LoraAdapter) -> str:
    return "sdxl" if adapter.base_version.startswith("sdxl") else "sd1"


def block_weights(adapter: LoraAdapter, lbw: str, source: str = "") -> dict[str, float]:
    """Block id → weight from an `lbw=` value (values or a preset name), checked against the adapter's UNet."""
    arch = architecture(adapter)
    short, full = LAYOUTS[arch]
    where = f"{source}: " if source else ""
    text = PRESETS[arch].get(lbw.strip().upper(), lbw)
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise LoramixError(f"{where}lbw={lbw!r} is neither {len(short)} numbers nor a preset "
                           f"({', '.join(PRESETS[arch])})") from None
    if len(values) not in (len(short), len(full)):
        other = "sd1" if arch == "sdxl" else "sdxl"
        hint = f" ({len(values)} is the {'SDXL' if other == 'sdxl' else 'SD 1.x'} count)" \
            if len(values) in map(len, LAYOUTS[other]) else ""
        raise LoramixError(f"{where}lbw has {len(values)} values, an {'SDXL' if arch == 'sdxl' else 'SD 1.x'} LoRA "
                           f"takes {len(short)} ({', '.join(short)}) or {len(full)}{hint}")
    ids = short if len(values) == len(short) else full
    weights = dict.fromkeys(full, 0.0)
    weights.update(zip(ids, values))
    return weights


def with_block_weights(adapter: LoraAdapter, lbw: str | None, source: str = "") -> LoraAdapter:
    """The adapter with each module's ΔW multiplied by its block's weight (1 for modules in no block)."""
    if lbw is None:
        return adapter
    weights = block_weights(adapter, lbw, source)
    modules = {key: module.scaled(weights.get(block_of(key), 1.0)) for key, module in adapter.modules.items()}
    return LoraAdapter(modules, adapter.metadata, adapter.source_format, adapter.base_version)

