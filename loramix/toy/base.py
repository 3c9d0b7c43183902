"""The toy base: a Stable Diffusion pipeline of the real diffusers classes, small enough to train on a CPU.

    64×64 image ─VAE (÷8)─► 8×8×8 latent ─UNet(64·128·128, cross-attention on 128-wide text)─► noise
    caption ─CLIP tokenizer─► CLIP text encoder (4 layers, 128 wide) ─────────┘

It is Stable Diffusion's shape at a smaller scale: the same AutoencoderKL, UNet2DConditionModel and
CLIPTextModel, SD's noise schedule, and every Linear layer's input a multiple of 64 so bitsandbytes' 4-bit
layers take them as they take SD's. `loramix build-base` trains it; the shipped weights live in the package.
"""

from __future__ import annotations

import torch

IMAGE_SIZE = 64
# Written into the base's folder as `loramix.json`, where loramix reads a base's render defaults from.
DEFAULT_STEPS = 15  # DPM-Solver++ steps: indistinguishable from 50 on the toy base, 3× faster
DEFAULT_GUIDANCE = 4.0

# SD's VAE keeps 4 channels per 8×8 pixels; at 64×64 that is 256 numbers per face, too few to carry a thin
# mustache or a lipstick line through the round trip, so the toy keeps 8 (SD 3 and Flux keep 16).
LATENT_CHANNELS = 8
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=IMAGE_SIZE, layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    # Four levels take 64×64 images to 8×8 latents, SD's ÷8. Each level costs the same (half the side, twice
    # the channels), so the narrow top level keeps the VAE trainable on a CPU.
    block_out_channels=(16, 32, 64, 128), norm_num_groups=16,
)
UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 8, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=1,
    block_out_channels=(64, 128, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=128, attention_head_dim=4, use_linear_projection=True, norm_num_groups=32,
)
TEXT_ENCODER_CONFIG = dict(
    hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, projection_dim=128,
    hidden_act="quick_gelu",
)
# Stable Diffusion's training schedule.
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                        beta_end=0.012, prediction_type="epsilon", steps_offset=1)


def new_components(vocab_size: int, eos_token_id: int, pad_token_id: int, seed: int):
    """Freshly initialised VAE, UNet and text encoder of the toy architecture."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from loramix.toy.tokenizer import MAX_LENGTH

    text_config = CLIPTextConfig(**TEXT_ENCODER_CONFIG, vocab_size=vocab_size, max_position_embeddings=MAX_LENGTH,
                                 bos_token_id=0, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    with torch.random.fork_rng():  # modules draw their initial weights from the global generator
        torch.manual_seed(seed)
        return AutoencoderKL(**VAE_CONFIG), UNet2DConditionModel(**UNET_CONFIG), CLIPTextModel(text_config)
