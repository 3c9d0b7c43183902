"""Hashes as A1111, Civitai and kohya compute them; block weights as A1111's lora-block-weight applies them."""

from __future__ import annotations

import hashlib
import struct

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save, save_file

from loramix.cli import main
from loramix.formats.kohya import kohya_module_path
from loramix.formats.metadata import short_hash
from loramix.formats.read import read_adapter
from loramix.formats.write import write_adapter
from loramix.lora.blocks import block_of
from loramix.models.shapes import load_base_shapes
from loramix.testing import assert_clean_error, random_adapter


def after_header(data: bytes) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    return data[8 + n:]


def test_written_files_carry_kohyas_hashes_and_a1111_reads_them(tmp_path):
    shapes = {f"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_{p}": (512, 512) for p in "qkv"}
    path = tmp_path / "big.safetensors"  # over 1 MiB, so the legacy hash reads real bytes
    write_adapter(random_adapter(shapes, 256, 256.0, 0), path, metadata={"loramix_trigger_words": "x"})
    data = path.read_bytes()
    assert len(data) > 0x110000
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert metadata["sshs_model_hash"] == hashlib.sha256(after_header(data)).hexdigest()
    training_only = save(tensors, metadata={k: v for k, v in metadata.items() if k.startswith("ss_")})
    assert metadata["sshs_legacy_hash"] == hashlib.sha256(training_only[0x100000:0x110000]).hexdigest()[:8]
    assert short_hash(path) == metadata["sshs_model_hash"][:12]
    result = CliRunner().invoke(main, ["inspect", str(path)])
    autov2 = hashlib.sha256(data).hexdigest()[:10]
    assert f"hashes      A1111 {metadata['sshs_model_hash'][:12]}, AutoV2 {autov2}, SHA-256 " in result.output


def test_a1111_hash_of_a_file_without_precomputed_hashes_skips_the_header(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    tensors = {"lora_unet_x.lora_down.weight": torch.ones(2, 4), "lora_unet_x.lora_up.weight": torch.ones(4, 2)}
    save_file(tensors, str(a), metadata={"ss_output_name": "a"})
    save_file(tensors, str(b), metadata={"ss_output_name": "a much longer name"})
    assert short_hash(a) == short_hash(b) == hashlib.sha256(after_header(a.read_bytes())).hexdigest()[:12]


@pytest.mark.parametrize("sgm, block", [
    ("input_blocks_1_1_proj_in", "IN01"), ("input_blocks_3_0_op", "IN03"), ("input_blocks_4_1_proj_out", "IN04"),
    ("input_blocks_8_0_in_layers_2", "IN08"), ("input_blocks_11_0_out_layers_3", "IN11"),
    ("middle_block_1_proj_in", "MID"), ("output_blocks_0_0_skip_connection", "OUT00"),
    ("output_blocks_2_1_conv", "OUT02"), ("output_blocks_5_2_conv", "OUT05"), ("output_blocks_11_1_proj_out", "OUT11"),
])
def test_blocks_are_the_sgm_blocks_kohya_names_say(sgm, block):
    assert block_of("unet." + kohya_module_path("unet", sgm)) == block


def sd15_attention_lora(tmp_path, name="a"):
    shapes = {k: tuple(v) for k, v in load_base_shapes("sd15").weight_shapes.items()
              if k.endswith("transformer_blocks.0.attn2.to_v") or k.endswith("layers.0.self_attn.q_proj")}
    path = tmp_path / f"{name}.safetensors"
    write_adapter(random_adapter(shapes, 1, 1.0, 7), path)
    return str(path)


def test_block_weights_are_one_more_scalar_in_the_sum(tmp_path):
    path = sd15_attention_lora(tmp_path)
    out = tmp_path / "ins.safetensors"
    result = CliRunner().invoke(main, ["compose", f"{path}:0.8:lbw=INS", "-o", str(out)])
    assert result.exit_code == 0, result.output
    source, composed = read_adapter(path), read_adapter(out)
    assert composed.metadata["loramix_composed_from"] == f"{path}:0.8:lbw=INS"
    ins = {"BASE", "IN01", "IN02"}  # INS = 1,1,1,1,0,…: BASE, IN01, IN02, IN04 on
    ins.add("IN04")
    for key, module in source.modules.items():
        weight = 0.8 if block_of(key) in ins else 0.0
        torch.testing.assert_close(composed.modules[key].delta(), weight * module.delta(), rtol=1e-6, atol=1e-7)
    assert {block_of(k) for k in source.modules} >= {"BASE", "IN01", "MID", "OUT11"}


def test_block_weights_of_the_wrong_count_are_refused(tmp_path):
    path = sd15_attention_lora(tmp_path)
    out = tmp_path / "x.safetensors"
    result = CliRunner().invoke(main, ["compose", f"{path}:1:lbw=1,0,0,0,0,1,1,1,0,0,0,0", "-o", str(out)])
    assert_clean_error(result, f"{path}: lbw has 12 values, an SD 1.x LoRA takes 17 (BASE, IN01, IN02, IN04",
                       "or 26 (12 is the SDXL count)")
    result = CliRunner().invoke(main, ["compose", f"{path}:1:lbw=NOPE", "-o", str(out)])
    assert_clean_error(result, f"{path}: lbw='NOPE' is neither 17 numbers nor a preset (NONE, ALL, INS")
    assert not out.exists()


def test_prompt_file_rows_carry_block_weights_in_either_spelling(tmp_path):
    from loramix.render.prompts import parse_row

    (tmp_path / "a.safetensors").write_bytes(b"")
    row = parse_row({"prompt": "a face", "loras": ["a.safetensors:0.5:lbw=INS",
                                                   {"path": "a.safetensors", "weight": 0.7, "lbw": "1,0,0"}]},
                    1, tmp_path)
    assert [(wf.weight, wf.lbw, wf.strength) for wf in row.loras] == [(0.5, "INS", "0.5:lbw=INS"),
                                                                       (0.7, "1,0,0", "0.7:lbw=1,0,0")]
