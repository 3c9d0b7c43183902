"""Rendering a plan of image jobs: batched, resumable, and spread over the processes of `accelerate launch`.

Jobs are ordered so that images sharing a LoRA set and settings are consecutive; a LoRA set is fused into the
base weights once for its run of images (`PipelineLoras.apply` restores the saved originals first, so the
base is never reloaded). Process r of w takes every w-th job of that order: the split depends on the plan
alone, never on which files exist, so no image is skipped or rendered twice when processes race.

An image whose PNG exists with the same settings in its `parameters` text is kept; so an interrupted run
resumes where it stopped, and an image whose settings changed is rendered again. Each process writes its
rendered images' manifest rows to a part file; the main process merges them with the previous manifest, and
writes the manifest and the contact sheet once every process is done.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from loramix.choices import FILE_METHODS, PRUNING_MERGES, SEQUENTIAL
from loramix.errors import LoramixError
from loramix.models.load import LoadedBase
from loramix.models.loras import PipelineLoras, check_memory
from loramix.render.core import EXACT, Composition
from loramix.render.edit import write_stages
from loramix.render.images import a1111_parameters, image_grid, save_png
from loramix.render.loop import render_jobs, render_order, settings_of
from loramix.render.prompts import ImageJob, lora_files
from loramix.util.atomic import atomic_path

MANIFEST = "manifest.jsonl"
GRID = "grid.png"
GRID_IMAGES = 256  # the contact sheet shows the first 256 images: a bigger sheet is too big to look at
THUMBNAIL = 128


@dataclass(frozen=True)
class Processes:
    """Where this process stands among those rendering the plan together."""

    rank: int = 0
    world: int = 1
    wait: Callable[[], None] = lambda: None
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_processes() -> Processes:
    """This process's place under `accelerate launch` (or torchrun); a lone process otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return Processes(state.process_index, state.num_processes, state.wait_for_everyone, str(state.device))


@dataclass
class GenerateResult:
    total: int  # images in the plan
    rendered: int  # by all processes in this run (known to the main process; this process's own elsewhere)
    image_seconds: list[float] = field(default_factory=list)  # this process's, per image
    switch_seconds: list[float] = field(default_factory=list)  # this process's LoRA set switches
    manifest: Path | None = None
    grid: Path | None = None

    @property
    def kept(self) -> int:
        return self.total - self.rendered

    @property
    def seconds_per_image(self) -> float | None:
        return statistics.median(self.image_seconds) if self.image_seconds else None

    @property
    def seconds_per_switch(self) -> float | None:
        return statistics.median(self.switch_seconds) if self.switch_seconds else None


def check_loras(loras: PipelineLoras, jobs: list[ImageJob]) -> None:
    """Every LoRA file of the plan is readable and fits the base, all of them fit in memory, and no set puts
    two LoRAs of one orthogonal slot together, before any image is rendered."""
    paths = lora_files(jobs)
    check_memory(paths)
    for path in paths:
        loras.read(path)
        loras.hash_of(path)
    for files in dict.fromkeys(job.loras for job in jobs):
        loras.check_sum(files)


def generate(base: LoadedBase, jobs: list[ImageJob], output: str | os.PathLike, batch_size: int = 8,
             loras: PipelineLoras | None = None, processes: Processes = Processes(), progress: bool = False,
             grid: bool = True, manifest: bool = True, composition: Composition = EXACT) -> GenerateResult:
    """Render the images of `jobs` that are not already in `output`, then (main process) the manifest and grid."""
    if batch_size < 1:
        raise LoramixError("batch size must be at least 1")
    output = Path(output)
    if len({job.path for job in jobs}) != len(jobs):
        raise LoramixError("two images of the plan have the same path")
    pipeline = base.pipeline
    loras = loras or PipelineLoras(pipeline)
    check_loras(loras, jobs)
    parameters = {job.path: job_parameters(job, base, loras, composition) for job in jobs}
    for folder in sorted({(output / job.path).parent for job in jobs}):
        folder.mkdir(parents=True, exist_ok=True)
    mine = render_order(jobs)[processes.rank::processes.world]
    todo = [job for job in mine if not is_done(output / job.path, parameters[job.path])]
    result = GenerateResult(total=len(jobs), rendered=len(todo))
    rows = []
    from tqdm import tqdm

    with tqdm(total=len(todo), desc="rendering", unit="image", disable=not progress or not todo) as bar:
        for rendered in render_jobs(pipeline, loras, todo, composition, batch_size):
            if rendered.switch_seconds:
                result.switch_seconds.append(rendered.switch_seconds)
            for k, (job, image) in enumerate(zip(rendered.jobs, rendered.images)):
                if rendered.stages:
                    write_stages(rendered.stages[k], output / job.path.removesuffix(".png"), base.name,
                                 base.sampler)
                save_png(image, output / job.path, parameters[job.path])
                rows.append(manifest_row(job, base, loras, rendered.seconds_per_image))
            result.image_seconds += [rendered.seconds_per_image] * len(rendered.jobs)
            bar.update(len(rendered.jobs))
    if processes.world > 1:
        _write_rows(output / f".{MANIFEST}.part{processes.rank}", rows)
        processes.wait()
    if processes.is_main:
        if processes.world > 1:
            rows, result.rendered = _gather_parts(output, processes.world)
        if manifest:
            result.manifest = write_manifest(output, jobs, rows, base, loras)
        if grid:
            result.grid = write_contact_sheet(output, jobs)
    return result


