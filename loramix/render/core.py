"""Rendering images reproducibly, and the one loop every command renders through.

Each image has its own seeded generator, so an image is the same whatever batch it is in. `render_jobs`
takes image jobs (from a prompt file, a prompt and a count, or the cells of an XY sweep), renders them in
batches of the same LoRA set, and puts each set on the pipeline as a `Composition` says:

    exact, merge-svd, ties, dare, dare_ties   the LoRAs merged into one update, fused (or unfused adapters
                                              on a quantized base): one pipeline call per batch
    switch, composite, regional               the LoRAs kept apart and combined while denoising
    sequential                                each LoRA in turn, img2img on the previous stage

`generate`, `compose --prompt` and `xy` feed it jobs; `edit` runs the sequential method on one image.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from PIL import Image

from loramix.choices import FILE_METHODS, GENERATION_METHODS, RENDER_METHODS, SEQUENTIAL


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


@dataclass
class RenderedBatch:
    jobs: list  # the ImageJobs of the batch
    images: list[Image.Image]  # one per job: for a sequential job, its last stage
    seconds_per_image: float
    switch_seconds: float  # putting the batch's LoRA set on the pipeline (0: it was on already)
    stages: list[list] = field(default_factory=list)  # sequential: each job's stages


def settings_of(job) -> RenderSettings:
    return RenderSettings(job.prompt, job.seed, job.steps, job.guidance, job.width, job.height, job.negative_prompt)


def render_order(jobs: list) -> list:
    """The jobs with each LoRA set's images together (sets in order of first use), then by settings."""
    first_use: dict[tuple, int] = {}
    for job in jobs:
        first_use.setdefault(job.group, len(first_use))
    return sorted(jobs, key=lambda job: first_use[job.group])


def batches(jobs: list, batch_size: int) -> list[list]:
    """Consecutive jobs of one group, at most `batch_size` at a time."""
    result: list[list] = []
    for job in jobs:
        if result and result[-1][0].group == job.group and len(result[-1]) < batch_size:
            result[-1].append(job)
        else:
            result.append([job])
    return result


def render_jobs(pipeline, loras, jobs: list, composition: Composition = EXACT,
                batch_size: int = 8) -> Iterator[RenderedBatch]:
    """Render `jobs` in the order given, a batch of one LoRA set at a time, with `loras` (a PipelineLoras on
    `pipeline`) putting each set on as `composition` says. The pipeline is left with no LoRA at the end.
    LoRAs with step schedules are put on step by step (loramix.render.scheduled) by the merging methods."""
    from loramix.render.regions import check_masks
    from loramix.render.scheduled import StepWeights, check_method, is_scheduled

    for files in {job.loras for job in jobs}:  # before the first image: every schedule and mask is usable
        check_method(files, composition.method)
        check_masks(files, composition.method)
    try:
        for batch in batches(jobs, 1 if composition.method == SEQUENTIAL else batch_size):
            files = batch[0].loras
            switch = 0.0
            start = time.perf_counter()
            stages = []
            if composition.method in FILE_METHODS:
                steps = StepWeights(loras, files, composition.method, composition.rank, composition.density,
                                    composition.seed)
                switch = steps.start()
                start = time.perf_counter()
                images = render(pipeline, [settings_of(job) for job in batch],
                                on_step=steps if is_scheduled(files) else None)
            elif composition.method in GENERATION_METHODS:
                from loramix.render.multi import render_multi

                images = render_multi(pipeline, loras, list(files), [settings_of(job) for job in batch],
                                      composition.method, composition.every)
            else:
                from loramix.render.edit import edit_sequence

                job = batch[0]
                stages = [edit_sequence(pipeline, list(files), job.prompt, steps=job.steps, guidance=job.guidance,
                                        strength=composition.strength, seed=job.seed,
                                        negative_prompt=job.negative_prompt, width=job.width, height=job.height,
                                        adapters=loras)]
                images = [stages[0][-1].image]
            seconds = (time.perf_counter() - start) / len(batch)
            yield RenderedBatch(batch, images, seconds, switch, stages)
    finally:
        loras.apply([])
