"""Single-file checkpoints in the original (ldm) layout: diffusers' own loader reads them back bit-exact.

Each architecture is a tiny real pipeline built from kwargs; `from_single_file` with the pipeline's own
saved folder as `config` reads the file offline, and every tensor must come back equal.
"""

from __future__ import annotations

import pytest
import torch

from loramix.errors import LoramixError
from loramix.formats.original_layout import original_state_dict, save_single_file
from loramix.testing import tiny_clip, tiny_unet

# The widths and depths the tiny pipelines need for diffusers to tell what they are (see `pipeline`).
SD2_TEXT_WIDTH = 1024
SDXL_TEXT_WIDTHS = (32, 40)
SDXL_TEXT_2_LAYERS = 10


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                         layers_per_block=2).eval()


def text_encoder(hidden_size: int, layers: int = 2, openclip: bool = False, projection: bool = False):
    """A CLIP text model; OpenCLIP's (SD 2.x, SDXL's second) differ from OpenAI's in their exact GELU."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(hidden_size)
    config = CLIPTextConfig(vocab_size=1024, hidden_size=hidden_size, intermediate_size=37, num_hidden_layers=layers,
                            num_attention_heads=4, max_position_embeddings=16, projection_dim=hidden_size,
                            hidden_act="gelu" if openclip else "quick_gelu", bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def sdxl_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), use_linear_projection=True,
        cross_attention_dim=sum(SDXL_TEXT_WIDTHS), addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=SDXL_TEXT_WIDTHS[1] + 6 * 8, norm_num_groups=8,
    ).eval()


def sd2_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=SD2_TEXT_WIDTH, attention_head_dim=8, use_linear_projection=True, norm_num_groups=8,
    ).eval()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from loramix.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(["face"], tmp_path_factory.mktemp("tokenizer"))
    tokenizer.model_max_length = 16  # the tiny text encoders' positions, so that the pipelines render
    return tokenizer


@pytest.fixture(scope="module", params=["v1", "v2", "xl_base"])
def saved(request, tokenizer, tmp_path_factory):
    """(architecture, pipeline, its diffusers folder, its single file).

    diffusers tells the architectures apart by a few keys and shapes, which the tiny models are sized to
    pass: "v2" needs a second transformer in the first level (layers_per_block 2) reading 1024-wide text;
    "xl_base" needs a tenth OpenCLIP layer; and SDXL's two text encoders must differ in width, as the loader
    tells them apart by their position embeddings.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    architecture = request.param
    scheduler = EulerDiscreteScheduler(steps_offset=1)
    if architecture == "xl_base":
        pipeline = StableDiffusionXLPipeline(
            vae=tiny_vae(), text_encoder=text_encoder(SDXL_TEXT_WIDTHS[0]),
            text_encoder_2=text_encoder(SDXL_TEXT_WIDTHS[1], SDXL_TEXT_2_LAYERS, openclip=True, projection=True),
            tokenizer=tokenizer, tokenizer_2=tokenizer, unet=sdxl_unet(), scheduler=scheduler)
    else:
        unet, clip = ((sd2_unet(), text_encoder(SD2_TEXT_WIDTH, openclip=True)) if architecture == "v2"
                      else (tiny_unet(), text_encoder(32)))
        pipeline = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=clip, tokenizer=tokenizer, unet=unet,
                                           scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
    folder = tmp_path_factory.mktemp(architecture)
    pipeline.save_pretrained(str(folder / "diffusers"))
    path = save_single_file(pipeline, folder / "model.safetensors")
    return architecture, pipeline, folder / "diffusers", path


