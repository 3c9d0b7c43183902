"""Make the two sample LoRA files in samples/: random adapters with SD 1.5's real module shapes.

    python samples/make_sample_loras.py

They exist so `make demo` can inspect and compose real files in both naming families before any LoRA is
trained: `random-a` is kohya-named (UNet and text-encoder attention, rank 4, α 2), `random-b` is
diffusers-named (UNet attention, rank 2, α 2). Their values are random, so they mean nothing to an image.
"""

from __future__ import annotations

from pathlib import Path

import torch

from loramix.formats.write import write_adapter
from loramix.lora.adapter import LoraAdapter, LoraModule
from loramix.models.shapes import load_base_shapes

HERE = Path(__file__).parent
UNET_ATTENTION = (".to_q", ".to_k", ".to_v", ".to_out.0")
CLIP_ATTENTION = (".q_proj", ".k_proj", ".v_proj", ".out_proj")


def random_lora(shapes: dict[str, tuple[int, ...]], rank: int, alpha: float, seed: int) -> LoraAdapter:
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for key, (out_features, in_features) in shapes.items():
        down = torch.randn(rank, in_features, generator=generator) / in_features**0.5
        up = torch.randn(out_features, rank, generator=generator) * 0.01  # trained B stays small
        modules[key] = LoraModule(down.half(), up.half(), alpha)
    return LoraAdapter(modules, {"loramix_base_model": "sd15"})


def main() -> None:
    shapes = load_base_shapes("sd15").weight_shapes
    unet = {k: v for k, v in shapes.items() if k.startswith("unet.") and k.endswith(UNET_ATTENTION)}
    clip = {k: v for k, v in shapes.items() if k.startswith("text_encoder.") and k.endswith(CLIP_ATTENTION)}
    write_adapter(random_lora({**unet, **clip}, rank=4, alpha=2, seed=1), HERE / "random-a.kohya.safetensors",
                  format="kohya")
    write_adapter(random_lora(unet, rank=2, alpha=2, seed=2), HERE / "random-b.diffusers.safetensors")


if __name__ == "__main__":
    main()
