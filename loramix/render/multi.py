"""Generation-time composition: LoRAs that take turns, or vote, at each denoising step.

After Zhong et al. 2024, "Multi-LoRA Composition for Image Generation" (arXiv 2402.16843). Instead of
adding the LoRAs' weights, both methods keep each LoRA whole and combine them during denoising:

    switch:     ε_t = ε(x_t | LoRA_k),  k = ⌊t_index / every⌋ mod n        one UNet call per step
    composite:  ε_t = 1/n · Σ_k ε̃(x_t | LoRA_k)                            n UNet calls per step
    regional:   ε_t = ε̃(x_t) + Σ_k m_k·(ε̃(x_t | LoRA_k) − ε̃(x_t))            n + 1 UNet calls per step

where ε̃ is the classifier-free-guided prediction, uncond + g·(cond − uncond), made with LoRA_k active (and
with LoRA_k's text conditioning when it changes the text encoder). Each LoRA acts at its own weight. A LoRA
given its own prompt (`WeightedFile.prompt`, `--lora-prompt`) is conditioned on that prompt, encoded with its
own text-encoder LoRA, while the base's call keeps the image's prompt (Mix-of-Show's regional sampling, Gu et
al. 2023; ComfyUI's hooked conditionings).
Regional composition (see loramix.render.regions) adds each LoRA's change of the prediction inside its mask
m_k at latent resolution to the base's prediction, with no LoRA: it skips the base's call when the masks sum
to exactly 1 at every latent pixel, and a LoRA's call when its mask is empty.

In regional a LoRA may follow a step schedule (`a.safetensors:1@0.3-1#mask.png`), as ComfyUI's hook keyframes
schedule a masked LoRA: its call takes its weight at each step, and where that is 0 it makes no call and its
region takes the base's prediction. Starting the LoRAs after the base has laid out the face is what keeps
faces (docs/performance.md).

The loop is Stable Diffusion's own (encode, prepare latents, scale, predict, guide, step, decode) from the
pipeline's parts, with the per-step choice of LoRA added; with one LoRA it renders what the pipeline does
(a test checks this).
"""

from __future__ import annotations

import torch
from PIL import Image

from loramix.choices import GENERATION_METHODS
from loramix.errors import LoramixError
from loramix.lora.schedule import Schedule, step_fraction
from loramix.lora.specs import WeightedFile
from loramix.models.loras import PipelineLoras
from loramix.render.core import RenderSettings, batch_settings
from loramix.render.regions import (
    Regions,
    TriggerAttention,
    check_masks,
    probe_steps,
    recording_cross_attention,
    regions_of,
    trigger_positions,
    trigger_words,
)


def render_multi(pipeline, loras: PipelineLoras, files: list[WeightedFile], settings: list[RenderSettings],
                 method: str, every: int = 1) -> list[Image.Image]:
    """Render one batch with `files` combined by `method` ("switch" every `every` steps, "composite", or
    "regional" with each file's mask)."""
    latents = denoise_multi(pipeline, loras, files, settings, method, every)
    with torch.no_grad():
        images = pipeline.vae.decode(latents / pipeline.vae.config.scaling_factor, return_dict=False)[0]
    return pipeline.image_processor.postprocess(images, output_type="pil", do_denormalize=[True] * len(settings))


def denoise_multi(pipeline, loras: PipelineLoras, files: list[WeightedFile], settings: list[RenderSettings],
                  method: str, every: int = 1) -> torch.Tensor:
    """The denoised latents (B, C, h, w) of `render_multi`, before the VAE decodes them."""
    from loramix.models.load import is_sdxl

    if method not in GENERATION_METHODS:
        raise LoramixError(f"unknown method {method!r}: choose one of {', '.join(GENERATION_METHODS)}")
    if is_sdxl(pipeline):
        raise LoramixError(f"--method {method} renders SD 1.x/2.x pipelines; for SDXL use a merging method")
    if not files:
        raise LoramixError(f"--method {method} needs at least one LoRA")
    if every < 1:
        raise LoramixError(f"--every must be ≥ 1, got {every}")
    first = batch_settings(settings)
    check_masks(files, method)
    names = loras.load_named([f.path for f in files])
    weights = [f.weight for f in files]
    pipeline.enable_lora()
    try:
        prompts = [f.prompt for f in files]
        if method != "regional":
            return _denoise(pipeline, names, weights, settings, method, every, None, prompts=prompts)
        shape = (first.width, first.height, pipeline.vae_scale_factor, len(settings))
        found = find_regions(pipeline, loras, files, names, settings) if any(f.mask is None for f in files) else {}
        return _denoise(pipeline, names, weights, settings, method, every, regions_of(files, *shape, found),
                        prompts=prompts, schedules=[f.schedule for f in files])
    finally:
        pipeline.disable_lora()


