"""Step schedules: a LoRA's weight as a function of how far the denoising has gone.

Written after the weight of a spec, as sd-webui-loractl writes them (`a.safetensors:WEIGHT_OR_SCHEDULE`):

    0.8@0.3-1.0        a range: weight 0.8 for the steps whose fraction lies in [0.3, 1.0], off (0) elsewhere
    0@0,1@0.4,1@1      keyframes WEIGHT@FRACTION: linear between keyframes, held flat before the first and
                       after the last (loractl's `np.interp`)

          weight
      1 ┤         ●━━━━━━━━━━━━━━━━●        0@0,1@0.4,1@1
        │       ╱
      0 ●━━━━━╱───────────────────── fraction
        0        0.4               1

Step i of a run of n steps is at fraction i/(n−1): the first step at 0, the last at 1, so `@0-1` is every step
and a keyframe `@1` is the last step's weight. loractl means the same (its step/(steps−2) reaches 1 on A1111's
last sampling step); i/n would never reach 1, and `@1` would name no step. Both ends of a range are inclusive.
A run of one step is at fraction 0.

Imports nothing heavy, so the command line parses schedules before torch is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from loramix.errors import LoramixError

RANGE = "range"  # the weight inside [start, end], 0 outside
KEYFRAMES = "keyframes"  # linear between keyframes, flat outside them
NO_FRACTION = "no fraction after '@': write WEIGHT@FRACTION with a fraction of the steps in [0, 1]"


@dataclass(frozen=True)
class Schedule:
    """A weight over the fraction of the denoising steps, as written in a spec."""

    keyframes: tuple[tuple[float, float], ...]  # (fraction, weight); fractions increase. A range: its two ends
    kind: str  # RANGE or KEYFRAMES
    text: str  # as written, so that a spec and A1111's `<lora:NAME:…>` show what was typed

    def weight_at(self, fraction: float) -> float:
        if self.kind == RANGE:
            (start, weight), (end, _) = self.keyframes
            return weight if start <= fraction <= end else 0.0
        (first, first_weight), (last, last_weight) = self.keyframes[0], self.keyframes[-1]
        if fraction <= first:
            return first_weight
        if fraction >= last:
            return last_weight
        for (f0, w0), (f1, w1) in zip(self.keyframes, self.keyframes[1:]):
            if fraction <= f1:
                if w0 == w1:  # a flat stretch is that weight exactly, not a sum that rounds near it
                    return w0
                t = (fraction - f0) / (f1 - f0)
                return w0 * (1 - t) + w1 * t  # w0 at t = 0 and w1 at t = 1 exactly
        raise AssertionError("unreachable: fraction lies between the first and last keyframes")

    @property
    def peak(self) -> float:
        """The weight of largest magnitude it reaches: what a schedule's file shows as its one weight."""
        return max((weight for _, weight in self.keyframes), key=abs)


def step_fraction(step: int, steps: int) -> float:
    """How far step `step` (0-based) of `steps` lies through the run: 0 for the first step, 1 for the last."""
    return step / (steps - 1) if steps > 1 else 0.0


def parse_schedule(text: str, spec: str) -> Schedule:
    """`0.8@0.3-1.0` or `0@0,1@0.4,1@1` (the part of `spec` after its last ':') → a Schedule; bad input is a
    one-line error naming `spec` and what is wrong."""
    parts = text.split(",")
    if len(parts) == 1:
        weight_text, _, where = text.partition("@")
        weight = _weight(weight_text, spec)
        if not where.strip():
            raise spec_error(spec, NO_FRACTION)
        if "-" not in where:
            raise spec_error(spec, f"{text!r} gives one keyframe, which would hold for every step: write a plain "
                                   f"weight, a range like {weight_text}@0.3-1 or keyframes like 0@0,{weight_text}@1")
        bounds = where.split("-")
        if len(bounds) != 2:
            raise spec_error(spec, f"range {where!r} is not START-END with fractions in [0, 1], e.g. 0.3-1")
        start, end = (_fraction(bound, spec) for bound in bounds)
        if start >= end:
            raise spec_error(spec, f"range {where!r} must start before it ends")
        return Schedule(((start, weight), (end, weight)), RANGE, text)
    keyframes = []
    for part in parts:
        if not part.strip():
            raise spec_error(spec, "an empty keyframe between commas: write WEIGHT@FRACTION pairs like "
                                   "0@0,1@0.4,1@1")
        weight_text, at, fraction_text = part.partition("@")
        if not at:
            raise spec_error(spec, f"keyframe {part!r} is not WEIGHT@FRACTION")
        keyframes.append((_fraction(fraction_text, spec), _weight(weight_text, spec)))
    for (before, _), (after, _) in zip(keyframes, keyframes[1:]):
        if after <= before:
            raise spec_error(spec, f"keyframe fractions must increase, but {after:g} follows {before:g}")
    return Schedule(tuple(keyframes), KEYFRAMES, text)


def spec_error(spec: str, problem: str) -> LoramixError:
    return LoramixError(f"weight spec {spec!r}: {problem}")


def finite_number(text: str, what: str, spec: str) -> float:
    """`text` as a finite number, else a one-line error naming `spec` and what the number is for."""
    try:
        value = float(text)
    except ValueError:
        raise spec_error(spec, f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise spec_error(spec, f"{what} {text!r} must be a finite number")
    return value


def _weight(text: str, spec: str) -> float:
    if not text.strip():
        raise spec_error(spec, "no weight before '@'")
    return finite_number(text, "weight", spec)


def _fraction(text: str, spec: str) -> float:
    if not text.strip():
        raise spec_error(spec, NO_FRACTION)
    value = finite_number(text, "fraction", spec)
    if not 0 <= value <= 1:
        raise spec_error(spec, f"fraction {text!r} is outside [0, 1]: a schedule is written in fractions of the "
                               "steps")
    return value


def refuse_schedules(files, what: str) -> None:
    """`what` (a file, a checkpoint) takes one weight per LoRA: a scheduled spec is a one-line error there."""
    for wf in files:
        if wf.schedule is not None:
            raise LoramixError(f"{wf.spec}: a step schedule acts while rendering, and {what} has one weight per "
                               f"LoRA: write a plain weight, e.g. {wf.path}:{wf.weight:g}")
