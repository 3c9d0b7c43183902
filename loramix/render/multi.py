"""Generation-time composition: LoRAs that take turns, or vote, at each denoising step.

After Zhong et al. 2024, "Multi-LoRA Composition for Image Generation" (arXiv 2402.16843). Instead of
adding the LoRAs' weights, both methods keep each LoRA whole and combine them during denoising:

    switch:     ε_t = ε(x_t | LoRA_k),  k = ⌊t_index / every⌋ mod n        one UNet call per step
    composite:  ε_t = 1/n · Σ_k ε̃(x_t | LoRA_k)                            n UNet calls per step

where ε̃ is the classifier-free-guided prediction, uncond + g·(cond − uncond), made with LoRA_k active (and
with LoRA_k's text conditioning when it changes the text encoder). Each LoRA acts at its own weight.

The loop is Stable Diffusion's own (encode, prepare latents, scale, predict, guide, step, decode) from the
pipeline's parts, with the per-step choice of LoRA added; with one LoRA it renders what the pipeline does
(a test checks this).
"""

from __future__ import annotations

import torch
from PIL import Image

from loramix.choices import GENERATION_METHODS
from loramix.errors import LoramixError
from loramix.models.loras import PipelineLoras
from loramix.render.core import RenderSettings, batch_settings
from loramix.specs import WeightedFile


def render_multi(pipeline, loras: PipelineLoras, files: list[WeightedFile], settings: list[RenderSettings],
                 method: str, every: int = 1) -> list[Image.Image]:
    """Render one batch with `files` combined by `method` ("switch" every `every` steps, or "composite")."""
    from loramix.models.load import is_sdxl

    if method not in GENERATION_METHODS:
        raise LoramixError(f"unknown method {method!r}: choose one of {', '.join(GENERATION_METHODS)}")
    if is_sdxl(pipeline):
        raise LoramixError(f"--method {method} renders SD 1.x/2.x pipelines; for SDXL use a merging method")
    if not files:
        raise LoramixError(f"--method {method} needs at least one LoRA")
    if every < 1:
        raise LoramixError(f"--every must be ≥ 1, got {every}")
    batch_settings(settings)
    names = loras.load_named([f.path for f in files])
    pipeline.enable_lora()
    try:
        return _denoise(pipeline, names, [f.weight for f in files], settings, method, every)
    finally:
        pipeline.disable_lora()


@torch.no_grad()
def _denoise(pipeline, names: list[str], weights: list[float], settings: list[RenderSettings], method: str,
             every: int) -> list[Image.Image]:
    first = settings[0]
    device = pipeline._execution_device
    guided = first.guidance > 1
    generators = [torch.Generator().manual_seed(s.seed) for s in settings]

    def activate(k: int) -> None:
        pipeline.set_adapters([names[k]], adapter_weights=[weights[k]])

    conditioning = []
    for k in range(len(names)):
        activate(k)
        positive, negative = pipeline.encode_prompt([s.prompt for s in settings], device, 1, guided,
                                                    [s.negative_prompt for s in settings])
        conditioning.append(torch.cat([negative, positive]) if guided else positive)  # (2B, T, D) or (B, T, D)

    scheduler = pipeline.scheduler
    scheduler.set_timesteps(first.steps, device=device)
    latents = pipeline.prepare_latents(len(settings), pipeline.unet.config.in_channels, first.height, first.width,
                                       conditioning[0].dtype, device, generators)  # (B, C, h, w)
    step_kwargs = pipeline.prepare_extra_step_kwargs(generators, 0.0)
    for i, t in enumerate(scheduler.timesteps):
        active = [(i // every) % len(names)] if method == "switch" else range(len(names))
        predictions = []
        for k in active:
            activate(k)
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
            noise = pipeline.unet(model_input, t, encoder_hidden_states=conditioning[k], return_dict=False)[0]
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + first.guidance * (cond - uncond)
            predictions.append(noise)
        latents = scheduler.step(torch.stack(predictions).mean(0), t, latents, **step_kwargs, return_dict=False)[0]
    images = pipeline.vae.decode(latents / pipeline.vae.config.scaling_factor, return_dict=False)[0]
    return pipeline.image_processor.postprocess(images, output_type="pil", do_denormalize=[True] * len(settings))
