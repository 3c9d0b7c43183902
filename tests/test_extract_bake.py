"""`loramix extract` and `loramix bake` on copies of the shipped toy base (a diffusers folder, in fp32 so that
differences are exact to float precision): bake adds Σ wᵢ·ΔWᵢ, extract recovers a known low-rank difference, and
extracting what was baked gives the LoRA back."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from loramix.cli import main
from loramix.formats.read import read_adapter
from loramix.formats.write import write_adapter
from loramix.lora.adapter import LoraAdapter, LoraModule
from loramix.models.load import bundled_base_path
from loramix.testing import assert_clean_error

FILES = {"unet": "unet/diffusion_pytorch_model.safetensors", "text_encoder": "text_encoder/model.safetensors"}


def tensors_of(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    for name in FILES.values():
        (folder / name).parent.mkdir(parents=True)
        save_file({k: v.float() for k, v in tensors_of(bundled_base_path() / name).items()}, str(folder / name))
    (folder / "model_index.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def lora(base_folder):
    """A rank-2 LoRA on two attention projections, a 3×3 conv and a text-encoder projection of the toy base."""
    unet, te = tensors_of(base_folder / FILES["unet"]), tensors_of(base_folder / FILES["text_encoder"])
    attention = [k for k in unet if k.endswith(("attn1.to_q.weight", "attn2.to_v.weight"))][:2]
    conv = next(k for k in unet if k.endswith("resnets.0.conv1.weight"))
    q_proj = next(k for k in te if k.endswith("layers.0.self_attn.q_proj.weight"))
    g = torch.Generator().manual_seed(0)
    modules = {}
    for component, key, shape in [*(("unet", k, unet[k].shape) for k in (*attention, conv)),
                                  ("text_encoder", q_proj, te[q_proj].shape)]:
        down = torch.randn(2, *shape[1:], generator=g) * 0.1
        up = torch.randn(shape[0], 2, *([1, 1] if len(shape) == 4 else []), generator=g) * 0.1
        path = key.removesuffix(".weight")
        modules[f"{component}.{'text_model.' if component == 'text_encoder' else ''}{path}"] = LoraModule(down, up, 1.0)
    return LoraAdapter(modules)


def test_bake_adds_the_weighted_delta_and_leaves_the_rest(base_folder, lora, tmp_path):
    lora_file, out = tmp_path / "l.safetensors", tmp_path / "baked"
    write_adapter(lora, lora_file)
    result = CliRunner().invoke(main, ["bake", str(base_folder), f"{lora_file}:0.8", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {out}: {base_folder} with 1 LoRAs added into 4 weights\n"
    assert (out / "model_index.json").is_file()
    for component, name in FILES.items():
        before, after = tensors_of(base_folder / name), tensors_of(out / name)
        assert sorted(before) == sorted(after)
        for key in before:
            module = lora.modules.get(f"{component}.{'text_model.' if component == 'text_encoder' else ''}"
                                      f"{key.removesuffix('.weight')}")
            if module is None:
                assert torch.equal(before[key], after[key]), key
            else:
                expected = before[key].double() + 0.8 * module.delta(torch.float64)
                torch.testing.assert_close(after[key].double(), expected, rtol=1e-6, atol=1e-6)


def test_extract_of_a_baked_lora_gives_it_back(base_folder, lora, tmp_path):
    lora_file, baked, out = tmp_path / "l.safetensors", tmp_path / "baked", tmp_path / "x.safetensors"
    write_adapter(lora, lora_file)
    assert CliRunner().invoke(main, ["bake", str(base_folder), str(lora_file), "-o", str(baked)]).exit_code == 0
    result = CliRunner().invoke(main, ["extract", str(baked), str(base_folder), "--rank", "2", "--conv-rank", "2",
                                       "--clamp-quantile", "1", "--dtype", "fp32", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {out}: 4 modules, rank 2; Frobenius norm of the difference kept ")
    extracted = read_adapter(out)
    assert sorted(extracted.modules) == sorted(lora.modules)
    for key, module in lora.modules.items():
        torch.testing.assert_close(extracted.modules[key].delta(torch.float64), module.delta(torch.float64),
                                   rtol=1e-4, atol=1e-5)


def test_extract_clamps_at_the_quantile_as_kohya_does(base_folder, lora, tmp_path):
    from loramix.jobs.extract import extract_lora

    lora_file, baked = tmp_path / "l.safetensors", tmp_path / "baked"
    write_adapter(lora, lora_file)
    assert CliRunner().invoke(main, ["bake", str(base_folder), str(lora_file), "-o", str(baked)]).exit_code == 0
    clamped, _ = extract_lora(baked, base_folder, rank=2, clamp_quantile=0.9)
    free, _ = extract_lora(baked, base_folder, rank=2, clamp_quantile=None)
    for key, module in free.modules.items():
        values = torch.cat([module.up.flatten(), module.down.flatten()])
        limit = torch.quantile(values, 0.9)
        torch.testing.assert_close(clamped.modules[key].up, module.up.clamp(-limit, limit))
        torch.testing.assert_close(clamped.modules[key].down, module.down.clamp(-limit, limit))


def test_extract_refuses_two_architectures(base_folder, tmp_path):
    other = tmp_path / "other"
    for name in FILES.values():
        (other / name).parent.mkdir(parents=True)
        tensors = tensors_of(base_folder / name)
        key = sorted(tensors)[-1]
        tensors[key] = torch.zeros(3, 3)
        save_file(tensors, str(other / name))
    out = tmp_path / "x.safetensors"
    result = CliRunner().invoke(main, ["extract", str(other), str(base_folder), "-o", str(out)])
    assert_clean_error(result, f"{other / FILES['unet']} and {base_folder / FILES['unet']} are different "
                               "architectures: ", "is (3, 3) in one")
    assert not out.exists()


def test_bake_refuses_a_quantized_base_and_an_unwritable_place(base_folder, lora, tmp_path):
    lora_file = tmp_path / "l.safetensors"
    write_adapter(lora, lora_file)
    quantized = tmp_path / "q"
    for name in FILES.values():
        (quantized / name).parent.mkdir(parents=True)
        tensors = tensors_of(base_folder / name)
        tensors["x.weight.absmax"] = torch.ones(2)
        save_file(tensors, str(quantized / name))
    out = tmp_path / "baked"
    result = CliRunner().invoke(main, ["bake", str(quantized), str(lora_file), "-o", str(out)])
    assert_clean_error(result, f"{quantized}: a quantized checkpoint (x.weight.absmax): adding ΔW to quantized codes")
    assert not out.exists()
    result = CliRunner().invoke(main, ["bake", str(base_folder), str(lora_file), "-o", "/proc/loramix-baked"])
    assert_clean_error(result, "/proc/loramix-baked: cannot write there")


@pytest.mark.parametrize("key, module", [
    ("model.diffusion_model.input_blocks.1.1.proj_in.weight", "unet.down_blocks.0.attentions.0.proj_in"),
    ("model.diffusion_model.output_blocks.5.1.transformer_blocks.0.attn2.to_k.weight",
     "unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k"),
    ("model.diffusion_model.input_blocks.4.0.in_layers.2.weight", "unet.down_blocks.1.resnets.0.conv1"),
    ("cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.weight",
     "text_encoder.text_model.encoder.layers.3.mlp.fc1"),
    ("conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
     "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"),
    ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", None),
    ("first_stage_model.encoder.conv_in.weight", None),
])
def test_single_file_keys_name_their_modules(key, module, tmp_path):
    from loramix.formats.checkpoint import CheckpointFile

    assert CheckpointFile(tmp_path / "x.safetensors", None).module_of(key) == module
