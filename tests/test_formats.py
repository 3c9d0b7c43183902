"""Reading and writing LoRA files in kohya and diffusers naming, checked against diffusers' own loader."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loramix.formats.kohya import flatten_path, kohya_module_path, unflatten_path
from loramix.formats.read import read_adapter
from loramix.formats.write import write_adapter
from loramix.lora.adapter import LoraAdapter
from loramix.models.shapes import load_base_shapes
from loramix.testing import fused, outputs, random_adapter


def tensors_of(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def metadata_of(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def kohya_file_as_sd_scripts_writes(adapter: LoraAdapter, path, dtype=torch.float16) -> None:
    """What kohya sd-scripts saves: fp16 factors, a per-module alpha in the same dtype, ss_* metadata."""
    prefixes = {"unet": "lora_unet", "text_encoder": "lora_te"}
    tensors = {}
    for key, module in adapter.modules.items():
        component, module_path = key.split(".", 1)
        name = f"{prefixes[component]}_{module_path.replace('.', '_')}"
        tensors[f"{name}.lora_down.weight"] = module.down.to(dtype)
        tensors[f"{name}.lora_up.weight"] = module.up.to(dtype)
        tensors[f"{name}.alpha"] = torch.tensor(module.alpha).to(dtype)
    save_file(tensors, str(path), metadata={"ss_network_dim": "4", "ss_network_alpha": "2",
                                            "ss_output_name": "sample"})


def load_with_diffusers(path, unet, clip):
    """What `StableDiffusionPipeline.load_lora_weights` does, on models without a whole pipeline."""
    from diffusers import StableDiffusionPipeline as Pipeline

    unet, clip = copy.deepcopy(unet), copy.deepcopy(clip)
    state_dict, alphas, metadata = Pipeline.lora_state_dict(str(path), return_lora_metadata=True)
    Pipeline.load_lora_into_unet(state_dict, alphas, unet, metadata=metadata)
    if any(k.startswith("text_encoder.") for k in state_dict):
        Pipeline.load_lora_into_text_encoder(state_dict, alphas, clip, metadata=metadata)
    return unet, clip


@pytest.fixture(scope="module")
def adapter(unet_attention_shapes, clip_attention_shapes) -> LoraAdapter:
    unet_part = random_adapter(unet_attention_shapes, rank=4, alpha=2.0, seed=1)
    clip_part = random_adapter(clip_attention_shapes, rank=4, alpha=8.0, seed=2)
    return LoraAdapter({**unet_part.modules, **clip_part.modules})


# --- names -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("base", ["sd15", "sdxl"])
def test_kohya_names_round_trip_every_module_of_the_real_architectures(base):
    shapes = load_base_shapes(base)
    assert len(shapes.weight_shapes) > 300
    for key in shapes.weight_shapes:
        module_path = key.split(".", 1)[1]
        assert unflatten_path(flatten_path(module_path)) == module_path


SGM_TO_DIFFUSERS = {
    "input_blocks_4_1_transformer_blocks_0_attn1_to_q": "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "input_blocks_8_1_transformer_blocks_9_attn2_to_out_0":
        "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_out.0",
    "input_blocks_7_1_proj_in": "down_blocks.2.attentions.0.proj_in",
    "middle_block_1_transformer_blocks_3_ff_net_0_proj": "mid_block.attentions.0.transformer_blocks.3.ff.net.0.proj",
    "output_blocks_0_1_proj_out": "up_blocks.0.attentions.0.proj_out",
    "output_blocks_5_1_transformer_blocks_1_attn1_to_k": "up_blocks.1.attentions.2.transformer_blocks.1.attn1.to_k",
    "input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
    "input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
    "output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
    "output_blocks_8_0_skip_connection": "up_blocks.2.resnets.2.conv_shortcut",
    "middle_block_2_emb_layers_1": "mid_block.resnets.1.time_emb_proj",
    "input_blocks_0_0": "conv_in",
    "out_2": "conv_out",
}


def test_sdxl_sgm_block_names_map_to_real_sdxl_modules():
    sdxl = load_base_shapes("sdxl").weight_shapes
    for sgm, expected in SGM_TO_DIFFUSERS.items():
        assert kohya_module_path("unet", sgm) == expected
        assert f"unet.{expected}" in sdxl, expected


def test_sgm_block_mapping_agrees_with_diffusers_for_transformer_blocks():
    from types import SimpleNamespace

    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    transformer_names = [n for n in SGM_TO_DIFFUSERS if "_1_" in n and ("transformer" in n or "proj_" in n)]
    state_dict = {f"lora_unet_{name}.lora_down.weight": torch.zeros(1) for name in transformer_names}
    remapped = _maybe_map_sgm_blocks_to_diffusers(dict(state_dict), SimpleNamespace(layers_per_block=2))
    renames = {"input.blocks": "down_blocks", "middle.block": "mid_block", "output.blocks": "up_blocks"}
    theirs = []
    for key in remapped:  # diffusers renumbers the blocks here and renames them in a later step
        name = unflatten_path(key.split(".")[0].removeprefix("lora_unet_"))
        for old, new in renames.items():
            name = name.replace(old, new)
        theirs.append(name)
    theirs.sort()
    assert theirs == sorted(kohya_module_path("unet", n) for n in transformer_names)


# --- round trips -------------------------------------------------------------------------------------------

def test_kohya_round_trip_is_bit_exact(adapter, tmp_path):
    source = tmp_path / "from_kohya.safetensors"
    kohya_file_as_sd_scripts_writes(adapter, source)
    loaded = read_adapter(source)
    assert loaded.source_format == "kohya"
    assert loaded.metadata["ss_output_name"] == "sample"
    write_adapter(loaded, tmp_path / "again.safetensors", format="kohya")
    assert_same_tensors(tensors_of(source), tensors_of(tmp_path / "again.safetensors"))


def test_diffusers_round_trip_is_bit_exact(unet, clip, tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    unet, clip = copy.deepcopy(unet), copy.deepcopy(clip)
    unet_config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_v"], init_lora_weights=False,
                             rank_pattern={"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": 2})
    clip_config = LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj"], init_lora_weights=False)
    inject_adapter_in_model(unet_config, unet)
    inject_adapter_in_model(clip_config, clip)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(unet),
        text_encoder_lora_layers=get_peft_model_state_dict(clip),
        unet_lora_adapter_metadata=unet_config.to_dict(), text_encoder_lora_adapter_metadata=clip_config.to_dict())
    source = tmp_path / "pytorch_lora_weights.safetensors"
    loaded = read_adapter(source)
    assert loaded.source_format == "diffusers"
    attn1_q = loaded.modules["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert (attn1_q.rank, attn1_q.alpha) == (2, 8)
    assert {m.alpha for k, m in loaded.modules.items() if k.startswith("text_encoder.")} == {3}
    write_adapter(loaded, tmp_path / "again.safetensors", format="diffusers")
    # transformers 5 dropped CLIPTextModel's `text_model` level, so diffusers now saves text-encoder keys
    # without it; loramix writes the spelling every diffusers version loads. Values are untouched.
    respelled = {k.replace("text_encoder.encoder.", "text_encoder.text_model.encoder."): t
                 for k, t in tensors_of(source).items()}
    assert_same_tensors(respelled, tensors_of(tmp_path / "again.safetensors"))
    again = read_adapter(tmp_path / "again.safetensors")
    assert {k: (m.rank, m.alpha) for k, m in again.modules.items()} == {
        k: (m.rank, m.alpha) for k, m in loaded.modules.items()}
    write_adapter(again, tmp_path / "third.safetensors", format="diffusers")
    assert_same_tensors(tensors_of(tmp_path / "again.safetensors"), tensors_of(tmp_path / "third.safetensors"))


# --- against diffusers' loader -----------------------------------------------------------------------------

def test_kohya_file_changes_the_model_as_diffusers_load_lora_weights_does(adapter, unet, clip, tmp_path):
    path = tmp_path / "kohya.safetensors"
    kohya_file_as_sd_scripts_writes(adapter, path, dtype=torch.float32)
    ours = read_adapter(path)
    by_diffusers = outputs(*load_with_diffusers(path, unet, clip))
    by_loramix = outputs(fused(unet, ours, "unet"), fused(clip, ours, "text_encoder"))
    base = outputs(unet, clip)
    for theirs, mine, before in zip(by_diffusers, by_loramix, base):
        assert not torch.allclose(theirs, before, atol=1e-4)  # the LoRA really changes the output
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("file_format", ["diffusers", "kohya"])
def test_files_loramix_writes_load_in_diffusers_with_their_ranks_and_alphas(file_format, adapter, unet, clip,
                                                                          tmp_path):
    mixed = copy.deepcopy(adapter)
    first = next(k for k in mixed.modules if k.startswith("unet."))
    mixed.modules[first].down = mixed.modules[first].down[:2].clone()  # one module of another rank
    mixed.modules[first].up = mixed.modules[first].up[:, :2].clone()
    if file_format == "diffusers":
        # diffusers' kohya reader builds its alpha_pattern from keys that match no module, so a kohya file
        # whose modules have different alphas loads wrong in diffusers (A1111 and ComfyUI read it right).
        mixed.modules[first].alpha = 5.0
    path = tmp_path / f"{file_format}.safetensors"
    write_adapter(mixed, path, format=file_format)
    by_diffusers = outputs(*load_with_diffusers(path, unet, clip))
    by_loramix = outputs(fused(unet, mixed, "unet"), fused(clip, mixed, "text_encoder"))
    for theirs, mine in zip(by_diffusers, by_loramix):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_kohya_names_match_diffusers_kohya_converter(adapter, tmp_path):
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    unet_only = LoraAdapter({k: m for k, m in adapter.modules.items() if k.startswith("unet.")})
    peft_state = {}
    for key, module in unet_only.modules.items():
        peft_state[f"{key}.lora_A.weight"] = module.down
        peft_state[f"{key}.lora_B.weight"] = module.up
    theirs = convert_state_dict_to_kohya(peft_state)
    write_adapter(unet_only, tmp_path / "k.safetensors", format="kohya")
    ours = tensors_of(tmp_path / "k.safetensors")
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        if not key.endswith(".alpha"):  # diffusers writes alpha = rank; ours keeps the adapter's alpha
            assert torch.equal(ours[key], theirs[key])


def test_metadata_is_written_for_both_ecosystems(adapter, tmp_path):
    path = tmp_path / "meta.safetensors"
    write_adapter(adapter, path, format="kohya",
                  metadata={"loramix_base_model": "toy", "loramix_trigger_words": "mustache"})
    meta = metadata_of(path)
    assert meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "2"  # the most common alpha: 32 UNet modules at 2 against 8 at 8
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_base_model_version"] == "unknown"  # the tiny UNet reads 32-wide text, no known SD
    assert meta["loramix_base_model"] == "toy"
    assert meta["loramix_trigger_words"] == "mustache"
    assert meta["loramix_rank"] == "4"
    assert meta["loramix_alpha"] == "2,8"
    assert meta["loramix_targets"] == "unet:to_k,unet:to_out.0,unet:to_q,unet:to_v,text_encoder:k_proj," \
                                      "text_encoder:out_proj,text_encoder:q_proj,text_encoder:v_proj"
    assert "loramix_version" in meta


def test_sd15_shaped_adapter_is_recognised_as_sd_v1():
    shapes = {k: v for k, v in load_base_shapes("sd15").weight_shapes.items() if k.endswith(".attn2.to_k")}
    adapter = random_adapter(shapes, rank=1, alpha=1, seed=0)
    from loramix.formats.write import base_model_version

    assert base_model_version(adapter) == "sd_v1"


# --- older and other layouts -------------------------------------------------------------------------------

def test_older_diffusers_key_names_are_read(tmp_path):
    down, up = torch.randn(2, 32), torch.randn(32, 2)
    tensors = {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight": down,
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight": up,
        "unet.mid_block.attentions.0.proj_in.lora.down.weight": down,
        "unet.mid_block.attentions.0.proj_in.lora.up.weight": up,
        "unet.mid_block.attentions.0.proj_in.alpha": torch.tensor(1.0),
        "text_encoder.text_model.encoder.layers.0.self_attn.to_k_lora.down.weight": down,
        "text_encoder.text_model.encoder.layers.0.self_attn.to_k_lora.up.weight": up,
        "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.down.weight": down,
        "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight": up,
    }
    save_file({k: t.clone() for k, t in tensors.items()}, str(tmp_path / "old.safetensors"))
    adapter = read_adapter(tmp_path / "old.safetensors")
    assert sorted(adapter.modules) == [
        "text_encoder.text_model.encoder.layers.0.mlp.fc1",
        "text_encoder.text_model.encoder.layers.0.self_attn.k_proj",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
        "unet.mid_block.attentions.0.proj_in",
    ]
    assert adapter.modules["unet.mid_block.attentions.0.proj_in"].alpha == 1.0
    assert adapter.modules["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"].alpha == 2


def test_peft_adapter_folder_is_read_with_its_config(clip, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(clip), LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj"],
                                                           alpha_pattern={"layers.1.self_attn.q_proj": 2}))
    model.save_pretrained(tmp_path / "adapter")
    adapter = read_adapter(tmp_path / "adapter")
    assert adapter.source_format == "peft"
    assert {k: m.alpha for k, m in adapter.modules.items()} == {
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": 16,
        "text_encoder.text_model.encoder.layers.1.self_attn.q_proj": 2,
    }


@pytest.mark.parametrize("kernel", [1, 3])
def test_conv_loras_round_trip_and_match_diffusers(kernel, unet, clip, tmp_path):
    shapes = {"unet.down_blocks.0.resnets.0.conv1": (32, 32, kernel, kernel),
              "unet.conv_in": (32, 4, kernel, kernel)}
    local = copy.deepcopy(unet)
    if kernel == 1:  # give the tiny UNet 1x1 convs where it has 3x3 ones, so the shapes are real
        local.conv_in = torch.nn.Conv2d(4, 32, 1)
        local.down_blocks[0].resnets[0].conv1 = torch.nn.Conv2d(32, 32, 1)
    adapter = random_adapter(shapes, rank=3, alpha=1.5, seed=4)
    path = tmp_path / "conv.safetensors"
    kohya_file_as_sd_scripts_writes(adapter, path, dtype=torch.float32)
    loaded = read_adapter(path)
    assert loaded.modules["unet.conv_in"].is_conv
    write_adapter(loaded, tmp_path / "again.safetensors", format="kohya")
    assert_same_tensors(tensors_of(path), tensors_of(tmp_path / "again.safetensors"))
    by_diffusers = outputs(*load_with_diffusers(path, local, clip))[0]
    by_loramix = outputs(fused(local, loaded, "unet"), clip)[0]
    torch.testing.assert_close(by_loramix, by_diffusers, rtol=1e-5, atol=1e-5)


def test_lora_adapter_metadata_json_is_what_diffusers_expects(adapter, tmp_path):
    write_adapter(adapter, tmp_path / "d.safetensors", format="diffusers")
    fields = json.loads(metadata_of(tmp_path / "d.safetensors")["lora_adapter_metadata"])
    assert fields["unet.r"] == 4 and fields["unet.lora_alpha"] == 2
    assert fields["text_encoder.lora_alpha"] == 8
    assert len(fields["unet.target_modules"]) == 32
