"""A 4-bit / int8 base: which layers change, that the maths is dequantize-then-compute, bytes, and QLoRA training.

The models are tiny but real (diffusers UNet, transformers CLIP), every Linear input a multiple of 64 as
bitsandbytes' 4-bit kernels want.
"""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes.functional import dequantize_4bit, has_avx512bf16
from peft import LoraConfig, get_peft_model, inject_adapter_in_model
from peft.tuners.lora import bnb as peft_bnb
from torch import nn

from loramix.errors import LoramixError
from loramix.models.quantize import QUANTIZE_MODES, Conv2dNF4, QuantizeError, quantize_model, weight_bytes
from loramix.testing import CLIP_ATTENTION, UNET_ATTENTION

CROSS = 64


def unet64(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS, attention_head_dim=8, norm_num_groups=32, use_linear_projection=True,
    ).eval()


def clip64(seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=100, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16, projection_dim=64,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModel(config).eval()


def batch(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 5, CROSS, generator=generator)
    target = torch.randn(2, 4, 8, 8, generator=generator)
    return sample, torch.tensor([10, 500]), text, target


def run(unet, inputs) -> torch.Tensor:
    sample, timesteps, text, _ = inputs
    return unet(sample, timesteps, text).sample


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def count(model, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def plain(model, kind) -> int:
    return sum(type(m) is kind for m in model.modules())


def dequantized(module: nn.Module) -> torch.Tensor:
    if isinstance(module, Conv2dNF4):
        return module.dequantized_weight()
    return dequantize_4bit(module.weight.data, module.weight.quant_state)


def with_lora(unet, rank: int = 4):
    # Gaussian B as well as A, so the adapter changes the output from the first step on.
    return inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(UNET_ATTENTION),
                                              init_lora_weights="gaussian"), unet)


def train_step(model, optimizer, inputs) -> float:
    model.train()
    loss = (run(model, inputs) - inputs[-1]).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


# --- which layers change -------------------------------------------------------------------------------------------

def test_nf4_replaces_every_linear_and_conv():
    unet = unet64()
    linears, convs = plain(unet, nn.Linear), plain(unet, nn.Conv2d)
    report = quantize_model(unet, "nf4")
    assert (report.quantized_linears, report.quantized_convs) == (linears, convs)
    assert plain(unet, nn.Linear) == plain(unet, nn.Conv2d) == 0
    assert count(unet, bnb.nn.Linear4bit) == linears and count(unet, Conv2dNF4) == convs
    assert {m.weight.quant_type for m in unet.modules() if isinstance(m, bnb.nn.Linear4bit)} == {"nf4"}
    assert unet.is_loaded_in_4bit  # what peft reads to pick its bnb LoRA layers


def test_skip_and_linear_only():
    unet = unet64()
    kept = plain(unet, nn.Linear) - sum(isinstance(m, nn.Linear) for m in unet.time_embedding.modules())
    report = quantize_model(unet, "nf4", quantize_convs=False, skip=lambda name: name.startswith("time_embedding"))
    assert report.quantized_linears == kept and report.quantized_convs == 0
    assert type(unet.time_embedding.linear_1) is nn.Linear and type(unet.conv_in) is nn.Conv2d
    assert count(unet, Conv2dNF4) == 0


def test_int8_uses_linear8bitlt_and_keeps_convs():
    unet = unet64()
    linears, convs = plain(unet, nn.Linear), plain(unet, nn.Conv2d)
    report = quantize_model(unet, "int8")
    assert (report.quantized_linears, report.quantized_convs) == (linears, 0)
    assert count(unet, bnb.nn.Linear8bitLt) == linears and plain(unet, nn.Conv2d) == convs
    assert {m.weight.dtype for m in unet.modules() if isinstance(m, bnb.nn.Linear8bitLt)} == {torch.int8}
    assert unet.is_loaded_in_8bit


def test_none_changes_nothing():
    unet, reference = unet64(), unet64()
    report = quantize_model(unet, "none")
    assert (report.quantized_linears, report.quantized_convs) == (0, 0)
    assert report.bytes_after == report.bytes_before == weight_bytes(reference)
    assert [type(m) for m in unet.modules()] == [type(m) for m in reference.modules()]
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), reference.state_dict().values()))
    assert not hasattr(unet, "is_loaded_in_4bit")


def test_unknown_mode_names_the_valid_ones():
    with pytest.raises(QuantizeError, match="'fp8'.*nf4, int8, none") as caught:
        quantize_model(unet64(), "fp8")
    assert isinstance(caught.value, LoramixError)
    assert QUANTIZE_MODES == ("nf4", "int8", "none")


def test_refuses_a_model_that_already_has_adapters():
    with pytest.raises(QuantizeError, match="quantize the base before attaching adapters"):
        quantize_model(with_lora(unet64()), "nf4")


# --- the maths -----------------------------------------------------------------------------------------------------

def test_quantized_unet_computes_with_the_dequantized_weights():
    """y = x · dequantize(W)ᵀ + b for every layer: the 4-bit UNet is the fp32 UNet holding its dequantized weights."""
    unet, reference, inputs = unet64(), unet64(), batch()
    quantize_model(unet, "nf4")
    with torch.no_grad():
        for name, module in unet.named_modules():
            if isinstance(module, (bnb.nn.Linear4bit, Conv2dNF4)):
                reference.get_submodule(name).weight.copy_(dequantized(module))
        assert relative_error(run(unet, inputs), run(reference, inputs)) < 1e-5