def assert_read_back_exactly(pipeline, path, folder) -> None:
    """diffusers' `from_single_file`, configured by the pipeline's diffusers folder, finds every weight."""
    loaded = type(pipeline).from_single_file(str(path), config=str(folder), local_files_only=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if hasattr(pipeline, name):
            original, read = getattr(pipeline, name).state_dict(), getattr(loaded, name).state_dict()
            assert original.keys() == read.keys(), name
            unequal = [key for key in original if not torch.equal(original[key], read[key])]
            assert not unequal, f"{name}: {unequal[:5]}"


def test_diffusers_reads_the_file_back_bit_exact(saved):
    _, pipeline, folder, path = saved
    assert_read_back_exactly(pipeline, path, folder)


def test_diffusers_tells_the_architecture_from_the_keys(saved):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors.torch import load_file

    architecture, _, _, path = saved
    assert infer_diffusers_model_type(load_file(str(path))) == architecture


# Keys and shapes of the released checkpoints (v1-5-pruned, v2-1_768, sd_xl_base_1.0) at the tiny sizes.
EXPECTED_KEYS = {
    "v1": {
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (32, 32),
        "model.diffusion_model.input_blocks.2.0.op.weight": (32, 32, 3, 3),
        "model.diffusion_model.output_blocks.1.0.skip_connection.weight": (64, 96, 1, 1),
        "model.diffusion_model.output_blocks.1.1.conv.weight": (64, 64, 3, 3),
        "model.diffusion_model.middle_block.2.emb_layers.1.weight": (64, 128),
        "first_stage_model.decoder.up.1.upsample.conv.weight": (64, 64, 3, 3),
        "first_stage_model.decoder.mid.attn_1.q.weight": (64, 64, 1, 1),
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (64, 32, 1, 1),
        "cond_stage_model.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight": (32, 32),
    },
    "v2": {
        "model.diffusion_model.input_blocks.2.1.proj_in.weight": (32, 32),
        "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight": (3 * 1024, 1024),
        "cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight": (37, 1024),
        "cond_stage_model.model.positional_embedding": (16, 1024),
        "cond_stage_model.model.ln_final.weight": (1024,),
    },
    "xl_base": {
        "model.diffusion_model.label_emb.0.0.weight": (128, 88),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight": (64, 72),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (64, 64, 3, 3),
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.bias": (32,),
        "conditioner.embedders.1.model.transformer.resblocks.9.attn.in_proj_bias": (3 * 40,),
        "conditioner.embedders.1.model.text_projection": (40, 40),
    },
}


def test_the_keys_are_spelt_as_in_the_released_checkpoints(saved):
    from safetensors import safe_open

    architecture, _, _, path = saved
    with safe_open(str(path), framework="pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    for key, shape in EXPECTED_KEYS[architecture].items():
        assert shapes.get(key) == shape, key
    prefixes = {"v1": ("cond_stage_model.transformer.",), "v2": ("cond_stage_model.model.",),
                "xl_base": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")}[architecture]
    assert all(key.startswith(("model.diffusion_model.", "first_stage_model.", *prefixes)) for key in shapes)


def test_a_dtype_casts_the_floats_and_keeps_the_names(tmp_path):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file

    pipeline = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=tiny_clip(), tokenizer=None, unet=tiny_unet(),
                                       scheduler=EulerDiscreteScheduler(steps_offset=1), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    written = load_file(str(save_single_file(pipeline, tmp_path / "half.safetensors", dtype=torch.float16)))
    expected = original_state_dict(pipeline.unet, pipeline.vae, pipeline.text_encoder)
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[key], tensor.half()) for key, tensor in expected.items())


def test_components_that_do_not_fit_are_refused_in_one_line():
    with pytest.raises(LoramixError, match="attends to 32-wide text.*give 48"):
        original_state_dict(tiny_unet(), tiny_vae(), tiny_clip(hidden_size=48))
    with pytest.raises(LoramixError, match="addition_embed_type 'text_time'"):
        original_state_dict(tiny_unet(cross_attention_dim=72), tiny_vae(), tiny_clip(), tiny_clip(hidden_size=40))


@pytest.mark.parametrize("change, message", [
    (dict(time_cond_proj_dim=8), "'time_embedding.cond_proj.weight' has no place"),
    (dict(mid_block_type="UNetMidBlock2DSimpleCrossAttn"), "UNetMidBlock2DSimpleCrossAttn block has no original"),
])
def test_a_unet_the_original_layout_has_no_place_for_is_refused(change, message):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, **change)
    with pytest.raises(LoramixError, match=message):
        original_state_dict(unet, tiny_vae(), tiny_clip())


