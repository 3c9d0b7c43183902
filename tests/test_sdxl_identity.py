"""SDXL files keep their identity through read → compose → write, in both namings, whatever subset of the three
components they hold; checked against diffusers' own SDXL key mapping."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from loramix.cli import main
from loramix.formats.read import read_adapter
from loramix.models.shapes import load_base_shapes
from loramix.testing import random_adapter

SUBSETS = {
    "te1": lambda k: k.startswith("text_encoder.") and ".layers.0.self_attn." in k,
    "te2": lambda k: k.startswith("text_encoder_2.") and ".layers.0.self_attn." in k,
    "unet": lambda k: k.startswith("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2."),
}
PREFIX = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_", "unet": "lora_unet_"}


@pytest.fixture(scope="module")
def sdxl_shapes():
    shapes = load_base_shapes("sdxl").weight_shapes
    return {k: tuple(v) for k, v in shapes.items() if len(v) == 2 and k.endswith(("_proj", ".to_q", ".to_k",
                                                                                    ".to_v", ".to_out.0"))}


def kohya_file_without_metadata(shapes, path):
    """What sd-scripts writes for an SDXL LoRA, less its ss_* metadata: `lora_te1_` / `lora_te2_` names."""
    adapter = random_adapter(shapes, rank=2, alpha=1.0, seed=3)
    tensors = {}
    for key, module in adapter.modules.items():
        component, module_path = key.split(".", 1)
        name = PREFIX[component] + module_path.replace(".", "_")
        tensors[f"{name}.lora_down.weight"] = module.down
        tensors[f"{name}.lora_up.weight"] = module.up
        tensors[f"{name}.alpha"] = torch.tensor(module.alpha)
    save_file(tensors, str(path))
    return adapter


def keys_and_metadata(path):
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys()), f.metadata()


@pytest.mark.parametrize("subset", SUBSETS)
def test_an_sdxl_subset_keeps_its_names_and_base_through_compose(subset, sdxl_shapes, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    shapes = {k: v for k, v in sdxl_shapes.items() if SUBSETS[subset](k)}
    source = tmp_path / "in.safetensors"
    kohya_file_without_metadata(shapes, source)
    read = read_adapter(source)
    assert read.base_version == "sdxl_base_v1-0", "told from the lora_te1_/lora_te2_ names or the 2048-wide text"
    component = next(iter(shapes)).split(".")[0]
    for naming in ("kohya", "diffusers"):
        out = tmp_path / f"out-{naming}.safetensors"
        result = CliRunner().invoke(main, ["compose", f"{source}:0.5", "-o", str(out), "--format", naming])
        assert result.exit_code == 0, result.output
        keys, metadata = keys_and_metadata(out)
        assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
        if naming == "kohya":
            assert all(k.startswith(PREFIX[component]) for k in keys), keys[:3]
        again = read_adapter(out)
        assert again.base_version == "sdxl_base_v1-0" and again.components == [component]
        # diffusers' own SDXL loader puts every module in the component it came from
        state = StableDiffusionXLPipeline.lora_state_dict(str(out))[0]
        assert len(state) == 2 * len(shapes)
        assert {k.split(".")[0] for k in state} == {component}, sorted(state)[:3]


def test_an_sd1_and_an_sdxl_text_encoder_lora_are_not_composed(sdxl_shapes, tmp_path):
    shapes = {k: v for k, v in sdxl_shapes.items() if SUBSETS["te1"](k)}
    sdxl, sd1 = tmp_path / "sdxl.safetensors", tmp_path / "sd1.safetensors"
    kohya_file_without_metadata(shapes, sdxl)
    tensors = {k.replace("lora_te1_", "lora_te_"): v for k, v in safe_open_all(sdxl).items()}
    save_file(tensors, str(sd1), metadata={"ss_base_model_version": "sd_v1"})
    result = CliRunner().invoke(main, ["compose", str(sdxl), str(sd1), "-o", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {sdxl} is for sdxl_base_v1-0, {sd1} for sd_v1: they were made for "
                                     "different base models")
    assert not (tmp_path / "x.safetensors").exists()


def safe_open_all(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}
