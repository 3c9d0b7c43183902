"""What the page asks for, checked before anything renders, and the command lines that reproduce it.

A request is JSON from the client: nothing in it is executed or unpickled, every field is checked against a
type and a range, and LoRAs are names the library resolves inside the served folders.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

from loramix.choices import FILE_METHODS, FORMATS, RENDER_METHODS, SEQUENTIAL
from loramix.errors import LoramixError, did_you_mean
from loramix.lora.specs import WeightedFile
from loramix.render.core import Composition
from loramix.render.prompt_tags import LoraTag
from loramix.render.prompts import MAX_SEED
from loramix.serve.library import LORA_SUFFIX

MAX_IMAGES = 8
MAX_STEPS = 150
MAX_LORAS = 16
MAX_TEXT = 1000  # characters of a prompt
WEIGHT_RANGE = (-10.0, 10.0)  # the slider goes −1 … 2; typed values may go further, within reason
PREVIEW_FOLDER = "preview"  # where the reproducing command lines write


@dataclass(frozen=True)
class MixRequest:
    loras: tuple[tuple[str, float], ...]  # (name as listed, weight) of the LoRAs switched on
    method: str = "exact"
    strength: float = 0.75  # sequential
    prompt: str = "a face"
    negative_prompt: str = ""
    seed: int = 0
    steps: int | None = None  # None: the base's
    guidance: float | None = None  # None: the base's
    count: int = 4
    client: str = ""  # the tab: a newer request of the same tab supersedes its waiting one
    sequence: int = 0  # the tab's own number for the request, echoed back

    @classmethod
    def from_json(cls, data: object) -> MixRequest:
        if not isinstance(data, dict):
            raise LoramixError("the request is a JSON object")
        known = {"loras", "method", "strength", "prompt", "negative_prompt", "seed", "steps", "guidance", "count",
                 "client", "sequence"}
        for key in data:
            if key not in known:
                raise LoramixError(f"unknown field {key!r}{did_you_mean(str(key), known)}")
        loras = data.get("loras", [])
        if not isinstance(loras, list) or len(loras) > MAX_LORAS:
            raise LoramixError(f"loras: a list of at most {MAX_LORAS} {{name, weight}} objects")
        pairs = []
        for item in loras:
            if not isinstance(item, dict) or set(item) != {"name", "weight"} or not isinstance(item["name"], str):
                raise LoramixError("each LoRA is an object with a 'name' and a 'weight'")
            pairs.append((item["name"], _number(item["weight"], "weight", *WEIGHT_RANGE)))
        if len({name for name, _ in pairs}) != len(pairs):
            raise LoramixError("a LoRA is listed twice")
        method = data.get("method", "exact")
        if method not in RENDER_METHODS:
            raise LoramixError(f"unknown method {method!r}{did_you_mean(str(method), RENDER_METHODS)}")
        return cls(
            loras=tuple(pairs), method=method,
            strength=_number(data.get("strength", 0.75), "strength", 0.0, 1.0, low_open=True),
            prompt=_text(data.get("prompt", "a face"), "prompt", required=True),
            negative_prompt=_text(data.get("negative_prompt", ""), "negative_prompt"),
            seed=_integer(data.get("seed", 0), "seed", 0, MAX_SEED - MAX_IMAGES),
            steps=None if data.get("steps") is None else _integer(data["steps"], "steps", 1, MAX_STEPS),
            guidance=None if data.get("guidance") is None else _number(data["guidance"], "guidance", 0.0, 30.0),
            count=_integer(data.get("count", 4), "count", 1, MAX_IMAGES),
            client=_text(data.get("client", ""), "client")[:64],
            sequence=_integer(data.get("sequence", 0), "sequence", 0, 2**53))

    def composition(self) -> Composition:
        # The seed is dare's too, as `loramix compose --seed` makes it: the command line reproduces the preview.
        return Composition(self.method, seed=self.seed, strength=self.strength)

    def check_loras(self) -> None:
        if self.method not in ("exact",) and not self.loras:
            raise LoramixError(f"method {self.method} combines LoRAs: switch at least one on")


def listed_name(tag: LoraTag, names: list[str]) -> str:
    """The listed file a `<lora:NAME:…>` tag names: NAME.safetensors, in a served folder or a subfolder."""
    wanted = tag.name.removesuffix(LORA_SUFFIX)
    found = [name for name in names if name.removesuffix(LORA_SUFFIX) == wanted
             or name.removesuffix(LORA_SUFFIX).endswith("/" + wanted)]
    if not found:
        raise LoramixError(f"prompt: the tag {tag.text!r} names no LoRA the page lists")
    if len(found) > 1:
        raise LoramixError(f"prompt: the tag {tag.text!r} could be {found[0]} or {found[1]}: write its folder too")
    return found[0]


def tag_weight(tag: LoraTag) -> float:
    """A tag's weight on the page: a plain number, as a slider's (schedules and block weights are the command
    line's)."""
    try:
        weight = float(tag.weight)
    except ValueError:
        raise LoramixError(f"prompt: the tag {tag.text!r}: the page takes a plain weight, like <lora:NAME:0.8>") \
            from None
    return _number(weight, f"prompt: the tag {tag.text!r}: weight", *WEIGHT_RANGE)


def save_format(value: object) -> str:
    if value not in FORMATS:
        raise LoramixError(f"format {value!r}: choose one of {', '.join(FORMATS)}")
    return value


def command_lines(request: MixRequest, files: list[WeightedFile], steps: int, guidance: float, base: str,
                  save_as: str = "mix.safetensors") -> dict[str, str]:
    """`loramix compose …` / `loramix generate …` lines that render what the preview shows (same images, same
    `parameters` text), and the `compose -o` line that writes the composed file the page saves."""
    specs = [f"{wf.path}:{wf.weight:g}" for wf in files]
    shared = ["--prompt", request.prompt, "-n", str(request.count), "--seed", str(request.seed),
              "--steps", str(steps), "--guidance", f"{guidance:g}"]
    if request.negative_prompt:
        shared += ["--negative-prompt", request.negative_prompt]
    if base != "toy":
        shared += ["--base", base]
    lines = {}
    if request.method == "exact":
        lines["generate"] = _join(["loramix", "generate", *shared,
                                   *(part for spec in specs for part in ("--lora", spec)), "-o", PREVIEW_FOLDER])
    if files:
        method = (["--sequential", "--strength", f"{request.strength:g}"] if request.method == SEQUENTIAL
                  else [] if request.method == "exact" else ["--method", request.method])
        lines["compose"] = _join(["loramix", "compose", *specs, *shared, *method, "--images", PREVIEW_FOLDER])
        if request.method in FILE_METHODS:
            seed = ["--seed", str(request.seed)] if request.method.startswith("dare") else []
            lines["save"] = _join(["loramix", "compose", *specs, *([] if request.method == "exact" else
                                                                   ["--method", request.method]),
                                   *seed, "-o", save_as])
    return lines


def _join(parts: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in parts)


def _text(value: object, name: str, required: bool = False) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise LoramixError(f"{name}: text of at most {MAX_TEXT} characters")
    if required and not value.strip():
        raise LoramixError(f"{name}: write something")
    return value.strip()


def _integer(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LoramixError(f"{name}: a whole number from {low} to {high}, got {str(value)[:40]!r}")
    return value


def _number(value: object, name: str, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LoramixError(f"{name}: a finite number, got {str(value)[:40]!r}")
    if value < low or value > high or (low_open and value == low):
        raise LoramixError(f"{name}: {value:g} is out of range ({low:g} to {high:g})")
    return float(value)
