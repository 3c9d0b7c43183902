"""Fusing a LoRA set into the base and taking it out again keeps every weight's bits, without a copy of them."""

from __future__ import annotations

import pytest
import torch

from loramix.lora.adapter import LoraModule
from loramix.lora.specs import WeightedFile
from loramix.models.fuse import add_delta, fuse_reversibly, kept_bytes, unfuse


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view({2: torch.int16, 4: torch.int32}[tensor.element_size()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_thousand_fuse_unfuse_rounds_leave_every_bit_of_the_weight(dtype):
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(64, 48, bias=False).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(48, 64, generator=generator) * 0.05)
        layer.weight[0, :4] = torch.tensor([0.0, -0.0, 1e-8, 2.0 ** -14])  # zeros of both signs, tiny values
    original = layer.weight.detach().clone()
    for round_ in range(1000):
        scale = 0.01 * (1 + round_ % 7)
        lora = LoraModule(torch.randn(4, 64, generator=generator) * scale,
                          torch.randn(48, 4, generator=generator) * scale, 4.0)
        update = fuse_reversibly(layer, lora)
        assert not torch.equal(layer.weight, original)
        unfuse(layer, update)
    assert torch.equal(bits(layer.weight), bits(original))


def test_a_fused_weight_is_what_add_delta_gives_and_the_kept_part_is_small():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(320, 320, generator=generator) * 0.05
    lora = LoraModule(torch.randn(8, 320, generator=generator) * 0.02, torch.randn(320, 8, generator=generator) * 0.02,
                      8.0)
    plain, reversible = torch.nn.Linear(320, 320, bias=False), torch.nn.Linear(320, 320, bias=False)
    with torch.no_grad():
        plain.weight.copy_(weight)
        reversible.weight.copy_(weight)
    add_delta(plain, lora)
    update = fuse_reversibly(reversible, lora)
    assert torch.equal(plain.weight, reversible.weight)
    copy_bytes = weight.numel() * weight.element_size()
    assert update.positions is not None and kept_bytes(update) < copy_bytes / 4


@pytest.mark.slow  # fuses two LoRA sets into the whole toy base and compares every bit (about 2.7 s)
def test_switching_sets_on_the_toy_base_restores_it_exactly_and_keeps_less_than_a_copy(pipeline, toy_loras):
    from loramix.models.loras import PipelineLoras

    files = list(toy_loras(["p", "q"], rank=[4, 8]).values())
    unet = pipeline.unet
    before = {name: bits(p.detach().clone()) for name, p in unet.named_parameters()}
    loras = PipelineLoras(pipeline)
    touched_bytes = 0
    for round_ in range(200):
        loras.apply([WeightedFile(files[round_ % 2], 0.4 + 0.1 * (round_ % 5)), WeightedFile(files[1], 0.3)])
        if round_ == 0:
            touched_bytes = sum(loras.layer(key).weight.numel() * 4 for key in loras._fused)
            assert loras.restore_bytes() < touched_bytes / 2
    loras.apply([])
    assert all(torch.equal(bits(p.detach()), before[name]) for name, p in unet.named_parameters())


def test_in_bf16_the_kept_part_is_a_byte_a_weight_at_most():
    """In bf16 a LoRA's small update moves most weights by a unit in the last place or less: W does not come
    back by subtraction alone, and int8 steps, half a copy, carry it."""
    generator = torch.Generator().manual_seed(2)
    layer = torch.nn.Linear(320, 320, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(320, 320, generator=generator) * 0.05)
    original = layer.weight.detach().clone()
    lora = LoraModule(torch.randn(8, 320, generator=generator) * 0.05, torch.randn(320, 8, generator=generator) * 0.05,
                      8.0)
    update = fuse_reversibly(layer, lora)
    assert update.steps is not None
    factor_bytes = (lora.down.numel() + lora.up.numel()) * 4
    assert kept_bytes(update) - factor_bytes <= original.numel() * 1.05  # a byte a weight, a few listed
    unfuse(layer, update)
    assert torch.equal(bits(layer.weight), bits(original))
