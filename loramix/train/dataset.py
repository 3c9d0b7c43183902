"""Training images and their captions, as kohya, diffusers' scripts and OneTrainer lay them out.

Either a folder of images, each with a same-name `.txt` caption (`0001.png` + `0001.txt`), or a folder with
a `metadata.jsonl` whose rows give `file_name` and `text` (diffusers' imagefolder layout). Images are resized
so their short side is the training resolution, then centre-cropped to a square.

For masked-loss training an image may have a mask, as kohya's `alpha_mask` and OneTrainer read them: a
greyscale `0000.mask.png` beside `0000.png` (white: the region to learn), else the image's own alpha channel.
A mask is resized and cropped exactly as its image is; an image without one is masked by all ones.

With `caption_per_line`, each line of a caption file is a caption of its own and training draws one per image
per step, as OneTrainer does (kohya reads the first line): several phrasings of one image teach a LoRA the
attribute rather than one sentence.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from loramix.choices import IMAGE_SUFFIXES, MASK_SUFFIX
from loramix.errors import DatasetError
from loramix.util.imagefile import open_image


@dataclass
class CaptionedImages:
    pixels: torch.Tensor  # (N, 3, S, S) in [-1, 1]
    captions: list[str]
    files: list[Path]
    uncaptioned: list[Path] = field(default_factory=list)  # images without a caption: captioned by the trigger
    skipped: list[str] = field(default_factory=list)  # "file: why" for unreadable images left out
    masks: torch.Tensor | None = None  # (N, 1, S, S) in [0, 1], 1 = learn; read only when asked for
    unmasked: list[Path] = field(default_factory=list)  # images without a mask file or alpha: masked by ones
    # Every caption of each image, its first the one in `captions`; None: one caption each.
    alternatives: list[tuple[str, ...]] | None = None

    def __len__(self) -> int:
        return len(self.captions)


def load_dataset(folder: str | os.PathLike, resolution: int, trigger: str = "",
                 caption_template: str = "{trigger} {caption}", skip_bad_images: bool = False,
                 masks: bool = False, caption_per_line: bool = False) -> CaptionedImages:
    """The images and captions in `folder`. An image without a caption is captioned by the trigger alone (and
    listed in `uncaptioned`); an unreadable image stops loading, or with `skip_bad_images` is left out (and
    listed in `skipped`). With `masks`, each image's mask too (an image without one is listed in `unmasked`);
    a mask that cannot be read or does not fit its image counts as a bad image. With `caption_per_line`, each
    non-empty line of a caption is one of the image's `alternatives`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such dataset folder")
    pairs = _metadata_pairs(folder) if (folder / "metadata.jsonl").is_file() else _caption_file_pairs(folder)
    if not pairs:
        raise DatasetError(f"{folder}: no images (expected images with same-name .txt captions, or a metadata.jsonl)")
    uncaptioned = [file for file, text in pairs if text is None]
    if uncaptioned and not trigger:
        raise DatasetError(f"{uncaptioned[0]}: no caption ({len(uncaptioned)} images have none), and no trigger "
                           f"to caption them with")
    pixels, mask_list, captions, files, skipped, unmasked, alternatives = [], [], [], [], [], [], []
    for file, text in pairs:
        try:
            image = open_image(file, error=DatasetError)
            mask = _mask_of(file, image) if masks else None
            image_pixels = _square_pixels(_to_rgb(image), resolution)
        except DatasetError as e:
            if not skip_bad_images:
                raise DatasetError(f"{e} (skip_bad_images = true leaves such images out)") from None
            skipped.append(str(e))
            continue
        pixels.append(image_pixels)
        if masks:
            if mask is None:
                unmasked.append(file)
                mask = Image.new("L", image.size, 255)
            mask_list.append(_square_mask(mask, resolution))
        lines = [line for line in text.splitlines() if line.strip()] if text and caption_per_line else []
        texts = lines or [text]
        variants = tuple(_caption(trigger, caption_template, each) for each in texts)
        captions.append(variants[0])
        alternatives.append(variants)
        files.append(file)
    if not pixels:
        raise DatasetError(f"{folder}: none of its {len(pairs)} images could be read ({skipped[0]})")
    if masks and len(unmasked) == len(files):
        raise DatasetError(f"{folder}: masked_loss is on, but no image has a mask (0000{MASK_SUFFIX} beside "
                           f"0000.png, or an alpha channel)")
    return CaptionedImages(torch.stack(pixels), captions, files, uncaptioned, skipped,
                           torch.stack(mask_list) if masks else None, unmasked,
                           alternatives if any(len(variants) > 1 for variants in alternatives) else None)