def job_parameters(job: ImageJob, base: LoadedBase, loras: PipelineLoras,
                   composition: Composition = EXACT) -> str:
    """A1111's `parameters` text of the job's image; a method other than the exact sum is named in it, so that
    a rerun with another method renders the image again instead of keeping it."""
    weights = {wf.name: wf.strength for wf in job.loras}
    hashes = {wf.name: loras.hash_of(wf.path) for wf in job.loras}
    text = a1111_parameters(settings_of(job), base.sampler, base.name, weights, hashes)
    method = composition.method
    if method == "exact":
        return text
    if method == SEQUENTIAL:
        stages = " > ".join(["text-to-image"] + [f"{wf.name}:{wf.strength}" for wf in job.loras])
        return text + f', Denoising strength: {composition.strength:g}, Stages: "{stages}"'
    knobs = {"rank": composition.rank if method in FILE_METHODS else None,
             "density": composition.density if method in PRUNING_MERGES else None,
             "seed": composition.seed if method.startswith("dare") else None,
             "every": composition.every if method == "switch" else None}
    text += ", Composition: " + " ".join([method] + [f"{k} {v:g}" for k, v in knobs.items() if v is not None])
    own = [f"{wf.name}: {wf.prompt}" for wf in job.loras if wf.prompt is not None]
    return text + (', LoRA prompts: "' + "; ".join(own) + '"' if own else "")


def is_done(path: Path, parameters: str) -> bool:
    """The PNG is there, whole, and was rendered with these settings."""
    if not path.is_file():
        return False
    try:
        with Image.open(path) as image:
            image.verify()
            return image.info.get("parameters") == parameters
    except (OSError, SyntaxError, ValueError):
        return False


def manifest_row(job: ImageJob, base: LoadedBase, loras: PipelineLoras, seconds: float | None) -> dict:
    return {
        "path": job.path, "line": job.line, "prompt": job.prompt, "negative_prompt": job.negative_prompt,
        "seed": job.seed, "steps": job.steps, "guidance": job.guidance, "width": job.width, "height": job.height,
        "sampler": base.sampler, "model": base.name,
        "loras": [{"path": wf.path, "name": wf.name, "weight": wf.weight, "hash": loras.hash_of(wf.path)}
                  | ({"schedule": wf.schedule.text} if wf.schedule else {}) for wf in job.loras],
        "seconds": None if seconds is None else round(seconds, 4),
    }


def write_manifest(output: Path, jobs: list[ImageJob], rendered: list[dict], base: LoadedBase,
                   loras: PipelineLoras) -> Path:
    """One row per image of the plan, in plan order: this run's, else the previous manifest's (when it
    describes the same image), else one without a time."""
    previous = {}
    path = output / MANIFEST
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                previous[row["path"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a damaged manifest row is rebuilt from the plan
    new = {row["path"]: row for row in rendered}
    rows = []
    for job in jobs:
        row = manifest_row(job, base, loras, None)
        old = previous.get(job.path)
        if job.path in new:
            row = new[job.path]
        elif old is not None and {k: v for k, v in old.items() if k != "seconds"} == \
                {k: v for k, v in row.items() if k != "seconds"}:
            row = old
        rows.append(row)
    _write_rows(path, rows)
    return path


def _write_rows(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as temp:
        temp.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _gather_parts(output: Path, world: int) -> tuple[list[dict], int]:
    rows = []
    for rank in range(world):
        part = output / f".{MANIFEST}.part{rank}"
        rows += [json.loads(line) for line in part.read_text().splitlines()]
        part.unlink()
    return rows, len(rows)


def write_contact_sheet(output: Path, jobs: list[ImageJob]) -> Path | None:
    """`grid.png`: the plan's images in order, a row per prompt when the prompts have a few images each."""
    shown = jobs[:GRID_IMAGES]
    if not shown:
        return None
    images = []
    for job in shown:
        with Image.open(output / job.path) as image:
            images.append(image.convert("RGB").resize((shown[0].width, shown[0].height)))
    per_row = {job.line: 0 for job in shown}
    for job in shown:
        per_row[job.line] += 1
    counts = set(per_row.values())
    if len(per_row) > 1 and len(counts) == 1 and 1 < counts.pop() <= 16:
        columns = next(iter(per_row.values()))
    else:
        columns = min(8 if len(per_row) == 1 else 16, math.ceil(math.sqrt(len(shown) * 2)))
    scale = max(1, THUMBNAIL // max(shown[0].width, shown[0].height))
    sheet = image_grid(images, columns=columns, scale=scale)
    if max(shown[0].width, shown[0].height) > THUMBNAIL:
        factor = THUMBNAIL / max(shown[0].width, shown[0].height)
        sheet = sheet.resize((round(sheet.width * factor), round(sheet.height * factor)), Image.LANCZOS)
    return save_png(sheet, output / GRID)
