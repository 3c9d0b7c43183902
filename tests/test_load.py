"""Loading bases: in the precision asked for or the device's default, quantized as the weights load, from
variant files, telling what it does."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from loramix.errors import BaseLoadError
from loramix.models.load import bundled_base_path, load_pipeline
from loramix.testing import RecordingStatus


def pixels(pipeline) -> np.ndarray:
    from loramix.render.core import RenderSettings, render

    image = render(pipeline, [RenderSettings("a face with a mustache", 3, 4, 4.0, 64, 64)])[0]
    return np.asarray(image, dtype=np.int16)


def test_quantizing_as_the_weights_load_gives_the_base_quantized_after_loading():
    from loramix.models.quantize import quantize_pipeline

    status = RecordingStatus()
    as_loaded = load_pipeline("toy", quantize="nf4", status=status)
    after = load_pipeline("toy")
    quantize_pipeline(after, "nf4")
    for component in ("unet", "text_encoder"):
        mine, theirs = getattr(as_loaded, component).state_dict(), getattr(after, component).state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[key], theirs[key]) for key in mine), component
    assert (pixels(as_loaded) == pixels(after)).all()
    assert status.lines[0] == "loading toy in fp32, nf4"
    layers = sum(1 for m in after.unet.modules() if type(m).__name__ in ("Linear4bit", "Conv2dNF4"))
    assert status.bars == [("quantizing the UNet to nf4", layers)]


def test_the_dtype_asked_for_is_every_component_s_and_it_renders():
    pipeline = load_pipeline("toy", dtype="bf16")
    assert {pipeline.unet.dtype, pipeline.vae.dtype, pipeline.text_encoder.dtype} == {torch.bfloat16}
    assert np.abs(pixels(pipeline) - pixels(load_pipeline("toy"))).mean() < 8  # the same picture, rounded


def test_the_default_dtype_is_fp32_for_a_small_base_on_a_cpu_and_bf16_where_fp32_would_not_fit(monkeypatch):
    import psutil

    from loramix.models.precision import choose_dtype, parameter_count

    files = sorted(bundled_base_path().glob("*/*.safetensors"))
    fp32_bytes = 4 * parameter_count(files)
    cpu = torch.device("cpu")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(total=4 * fp32_bytes))
    assert choose_dtype(None, files, cpu) == torch.float32
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(total=4 * fp32_bytes - 4))
    assert choose_dtype(None, files, cpu) == torch.bfloat16
    assert choose_dtype("fp16", files, cpu) == torch.float16


def test_a_folder_of_fp16_variant_files_loads(tmp_path):
    folder = tmp_path / "base"
    shutil.copytree(bundled_base_path(), folder)
    for weights in folder.glob("*/*.safetensors"):
        weights.rename(weights.with_name(f"{weights.stem}.fp16.safetensors"))
    status = RecordingStatus()
    pipeline = load_pipeline(folder, status=status)
    assert status.lines == ["loading base in fp32 (its fp16 files)"]
    assert (pixels(pipeline) == pixels(load_pipeline("toy"))).all()
    quantized = load_pipeline(folder, quantize="nf4")
    assert type(quantized.unet.conv_in).__name__ == "Conv2dNF4"


def write_checkpoint(path, tensors: dict[str, torch.Tensor]) -> str:
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    return str(path)


UNET_INPUT = "model.diffusion_model.input_blocks.0.0.weight"


@pytest.mark.parametrize("keys, message", [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 8)},
     "a LoRA, not a base model; give it with --lora"),
    ({"first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3)},
     "not a Stable Diffusion checkpoint in the original layout (no model.diffusion_model UNet; its keys start "
     "with first_stage_model)"),
    ({UNET_INPUT: (8, 9, 3, 3), "cond_stage_model.transformer.text_model.final_layer_norm.weight": (8,)},
     "a UNet with 9 input channels (an inpainting or other special model), which loramix does not load"),
    ({UNET_INPUT: (8, 4, 3, 3), "conditioner.embedders.0.model.ln_final.weight": (8,)},
     "an SDXL refiner, which loramix does not load (use the SDXL base)"),
    ({UNET_INPUT: (8, 4, 3, 3)}, "a Stable Diffusion UNet without a text encoder loramix recognises (SD 1.x CLIP, "
                                 "SD 2.x OpenCLIP or SDXL's two)"),
])
def test_a_single_file_that_is_not_a_base_loramix_loads_is_named_for_what_it_is(tmp_path, keys, message):
    path = write_checkpoint(tmp_path / "model.safetensors", {k: torch.zeros(shape) for k, shape in keys.items()})
    with pytest.raises(BaseLoadError) as error:
        load_pipeline(path)
    assert str(error.value) == f"base {path}: {message}"


def test_the_shipped_clip_tokenizer_is_clip_s():
    from loramix.models.architectures import ARCHITECTURES, tokenizers

    sdxl = next(a for a in ARCHITECTURES if a.sdxl)
    made = tokenizers(sdxl)
    # CLIP ViT-L/14's published ids for these words.
    assert made["tokenizer"]("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert made["tokenizer"].pad_token_id == 49407 and made["tokenizer_2"].pad_token_id == 0  # "!"
    assert made["tokenizer"].model_max_length == 77


def test_inspect_compares_with_a_single_file_base_by_its_header(tmp_path):
    """`inspect --base model.safetensors` reads the header only: the architecture it names gives the shapes."""
    from click.testing import CliRunner

    from loramix.cli import main

    sample = "samples/random-a.kohya.safetensors"
    path = write_checkpoint(tmp_path / "sd15-like.safetensors", {
        UNET_INPUT: torch.zeros(8, 4, 3, 3), "cond_stage_model.transformer.text_model.final_layer_norm.weight":
        torch.zeros(8)})
    by_file = CliRunner().invoke(main, ["inspect", sample, "--base", path])
    by_name = CliRunner().invoke(main, ["inspect", sample, "--base", "sd15"])
    assert by_file.exit_code == 0, by_file.output
    assert by_file.output.replace(path, "sd15") == by_name.output


def test_status_lines_go_to_standard_error_only_when_shown(capsys):
    from loramix.cli.status import TerminalStatus

    TerminalStatus(shown=True)("loading sd15 in fp32")
    assert list(TerminalStatus(shown=True).bar([1, 2, 3], "quantizing")) == [1, 2, 3]
    TerminalStatus(shown=False)("not this")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("loading sd15 in fp32 …\n")
    assert "quantizing" in captured.err and "not this" not in captured.err


def test_each_model_loads_in_the_precision_it_is_stored_in_before_the_cast(tmp_path):
    """A folder whose VAE is stored in fp32 beside an fp16 UNet keeps every bit of the VAE in fp32: the models
    are not all read in the UNet's precision first."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "base"
    shutil.copytree(bundled_base_path(), folder)
    vae_file = folder / "vae" / "diffusion_pytorch_model.safetensors"
    generator = torch.Generator().manual_seed(0)
    finer = {key: tensor.float() + 1e-5 * torch.randn(tensor.shape, generator=generator)
             for key, tensor in load_file(str(vae_file)).items()}  # values fp16 cannot hold
    save_file(finer, str(vae_file))
    vae = load_pipeline(folder, dtype="fp32").vae.state_dict()
    assert all(torch.equal(vae[key], tensor) for key, tensor in finer.items())