def _caption(trigger: str, template: str, text: str | None) -> str:
    caption = trigger if text is None else template.format(trigger=trigger, caption=text.strip())
    return " ".join(caption.split())


def _caption_file_pairs(folder: Path) -> list[tuple[Path, str | None]]:
    pairs = []
    for file in sorted(folder.iterdir()):
        if file.suffix.lower() not in IMAGE_SUFFIXES or file.name.lower().endswith(MASK_SUFFIX):  # a mask
            continue
        caption_file = file.with_suffix(".txt")
        if not caption_file.is_file():
            pairs.append((file, None))
            continue
        try:
            pairs.append((file, caption_file.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            raise DatasetError(f"{caption_file}: not UTF-8 text") from None
    return pairs


def _metadata_pairs(folder: Path) -> list[tuple[Path, str]]:
    metadata = folder / "metadata.jsonl"
    pairs = []
    for number, line in enumerate(metadata.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{metadata}:{number}: not a JSON object ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str) \
                or not isinstance(row.get("text"), str):
            raise DatasetError(f"{metadata}:{number}: a row needs string fields file_name and text")
        file = (folder / row["file_name"]).resolve()
        if not file.is_relative_to(folder.resolve()):
            raise DatasetError(f"{metadata}:{number}: file_name {row['file_name']!r} leaves the dataset folder")
        if not file.is_file():
            raise DatasetError(f"{metadata}:{number}: no image {row['file_name']!r}")
        pairs.append((file, row["text"]))
    return pairs


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: alpha dropped onto white, 16- and 32-bit greys scaled down, not clipped."""
    image.load()
    if image.mode.startswith("I"):  # 16-bit greys (or 32-bit integers): scale down, do not clip
        image = image.convert("I")
        high = 65535 if image.getextrema()[1] > 255 else 255
        image = image.point(lambda value: value * (255 / high)).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def _mask_of(file: Path, image: Image.Image) -> Image.Image | None:
    """The mask of `file` (whose decoded image is `image`) as 8-bit greys: its mask file, else its alpha channel,
    else None. A mask file must have its image's size; an all-black mask would leave nothing to learn."""
    mask_file = file.with_name(file.name[: -len(file.suffix)] + MASK_SUFFIX)
    if mask_file.is_file():
        mask, source = open_image(mask_file, error=DatasetError), mask_file
        if mask.size != image.size:
            raise DatasetError(f"{mask_file}: {mask.width}×{mask.height}, but its image {file.name} is "
                               f"{image.width}×{image.height}")
        mask = _to_rgb(mask).convert("L")  # a colour mask is read by its brightness
    elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        mask, source = image.convert("RGBA").getchannel("A"), f"{file} (its alpha channel)"
    else:
        return None
    if mask.getextrema()[1] == 0:
        raise DatasetError(f"{source}: the mask is all black, so nothing in the image would be learnt")
    return mask


def _square(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """The image with its short side scaled to `size`, then centre-cropped to `size`×`size`."""
    width, height = image.size
    if (width, height) == (size, size):
        return image
    scale = size / min(width, height)
    resized = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(resized, resample)
    left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def _square_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """An RGB image as (3, size, size) in [-1, 1]."""
    image = _square(image, size, Image.Resampling.LANCZOS)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1


def _square_mask(mask: Image.Image, size: int) -> torch.Tensor:
    """A mask as (1, size, size) in [0, 1], cut as its image is; box filtering averages areas, and never rings
    past 0 or 1 as Lanczos would."""
    mask = _square(mask, size, Image.Resampling.BOX)
    return torch.frombuffer(bytearray(mask.tobytes()), dtype=torch.uint8).view(1, size, size).float() / 255
