"""The one loop every command renders through.

`render_jobs` takes image jobs (from a prompt file, a prompt and a count, or the cells of an XY sweep), renders
them in batches of the same LoRA set, and puts each set on the pipeline as a `Composition` says. `generate`,
`compose --prompt`, `xy` and `serve` feed it jobs; `edit` runs the sequential method on one image.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from PIL import Image

from loramix.choices import FILE_METHODS, GENERATION_METHODS, SEQUENTIAL
from loramix.render.core import EXACT, Composition, RenderSettings, render
from loramix.render.edit import edit_sequence
from loramix.render.multi import render_multi
from loramix.render.regions import check_masks
from loramix.render.scheduled import StepWeights, check_method, is_scheduled


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
                images = render_multi(pipeline, loras, list(files), [settings_of(job) for job in batch],
                                      composition.method, composition.every)
            else:
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
