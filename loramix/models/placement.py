"""Putting a loaded pipeline's models where they compute: quantized a layer at a time, cast a tensor at a time,
moved to the device."""

from __future__ import annotations

import torch

from loramix.choices import MODELS
from loramix.models.precision import cast_floats
from loramix.util.progress import Status

SAID = {"unet": "UNet", "vae": "VAE", "text_encoder": "text encoder", "text_encoder_2": "second text encoder"}


def place_models(pipeline, dtype: torch.dtype, device: torch.device, placed: tuple[str, ...] = ()):
    """Every model of the pipeline but those `placed` already, cast to `dtype` a tensor at a time and moved to
    `device`."""
    for name in MODELS:
        model = getattr(pipeline, name, None)
        if model is not None and name not in placed:
            cast_floats(model, dtype)
            model.to(device)
    return pipeline


def quantize_loaded(pipeline, quantize: str, quantize_convs: bool, dtype: torch.dtype, status: Status,
                    only: tuple[str, ...] = ("unet", "text_encoder", "text_encoder_2")) -> None:
    """Quantize a pipeline that loaded whole (a single file, a hub id), one layer at a time, computing in
    `dtype`; what stays in full precision is cast to `dtype`."""
    from loramix.models.quantized_load import quantize_in_place  # bitsandbytes, only when quantizing

    if quantize == "none":
        return
    for name in only:
        model = getattr(pipeline, name, None)
        if model is not None:
            status(f"quantizing the {name.replace('_', ' ')} to {quantize}")
            quantize_in_place(model, quantize, quantize_convs and name == "unet", dtype)


def only_these(loaded: list[str], skip: tuple[str, ...]) -> str:
    """What a status line adds when only some of a base's models load: ": the VAE and text encoder"."""
    if not skip:
        return ""
    names = [SAID[name] for name in loaded]
    return ": the " + (" and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1])
