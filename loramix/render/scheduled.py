"""LoRAs whose weights follow step schedules, put on the pipeline step by step (see loramix.lora.schedule).

    before the pipeline call     the set at fraction 0 (the prompt is encoded with it)
    after step i (diffusers'     the set at step i+1's fraction, i.e. (i+1)/(n−1), n the steps the pipeline
    callback_on_step_end)        runs (`pipe.num_timesteps`, so an img2img stage counts its own steps)

Each step's set is every file at `weight_at(fraction)`, the files at 0 left out, and goes on through
`PipelineLoras.apply`, which does nothing when the set is the one already on. So a fused base is re-fused
(restore, then fuse the new sum) only at the steps where a weight changes, and an unfused base (a quantized
one) gets `set_adapters` with the new weights. A file at 0 for every step is never fused, and renders the base
exactly; a schedule that holds one weight throughout renders exactly what that plain weight does.

The text encoder is run once, before the first step, so its part of a LoRA acts at the weight of fraction 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from loramix.choices import FILE_METHODS, SEQUENTIAL
from loramix.errors import LoramixError
from loramix.lora.schedule import step_fraction
from loramix.lora.specs import WeightedFile

if TYPE_CHECKING:  # the command line imports this module before torch, which loramix.models.loras needs
    from loramix.models.loras import PipelineLoras

# The methods that re-merge a set per distinct weight vector, regional (which sets each LoRA's weight for its own
# call, and skips the call where it is 0) and sequential.
SCHEDULED_METHODS = (*FILE_METHODS, "regional", SEQUENTIAL)


def at_fraction(files: tuple[WeightedFile, ...], fraction: float) -> tuple[WeightedFile, ...]:
    """Each scheduled file at its weight at `fraction`, left out where that is 0; plain files as they are."""
    result = []
    for wf in files:
        weight = wf.weight if wf.schedule is None else wf.schedule.weight_at(fraction)
        if wf.schedule is None or weight != 0:
            result.append(replace(wf, weight=weight, schedule=None))
    return tuple(result)


def is_scheduled(files) -> bool:
    return any(wf.schedule is not None for wf in files)


def check_method(files, method: str) -> None:
    """Schedules act through the methods that merge the set anew when its weights change, and sequential."""
    if is_scheduled(files) and method not in SCHEDULED_METHODS:
        spec = next(wf.spec for wf in files if wf.schedule is not None)
        raise LoramixError(f"{spec}: --method {method} keeps each LoRA at one weight; step schedules work with "
                           f"{', '.join(SCHEDULED_METHODS)}")


@dataclass
class StepWeights:
    """Puts `files` on the pipeline at each step's weights: `start()` before the pipeline call, then the object
    itself as the call's `callback_on_step_end`. `applied` records the set on for each step."""

    loras: PipelineLoras
    files: tuple[WeightedFile, ...]
    method: str = "exact"
    rank: int | None = None
    density: float = 0.5
    seed: int = 0
    applied: list[tuple[WeightedFile, ...]] = field(default_factory=list)
    switch_seconds: list[float] = field(default_factory=list)  # the steps where the set changed

    def start(self) -> float:
        """Put on the set of the first step; returns the seconds it took."""
        self.applied.clear()
        return self._put_on(0.0)

    def __call__(self, pipe, step: int, timestep, tensors: dict) -> dict:
        following = step + 1
        if following < pipe.num_timesteps:
            self._put_on(step_fraction(following, pipe.num_timesteps))
        return tensors

    def _put_on(self, fraction: float) -> float:
        files = at_fraction(self.files, fraction)
        seconds = self.loras.apply(files, method=self.method, rank=self.rank, density=self.density, seed=self.seed)
        if seconds and self.applied:  # 0: the set was on already
            self.switch_seconds.append(seconds)
        self.applied.append(files)
        return seconds
