"""A frozen base stored in 4-bit NF4 (QLoRA) or int8, so that a LoRA trains on top of it in less memory.

QLoRA (Dettmers et al. 2023, arXiv 2305.14314) keeps each frozen weight as 4-bit codes and trains the LoRA in
full precision on top:

    W (out, in) ──quantize_4bit──► codes: 4 bits per weight, one NF4 level each (out·in/2 bytes)
                                   absmax: one scale per block of 64 weights, itself stored in 8 bits
    forward:   y = x · dequantize(W)ᵀ + b  +  B(A(x)) · α/r
               └── bitsandbytes Linear4bit ──┘   └─ peft's bnb LoRA layer: only A and B train ─┘

NF4's 16 levels are the quantiles of a normal distribution, which is how trained weights are spread. Linear
layers become bitsandbytes' own `Linear4bit` / `Linear8bitLt`; Conv2d layers (most of a UNet's weights)
become `Conv2dNF4`, which stores its kernel with `bitsandbytes.functional.quantize_4bit` the same way and
dequantizes it for each `F.conv2d`.

Why not diffusers' `BitsAndBytesConfig`: it refuses to load without a GPU, while bitsandbytes' 4-bit layers
run on a CPU; so we quantize modules that are already loaded, in place, on whatever device they are.

A quantized model's state_dict does not round-trip (Conv2dNF4 saves its packed codes without their quant
state): save the adapters, and quantize the base again from its full-precision weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import bitsandbytes as bnb
import torch
import torch.nn.functional as F
from torch import nn

from loramix.choices import QUANTIZE_MODES
from loramix.errors import QuantizeError

BLOCKSIZE = 64  # weights per absmax scale: bitsandbytes' default, the QLoRA paper's choice


@dataclass
class QuantizeReport:
    mode: str
    quantized_linears: int
    quantized_convs: int
    bytes_before: int  # parameters + buffers as stored, before
    bytes_after: int  # after: packed codes and their quant states counted as stored

    @property
    def ratio(self) -> float:
        return self.bytes_after / self.bytes_before


class _DequantizedConv2d(torch.autograd.Function):
    """conv2d whose weight is dequantized in forward and again in backward.

    Autograd would otherwise keep each full-precision kernel alive until backward, and a training step's peak
    memory would hold the whole dequantized UNet. Keeping only the 4-bit codes is what bitsandbytes' MatMul4Bit
    does for Linear4bit.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor | None, layer: Conv2dNF4) -> torch.Tensor:
        ctx.layer, ctx.input_shape = layer, x.shape
        weight = layer.dequantized_weight(x.dtype)  # (out, in / groups, kh, kw)
        return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        layer = ctx.layer
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            weight = layer.dequantized_weight(grad_out.dtype)
            grad_x = torch.nn.grad.conv2d_input(ctx.input_shape, weight, grad_out, layer.stride, layer.padding,
                                                layer.dilation, layer.groups)
        if ctx.needs_input_grad[1]:
            grad_bias = grad_out.sum((0, 2, 3))
        return grad_x, grad_bias, None


class Conv2dNF4(nn.Module):
    """A frozen Conv2d whose kernel is stored as NF4 codes and dequantized for each forward; bias in full precision.

    The codes sit in a bitsandbytes `Params4bit` so that `.to(device)` moves their quant state along, and so that
    `weight_bytes` counts them as stored. Only convs with zero padding are converted (all of Stable Diffusion's).
    """

    def __init__(self, conv: nn.Conv2d, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        # Quantized as the (out, in/groups·kh·kw) matrix it is to conv2d: the same codes as the 4-D kernel, and
        # bitsandbytes' CPU dequantize kernel takes only an even last dimension (a 3×3 kernel's is 3).
        codes, state = bnb.functional.quantize_4bit(conv.weight.detach().flatten(1), blocksize=BLOCKSIZE,
                                                    compress_statistics=True, quant_type="nf4")
        # codes: (out·in/groups·kh·kw / 2, 1) uint8, two 4-bit codes a byte; absmax: one scale per 64 weights
        self.weight = bnb.nn.Params4bit(codes, requires_grad=False, quant_state=state, blocksize=BLOCKSIZE,
                                        compress_statistics=True, quant_type="nf4", bnb_quantized=True)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), requires_grad=False)
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.kernel_shape = tuple(conv.weight.shape)  # (out, in / groups, kh, kw)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.compute_dtype = compute_dtype

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        weight = bnb.functional.dequantize_4bit(self.weight.data, self.weight.quant_state).view(self.kernel_shape)
        return weight if dtype is None else weight.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return _DequantizedConv2d.apply(x.to(self.compute_dtype), bias, self).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, nf4, compute_dtype={self.compute_dtype}")


def _linear_4bit(linear: nn.Linear, compute_dtype: torch.dtype) -> bnb.nn.Linear4bit:
    device = linear.weight.device
    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4", device="meta")
    layer.weight = bnb.nn.Params4bit(linear.weight.detach(), requires_grad=False, blocksize=BLOCKSIZE,
                                     compress_statistics=True, quant_type="nf4", module=layer)
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
    # The CPU trap: in eval mode, on an input that needs no grad (a sample render mid-training), bitsandbytes'
    # forward repacks the codes in place for its AVX512-BF16 kernel, for good, and every later call takes that
    # kernel, which has no backward: the next training step fails on the bias ("a view of a leaf Variable that
    # requires grad is being used in an in-place operation"), or with no bias stops the gradient silently. Undoing
    # the repack is lossy (absmax goes to bf16, the nested scales are re-quantized), so we turn it off with the
    # flag bitsandbytes' forward reads; inference then dequantizes like training does.
    layer.support_avx512bf16_for_cpu = False
    return layer.to(device)  # Params4bit quantizes here, on the weight's device


