"""A diffusers Stable Diffusion pipeline as one checkpoint in the original (CompVis / Stability "ldm") layout,
the single file A1111 and ComfyUI users share:

    model.diffusion_model.*                    UNet: input_blocks / middle_block / output_blocks
    first_stage_model.*                        VAE: encoder.down.N.block.M, decoder.up.N.block.M, mid.attn_1
    cond_stage_model.transformer.*             SD 1.x: CLIP ViT-L, under transformers' own names
    cond_stage_model.model.*                   SD 2.x: OpenCLIP ViT-H, resblocks with fused q/k/v
    conditioner.embedders.0.transformer.*      SDXL: CLIP ViT-L
    conditioner.embedders.1.model.*            SDXL: OpenCLIP ViT-bigG, with its text_projection

It is the inverse of the conversion diffusers' `from_single_file` applies (`loaders/single_file_utils.py`):
the tests read each file back through it and find every weight bit-identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from loramix.choices import MODELS
from loramix.errors import LoramixError
from loramix.formats.metadata import SAFETENSORS_FORMAT
from loramix.util.atomic import atomic_path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TEXT_2_PREFIX = "conditioner.embedders.1.model."

# Each table maps a diffusers module path to the original one, with the renames of its direct children.
Blocks = dict[str, tuple[str, dict[str, str]]]

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
# Block types the original UNet spells, and whether each holds a transformer beside its resnets.
_UNET_DOWN_BLOCKS = {"DownBlock2D": False, "CrossAttnDownBlock2D": True}
_UNET_UP_BLOCKS = {"UpBlock2D": False, "CrossAttnUpBlock2D": True}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

_OPENCLIP_TOP = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                 "text_model.embeddings.position_embedding.weight": "positional_embedding",
                 "text_model.final_layer_norm.weight": "ln_final.weight",
                 "text_model.final_layer_norm.bias": "ln_final.bias"}
_OPENCLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


@dataclass(frozen=True)
class Source:
    """Where one weight of a diffusers model lies in the original layout. The table of sources is the one home
    of the conversion: the writer reads it one way, the single-file loader the other."""

    key: str  # the original name
    part: int | None = None  # OpenCLIP's fused q, k, v: which third of the stored rows
    transposed: bool = False  # OpenCLIP's text_projection: stored as the matrix text is multiplied by on the right
    as_conv: bool = False  # the VAE's mid-block attention: stored as 1×1 convolutions

    def stored_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape the original file holds for a weight of `shape`."""
        if self.part is not None:
            shape = (3 * shape[0], *shape[1:])
        if self.transposed:
            shape = tuple(reversed(shape))
        return (*shape, 1, 1) if self.as_conv else shape

    def stored(self, tensor: torch.Tensor) -> torch.Tensor:
        """The diffusers weight as the original file holds it (a part: its third only)."""
        if self.transposed:
            tensor = tensor.T.contiguous()
        return tensor[:, :, None, None] if self.as_conv else tensor

    def read(self, stored: torch.Tensor) -> torch.Tensor:
        """The diffusers weight from the tensor the original file holds under `key`."""
        if self.part is not None:
            stored = stored.chunk(3)[self.part].clone()  # a copy: the other two thirds are not kept alive
        if self.transposed:
            stored = stored.T.contiguous()
        if self.as_conv and stored.dim() == 4:
            stored = stored[:, :, 0, 0].contiguous()
        return stored


def original_sources(unet, vae, text_encoder, text_encoder_2=None) -> dict[str, dict[str, Source]]:
    """For each component ("unet", "vae", "text_encoder", "text_encoder_2"), where each of its weights, by its
    name in the model's state dict, lies in the original layout. The models may be empty (on the meta device):
    only their configs and names are read.

    `text_encoder_2` makes it SDXL; otherwise an OpenCLIP text encoder (exact GELU, where OpenAI's CLIP
    of SD 1.x uses quick_gelu) makes it SD 2.x.
    """
    sources = {"unet": _renamed(unet.state_dict(), _unet_blocks(unet.config), UNET_PREFIX, "UNet"),
               "vae": _vae_sources(vae)}
    if text_encoder_2 is not None:
        sources["text_encoder"] = _clip_sources(text_encoder, SDXL_TEXT_PREFIX)
        sources["text_encoder_2"] = _openclip_sources(text_encoder_2, SDXL_TEXT_2_PREFIX)
    elif _is_openclip(text_encoder):
        sources["text_encoder"] = _openclip_sources(text_encoder, SD2_TEXT_PREFIX)
    else:
        sources["text_encoder"] = _clip_sources(text_encoder, SD1_TEXT_PREFIX)
    return sources


def original_state_dict(unet, vae, text_encoder, text_encoder_2=None) -> dict[str, torch.Tensor]:
    """Every weight of the pipeline under its original name, in the dtype it is stored in."""
    _check_fit(unet, text_encoder, text_encoder_2)
    _check_floats(unet, vae, text_encoder, text_encoder_2)
    models = dict(zip(MODELS, (unet, vae, text_encoder, text_encoder_2)))
    tensors: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[int, torch.Tensor]] = {}
    for component, sources in original_sources(unet, vae, text_encoder, text_encoder_2).items():
        state = models[component].state_dict()
        for name, source in sources.items():
            if source.part is None:
                tensors[source.key] = source.stored(state[name])
            else:
                parts.setdefault(source.key, {})[source.part] = source.stored(state[name])
    for key, thirds in parts.items():
        tensors[key] = torch.cat([thirds[part] for part in sorted(thirds)])  # rows q, then k, then v
    return tensors


