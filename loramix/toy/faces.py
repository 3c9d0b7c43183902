"""Datasets of procedurally drawn cartoon faces: the training images for loramix's own tiny base model and its LoRAs.

The base model only ever sees plain faces; mustache, lipstick and glasses are what the LoRAs teach it. A face
is a `FaceSpec` sampled from one seed (loramix.toy.face_spec), drawn by `draw_face` (loramix.toy.face_drawing)
and described by `caption`, so a dataset is reproducible from the arguments of `write_dataset` alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from multiprocessing import get_context
from pathlib import Path

from PIL import Image, PngImagePlugin

from loramix.choices import MASK_SUFFIX
from loramix.errors import FaceSpecError
from loramix.toy.face_drawing import attribute_box, attribute_mask, check_size, draw_face
from loramix.toy.face_spec import FaceSpec, caption, sample_face
from loramix.toy.face_spec import phrasings as face_phrasings
from loramix.util.atomic import atomic_path


def attribute_region(attribute: str, faces_sampled: int = 1_000, size: int = 64) -> Image.Image:
    """White where `attribute` can be drawn on any face the generator makes (the union of `attribute_box` over
    `faces_sampled` faces, which move and vary in size): the region to give a LoRA of it in regional
    composition (`samples/regions/`)."""
    boxes = [attribute_box(sample_face(seed, **{attribute: True}), attribute, size) for seed in range(faces_sampled)]
    region = Image.new("L", (size, size), 0)
    box = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    region.paste(255, box)
    return region


def write_dataset(folder: Path, count: int, seed: int, mustache: bool = False, lipstick: bool = False,
                  glasses: bool = False, size: int = 64, masks: bool = False, phrasings: int = 1) -> list[Path]:
    """Write `count` faces as 0000.png + 0000.txt (its caption) …; returns the image paths. With `masks`, each
    face's `attribute_mask` too, as 0000.mask.png. With `phrasings` > 1, each caption file holds that many
    lines, the caption and its rephrasings (`face_spec.phrasings`), for `caption_per_line` training.

    Each file is written atomically, the caption first and the image last, so every image on disk has its
    caption (and mask). The face's seed and spec are kept in the PNG's text chunks. Equal arguments give
    byte-identical files.
    """
    if count < 0:
        raise FaceSpecError(f"count={count}: must be 0 or more")
    if phrasings < 1:
        raise FaceSpecError(f"phrasings={phrasings}: must be 1 or more")
    if masks and not (mustache or lipstick or glasses):
        raise FaceSpecError("masks: plain faces have no attribute to mask; add mustache, lipstick or glasses")
    check_size(size)
    seeds = [seed_of_face(seed, index) for index in range(count)]
    faces = [(face_seed, sample_face(face_seed, mustache=mustache, lipstick=lipstick, glasses=glasses))
             for face_seed in seeds]
    return write_faces(folder, faces, size, masks, phrasings)


def seed_of_face(*parts: int) -> int:
    """A face's seed from its dataset's seed and its index (and any further numbers): hashed rather than
    seed + index, so datasets with nearby seeds share no faces."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big")


def write_faces(folder: Path, faces: list[tuple[int, FaceSpec]], size: int = 64, masks: bool = False,
                phrasings: int = 1, mask_attribute: str | None = None) -> list[Path]:
    """Write each `(face_seed, spec)` of `faces` as `write_dataset` does (its captions, masks and PNG text).
    With `mask_attribute`, each mask covers that attribute alone, whatever else the face wears."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for index, (face_seed, spec) in enumerate(faces):
        stem = folder / f"{index:0{max(4, len(str(len(faces) - 1)))}d}"
        with atomic_path(stem.with_suffix(".txt")) as temp:
            lines = [caption(spec)] if phrasings == 1 else face_phrasings(spec, phrasings, face_seed)
            temp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        if masks:
            with atomic_path(stem.with_name(stem.name + MASK_SUFFIX)) as temp:
                attribute_mask(spec, size, attribute=mask_attribute).save(temp, format="PNG")
        info = PngImagePlugin.PngInfo()
        info.add_text("loramix.face_seed", str(face_seed))
        info.add_text("loramix.face_spec", json.dumps(dataclasses.asdict(spec), sort_keys=True))
        with atomic_path(stem.with_suffix(".png")) as temp:
            draw_face(spec, size).save(temp, format="PNG", pnginfo=info)
        images.append(stem.with_suffix(".png"))
    return images


def _draw_bytes(spec_and_size: tuple[FaceSpec, int]) -> bytes:
    return draw_face(*spec_and_size).tobytes()


def draw_faces(specs: list[FaceSpec], size: int = 64, processes: int = 2) -> list[Image.Image]:
    """Draw many faces, in worker processes when there are enough to pay for starting them."""
    if len(specs) < 500 or processes < 2:
        return [draw_face(spec, size) for spec in specs]
    with get_context("spawn").Pool(processes) as pool:
        drawn = pool.map(_draw_bytes, [(spec, size) for spec in specs], chunksize=64)
    return [Image.frombytes("RGB", (size, size), data) for data in drawn]
