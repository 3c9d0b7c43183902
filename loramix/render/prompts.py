"""Prompt files → a plan of image jobs: what to render, with which seed and LoRAs, and where it goes.

A prompt file is one of
- `.txt`: one prompt per line; blank lines and lines starting with `#` are skipped;
- `.jsonl`: one JSON object per line, with the fields of `ROW_FIELDS`;
- `.csv`: a header naming some of `ROW_FIELDS`, then one row per prompt (empty cells take the defaults).

`loras` is a string of weight specs separated by spaces (`a.safetensors:0.7 b.safetensors:0@0,1@0.4,1@1`) or,
in JSONL, a list of specs or of `{"path": ..., "weight": ...}` (a weight may be a step schedule, as text:
`"weight": "0.8@0.3-1"`). Relative LoRA paths are read from the prompt file's folder.

Seeds: the k-th image of a row has the row's `seed` (else `--seed`) plus k, so an image is the same whatever
batch or process renders it, and rows without a seed share their noise, which makes prompts comparable.

Pure: no torch, so the command line checks a prompt file before it loads a base.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from loramix.errors import LoramixError, PromptFileError, did_you_mean
from loramix.lora.specs import LBW, WeightedFile, parse_weight_spec
from loramix.render.prompt_tags import add_weights, split_lora_tags

ROW_FIELDS = ("prompt", "negative_prompt", "seed", "loras", "steps", "guidance", "width", "height", "n")
PROMPT_SUFFIXES = (".txt", ".jsonl", ".csv")
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
SLUG_LENGTH = 40


@dataclass(frozen=True)
class PromptRow:
    """One prompt as the file gives it; None means "the command line's default"."""

    line: int  # 1-based line of the file where the row starts; 0 for a prompt given on the command line
    prompt: str
    negative_prompt: str | None = None
    seed: int | None = None
    loras: tuple[WeightedFile, ...] | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    n: int | None = None
    tag_loras: tuple[WeightedFile, ...] = ()  # the `<lora:NAME:WEIGHT>` tags taken out of the prompt


@dataclass(frozen=True)
class RowProblem:
    source: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


@dataclass
class PromptFile:
    rows: list[PromptRow] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)


@dataclass(frozen=True)
class Defaults:
    """The command line's values for what a row leaves out."""

    steps: int
    guidance: float
    width: int
    height: int
    n: int = 1
    seed: int = 0
    negative_prompt: str = ""
    loras: tuple[WeightedFile, ...] = ()


@dataclass(frozen=True)
class ImageJob:
    """One image to render: its settings, its LoRAs, and its path relative to the output folder."""

    path: str
    line: int
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    loras: tuple[WeightedFile, ...] = ()

    @property
    def group(self) -> tuple:
        """Images that can share a batch: same LoRAs, steps, guidance and size."""
        return (self.loras, self.steps, self.guidance, self.width, self.height)


