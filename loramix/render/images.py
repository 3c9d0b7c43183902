"""What a rendered image carries and how images are laid out: A1111's `parameters` PNG text, atomic PNG
writes, and grids."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

from loramix.render.core import RenderSettings
from loramix.util.atomic import atomic_path


def a1111_parameters(settings: RenderSettings, sampler: str, model: str, loras: dict[str, float | str] | None = None,
                     lora_hashes: dict[str, str] | None = None) -> str:
    """The `parameters` PNG text A1111 writes, so images open with their settings in the tools users have."""
    prompt = settings.prompt + "".join(f" <lora:{name}:{weight if isinstance(weight, str) else f'{weight:g}'}>"
                                       for name, weight in (loras or {}).items())
    fields = [f"Steps: {settings.steps}", f"Sampler: {sampler}", f"CFG scale: {settings.guidance:g}",
              f"Seed: {settings.seed}", f"Size: {settings.width}x{settings.height}", f"Model: {model}"]
    if lora_hashes:
        fields.append('Lora hashes: "' + ", ".join(f"{n}: {h}" for n, h in lora_hashes.items()) + '"')
    fields.append("Generator: loramix")
    lines = [prompt]
    if settings.negative_prompt:
        lines.append(f"Negative prompt: {settings.negative_prompt}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def save_png(image: Image.Image, path: str | os.PathLike, parameters: str | None = None) -> Path:
    """Write atomically, with A1111's `parameters` text chunk when given."""
    with atomic_path(path) as temp:
        image.save(temp, format="PNG", pnginfo=_png_info(parameters))
    return Path(path)


def png_bytes(image: Image.Image, parameters: str | None = None) -> bytes:
    """The PNG file `save_png` writes, in memory (for a page to show and download)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=_png_info(parameters))
    return buffer.getvalue()


def _png_info(parameters: str | None) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    return info


def image_grid(images: list[Image.Image], columns: int, scale: int = 1, gap: int = 2,
               background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Images in rows of `columns`, each enlarged `scale` times without smoothing."""
    width, height = images[0].width * scale, images[0].height * scale
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * (width + gap) - gap, rows * (height + gap) - gap), background)
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        grid.paste(image.resize((width, height), Image.NEAREST), (column * (width + gap), row * (height + gap)))
    return grid


@dataclass(frozen=True)
class LabelledGrid:
    """A grid with a label over each column and beside each row; cell (r, c) starts at
    (left + c·(cell_width + gap), top + r·(cell_height + gap))."""

    image: Image.Image
    left: int
    top: int
    cell_width: int
    cell_height: int
    gap: int


def labelled_grid(rows: list[list[Image.Image]], column_labels: list[str], row_labels: list[str], scale: int = 1,
                  gap: int = 2, title: str = "") -> LabelledGrid:
    """Cells in rows, enlarged `scale` times, labelled in Pillow's default font (sized to the cells)."""
    from PIL import ImageDraw, ImageFont

    if len(rows) != len(row_labels) or any(len(row) != len(column_labels) for row in rows):
        raise ValueError("one label per row and per column")
    width, height = rows[0][0].width * scale, rows[0][0].height * scale
    font = ImageFont.load_default(size=max(10, min(width, height) // 9))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = max(4, font.size // 2)
    text_height = measure.textbbox((0, 0), "Ag0.", font=font)[3]
    left = max(measure.textbbox((0, 0), label, font=font)[2] for label in row_labels) + 2 * pad
    top = (text_height + pad) * (2 if title else 1) + pad
    title_width = measure.textbbox((0, 0), title, font=font)[2] + 2 * pad if title else 0
    grid = Image.new("RGB", (max(title_width, left + len(column_labels) * (width + gap) - gap),
                             top + len(row_labels) * (height + gap) - gap), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((pad, pad), title, fill=(0, 0, 0), font=font)
    for c, label in enumerate(column_labels):
        x = left + c * (width + gap) + width // 2
        draw.text((x, top - pad), label, fill=(0, 0, 0), font=font, anchor="mb")
    for r, (label, row) in enumerate(zip(row_labels, rows)):
        y = top + r * (height + gap)
        draw.text((left - pad, y + height // 2), label, fill=(0, 0, 0), font=font, anchor="rm")
        for c, image in enumerate(row):
            grid.paste(image.resize((width, height), Image.NEAREST), (left + c * (width + gap), y))
    return LabelledGrid(grid, left, top, width, height, gap)
