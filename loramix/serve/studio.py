"""What the render worker does for the page: previews, XY grids and composed files, each through the code the
commands use (the render loop, A1111's `parameters`, `write_composition`), so what the page shows and saves is
what `loramix compose` / `generate` / `xy` make of the same settings.

Runs on the worker's thread alone (it owns the pipeline); listing the files may run anywhere.
"""

from __future__ import annotations

import base64
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from loramix.errors import LoramixError, RequestError
from loramix.lora.specs import WeightedFile
from loramix.models.load import LoadedBase
from loramix.models.loras import PipelineLoras
from loramix.render.generate import job_parameters
from loramix.render.images import png_bytes
from loramix.render.loop import render_jobs
from loramix.render.prompt_tags import find_lora_tags
from loramix.render.prompts import Defaults, PromptRow, plan
from loramix.serve.library import LoraLibrary, Signature
from loramix.serve.mix import MixRequest, command_lines, listed_name, save_format, tag_weight

# Reads images: one dict of named scores in [0, 1] per image (the toy base's judge, given by the CLI).
Judge = Callable[[list[Image.Image]], list[dict[str, float]]]
MAX_GRID_CELLS = 49  # an XY grid of the page holds the worker for a few seconds at most


@dataclass
class Preview:
    sequence: int
    images: list[str]  # PNG files (with `parameters`) as data URLs
    parameters: list[str]
    seeds: list[int]
    render_seconds: float  # the render loop alone: fusing the set and the pipeline calls
    server_seconds: float  # the whole preview in the worker: the render, parameters, PNGs, the judge
    switch_seconds: float
    judge: list[dict[str, float]] | None
    commands: dict[str, str]
    settings: dict = field(default_factory=dict)  # what it was rendered with, for the history strip

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Studio:
    def __init__(self, base: LoadedBase, base_spec: str, library: LoraLibrary, judge: Judge | None = None):
        self.base = base
        self.base_spec = base_spec
        self.library = library
        self.judge = judge
        self.loras = PipelineLoras(base.pipeline)
        self._seen: dict[str, Signature] = {}  # file → the version of it the pipeline's LoRAs were read from

    def describe(self, path: Path) -> dict:
        """What the page lists about a file: what `inspect` reports, and whether it fits the served base."""
        from loramix.formats.metadata import META_BASE, META_TRIGGER
        from loramix.formats.read import read_adapter
        from loramix.formats.write import describe
        from loramix.jobs.report import report_adapter
        from loramix.models.loras import check_fits

        adapter = read_adapter(path)
        report = report_adapter(path, adapter)
        header = describe(adapter)
        try:
            check_fits(adapter, self.base.pipeline, path.name)
            fits = None
        except LoramixError as e:
            fits = str(e)
        triggers = [word.strip() for word in header[META_TRIGGER].split(",") if word.strip()]
        return {"rank": report.ranks, "alpha": report.alphas, "components": report.components,
                "targets": {component: sorted(kinds) for component, kinds in report.targets.items()},
                "modules": report.num_modules, "triggers": triggers, "base_model": header[META_BASE],
                "format": report.format, "misfit": fits}

    def files(self, request: MixRequest) -> list[WeightedFile]:
        """The request's LoRAs as files, each read afresh if it changed on disk since it was last read."""
        files = []
        for name, weight in request.loras:
            real = self.library.resolve(name)
            path = self.library.command_path(name)
            try:
                for _ in range(3):  # a file replaced while it is read and hashed is read again
                    signature = Signature.of(real)
                    if self._seen.get(path) not in (None, signature):
                        self.loras.forget(path)
                    self._seen[path] = signature
                    self.loras.read(path)
                    self.loras.hash_of(path)
                    if Signature.of(real) == signature:
                        break
            except OSError as e:  # removed since it was resolved
                raise RequestError(f"LoRA {name}: {e.strerror or e}", 404) from None
            files.append(WeightedFile(path, weight))
        return files

    def with_tags(self, request: MixRequest) -> MixRequest:
        """The request with its prompt's `<lora:NAME:WEIGHT>` tags taken out into its LoRAs, each NAME one of the
        files the page lists (a tag and a switched-on slider of one file add their weights)."""
        text, tags = find_lora_tags(request.prompt, "prompt")
        if not tags:
            return request
        loras = dict(request.loras)
        names = self.library.names()
        for tag in tags:
            name = listed_name(tag, names)
            loras[name] = loras.get(name, 0.0) + tag_weight(tag)
        return replace(request, prompt=text, loras=tuple(loras.items()))

    def preview(self, request: MixRequest) -> Preview:
        began = time.perf_counter()
        typed, request = request, self.with_tags(request)
        request.check_loras()
        files = self.files(request)
        steps = request.steps or self.base.steps
        guidance = self.base.guidance if request.guidance is None else request.guidance
        defaults = Defaults(steps=steps, guidance=guidance, width=self.base.size, height=self.base.size,
                            n=request.count, seed=request.seed, negative_prompt=request.negative_prompt,
                            loras=tuple(files))
        jobs = plan([PromptRow(line=0, prompt=request.prompt)], defaults, flat=True)
        composition = request.composition()
        images, switch = [], 0.0
        start = time.perf_counter()
        for rendered in render_jobs(self.base.pipeline, self.loras, jobs, composition, batch_size=len(jobs)):
            images += rendered.images
            switch += rendered.switch_seconds
        seconds = time.perf_counter() - start
        parameters = [job_parameters(job, self.base, self.loras, composition) for job in jobs]
        self.loras.switch_seconds.clear()  # a long session must not grow a list per render
        urls = [data_url(image, text) for image, text in zip(images, parameters)]
        judged = self.judge(images) if self.judge else None
        return Preview(
            sequence=request.sequence, images=urls, parameters=parameters, seeds=[job.seed for job in jobs],
            render_seconds=seconds, server_seconds=time.perf_counter() - began, switch_seconds=switch, judge=judged,
            commands=command_lines(request, files, steps, guidance, self.base_spec),
            settings={"loras": [{"name": n, "weight": w} for n, w in typed.loras], "method": typed.method,
                      "strength": typed.strength, "prompt": typed.prompt,
                      "negative_prompt": typed.negative_prompt, "seed": typed.seed, "steps": steps,
                      "guidance": guidance, "count": typed.count})

    def xy(self, request: MixRequest, x: str, y: str, x_weights: str, y_weights: str) -> dict:
        """An XY grid of two listed LoRAs' weights, with the request's other LoRAs fixed at their weights."""
        from loramix.render.core import RenderSettings
        from loramix.render.xy import XYSweep, grid_parameters, parse_weights, render_xy

        if x == y:
            raise LoramixError("choose two different LoRAs for the grid")
        request = self.with_tags(request)
        sweep_x, sweep_y = (self.files(MixRequest(loras=((name, 1.0),)))[0].path for name in (x, y))
        fixed = tuple(wf for wf in self.files(request) if wf.path not in (sweep_x, sweep_y))
        sweep = XYSweep(sweep_x, sweep_y, parse_weights(x_weights), parse_weights(y_weights), fixed)
        cells = len(sweep.x_weights) * len(sweep.y_weights)
        if cells > MAX_GRID_CELLS:
            raise LoramixError(f"{cells} cells is more than the page's {MAX_GRID_CELLS}: sweep fewer weights "
                               "(`loramix xy` renders bigger grids)")
        settings = RenderSettings(request.prompt, request.seed, request.steps or self.base.steps,
                                  self.base.guidance if request.guidance is None else request.guidance,
                                  self.base.size, self.base.size, request.negative_prompt)
        start = time.perf_counter()
        result = render_xy(self.base.pipeline, self.loras, sweep, settings, scale=2)
        parameters = grid_parameters(sweep, settings, self.base.sampler, self.base.name, self.loras)
        return {"image": data_url(result.grid.image, parameters), "parameters": parameters,
                "seconds": time.perf_counter() - start, "cells": cells}

    def save(self, request: MixRequest, file_format: object) -> tuple[bytes, str]:
        """The composed LoRA file of the request's LoRAs and method, written as `loramix compose -o` writes it."""
        from loramix.choices import DEFAULT_FORMAT, FILE_METHODS
        from loramix.jobs.compose_file import write_composition

        file_format = save_format(file_format)
        request = self.with_tags(request)
        if request.method not in FILE_METHODS:
            raise LoramixError(f"method {request.method} combines the LoRAs while rendering: there is no single "
                               f"file of it; choose one of {', '.join(FILE_METHODS)}")
        if not request.loras:
            raise LoramixError("switch at least one LoRA on to save a composition")
        files = self.files(request)
        name = "mix.safetensors" if file_format == DEFAULT_FORMAT else f"mix.{file_format}.safetensors"
        with tempfile.TemporaryDirectory(prefix="loramix-serve-") as folder:
            path = Path(folder) / name
            write_composition(files, path, request.method, seed=request.seed, file_format=file_format)
            return path.read_bytes(), name


def data_url(image: Image.Image, parameters: str) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image, parameters)).decode("ascii")