def read_prompt_file(path: str | os.PathLike) -> PromptFile:
    """Every good row, and a problem (file:line: what is wrong) for every bad one."""
    path = Path(path)
    if path.suffix.lower() not in PROMPT_SUFFIXES:
        raise PromptFileError(f"{path}: a prompt file ends in {', '.join(PROMPT_SUFFIXES)}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PromptFileError(f"{path}: no such prompt file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PromptFileError(f"{path}: cannot read it ({e})") from None
    records = {".txt": _txt_records, ".jsonl": _jsonl_records, ".csv": _csv_records}[path.suffix.lower()]
    result = PromptFile()
    for line, record in records(text, path):
        try:
            if isinstance(record, Exception):
                raise record
            result.rows.append(parse_row(record, line, path.parent))
        except LoramixError as e:
            result.problems.append(RowProblem(str(path), line, str(e)))
    return result


def _txt_records(text: str, path: Path):
    for line, content in enumerate(text.splitlines(), start=1):
        if content.strip() and not content.lstrip().startswith("#"):
            yield line, {"prompt": content.strip()}


def _jsonl_records(text: str, path: Path):
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            record = json.loads(content)
        except json.JSONDecodeError as e:
            yield line, LoramixError(f"not JSON ({e.msg} at column {e.colno})")
            continue
        except (ValueError, RecursionError):  # a number of thousands of digits, or arrays nested thousands deep
            yield line, LoramixError("not JSON that loramix reads (a number too long or nesting too deep)")
            continue
        yield line, record if isinstance(record, dict) else LoramixError("not a JSON object")


def _csv_records(text: str, path: Path):
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        yield from _csv_rows(reader, path)
    except csv.Error as e:  # e.g. a field over csv's size limit, which is process-wide: loramix leaves it alone
        raise PromptFileError(f"{path}:{reader.line_num}: not CSV that loramix reads ({e})") from None


def _csv_rows(reader, path: Path):
    header = next(reader, None)
    if not header:
        raise PromptFileError(f"{path}: empty CSV file; its first row names the columns, e.g. prompt,seed,loras")
    header = [name.strip() for name in header]
    unknown = [name for name in header if name not in ROW_FIELDS]
    if unknown:
        raise PromptFileError(f"{path}:1: unknown column {unknown[0]!r}{_suggest(unknown[0])}")
    if "prompt" not in header:
        raise PromptFileError(f"{path}:1: no 'prompt' column")
    start = reader.line_num + 1
    for cells in reader:
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            yield line, LoramixError(f"{len(cells)} cells where the header names {len(header)} columns")
            continue
        yield line, {name: cell for name, cell in zip(header, cells) if cell.strip()}


def parse_row(record: dict, line: int, folder: Path) -> PromptRow:
    """A row from its fields (strings from CSV, JSON values from JSONL); LoRA paths relative to `folder`."""
    for key in record:
        if key not in ROW_FIELDS:
            raise LoramixError(f"unknown field {key!r}{_suggest(key)}")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise LoramixError("no prompt")
    negative = record.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise LoramixError("negative_prompt must be text")
    loras = None if record.get("loras") is None else _loras(record["loras"], folder)
    return PromptRow(
        line=line, prompt=prompt.strip(), negative_prompt=negative, seed=_integer(record, "seed", 0, MAX_SEED),
        loras=loras, steps=_integer(record, "steps", 1, 1000), guidance=_number(record, "guidance"),
        width=_size(record, "width"), height=_size(record, "height"), n=_integer(record, "n", 1, 100_000))


def _loras(value, folder: Path) -> tuple[WeightedFile, ...]:
    if isinstance(value, str):
        specs = value.split()
    elif isinstance(value, list):
        specs = value
    else:
        raise LoramixError("loras must be a string of specs like 'a.safetensors:0.7' or a list of them")
    loras = []
    for spec in specs:
        if isinstance(spec, dict):
            if set(spec) - {"path", "weight", "lbw"} or not isinstance(spec.get("path"), str):
                raise LoramixError(f"a LoRA given as an object has a 'path', a 'weight' and 'lbw' block weights, "
                                   f"not {sorted(spec)}")
            blocks = f":{LBW}{spec['lbw']}" if "lbw" in spec else ""
            weighted = parse_weight_spec(f"{spec['path']}:{spec.get('weight', 1.0)}{blocks}")
        elif isinstance(spec, str):
            weighted = parse_weight_spec(spec)
        else:
            raise LoramixError(f"LoRA {spec!r}: write it as 'a.safetensors:0.7'")
        loras.append(resolve_lora(weighted, folder))
    return tuple(loras)


def resolve_lora(weighted: WeightedFile, folder: str | os.PathLike) -> WeightedFile:
    """The file read from `folder` when relative; a missing file is an error here, before anything renders."""
    path = Path(weighted.path).expanduser()
    if not path.is_absolute():
        path = Path(folder) / path
    if not path.is_file():
        raise LoramixError(f"LoRA {weighted.path}: no such file" + ("" if path.exists() else f" ({path})"))
    return replace(weighted, path=str(path))


def _integer(record: dict, key: str, low: int, high: int) -> int | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise LoramixError(f"{key} {value!r} is not a whole number") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise LoramixError(f"{key} {value!r} is not a whole number")
    if not low <= value <= high:
        raise LoramixError(f"{key} {value} is out of range ({low} to {high})")
    return value


def _number(record: dict, key: str) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise LoramixError(f"{key} {value!r} is not a number") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise LoramixError(f"{key} {value!r} is not a finite number")
    return number


def _size(record: dict, key: str) -> int | None:
    value = _integer(record, key, 8, 4096)
    if value is not None and value % 8:
        raise LoramixError(f"{key} {value} is not a multiple of 8 (the VAE halves the image 3 times)")
    return value


def _suggest(name: str) -> str:
    return did_you_mean(name, ROW_FIELDS) or f" (known: {', '.join(ROW_FIELDS)})"


def with_prompt_tags(rows: list[PromptRow], folders: list[str | os.PathLike], source: str = "") -> list[PromptRow]:
    """Each row with its `<lora:…>` tags taken out of the prompt into `tag_loras` (loramix.render.prompt_tags);
    a bad tag is an error naming the row (`source:line`, or --prompt for a command line's prompt)."""
    tagged = []
    for row in rows:
        where = f"{source}:{row.line}" if row.line else "--prompt"
        text, loras = split_lora_tags(row.prompt, folders, where)
        if loras:
            if row.loras is not None:
                add_weights(row.loras, loras, where)  # checked now, before anything loads
            row = replace(row, prompt=text, tag_loras=loras)
        tagged.append(row)
    return tagged


def plan(rows: list[PromptRow], defaults: Defaults, flat: bool = False) -> list[ImageJob]:
    """Every image of every row, in file order. `flat` puts the images of a single prompt straight into the
    output folder (`00003-1234.png`); otherwise each row has a folder named by its line and prompt
    (`007-a-red-car/003-1234.png`), stable across runs so that a rerun finds what is already there."""
    if flat and len(rows) != 1:
        raise LoramixError("a flat layout holds the images of one prompt")
    jobs = []
    for row in rows:
        seed = defaults.seed if row.seed is None else row.seed
        count = row.n or defaults.n
        if seed + count - 1 > MAX_SEED:
            raise LoramixError(f"line {row.line}: seeds {seed}… of {count} images go past {MAX_SEED}")
        folder = "" if flat else f"{row.line:03d}-{slug(row.prompt)}/"
        for k in range(count):
            name = f"{k:05d}-{seed + k}.png" if flat else f"{k:03d}-{seed + k}.png"
            jobs.append(ImageJob(
                path=folder + name, line=row.line, prompt=row.prompt,
                negative_prompt=defaults.negative_prompt if row.negative_prompt is None else row.negative_prompt,
                seed=seed + k, steps=row.steps or defaults.steps,
                guidance=defaults.guidance if row.guidance is None else row.guidance,
                width=row.width or defaults.width, height=row.height or defaults.height,
                loras=_with_tags(defaults.loras if row.loras is None else row.loras, row)))
    return jobs


def _with_tags(loras: tuple[WeightedFile, ...], row: PromptRow) -> tuple[WeightedFile, ...]:
    return add_weights(loras, row.tag_loras, f"line {row.line}") if row.tag_loras else loras


def slug(text: str) -> str:
    """A folder name from a prompt: lowercase ASCII letters and digits joined by '-', never a path."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "-".join(words)[:SLUG_LENGTH].strip("-") or "prompt"


def lora_files(jobs: list[ImageJob]) -> list[str]:
    """Each LoRA file the plan uses, once, in order of first use."""
    return list(dict.fromkeys(wf.path for job in jobs for wf in job.loras))
