"""`<lora:NAME:WEIGHT>` in a prompt, the habit A1111 and ComfyUI users bring: the tag names a LoRA file and its
weight, and is taken out of the text the encoder sees.

    "a face <lora:mustache:0.8> with lipstick <lora:lipstick>"
        → text "a face with lipstick", LoRAs mustache.safetensors at 0.8 and lipstick.safetensors at 1

NAME is found as `NAME.safetensors` in the LoRA folders (or their subfolders; `NAME` may carry a subfolder,
`<lora:styles/ink:0.5>`); WEIGHT is anything a `--lora` spec takes after its colon (`0.8`, `0.8:lbw=INS`,
`0.8@0.3-1`), 1 when left out, as in A1111. A tag and a `--lora` naming the same file add their weights.

Pure: no torch, so a bad tag is a one-line error before a base loads.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from loramix.errors import LoramixError
from loramix.lora.specs import WeightedFile, parse_weight_spec

OPEN = "<lora:"
TAG = re.compile(r"<lora:([^<>]*)>", re.IGNORECASE)
SUFFIX = ".safetensors"


@dataclass(frozen=True)
class LoraTag:
    text: str  # as written, `<lora:mustache:0.8>`
    name: str  # `mustache`
    weight: str  # what follows the name, `0.8`; "1" when nothing does


def find_lora_tags(prompt: str, where: str = "--prompt") -> tuple[str, tuple[LoraTag, ...]]:
    """The prompt without its `<lora:…>` tags (spaces tidied) and the tags, in order; reads no file. `where`
    names the prompt in errors: `--prompt`, or `prompts.csv:7` for a row."""
    tags = []
    for match in TAG.finditer(prompt):
        name, _, weight = match[1].partition(":")
        if not name.strip():
            raise LoramixError(f"{where}: the tag {match[0]!r} names no LoRA (write <lora:NAME:WEIGHT>)")
        tags.append(LoraTag(match[0], name.strip(), weight.strip() or "1"))
    text = TAG.sub(" ", prompt)
    if OPEN in text.lower():
        start = text.lower().index(OPEN)
        raise LoramixError(f"{where}: the tag {text[start:start + 40].strip()!r} is not closed with '>' "
                           f"(write <lora:NAME:WEIGHT>)")
    text = " ".join(text.split())
    if tags and not text:
        raise LoramixError(f"{where}: the prompt is only <lora:…> tags: nothing left to render")
    return text, tuple(tags)


def split_lora_tags(prompt: str, folders: list[str | os.PathLike], where: str = "--prompt"
                    ) -> tuple[str, tuple[WeightedFile, ...]]:
    """The prompt without its tags, and the LoRA file each tag names with its weight, found in `folders`."""
    text, tags = find_lora_tags(prompt, where)
    return text, tuple(tag_lora(tag, folders, where) for tag in tags)


def tag_lora(tag: LoraTag, folders: list[str | os.PathLike], where: str) -> WeightedFile:
    try:
        spec = parse_weight_spec(f"{tag.name}:{tag.weight}")
    except LoramixError as e:
        raise LoramixError(f"{where}: the tag {tag.text!r}: {_after_spec(str(e))}") from None
    return replace(spec, path=str(_find(tag, folders, where)))


def add_weights(first: tuple[WeightedFile, ...], second: tuple[WeightedFile, ...], where: str = ""
                ) -> tuple[WeightedFile, ...]:
    """`first` with each of `second` added: a file already there gets the weights added (plain weights only: a
    schedule, block weights or a region cannot be added to another weight), any other joins at the end."""
    result = list(first)
    for weighted in second:
        path = os.path.realpath(weighted.path)
        same = [i for i, earlier in enumerate(result) if os.path.realpath(earlier.path) == path]
        if not same:
            result.append(weighted)
            continue
        earlier = result[same[0]]
        if any((w.schedule, w.lbw, w.mask) != (None, None, None) for w in (earlier, weighted)):
            raise LoramixError(f"{where + ': ' if where else ''}{weighted.path} is named twice and one of them has "
                               f"a schedule, block weights or a region: name it once")
        result[same[0]] = replace(earlier, weight=earlier.weight + weighted.weight)
    return tuple(result)


def _find(tag: LoraTag, folders: list[str | os.PathLike], where: str) -> Path:
    """`NAME.safetensors` in the first folder that has it, directly or in a subfolder; two in one folder's
    tree are an error, where A1111 would pick one silently."""
    file_name = tag.name if tag.name.lower().endswith(SUFFIX) else tag.name + SUFFIX
    for folder in map(Path, folders):
        direct = folder / file_name
        if direct.is_file():
            return direct
        found = sorted(path for path in folder.rglob(Path(file_name).name)
                       if path.is_file() and path.as_posix().endswith("/" + file_name.replace(os.sep, "/")))
        if len(found) > 1:
            raise LoramixError(f"{where}: the tag {tag.text!r} could be {found[0]} or {found[1]}: write the subfolder "
                               f"too, e.g. <lora:{found[0].relative_to(folder).with_suffix('').as_posix()}:…>")
        if found:
            return found[0]
    searched = ", ".join(str(folder) for folder in folders)
    raise LoramixError(f"{where}: the tag {tag.text!r} names no LoRA file: no {file_name} in {searched} "
                       "(give the folder with --loras)")


def _after_spec(message: str) -> str:
    """A weight spec's error without its own `spec …:` opening, which would repeat the tag."""
    return message.split(": ", 1)[1] if message.startswith("weight spec") else message
