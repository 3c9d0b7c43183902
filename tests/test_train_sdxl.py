"""Training on an SDXL pipeline: two text encoders, pooled text embeddings and size conditioning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loramix.formats.read import read_adapter
from loramix.train.loop import train
from loramix.train.recipe import make_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> Path:
    """A tiny SDXL pipeline folder of the real classes, random weights, the toy base's tokenizer for both text
    encoders. Every Linear input is a multiple of 64, as bitsandbytes' 4-bit layers need."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from loramix.models.load import bundled_base_path
    from loramix.toy.base import LATENT_CHANNELS, SCHEDULER_CONFIG, VAE_CONFIG

    tokenizer = CLIPTokenizer.from_pretrained(str(bundled_base_path() / "tokenizer"))
    torch.manual_seed(0)
    text = dict(vocab_size=len(tokenizer), intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    encoder = CLIPTextModel(CLIPTextConfig(hidden_size=64, projection_dim=64, **text))
    encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=64, projection_dim=64, **text))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=1,
        block_out_channels=(64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=128, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32,
        addition_embed_type="text_time", addition_time_embed_dim=32,
        projection_class_embeddings_input_dim=64 + 6 * 32, transformer_layers_per_block=(1, 1),
    )
    pipeline = StableDiffusionXLPipeline(
        vae=AutoencoderKL(**VAE_CONFIG), text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG))
    folder = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl"
    pipeline.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("quantize, train_text_encoder", [("nf4", False), ("none", True)])
def test_training_on_sdxl(tiny_sdxl, tmp_path, quantize, train_text_encoder):
    recipe = make_recipe(None, dict(dataset=str(ROOT / "samples" / "glasses"), base=str(tiny_sdxl), steps=2,
                                    batch_size=2, rank=2, quantize=quantize, train_text_encoder=train_text_encoder,
                                    sample_steps=2, output=str(tmp_path / "run"), name="g"))
    result = train(recipe)
    components = {key.split(".", 1)[0] for key in read_adapter(result.adapter).modules}
    assert components == ({"unet", "text_encoder", "text_encoder_2"} if train_text_encoder else {"unet"})
    assert (result.run / "samples" / "step-000002.png").is_file()

    from diffusers import StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl))
    pipeline.load_lora_weights(str(result.adapter), adapter_name="g")  # diffusers reads what loramix wrote
    assert pipeline.get_list_adapters() == {component: ["g"] for component in components}