def published(architecture: str):
    """The released architecture's UNet, VAE and text encoders on the meta device: real shapes, no weights."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from loramix.models.architectures import builtin_config

    unet_config, clip_config = builtin_config("sd15", "unet"), builtin_config("sd15", "text_encoder")
    if architecture == "v2":  # SD 2.1: OpenCLIP-H without its last layer, which SD 2.x never runs
        unet_config |= dict(cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True)
        clip_config |= dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                            hidden_act="gelu", projection_dim=512)
    elif architecture == "xl_base":
        unet_config = builtin_config("sdxl", "unet")
    with init_empty_weights():
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)
        models = [UNet2DConditionModel.from_config(unet_config), vae, CLIPTextModel(CLIPTextConfig(**clip_config))]
        if architecture == "xl_base":
            models.append(CLIPTextModelWithProjection(CLIPTextConfig(**builtin_config("sdxl", "text_encoder_2"))))
    return models


# Keys and shapes as in v1-5-pruned, v2-1_768-ema-pruned and sd_xl_base_1.0.
PUBLISHED_KEYS = {
    "v1": {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
    },
    "v2": {
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight": (3072, 1024),
    },
    "xl_base": {
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
        "conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_proj.bias": (1280,),
    },
}


@pytest.mark.parametrize("architecture", ["v1", "v2", "xl_base"])
def test_the_published_architectures_convert_and_are_told_apart(architecture):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    tensors = original_state_dict(*published(architecture))
    assert infer_diffusers_model_type(tensors) == architecture
    for key, shape in PUBLISHED_KEYS[architecture].items():
        assert tuple(tensors[key].shape) == shape, key


def test_a_quantized_model_is_refused():
    from loramix.models.quantize import quantize_model

    unet = tiny_unet()
    quantize_model(unet, "nf4")
    with pytest.raises(LoramixError, match="quantized model has no original layout"):
        original_state_dict(unet, tiny_vae(), tiny_clip())


def test_the_shipped_toy_base_round_trips(pipeline, tmp_path):
    from loramix.models.load import bundled_base_path

    path = save_single_file(pipeline, tmp_path / "toy.safetensors")
    assert_read_back_exactly(pipeline, path, bundled_base_path())


@pytest.mark.slow  # loads each architecture three ways (its folder, its file, its file in nf4) and renders (1.5-3 s)
def test_loramix_loads_the_single_file_offline_as_the_folder_loads(saved):
    """The path a user's checkpoint takes: recognised from its header, loaded with `config` (the published
    configs shipped with loramix for real sizes; here the tiny pipeline's own folder), quantized when asked."""
    import numpy as np

    from loramix.models.load import load_pipeline
    from loramix.render.core import RenderSettings, render

    architecture, _, folder, path = saved
    from_file, from_folder = load_pipeline(path, config=folder), load_pipeline(folder)
    assert type(from_file).__name__ == type(from_folder).__name__
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(from_folder, name, None) is not None:
            mine, theirs = getattr(from_file, name).state_dict(), getattr(from_folder, name).state_dict()
            assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), name
    quantized = load_pipeline(path, quantize="nf4", config=folder)
    assert type(quantized.unet.conv_in).__name__ == "Conv2dNF4"
    settings = [RenderSettings("face", 0, 2, 4.0, 32, 32)]
    assert np.array_equal(np.asarray(render(from_file, settings)[0]), np.asarray(render(from_folder, settings)[0]))
    render(quantized, settings)


@pytest.mark.slow  # writes the toy base as one file, then renders and trains from it (about 1.5 s)
def test_the_toy_base_as_a_single_file_renders_what_its_folder_renders_and_trains(mustache_faces, tmp_path):
    import numpy as np

    from loramix.models.load import bundled_base_path, load_pipeline
    from loramix.render.core import RenderSettings, render
    from loramix.train.dataset import load_dataset
    from loramix.train.recipe import TrainRecipe
    from loramix.train.trainee import LoraTrainee

    path = save_single_file(load_pipeline("toy"), tmp_path / "toy.safetensors")
    from_file = load_pipeline(path, config=bundled_base_path())
    settings = [RenderSettings("a face with a mustache", 0, 4, 4.0, 64, 64)]
    assert np.array_equal(np.asarray(render(from_file, settings)[0]),
                          np.asarray(render(load_pipeline("toy"), settings)[0]))
    quantized = load_pipeline(path, quantize="nf4", config=bundled_base_path())
    trainee = LoraTrainee(quantized, TrainRecipe(dataset=str(mustache_faces), rank=2, steps=1), torch.device("cpu"))
    examples = trainee.cache(load_dataset(mustache_faces, 64, "mst"), flip=False)
    trainee.loss(examples, torch.tensor([0, 1]), torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is not None for p in trainee.trainable_parameters())
    assert any(p.grad.abs().sum() > 0 for p in trainee.trainable_parameters())
