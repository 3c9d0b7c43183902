"""Sequential LoRA editing: each LoRA in turn, img2img on the previous stage's image, in the order given.

    stage 0 ── the input image (resized to the base's native size), or the base's text-to-image of the prompt
    stage i ── img2img of stage i−1 with LoRA i alone fused at its weight, at denoising strength S

Unlike a composition (Σ wᵢ·ΔWᵢ in one render), no two LoRAs ever act together: each edits what the ones
before it made, so the order matters. Stage 0 uses no LoRA, so every LoRA gets a stage of its own.

A mask (white: edit, black: keep; grey: a soft edge) confines every stage; a LoRA given its own
(`lora.safetensors:1#mask.png`) confines its stage to that region instead, so each stage changes its own
attribute's place and keeps what the stages before it drew. diffusers' inpainting pipeline
only takes UNets of 4 (SD) or 9 (SD-inpainting) input channels and the toy base's latents have 8, so the
mask is applied as diffusers does it for a non-inpainting UNet, through the img2img pipeline: after each
step the latents outside the mask are put back to the previous stage's latents, noised to the next step's
level, so the model paints the masked region in the context of what stays. A final paste in pixel space
keeps the pixels outside the mask exactly (the VAE's round trip alone would blur them a little).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from loramix.errors import LoramixError, OutputError
from loramix.lora.specs import WeightedFile
from loramix.models.loras import PipelineLoras
from loramix.render.core import RenderSettings, render
from loramix.render.images import a1111_parameters, image_grid, save_png
from loramix.render.regions import read_mask
from loramix.render.scheduled import StepWeights

DEFAULT_STRENGTH = 0.75  # A1111's default denoising strength


@dataclass(frozen=True)
class Stage:
    """One image of a sequential edit and what made it."""

    image: Image.Image
    settings: RenderSettings  # the stage's own prompt (its LoRA's trigger included), seed, steps, size
    kind: str  # "input", "text-to-image" or "img2img"
    lora: WeightedFile | None = None  # the LoRA of an img2img stage
    lora_hash: str | None = None
    strength: float | None = None  # denoising strength of an img2img stage

    @property
    def label(self) -> str:
        return f"{self.lora.name}:{self.lora.strength}" if self.lora else self.kind

    def file_name(self, index: int) -> str:
        name = self.lora.name if self.lora else self.kind
        return f"stage-{index}-{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.png"

    def parameters(self, sampler: str, model: str) -> str | None:
        """A1111's `parameters` text, `Denoising strength` included; none for an input image, which loramix
        did not render."""
        if self.kind == "input":
            return None
        loras = {self.lora.name: self.lora.strength} if self.lora else None
        hashes = {self.lora.name: self.lora_hash} if self.lora and self.lora_hash else None
        text = a1111_parameters(self.settings, sampler, model, loras, hashes)
        return text if self.strength is None else text + f", Denoising strength: {self.strength:g}"


def edit_sequence(pipeline, loras: list[WeightedFile], prompt: str, image: Image.Image | None = None, *,
                  steps: int, guidance: float, strength: float = DEFAULT_STRENGTH, seed: int = 0,
                  negative_prompt: str = "", mask: Image.Image | None = None, width: int | None = None,
                  height: int | None = None, triggers: bool = True,
                  adapters: PipelineLoras | None = None) -> list[Stage]:
    """Apply `loras` one after another, each by img2img on the previous stage; returns stage 0 and one stage
    per LoRA.

    `image` (any size, resized to `width`×`height`, by default the base's native square) is stage 0; without it
    stage 0 is the base's text-to-image of `prompt`. `mask` must be the size of `image` (or of the stages
    without one). Each stage's prompt is its LoRA's trigger words (metadata `loramix_trigger_words`), when it
    has some and `triggers` is on, followed by `prompt`, as the LoRA saw them in its captions. Every stage
    denoises with a generator seeded `seed`. Pass `adapters` when the pipeline already has a `PipelineLoras`; the base's
    weights are restored at the end either way. Every input is checked before anything is rendered.
    """
    from loramix.formats.metadata import META_TRIGGER
    from loramix.models.load import native_resolution

    if not loras:
        raise LoramixError("a sequential edit needs at least one LoRA")
    if not 0 < strength <= 1:
        raise LoramixError(f"strength {strength:g}: choose a number in (0, 1]")
    if int(steps * strength) < 1:
        raise LoramixError(f"strength {strength:g} of {steps} steps denoises no step: raise the strength or the "
                           f"steps to at least {math.ceil(1 / strength)}")
    native = native_resolution(pipeline)
    size = (width or native, height or native)
    adapters = adapters or PipelineLoras(pipeline)
    prompts = []
    for wf in loras:
        trigger = adapters.read(wf.path).metadata.get(META_TRIGGER, "").strip() if triggers else ""
        prompts.append(f"{trigger} {prompt}".strip() if trigger and trigger not in prompt else prompt)
    what = "the input image" if image is not None else "the base's text-to-image"
    expected = image.size if image is not None else size
    if mask is not None:
        mask = _check_mask(mask, expected, what, size)
    stage_masks = [mask if wf.mask is None else _check_mask(read_mask(wf.mask), expected, what, size, wf.mask)
                   for wf in loras]

    base_settings = RenderSettings(prompt, seed, steps, guidance, *size, negative_prompt)
    img2img = _img2img_pipeline(pipeline)
    try:
        adapters.apply([])
        if image is None:
            stages = [Stage(render(pipeline, [base_settings])[0], base_settings, "text-to-image")]
        else:
            stages = [Stage(_fit(image.convert("RGB"), size), base_settings, "input")]
        for wf, stage_prompt, stage_mask in zip(loras, prompts, stage_masks):
            step_weights = StepWeights(adapters, (wf,))  # a schedule runs over the steps the stage denoises
            step_weights.start()
            settings = RenderSettings(stage_prompt, seed, steps, guidance, *size, negative_prompt)
            edited = _img2img(img2img, stages[-1].image, settings, strength, stage_mask,
                              step_weights if wf.schedule else None)
            if stage_mask is not None:
                edited = Image.composite(edited, stages[-1].image, stage_mask)
            stages.append(Stage(edited, settings, "img2img", wf, adapters.hash_of(wf.path), strength))
    finally:
        adapters.apply([])
    return stages


def write_stages(stages: list[Stage], folder: str | Path, model: str, sampler: str, scale: int = 2) -> list[Path]:
    """Write each stage as `stage-<i>-<name>.png` and `strip.png` (the stages side by side, labelled) into
    `folder`, each atomically; returns the paths written, the strip last."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{folder}: cannot make the output folder ({e.strerror})") from None
    paths = [save_png(s.image, folder / s.file_name(i), s.parameters(sampler, model)) for i, s in enumerate(stages)]
    last = stages[-1]
    strip_text = last.parameters(sampler, model) or ""
    strip_text += ', Stages: "' + " > ".join(s.label for s in stages) + '"'
    paths.append(save_png(strip_image(stages, scale), folder / "strip.png", strip_text))
    return paths