def save_single_file(pipeline, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write `pipeline` (StableDiffusionPipeline or StableDiffusionXLPipeline) as one original-layout
    .safetensors file, its floats cast to `dtype` when given, atomically."""
    components = [getattr(pipeline, name, None) for name in ("unet", "vae", "text_encoder")]
    if any(c is None for c in components):
        raise LoramixError(f"{type(pipeline).__name__} has no unet, vae and text_encoder: not a Stable Diffusion "
                           "pipeline that the original layout holds")
    tensors = original_state_dict(*components, getattr(pipeline, "text_encoder_2", None))
    tensors = {key: (tensor if dtype is None else tensor.to(dtype)).detach().contiguous()
               for key, tensor in tensors.items()}
    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata={SAFETENSORS_FORMAT: "pt"})
    return Path(path)


def _check_fit(unet, text_encoder, text_encoder_2) -> None:
    """Components that do not belong together would make a file that no loader reads back as one model."""
    xl = text_encoder_2 is not None
    widths = [text_encoder.config.hidden_size] + ([text_encoder_2.config.hidden_size] if xl else [])
    if unet.config.cross_attention_dim != sum(widths):
        raise LoramixError(f"the UNet attends to {unet.config.cross_attention_dim}-wide text, the text encoders "
                           f"give {'+'.join(map(str, widths))}: they are not one pipeline")
    extra = unet.config.addition_embed_type
    if xl and extra != "text_time":
        raise LoramixError(f"an SDXL pipeline needs a UNet with addition_embed_type 'text_time', not {extra!r}")
    if not xl and extra is not None:
        raise LoramixError(f"a UNet with addition_embed_type {extra!r} and one text encoder has no original "
                           "layout loramix knows")


def _check_floats(*models) -> None:
    """A 4-bit or 8-bit model stores integer codes with their scales beside them: no loader of the original
    layout reads those as weights."""
    for model in models:
        if model is None:
            continue
        for key, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                raise LoramixError(f"{type(model).__name__} weight {key!r} is stored as {tensor.dtype}: a quantized "
                                   "model has no original layout; load the base unquantized")


def _renamed(state: dict[str, torch.Tensor], blocks: Blocks, prefix: str, what: str) -> dict[str, Source]:
    """Each key's longest module path found in `blocks` is replaced by its original path."""
    renamed = {}
    for key in state:
        parts = key.split(".")
        for end in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:end])
            if module in blocks:
                original, children = blocks[module]
                child, _, name = ".".join(parts[end:]).rpartition(".")
                child = children.get(child, child)
                renamed[key] = Source(f"{prefix}{original}.{child + '.' if child else ''}{name}")
                break
        else:
            raise LoramixError(f"{what} weight {key!r} has no place in the original layout: loramix cannot "
                               "convert this model")
    return renamed


def _unet_blocks(config) -> Blocks:
    """The original UNet numbers its blocks in one sequence per side: input_blocks.0 is conv_in, then each
    level's resnet (+ transformer) layers and its downsampler; output_blocks take layers_per_block + 1 per
    level, the upsampler riding in the level's last one."""
    layers = config.layers_per_block
    if not isinstance(layers, int):
        raise LoramixError(f"a UNet with layers_per_block {layers} (one per block) has no original layout")
    kinds = [(kind, _UNET_DOWN_BLOCKS) for kind in config.down_block_types]
    kinds += [(kind, _UNET_UP_BLOCKS) for kind in config.up_block_types]
    kinds.append((config.mid_block_type, {"UNetMidBlock2DCrossAttn": True}))
    for kind, known in kinds:
        if kind not in known:
            raise LoramixError(f"a UNet with a {kind} block has no original layout loramix knows")
    blocks: Blocks = {
        "conv_in": ("input_blocks.0.0", {}), "time_embedding.linear_1": ("time_embed.0", {}),
        "time_embedding.linear_2": ("time_embed.2", {}), "conv_norm_out": ("out.0", {}), "conv_out": ("out.2", {}),
        "add_embedding.linear_1": ("label_emb.0.0", {}), "add_embedding.linear_2": ("label_emb.0.2", {}),
        "mid_block.resnets.0": ("middle_block.0", _UNET_RESNET), "mid_block.attentions.0": ("middle_block.1", {}),
        "mid_block.resnets.1": ("middle_block.2", _UNET_RESNET),
    }
    last = len(config.down_block_types) - 1
    index = 1
    for level, kind in enumerate(config.down_block_types):
        for layer in range(layers):
            blocks[f"down_blocks.{level}.resnets.{layer}"] = (f"input_blocks.{index}.0", _UNET_RESNET)
            if _UNET_DOWN_BLOCKS[kind]:
                blocks[f"down_blocks.{level}.attentions.{layer}"] = (f"input_blocks.{index}.1", {})
            index += 1
        if level < last:
            blocks[f"down_blocks.{level}.downsamplers.0.conv"] = (f"input_blocks.{index}.0.op", {})
            index += 1
    index = 0
    for level, kind in enumerate(config.up_block_types):
        attention = _UNET_UP_BLOCKS[kind]
        for layer in range(layers + 1):
            blocks[f"up_blocks.{level}.resnets.{layer}"] = (f"output_blocks.{index}.0", _UNET_RESNET)
            if attention:
                blocks[f"up_blocks.{level}.attentions.{layer}"] = (f"output_blocks.{index}.1", {})
            index += 1
        if level < last:
            blocks[f"up_blocks.{level}.upsamplers.0.conv"] = (f"output_blocks.{index - 1}.{2 if attention else 1}.conv",
                                                               {})
    return blocks


