"""What a diffusers pipeline folder stores: the variant its weights are saved under, each component's weight
files and their precision, read without loading a model."""

from __future__ import annotations

from pathlib import Path

import torch

from loramix.models.precision import stored_dtype


def folder_variant(folder: Path) -> str | None:
    """The variant a pipeline folder's weights are stored under (`diffusion_pytorch_model.fp16.safetensors`:
    "fp16") when its UNet has no plain weight file, else None."""
    unet = folder / "unet"
    files = sorted(unet.glob("*.safetensors"))
    if not files or weight_files(unet, None):
        return None
    return files[0].name.split(".")[-2]


def weight_files(component_folder: Path, variant: str | None) -> list[Path]:
    """A component folder's safetensors files: the variant's (`*.fp16.safetensors`) or the plain ones."""
    files = sorted(component_folder.glob("*.safetensors"))
    if variant:
        return [f for f in files if f.name.endswith(f".{variant}.safetensors")]
    return [f for f in files if len(f.name.split(".")) == 2]


def component_dtype(component_folder: Path, variant: str | None) -> torch.dtype | None:
    """The precision a component's weights are stored in, from its first file's header; None without files."""
    files = weight_files(component_folder, variant)
    return stored_dtype(files[0]) if files else None