def strip_image(stages: list[Stage], scale: int = 2, gap: int = 2) -> Image.Image:
    """The stages in a row, each enlarged `scale` times, with its number and LoRA written under it."""
    row = image_grid([s.image for s in stages], columns=len(stages), scale=scale, gap=gap)
    band = 14
    strip = Image.new("RGB", (row.width, row.height + band), (255, 255, 255))
    strip.paste(row, (0, 0))
    draw = ImageDraw.Draw(strip)
    cell = stages[0].image.width * scale
    for i, stage in enumerate(stages):
        label = f"{i} {stage.label}"
        while len(label) > 3 and draw.textlength(label) > cell:
            label = label[:-2] + "…"
        draw.text((i * (cell + gap) + 1, row.height + 1), label, fill=(0, 0, 0))
    return strip


def _check_mask(mask: Image.Image, expected: tuple[int, int], what: str, size: tuple[int, int],
                name: str = "mask") -> Image.Image:
    if mask.size != expected:
        raise LoramixError(f"{name} is {mask.width}×{mask.height} but {what} is {expected[0]}×{expected[1]}: "
                           "they must be the same size")
    mask = _fit(mask.convert("L"), size)
    if mask.getextrema()[1] == 0:
        raise LoramixError(f"{name} is all black: it leaves nothing to edit (white marks what to edit)")
    return mask


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The image at the stages' size: stretched, as A1111's default "Just resize" does."""
    return image if image.size == size else image.resize(size, Image.LANCZOS)


def _img2img_pipeline(pipeline):
    """diffusers' img2img pipeline over the loaded modules (shared, so the fused LoRA acts on both)."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    from loramix.models.load import is_sdxl

    if is_sdxl(pipeline):
        img2img = StableDiffusionXLImg2ImgPipeline(**pipeline.components)
    else:
        img2img = StableDiffusionImg2ImgPipeline(**pipeline.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    return img2img


@torch.no_grad()
def _img2img(img2img, image: Image.Image, settings: RenderSettings, strength: float,
             mask: Image.Image | None, on_step=None) -> Image.Image:
    """`image` denoised from `strength` with the pipeline's LoRAs; outside `mask` only its latents are kept.
    `on_step` (a step callback, e.g. a LoRA's step schedule) runs after each step, before the mask's."""
    keep_outside = None if mask is None else _keep_outside(img2img, image, mask, settings.seed)
    callbacks = [c for c in (on_step, keep_outside) if c is not None]

    def callback(pipe, i, t, tensors):
        for each in callbacks:
            tensors = each(pipe, i, t, tensors)
        return tensors

    return img2img(
        prompt=settings.prompt, negative_prompt=settings.negative_prompt, image=image, strength=strength,
        num_inference_steps=settings.steps, guidance_scale=settings.guidance,
        generator=torch.Generator().manual_seed(settings.seed), output_type="pil",
        callback_on_step_end=callback if callbacks else None,
    ).images[0]


def _keep_outside(img2img, image: Image.Image, mask: Image.Image, seed: int):
    """A step callback that puts the latents outside `mask` back to `image`'s, noised to the next step."""
    from diffusers.utils.torch_utils import randn_tensor

    vae, device = img2img.vae, img2img._execution_device
    pixels = img2img.image_processor.preprocess(image).to(device, vae.dtype)  # (1, 3, H, W) in [-1, 1]
    known = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor  # (1, C, h, w)
    noise = randn_tensor(known.shape, generator=torch.Generator().manual_seed(seed), device=device,
                         dtype=known.dtype)
    weights = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255)[None, None]  # (1, 1, H, W)
    # A latent cell is free when any of its pixels is to be edited; the pixel paste then trims to the mask.
    free = torch.nn.functional.adaptive_max_pool2d(weights, known.shape[-2:]).to(device, known.dtype)

    def callback(pipe, i, t, tensors):
        timesteps = pipe.scheduler.timesteps[-pipe.num_timesteps:]
        target = known
        if i + 1 < len(timesteps):
            target = pipe.scheduler.add_noise(known, noise, timesteps[i + 1 : i + 2])
        tensors["latents"] = free * tensors["latents"] + (1 - free) * target
        return tensors

    return callback
