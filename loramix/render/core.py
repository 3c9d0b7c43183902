"""Rendering one batch reproducibly, and how the LoRAs of an image act together (`Composition`).

Each image has its own seeded generator, so an image is the same whatever batch it is in. The methods a
`Composition` names (loramix.render.loop runs them):

    exact, merge-svd, ties, dare, dare_ties   the LoRAs merged into one update, fused (or unfused adapters
                                              on a quantized base): one pipeline call per batch
    switch, composite, regional               the LoRAs kept apart and combined while denoising
    sequential                                each LoRA in turn, img2img on the previous stage

"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from loramix.choices import FILE_METHODS, RENDER_METHODS


@dataclass(frozen=True)
class RenderSettings:
    prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    negative_prompt: str = ""


def batch_settings(settings: list[RenderSettings]) -> RenderSettings:
    """The first image's settings, after checking that the batch shares what one pipeline call takes once."""
    first = settings[0]
    for s in settings[1:]:
        if (s.steps, s.guidance, s.width, s.height) != (first.steps, first.guidance, first.width, first.height):
            raise ValueError("a batch must share steps, guidance and size")
    return first


def render(pipeline, settings: list[RenderSettings], on_step=None) -> list[Image.Image]:
    """Render one batch; images with the same seed and settings are identical whatever batch they are in.
    `on_step` is diffusers' `callback_on_step_end`, called after each denoising step."""
    first = batch_settings(settings)
    generators = [torch.Generator().manual_seed(s.seed) for s in settings]
    with torch.inference_mode():  # no autograd bookkeeping at all: ~1-2% on the toy base's many small ops
        return pipeline(
            prompt=[s.prompt for s in settings], negative_prompt=[s.negative_prompt for s in settings],
            num_inference_steps=first.steps, guidance_scale=first.guidance, width=first.width,
            height=first.height, generator=generators, output_type="pil", callback_on_step_end=on_step,
        ).images


@dataclass(frozen=True)
class Composition:
    """How the LoRAs of one image act together, and the knobs of that method."""

    method: str = "exact"
    rank: int | None = None  # merge-svd / ties / dare: the rank of the merged LoRA
    density: float = 0.5  # ties / dare: the fraction of each ΔW kept
    seed: int = 0  # dare: its random pruning
    every: int = 1  # switch: steps before the next LoRA takes over
    strength: float = 0.75  # sequential: how much of each stage's image a LoRA may change

    def __post_init__(self):
        if self.method not in RENDER_METHODS:
            from loramix.errors import LoramixError, did_you_mean

            raise LoramixError(f"unknown method {self.method!r}{did_you_mean(self.method, RENDER_METHODS)}")

    def describe(self, fused: bool, quantize: str) -> str:
        if self.method in FILE_METHODS:
            return (f"{self.method} composition fused into the base weights" if fused
                    else f"unfused peft adapters on the {quantize} base")
        if self.method == "switch":
            return f"switch every {self.every} steps"
        if self.method == "composite":
            return "composite: guided predictions averaged"
        if self.method == "regional":
            return "regional: guided predictions blended by each LoRA's mask"
        return f"each LoRA in turn, img2img at strength {self.strength:g}"


EXACT = Composition()