def find_regions(pipeline, loras: PipelineLoras, files: list[WeightedFile], names: list[str],
                  settings: list[RenderSettings]) -> dict[int, torch.Tensor]:
    """The regions of the files without a mask, from their trigger tokens' cross-attention in the first steps
    of the render, with those LoRAs acting over the whole image meanwhile (see loramix.render.regions)."""
    first = settings[0]
    scale = pipeline.vae_scale_factor
    unmasked = [k for k, f in enumerate(files) if f.mask is None]
    positions = {k: trigger_positions(pipeline.tokenizer, [s.prompt for s in settings],
                                      trigger_words(loras.read(files[k].path).metadata), files[k].name)
                 for k in unmasked}
    recorder = TriggerAttention(positions, first.guidance > 1, (first.height // scale, first.width // scale))
    everywhere = {k: torch.ones(1, first.height // scale, first.width // scale) for k in unmasked}
    probe = regions_of(files, first.width, first.height, scale, len(settings), everywhere)
    with recording_cross_attention(pipeline.unet, recorder):
        _denoise(pipeline, names, [f.weight for f in files], settings, "regional", 1, probe, recorder,
                 stop_after=probe_steps(first.steps))
    return recorder.masks()


@torch.no_grad()
def _denoise(pipeline, names: list[str], weights: list[float], settings: list[RenderSettings], method: str,
             every: int, regions: Regions | None, recorder: TriggerAttention | None = None,
             stop_after: int | None = None, prompts: list[str | None] | None = None,
             schedules: list[Schedule | None] | None = None) -> torch.Tensor:
    """`weights` are each LoRA's weight, or its peak where `schedules` gives it a step schedule (regional only):
    a scheduled LoRA's UNet call uses its weight at the step, and at 0 it makes none; its prompt is encoded at
    its peak, the weight it acts with."""
    first = settings[0]
    device = pipeline._execution_device
    guided = first.guidance > 1
    generators = [torch.Generator().manual_seed(s.seed) for s in settings]
    base = len(names)  # the index that stands for "no LoRA": the base's own prediction

    enabled = True  # render_multi enables the adapters; the base's call turns them off until the next LoRA's

    current = list(weights)  # each LoRA's weight at the step being denoised

    def activate(k: int) -> None:
        nonlocal enabled
        if (k != base) != enabled:
            enabled = k != base
            (pipeline.enable_lora if enabled else pipeline.disable_lora)()
        if enabled:
            pipeline.set_adapters([names[k]], adapter_weights=[current[k]])

    own = prompts or [None] * len(names)
    conditioning = []
    for k in range(len(names) + (regions is not None)):
        activate(k)
        texts = [s.prompt if k == base or own[k] is None else own[k] for s in settings]
        positive, negative = pipeline.encode_prompt(texts, device, 1, guided, [s.negative_prompt for s in settings])
        conditioning.append(torch.cat([negative, positive]) if guided else positive)  # (2B, T, D) or (B, T, D)

    def predict(k: int, latents: torch.Tensor, t) -> torch.Tensor:
        activate(k)
        if recorder is not None:
            recorder.watching = k if k in recorder.positions else None
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
        noise = pipeline.unet(model_input, t, encoder_hidden_states=conditioning[k], return_dict=False)[0]
        if guided:
            uncond, cond = noise.chunk(2)
            noise = uncond + first.guidance * (cond - uncond)
        return noise  # (B, C, h, w)

    scheduler = pipeline.scheduler
    scheduler.set_timesteps(first.steps, device=device)
    latents = pipeline.prepare_latents(len(settings), pipeline.unet.config.in_channels, first.height, first.width,
                                       conditioning[0].dtype, device, generators)  # (B, C, h, w)
    step_kwargs = pipeline.prepare_extra_step_kwargs(generators, 0.0)
    if regions is not None:
        regions = Regions(regions.masks.to(device, latents.dtype))
    steps = len(scheduler.timesteps)
    for i, t in enumerate(scheduler.timesteps[:stop_after]):
        if schedules:
            current = [w if s is None else s.weight_at(step_fraction(i, steps)) for w, s in zip(weights, schedules)]
        if regions is not None:
            acting = {k: predict(k, latents, t) for k in regions.acting() if current[k] != 0}
            noise = regions.blend(predict(base, latents, t) if regions.needs_base(acting) else None, acting)
        else:
            active = [(i // every) % len(names)] if method == "switch" else range(len(names))
            noise = torch.stack([predict(k, latents, t) for k in active]).mean(0)
        latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
    return latents
