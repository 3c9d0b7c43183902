"""The XY grid: one prompt and seed rendered over a sweep of two LoRAs' weights, labelled — how people choose
the weights to use. Every cell is the same noise; only the fused composition w_x·ΔW_x + w_y·ΔW_y changes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from PIL import Image

from loramix.errors import LoramixError
from loramix.lora.specs import WeightedFile
from loramix.models.loras import PipelineLoras
from loramix.render.core import RenderSettings
from loramix.render.images import LabelledGrid, a1111_parameters, labelled_grid
from loramix.render.loop import render_jobs
from loramix.render.prompts import ImageJob

MAX_CELLS = 400


def parse_weights(text: str) -> tuple[float, ...]:
    """`0,0.5,1` → (0, 0.5, 1); `0:1:0.25` → 0, 0.25, …, 1 (start:stop:step, stop included)."""
    text = text.strip()
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0 or stop < start:
                raise LoramixError(f"weights {text!r}: a range start:stop:step needs start ≤ stop and step > 0")
            count = math.floor((stop - start) / step + 1e-9) + 1
            weights = tuple(round(start + i * step, 10) for i in range(count))
        else:
            weights = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise LoramixError(f"weights {text!r}: write numbers like 0,0.5,1 or a range like 0:1:0.25") from None
    if not weights or not all(math.isfinite(w) for w in weights):
        raise LoramixError(f"weights {text!r}: need at least one finite number")
    return weights


@dataclass(frozen=True)
class XYSweep:
    x: str  # LoRA file swept across the columns
    y: str  # LoRA file swept down the rows
    x_weights: tuple[float, ...]
    y_weights: tuple[float, ...]
    fixed: tuple[WeightedFile, ...] = ()  # on in every cell at their own weights

    def __post_init__(self):
        if not self.x_weights or not self.y_weights:
            raise LoramixError("each axis needs at least one weight")
        cells = len(self.x_weights) * len(self.y_weights)
        if cells > MAX_CELLS:
            raise LoramixError(f"{cells} cells is more than {MAX_CELLS}: sweep fewer weights")

    def cell(self, wx: float, wy: float) -> tuple[WeightedFile, ...]:
        """The LoRA set of one cell; a zero weight leaves its LoRA out (the same image, and no work)."""
        swept = [WeightedFile(path, w) for path, w in ((self.x, wx), (self.y, wy)) if w != 0]
        return (*swept, *self.fixed)


@dataclass
class XYResult:
    cells: list[list[Image.Image]]  # cells[row][column]: y_weights[row], x_weights[column]
    grid: LabelledGrid
    image_seconds: list[float] = field(default_factory=list)
    switch_seconds: list[float] = field(default_factory=list)


def render_xy(pipeline, loras: PipelineLoras, sweep: XYSweep, settings: RenderSettings, scale: int = 2,
              progress: bool = False) -> XYResult:
    """Render every cell (each file is read and checked against the base first) and lay them out labelled."""
    from tqdm import tqdm

    for path in (sweep.x, sweep.y, *(wf.path for wf in sweep.fixed)):
        loras.read(path)
    jobs = [ImageJob(f"{row}-{column}", 0, settings.prompt, settings.negative_prompt, settings.seed, settings.steps,
                     settings.guidance, settings.width, settings.height, sweep.cell(wx, wy))
            for row, wy in enumerate(sweep.y_weights) for column, wx in enumerate(sweep.x_weights)]
    result = XYResult(cells=[], grid=None)
    images = []
    with tqdm(total=len(jobs), desc="xy grid", unit="image", disable=not progress) as bar:
        for rendered in render_jobs(pipeline, loras, jobs, batch_size=1):
            images += rendered.images
            result.switch_seconds.append(rendered.switch_seconds)
            result.image_seconds.append(rendered.seconds_per_image)
            bar.update(len(rendered.jobs))
    columns = len(sweep.x_weights)
    result.cells = [images[start : start + columns] for start in range(0, len(images), columns)]
    x_name, y_name = WeightedFile(sweep.x, 1).name, WeightedFile(sweep.y, 1).name
    cell_width = settings.width * scale
    result.grid = labelled_grid(
        result.cells, [fit_label(f"{x_name} {w:g}", f"{w:g}", cell_width) for w in sweep.x_weights],
        [f"{y_name} {w:g}" for w in sweep.y_weights], scale=scale,
        title=f"{settings.prompt} · seed {settings.seed} · columns: {x_name} · rows: {y_name}")
    return result


def grid_parameters(sweep: XYSweep, settings: RenderSettings, sampler: str, model: str,
                    loras: PipelineLoras) -> str:
    """The A1111 `parameters` text of a grid: the settings every cell shares, the fixed LoRAs' weights, and the
    hashes of every file in it."""
    hashes = {WeightedFile(path, 1.0).name: loras.hash_of(path) for path in (sweep.x, sweep.y)}
    hashes.update({wf.name: loras.hash_of(wf.path) for wf in sweep.fixed})
    return a1111_parameters(settings, sampler, model, {wf.name: wf.strength for wf in sweep.fixed}, hashes)


def fit_label(label: str, short: str, width: int) -> str:
    """The column label, or only its weight when the name would spill into the next column (the title names
    the column LoRA)."""
    from PIL import ImageFont

    font = ImageFont.load_default(size=max(10, width // 9))
    return label if font.getlength(label) <= width - 4 else short
