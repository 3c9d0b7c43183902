"""Tiny real models and random LoRAs made for them, shared by the tests and the benchmarks.

The models are diffusers' UNet2DConditionModel and transformers' CLIPTextModel at toy sizes, built from
kwargs in code as diffusers' own tests build theirs; nothing here is a mock.
"""

from __future__ import annotations

import torch

from loramix.lora import CLIP_LEVEL, LoraAdapter, LoraModule

UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
CLIP_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


def tiny_unet(seed: int = 0, cross_attention_dim: int = 32):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def tiny_clip(seed: int = 0, hidden_size: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=100, hidden_size=hidden_size, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16, projection_dim=hidden_size,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModel(config).eval()


def weight_shapes(model, component: str, kinds: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Weight shapes keyed as adapters name modules: text-encoder paths in their `text_model.` spelling."""
    level = CLIP_LEVEL if component.startswith("text_encoder") and not hasattr(model, "text_model") else ""
    return {f"{component}.{level}{name}": tuple(m.weight.shape) for name, m in model.named_modules()
            if any(name.endswith("." + k) for k in kinds) and hasattr(m, "weight")}


def random_adapter(shapes: dict[str, tuple[int, ...]], rank: int, alpha: float, seed: int,
                   dtype=torch.float32) -> LoraAdapter:
    """A LoRA with non-zero A and B for every module in `shapes`."""
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for key, shape in shapes.items():
        out_features, in_shape = shape[0], shape[1:]
        down = torch.randn(rank, *in_shape, generator=generator) / in_shape[0] ** 0.5
        up = torch.randn(out_features, rank, *([1, 1] if len(shape) == 4 else []), generator=generator) * 0.1
        modules[key] = LoraModule(down=down.to(dtype), up=up.to(dtype), alpha=alpha)
    return LoraAdapter(modules)