def _linear_8bit(linear: nn.Linear) -> bnb.nn.Linear8bitLt:
    device = linear.weight.device
    # threshold 0: every input column in int8, no fp16 outlier path, so CPU and GPU do the same maths.
    layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                has_fp16_weights=False, threshold=0.0, device="meta")
    # Int8Params quantizes in `.to(device)`, and only from a CPU tensor.
    layer.weight = bnb.nn.Int8Params(linear.weight.detach().cpu(), requires_grad=False, has_fp16_weights=False)
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
    return layer.to(device)


def _is_plain_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and not isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))


def _is_plain_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.padding_mode == "zeros"


def replace_layer(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def quantize_model(model: nn.Module, mode: str = "nf4", quantize_convs: bool = True,
                   compute_dtype: torch.dtype = torch.float32,
                   skip: Callable[[str], bool] | None = None) -> QuantizeReport:
    """Quantize a model's Linear (and, for nf4, Conv2d) layers in place, on the device they are on.

    nf4: Linear → bitsandbytes Linear4bit, Conv2d → Conv2dNF4 when `quantize_convs`; int8: Linear → Linear8bitLt,
    convs stay as they are; none: nothing changes. `skip(name)` True leaves the layer of that dotted name alone.
    Quantized layers are frozen. Attach LoRA adapters afterwards, to this same `model`: it is flagged the way
    transformers and diffusers flag a bitsandbytes model, which is what makes peft use its bnb LoRA layers.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    if adapted:
        raise QuantizeError(f"{adapted[0]} already carries a LoRA adapter: quantize the base before attaching "
                            f"adapters, or the adapters' own layers would be quantized")
    bytes_before = weight_bytes(model)
    names = layers_to_quantize(model, mode, quantize_convs, skip)
    for name in names:
        replace_layer(model, name, quantized_layer(model.get_submodule(name), mode, compute_dtype))
    mark_quantized(model, mode)
    convs = sum(isinstance(model.get_submodule(name), Conv2dNF4) for name in names)
    return QuantizeReport(mode, len(names) - convs, convs, bytes_before, weight_bytes(model))


def layers_to_quantize(model: nn.Module, mode: str, quantize_convs: bool = True,
                       skip: Callable[[str], bool] | None = None) -> list[str]:
    """The dotted names of the layers `quantize_model` replaces: plain Linear layers, and Conv2d for nf4."""
    if mode not in QUANTIZE_MODES:
        raise QuantizeError(f"unknown quantize mode {mode!r}: choose one of {', '.join(QUANTIZE_MODES)}")
    skip = skip or (lambda name: False)
    with_convs = mode == "nf4" and quantize_convs
    return [name for name, module in model.named_modules() if mode != "none" and not skip(name)
            and (_is_plain_linear(module) or (with_convs and _is_plain_conv(module)))]


def quantized_layer(layer: nn.Module, mode: str, compute_dtype: torch.dtype = torch.float32) -> nn.Module:
    """The frozen, quantized stand-in for one Linear or Conv2d layer, on the device its weight is on. A weight
    stored in another precision is cast to `compute_dtype` first, so the codes are those of a base loaded in
    that precision."""
    for name in ("weight", "bias"):
        tensor = getattr(layer, name)
        if tensor is not None and tensor.dtype != compute_dtype:
            setattr(layer, name, nn.Parameter(tensor.detach().to(compute_dtype), requires_grad=False))
    if isinstance(layer, nn.Conv2d):
        return Conv2dNF4(layer, compute_dtype)
    return _linear_4bit(layer, compute_dtype) if mode == "nf4" else _linear_8bit(layer)


def mark_quantized(model: nn.Module, mode: str) -> None:
    """Flag the model the way transformers and diffusers flag a bitsandbytes model when they load one: the flag
    is what makes peft put its bnb LoRA layers on the quantized Linear layers."""
    if mode != "none":
        setattr(model, "is_loaded_in_4bit" if mode == "nf4" else "is_loaded_in_8bit", True)


def quantize_pipeline(pipeline, mode: str = "nf4", quantize_convs: bool = True) -> None:
    """The UNet (its convolutions too, unless told not to) and every text encoder, in place; the VAE, which
    runs once per image, stays in full precision."""
    quantize_model(pipeline.unet, mode, quantize_convs)
    for encoder in (pipeline.text_encoder, getattr(pipeline, "text_encoder_2", None)):
        if encoder is not None:
            quantize_model(encoder, mode, quantize_convs=False)


def _stored_tensors(model: nn.Module) -> Iterator[torch.Tensor | None]:
    """Every tensor the model holds: parameters, buffers, and the quant states bitsandbytes keeps beside them."""
    for tensor in [*model.parameters(), *model.buffers()]:
        yield tensor
        state = getattr(tensor, "quant_state", None)  # Params4bit: NF4 scales (8-bit) and their own scales
        if state is not None:
            yield from (state.absmax, state.code)
            if state.nested:
                yield from (state.offset, state.state2.absmax, state.state2.code)
        yield getattr(tensor, "SCB", None)  # Int8Params before its first forward: one scale per row
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear8bitLt):  # after its first forward the scales move to module.state
            yield from (module.state.CB, module.state.SCB)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters, buffers and quant states as stored; 4-bit codes count half a byte each."""
    seen, total = set(), 0
    for tensor in _stored_tensors(model):
        if not isinstance(tensor, torch.Tensor):
            continue
        key = (tensor.data_ptr(), tensor.numel(), tensor.dtype)  # one tensor reached twice counts once
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total
