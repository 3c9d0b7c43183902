"""The single-file (original, SGM) UNet layout that `extract` and `bake` read, checked against diffusers' own
converter: a tiny SD-shaped UNet's weights are written in the original layout by the rules below, diffusers'
`convert_ldm_unet_checkpoint` must give back exactly the diffusers state dict, and loramix must name every
original key's module as diffusers does."""

from __future__ import annotations

import re

import torch

from loramix.formats.checkpoint import CheckpointFile

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
       "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def tiny_sd_unet():
    """SD's block layout (two layers per down block, attention in some levels) at toy width."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )


def original_name(key: str, up_has_attention: list[bool]) -> str:
    """A diffusers UNet key in the original layout, by the published SD checkpoint's naming."""
    for diffusers, original in TOP.items():
        if key.startswith(diffusers + "."):
            return original + key[len(diffusers):]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"input_blocks.{3 * level + layer + 1}.{0 if kind == 'resnets' else 1}.{_resnet(kind, rest)}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{3 * int(m[1]) + 3}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        index = 1 if m[1] == "attentions" else 2 * int(m[2])
        return f"middle_block.{index}.{_resnet(m[1], m[3])}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks.{3 * level + layer}.{0 if kind == 'resnets' else 1}.{_resnet(kind, rest)}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        level = int(m[1])
        return f"output_blocks.{3 * level + 2}.{2 if up_has_attention[level] else 1}.{m[2]}"
    raise AssertionError(f"no original name for {key}")


def _resnet(kind: str, rest: str) -> str:
    if kind != "resnets":
        return rest
    layer, _, tail = rest.partition(".")
    return f"{RESNET[layer]}.{tail}"


def test_loramix_names_original_keys_as_diffusers_converter_reads_them(tmp_path):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = tiny_sd_unet()
    state = unet.state_dict()
    attention = ["Attn" in t for t in unet.config.up_block_types]
    original = {f"model.diffusion_model.{original_name(k, attention)}": v for k, v in state.items()}
    converted = convert_ldm_unet_checkpoint(original, unet.config)
    assert sorted(converted) == sorted(state)
    for key, value in converted.items():  # the original layout written here is the one diffusers reads
        assert torch.equal(value.reshape(state[key].shape), state[key]), key
    by_tensor = {id(v): k for k, v in state.items()}
    file = CheckpointFile(tmp_path / "x.safetensors", None)
    for key, value in original.items():
        if key.endswith(".weight"):
            assert file.module_of(key) == "unet." + by_tensor[id(value)].removesuffix(".weight"), key


def test_bake_and_extract_work_on_single_files_in_the_original_layout(tmp_path):
    from click.testing import CliRunner
    from safetensors import safe_open
    from safetensors.torch import save_file

    from loramix.cli import main
    from loramix.formats.read import read_adapter
    from loramix.formats.write import write_adapter
    from loramix.testing import random_adapter

    unet = tiny_sd_unet()
    attention = ["Attn" in t for t in unet.config.up_block_types]
    state = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    base = tmp_path / "base.safetensors"
    save_file({f"model.diffusion_model.{original_name(k, attention)}": v for k, v in state.items()}, str(base),
              metadata={"modelspec.title": "tiny"})
    shapes = {f"unet.{k.removesuffix('.weight')}": tuple(v.shape) for k, v in state.items()
              if k.endswith(("attn2.to_k.weight", "ff.net.2.weight", "resnets.1.conv2.weight"))}
    lora = random_adapter(shapes, rank=2, alpha=2.0, seed=4)
    lora_file, baked, extracted = tmp_path / "l.safetensors", tmp_path / "baked.safetensors", tmp_path / "x.safetensors"
    write_adapter(lora, lora_file)

    result = CliRunner().invoke(main, ["bake", str(base), f"{lora_file}:0.5", "-o", str(baked)])
    assert result.exit_code == 0, result.output
    with safe_open(str(baked), framework="pt") as f:
        assert f.metadata()["modelspec.title"] == "tiny"
        for key, value in state.items():
            module = lora.modules.get(f"unet.{key.removesuffix('.weight')}")
            expected = value if module is None else value + 0.5 * module.delta()
            torch.testing.assert_close(f.get_tensor(f"model.diffusion_model.{original_name(key, attention)}"),
                                       expected, rtol=1e-6, atol=1e-6)

    result = CliRunner().invoke(main, ["extract", str(baked), str(base), "--rank", "2", "--conv-rank", "2",
                                       "--clamp-quantile", "1", "--dtype", "fp32", "-o", str(extracted)])
    assert result.exit_code == 0, result.output
    back = read_adapter(extracted)
    assert sorted(back.modules) == sorted(lora.modules)
    for key, module in lora.modules.items():
        torch.testing.assert_close(back.modules[key].delta(), 0.5 * module.delta(), rtol=1e-4, atol=1e-5)