def test_conv_nf4_matches_conv2d_and_keeps_only_codes_for_backward():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 32, kernel_size=3, stride=2, padding=1)
    layer = Conv2dNF4(conv)
    weight = layer.dequantized_weight()
    assert weight.shape == conv.weight.shape and relative_error(weight, conv.weight) < 0.12
    assert layer.weight.dtype == torch.uint8 and layer.weight.numel() == conv.weight.numel() // 2

    x = torch.randn(2, 64, 9, 9, requires_grad=True)
    saved: list[tuple[int, ...]] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        y = layer(x)
    assert tuple(conv.weight.shape) not in saved  # autograd holds no full-precision kernel
    (grad,) = torch.autograd.grad(y.square().sum(), x)

    x_ref = x.detach().requires_grad_()
    y_ref = nn.functional.conv2d(x_ref, weight, conv.bias, stride=2, padding=1)
    (grad_ref,) = torch.autograd.grad(y_ref.square().sum(), x_ref)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(grad, grad_ref)
    assert not layer.weight.requires_grad and not layer.bias.requires_grad


def test_outputs_stay_close_and_bytes_drop():
    inputs = batch()
    with torch.no_grad():
        full = run(unet64(), inputs)
    fp32 = weight_bytes(unet64())
    results = {}
    for label, mode, convs in (("nf4", "nf4", True), ("nf4 linear-only", "nf4", False), ("int8", "int8", False)):
        unet = unet64()
        report = quantize_model(unet, mode, quantize_convs=convs)
        with torch.no_grad():
            results[label] = (relative_error(run(unet, inputs), full), report.bytes_after)
        assert report.bytes_before == fp32 and report.bytes_after == weight_bytes(unet)
        for module in unet.modules():
            if isinstance(module, (bnb.nn.Linear4bit, Conv2dNF4)):
                n = dequantized(module).numel()
                # 4-bit codes, one 8-bit absmax per 64 weights, then small fixed tables (NF4 levels, absmax scales)
                stored = weight_bytes(module) - (module.bias.numel() * 4 if module.bias is not None else 0)
                assert n // 2 + n // 64 <= stored <= n // 2 + n // 64 + 2048
    print({label: f"relative error {error:.3f}, {size / fp32:.3f}× fp32 bytes" for label, (error, size) in
           results.items()})
    # Random-init weights: NF4 costs ~9% per layer, and those errors compound through the UNet's depth.
    assert results["int8"][0] < 0.02
    assert results["nf4 linear-only"][0] < 0.25
    assert results["nf4"][0] < 0.4
    assert results["nf4"][1] < results["nf4 linear-only"][1] < fp32
    assert results["int8"][1] < fp32


# --- QLoRA training ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, lora_layer", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_lora_trains_on_the_quantized_unet(mode, lora_layer):
    unet, inputs = unet64(), batch()
    quantize_model(unet, mode)
    with_lora(unet)
    attention = [m for n, m in unet.named_modules() if n.endswith(UNET_ATTENTION)]
    assert attention and all(isinstance(m, getattr(peft_bnb, lora_layer)) for m in attention)

    frozen = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" not in n}
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-2)
    unet.train()
    loss = (run(unet, inputs) - inputs[-1]).pow(2).mean()
    loss.backward()
    with_grad = {n for n, p in unet.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in unet.named_parameters() if "lora_" in n} and with_grad
    optimizer.step()
    optimizer.zero_grad()
    losses = [loss.item()] + [train_step(unet, optimizer, inputs) for _ in range(4)]
    assert losses[-1] < losses[0], losses
    assert all(torch.equal(p, frozen[n]) for n, p in unet.named_parameters() if n in frozen)


def test_lora_trains_on_a_quantized_clip_text_encoder():
    clip = clip64()
    quantize_model(clip, "nf4")
    model = get_peft_model(clip, LoraConfig(r=4, lora_alpha=4, target_modules=list(CLIP_ATTENTION)))
    attention = [m for n, m in model.named_modules() if n.endswith(CLIP_ATTENTION)]
    assert len(attention) == 8 and all(isinstance(m, peft_bnb.Linear4bit) for m in attention)
    model.train()
    ids = torch.tensor([[0, 5, 6, 7, 1], [0, 8, 9, 1, 1]])
    model(input_ids=ids).last_hidden_state.square().mean().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in model.named_parameters() if "lora_" in n} and len(with_grad) == 16


# --- the CPU eval trap ---------------------------------------------------------------------------------------------

def eval_render_between_steps(unet, inputs):
    """Train step → eval-mode no_grad forward (a sample render) → train step; the output before and after."""
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-2)
    train_step(unet, optimizer, inputs)
    with torch.no_grad():
        before = run(unet, inputs)  # train mode, no grad: bitsandbytes leaves the codes alone
        unet.eval()
        rendered = run(unet, inputs)
        unet.train()
        after = run(unet, inputs)
    loss = train_step(unet, optimizer, inputs)
    return before, rendered, after, loss


def test_eval_forward_between_training_steps_changes_nothing():
    unet, inputs = unet64(), batch()
    quantize_model(unet, "nf4")
    with_lora(unet)
    before, rendered, after, loss = eval_render_between_steps(unet, inputs)
    assert torch.equal(before, after)  # the LoRA'd model's output is untouched by the render
    torch.testing.assert_close(rendered, before)
    assert loss == loss  # the second step ran and is finite
    layers = [m for m in unet.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)


@pytest.mark.skipif(not has_avx512bf16(), reason="bitsandbytes repacks for its AVX512-BF16 kernel only")
def test_without_the_fix_bitsandbytes_repacks_and_training_breaks():
    """Pins the bitsandbytes behaviour quantize_model turns off; if this starts failing, bitsandbytes changed."""
    unet, inputs = unet64(), batch()
    quantize_model(unet, "nf4")
    for module in unet.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = True
    with_lora(unet)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        eval_render_between_steps(unet, inputs)