def _vae_sources(vae) -> dict[str, Source]:
    """The original mid-block attention projects with 1×1 convolutions where diffusers has Linear layers."""
    sources = _renamed(vae.state_dict(), _vae_blocks(vae.config), VAE_PREFIX, "VAE")
    state = vae.state_dict()
    return {name: (Source(source.key, as_conv=True) if ".mid.attn_1." in source.key and name.endswith("weight")
                   and state[name].dim() == 2 else source) for name, source in sources.items()}


def _vae_blocks(config) -> Blocks:
    """The original decoder numbers its levels from the bottom (up.0 is the last to run), diffusers' from
    the top; its mid blocks count from 1."""
    levels = len(config.down_block_types)
    layers = config.layers_per_block
    blocks: Blocks = {name: (name, {}) for name in ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in",
                                                    "decoder.conv_out", "quant_conv", "post_quant_conv")}
    blocks["encoder.conv_norm_out"] = ("encoder.norm_out", {})
    blocks["decoder.conv_norm_out"] = ("decoder.norm_out", {})
    for level in range(levels):
        for layer in range(layers):
            blocks[f"encoder.down_blocks.{level}.resnets.{layer}"] = (f"encoder.down.{level}.block.{layer}",
                                                                      _VAE_RESNET)
        blocks[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = (f"encoder.down.{level}.downsample.conv", {})
    for level in range(len(config.up_block_types)):
        original = levels - 1 - level
        for layer in range(layers + 1):
            blocks[f"decoder.up_blocks.{level}.resnets.{layer}"] = (f"decoder.up.{original}.block.{layer}",
                                                                    _VAE_RESNET)
        blocks[f"decoder.up_blocks.{level}.upsamplers.0.conv"] = (f"decoder.up.{original}.upsample.conv", {})
    for side in ("encoder", "decoder"):
        blocks[f"{side}.mid_block.resnets.0"] = (f"{side}.mid.block_1", _VAE_RESNET)
        blocks[f"{side}.mid_block.resnets.1"] = (f"{side}.mid.block_2", _VAE_RESNET)
        blocks[f"{side}.mid_block.attentions.0"] = (f"{side}.mid.attn_1", _VAE_ATTENTION)
    return blocks


def _text_names(text_encoder) -> dict[str, str]:
    """The model's weight names under the `text_model.` names of the original files: transformers ≥ 5.6
    dropped that level from CLIPTextModel (not from CLIPTextModelWithProjection)."""
    inner = "" if hasattr(text_encoder, "text_model") else "text_model."
    return {f"{inner}{name}": name for name in text_encoder.state_dict()}


def _is_openclip(text_encoder) -> bool:
    return text_encoder.config.hidden_act == "gelu"


def _clip_sources(text_encoder, prefix: str) -> dict[str, Source]:
    return {name: Source(prefix + full) for full, name in _text_names(text_encoder).items()}


def _openclip_sources(text_encoder, prefix: str) -> dict[str, Source]:
    """OpenCLIP keeps q, k and v in one `in_proj` (rows q, then k, then v) and stores text_projection as
    the matrix text is multiplied by on the right, the transpose of a Linear weight."""
    names = _text_names(text_encoder)
    sources = {names.pop(full): Source(prefix + original) for full, original in _OPENCLIP_TOP.items()}
    if "text_projection.weight" in names:
        sources[names.pop("text_projection.weight")] = Source(prefix + "text_projection", transposed=True)
    for layer in range(text_encoder.config.num_hidden_layers):
        source = f"text_model.encoder.layers.{layer}."
        target = f"{prefix}transformer.resblocks.{layer}."
        for name in ("weight", "bias"):
            for part, projection in enumerate("qkv"):
                sources[names.pop(f"{source}self_attn.{projection}_proj.{name}")] = Source(
                    f"{target}attn.in_proj_{name}", part=part)
            for module, original in _OPENCLIP_LAYER.items():
                sources[names.pop(f"{source}{module}.{name}")] = Source(f"{target}{original}.{name}")
    if names:
        raise LoramixError(f"text encoder weight {next(iter(names))!r} has no place in the OpenCLIP layout: "
                           "loramix cannot convert this model")
    return sources
