"""Loading a base's denoiser and text encoders straight into 4-bit NF4 (or int8), so that the full-precision
model never exists in memory: QLoRA's saving holds at the peak, not only at the end.

    UNet file ──► for each Linear / Conv2d:  read its weight (as stored) ──► quantize on the device ──► place it
                  every other tensor (norms, biases, embeddings): read, cast to the compute dtype, place it
    peak ≈ the quantized UNet + one layer in transit

The UNet is built on the meta device from its config and filled layer by layer from its safetensors files,
which are reopened every few hundred megabytes so that the pages read are given back. Text encoders are
smaller: each loads in the precision it is stored in and is quantized in place, one layer at a time. The VAE
runs once per image and stays in the compute dtype.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from loramix.models.folder_files import component_dtype, weight_files
from loramix.models.precision import cast_floats
from loramix.models.quantize import layers_to_quantize, mark_quantized, quantize_model, quantized_layer, replace_layer
from loramix.models.tensor_reader import TensorReader


def load_unet_quantized(folder: Path, variant: str | None, mode: str, quantize_convs: bool,
                        compute_dtype: torch.dtype, device: torch.device,
                        progress: Callable[[list[str]], object] = iter):
    """The UNet of the pipeline folder `folder`, quantized as it loads; `progress` wraps the layer list (a
    progress bar). Returns None when the files' names are not the model's own (an old layout), for the caller
    to load and quantize it whole instead."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    config = UNet2DConditionModel.load_config(str(folder / "unet"))
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    reader = TensorReader(weight_files(folder / "unet", variant))
    if reader.keys() != set(unet.state_dict()):
        return None
    try:
        return fill_quantized(unet, lambda key: reader.get(key, device), mode, quantize_convs, compute_dtype,
                              device, progress)
    finally:
        reader.close()


def fill_quantized(model: nn.Module, read: Callable[[str], torch.Tensor], mode: str, quantize_convs: bool,
                   compute_dtype: torch.dtype, device: torch.device,
                   progress: Callable[[list[str]], object] = iter) -> nn.Module:
    """Fill a model built on the meta device from `read` (a weight by its state-dict name), quantizing each
    Linear (and Conv2d, with `quantize_convs`) as it arrives; every other tensor is cast to `compute_dtype`."""
    from accelerate.utils import set_module_tensor_to_device

    for name in progress(layers_to_quantize(model, mode, quantize_convs)):
        layer = model.get_submodule(name)
        layer.weight = nn.Parameter(read(f"{name}.weight").to(device), requires_grad=False)
        if layer.bias is not None:
            layer.bias = nn.Parameter(read(f"{name}.bias").to(device), requires_grad=False)
        replace_layer(model, name, quantized_layer(layer, mode, compute_dtype))
    on_meta = [key for key, tensor in model.state_dict().items() if tensor.device.type == "meta"]
    for key in on_meta:
        # dtype given: accelerate would otherwise cast to the empty model's own (fp32) dtype
        set_module_tensor_to_device(model, key, device, value=read(key), dtype=compute_dtype)
    mark_quantized(model, mode)
    return model.requires_grad_(False).eval()


def load_text_encoder_quantized(folder: Path, component: str, variant: str | None, mode: str,
                                compute_dtype: torch.dtype, device: torch.device):
    """A text encoder loaded in the precision it is stored in, then quantized layer by layer in place."""
    import transformers

    _, class_name = json.loads((folder / "model_index.json").read_text())[component]
    stored = component_dtype(folder / component, variant) or compute_dtype
    encoder = getattr(transformers, class_name).from_pretrained(str(folder / component), dtype=stored,
                                                                 variant=variant, use_safetensors=True)
    encoder.to(device)
    quantize_in_place(encoder, mode, False, compute_dtype)
    return encoder.requires_grad_(False).eval()


def quantize_in_place(model: nn.Module, mode: str, quantize_convs: bool, compute_dtype: torch.dtype) -> None:
    """Quantize a loaded model one layer at a time, then cast what stays in full precision (norms, biases,
    embeddings) to the compute dtype."""
    quantize_model(model, mode, quantize_convs, compute_dtype=compute_dtype)
    cast_floats(model, compute_dtype)
