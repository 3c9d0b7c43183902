"""The toy-base build, end to end at a few steps, and the pipeline it writes loaded by plain diffusers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open

from loramix.cli import main
from loramix.errors import LoramixError
from loramix.toy.build import BuildConfig, _reconstruction_loss, build_base, paint_shapes
from loramix.toy.face_spec import CAPTION_WORDS
from loramix.toy.tokenizer import build_tokenizer

TINY = BuildConfig(images=16, vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4, warmup_steps=1,
                   attribute_steps=2, attribute_images=8)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    output = tmp_path_factory.mktemp("bases") / "toy"
    figures = build_base(output, TINY)
    return output, figures


@pytest.mark.slow
def test_build_writes_a_pipeline_plain_diffusers_loads_and_runs(built):
    from diffusers import StableDiffusionPipeline

    output, figures = built
    assert figures["config"]["unet_steps"] == 2 and len(figures["losses"]["unet"]) == 2
    assert figures["config"]["attribute_steps"] == 2 and len(figures["losses"]["attributes"]) == 2
    assert figures["scaling_factor"] > 0
    with safe_open(str(output / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16  # shipped in half precision: small
    # As the README shows it: no dtype argument. The fp16 weights load as fp32 in every component.
    pipeline = StableDiffusionPipeline.from_pretrained(str(output), local_files_only=True)
    assert {pipeline.unet.dtype, pipeline.vae.dtype, pipeline.text_encoder.dtype} == {torch.float32}
    image = pipeline("a face", num_inference_steps=2, height=64, width=64,
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    assert not any(p.name.startswith(".") for p in output.parent.iterdir())  # no staging folder left


@pytest.mark.slow
def test_every_linear_input_is_a_multiple_of_64(built):
    """bitsandbytes' 4-bit layers need it, as real SD sizes have."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(str(built[0]), local_files_only=True)
    for component in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        for name, module in component.named_modules():
            if isinstance(module, torch.nn.Linear):
                assert module.in_features % 64 == 0, name


@pytest.mark.slow
def test_the_build_is_reproducible(built, tmp_path):
    again = build_base(tmp_path / "toy", TINY)
    assert again["losses"] == built[1]["losses"]


def test_tokenizer_knows_caption_and_lora_words_as_single_tokens(tmp_path):
    tokenizer = build_tokenizer(CAPTION_WORDS, tmp_path)
    for word in (*CAPTION_WORDS, "mustache", "lipstick", "glasses"):
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert tokenizer.unk_token_id not in tokenizer("zebra", add_special_tokens=False).input_ids


@pytest.mark.slow
def test_generate_renders_reproducible_pngs_with_their_settings(built, tmp_path):
    output, _ = built
    args = ["generate", "--base", str(output), "--prompt", "a face", "-n", "3", "--steps", "2", "--seed", "5",
            "--batch-size", "2", "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["00000-5.png", "00001-6.png", "00002-7.png", "grid.png", "manifest.jsonl"]
    first = Image.open(tmp_path / "out" / "00000-5.png")
    assert first.info["parameters"].startswith("a face\nSteps: 2, Sampler: DPMSolverMultistepScheduler")
    assert "Seed: 5" in first.info["parameters"]
    (tmp_path / "out" / "00001-6.png").unlink()
    result = CliRunner().invoke(main, args)
    assert "1 rendered, 2 kept" in result.output
    again = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "batch1")] + ["--batch-size", "1"])
    assert again.exit_code == 0
    for name in names[:-1]:  # the same image whatever batch it was rendered in
        a = torch.from_numpy(np.asarray(Image.open(tmp_path / "out" / name), dtype=np.float32))
        b = torch.from_numpy(np.asarray(Image.open(tmp_path / "batch1" / name), dtype=np.float32))
        assert (a - b).abs().max() <= 2


def test_build_config_rejects_nonsense():
    with pytest.raises(LoramixError, match="unet_steps must be at least 1"):
        BuildConfig(unet_steps=0)
    with pytest.raises(LoramixError, match="vae_shapes must be in"):
        BuildConfig(vae_shapes=1.5)
    with pytest.raises(LoramixError, match="attribute_focus must be at least 0"):
        BuildConfig(attribute_focus=-1)


def test_attribute_focus_weighs_the_pixels_an_attribute_changes():
    images = torch.zeros(1, 3, 8, 8)
    off_on_attribute = images.clone()
    off_on_attribute[..., :2, :2] = 0.5  # the error sits on 4 of 64 pixels
    focus = torch.ones(1, 1, 8, 8)
    assert _reconstruction_loss(off_on_attribute, images, focus) == pytest.approx(
        float(_reconstruction_loss(off_on_attribute, images)))
    focus[..., :2, :2] += 4.0  # those pixels are the attribute: 5× the weight
    # Each off pixel costs 0.5² + ½·0.5 = 0.5 and now carries 5 of the 60 + 4·5 units of weight.
    assert _reconstruction_loss(off_on_attribute, images, focus) == pytest.approx(4 * 5 * 0.5 / (60 + 4 * 5))


def test_paint_shapes_paints_the_chosen_share_in_solid_colours_and_nothing_else():
    images = torch.zeros(400, 3, 64, 64)
    painted = paint_shapes(images, 0.5, torch.Generator().manual_seed(0))
    changed = (painted != images).flatten(1).any(dim=1)
    assert 0.4 < changed.float().mean() < 0.6
    assert painted.min() >= -1 and painted.max() <= 1
    area = (painted != images).any(dim=1).flatten(1).sum(dim=1)  # pixels painted per image
    assert area.max() <= 6 * math.pi * 8**2  # at most six shapes of at most 8 pixels' radius
    assert torch.equal(paint_shapes(images, 0.0, torch.Generator().manual_seed(0)), images)
    again = paint_shapes(images, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(again, painted)


def test_missing_base_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(main, ["generate", "--base", str(tmp_path), "--prompt", "x", "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert "not a diffusers pipeline folder" in result.output
