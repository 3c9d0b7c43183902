"""LoRA files with weights, as users write them on the command line and in prompt files: `a.safetensors:0.7`.

Imports nothing heavy, so the CLI can parse them before torch is loaded."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from loramix.errors import LoramixError
from loramix.lora.schedule import Schedule, finite_number, parse_schedule

LBW = "lbw="  # A1111's lora-block-weight syntax: <lora:name:0.8:lbw=1,0,…> or lbw=PRESET
MASK = "#"  # regional composition: `a.safetensors:0.8#mask.png`, the LoRA's region as an image


@dataclass(frozen=True)
class WeightedFile:
    path: str
    weight: float
    lbw: str | None = None  # block weights as written: comma-separated values or a preset name
    # The weight over the denoising steps (`:0.8@0.3-1.0`, see loramix.lora.schedule); `weight` is then its peak.
    # None: `weight` at every step.
    schedule: Schedule | None = None
    mask: str | None = None  # regional composition: the image file of this LoRA's region (`#mask.png`)
    # switch, composite and regional: the prompt this LoRA's own calls are conditioned on (`--lora-prompt`);
    # None: the image's prompt.
    prompt: str | None = None

    @property
    def spec(self) -> str:
        """As written on the command line: `a.safetensors:0.7`, `a.safetensors:0.7:lbw=INS`,
        `a.safetensors:0@0,1@0.4,1@1` or `…#mask.png`."""
        return f"{self.path}:{self.strength}"

    @property
    def strength(self) -> str:
        """The weight as A1111's `<lora:NAME:…>` writes it, block weights, a schedule (as typed) and a region
        included: `0.7`, `0.7:lbw=INS`, `0.8@0.3-1.0` or `0.7#mask.png`."""
        weight = self.schedule.text if self.schedule else f"{self.weight:g}"
        blocks = f":{LBW}{self.lbw}" if self.lbw else ""
        return weight + blocks + (f"{MASK}{self.mask}" if self.mask else "")

    @property
    def name(self) -> str:
        """The name A1111 shows in `<lora:NAME:0.7>`: the file name without its suffix."""
        return Path(self.path).name.removesuffix(".safetensors")


def parse_weight_spec(spec: str) -> WeightedFile:
    """`a.safetensors:0.7` → (a.safetensors, 0.7); without `:` the weight is 1. The weight may be a step
    schedule (`0.8@0.3-1.0`, `0@0,1@0.4,1@1`: see loramix.lora.schedule). A last part `:lbw=…` gives block weights
    (checked against the file's architecture once it is read); they combine with a schedule. A last
    `#mask.png` gives the LoRA's region for regional composition; what comes before it is parsed as above."""
    rest, hash_sign, mask = spec.rpartition(MASK)
    if hash_sign:
        if not mask:
            raise LoramixError(f"weight spec {spec!r}: nothing after '{MASK}' (write e.g. {rest}{MASK}mask.png)")
        if not rest:
            raise LoramixError(f"weight spec {spec!r}: no file before '{MASK}'")
        return replace(parse_weight_spec(rest), mask=mask)
    head, colon, tail = spec.rpartition(":")
    if colon and tail.startswith(LBW):
        lbw = tail[len(LBW):]
        if not lbw or not all(part.strip() for part in lbw.split(",")):
            raise LoramixError(f"weight spec {spec!r}: {LBW} needs comma-separated block weights or a preset name")
        weighted = parse_weight_spec(head)
        return WeightedFile(weighted.path, weighted.weight, lbw, weighted.schedule)
    if ":" not in spec:
        return WeightedFile(spec, 1.0)
    path, _, text = spec.rpartition(":")
    if not path:
        raise LoramixError(f"weight spec {spec!r}: no file before ':'")
    if not text:
        raise LoramixError(f"weight spec {spec!r}: nothing after ':' (write e.g. {path}:0.7)")
    if "@" in text:
        schedule = parse_schedule(text, spec)
        return WeightedFile(path, schedule.peak, schedule=schedule)
    return WeightedFile(path, finite_number(text, "weight", spec))


def check_prompt_names(files: list[WeightedFile], given: dict[str, list[str]]) -> None:
    """Refuse a `--lora-prompt NAME=…` whose NAME no file has: not its name (as in `<lora:NAME>`), not its path."""
    known = {wf.name for wf in files} | {wf.path for wf in files}
    unknown = sorted(name for name in given if name not in known)
    if unknown:
        raise LoramixError(f"--lora-prompt {unknown[0]}: no LoRA being composed is named {unknown[0]} (give the "
                           f"file's name without .safetensors, or its path)")
