"""What a face is not, for the judge to learn: images with no face (plain backgrounds, shapes in face colours, a
face cut into shuffled tiles) and broken faces (warped, swirled, smeared, two faces blended or halved, large
parts erased or cut off), each drawn from a seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from loramix.errors import JudgeError
from loramix.toy import face_spec

SIZE = 64


# Every colour a face is drawn in, for shapes that are not faces.
FACE_COLOURS = [colour for palette in (face_spec.SKIN_TONES, face_spec.HAIR_COLOURS, face_spec.EYE_COLOURS,
                                       face_spec.MUSTACHE_COLOURS, face_spec.LIPSTICK_COLOURS,
                                       face_spec.GLASSES_COLOURS) for colour in palette.values()]
FACE_COLOURS += [(255, 255, 255), (16, 16, 20), face_spec.SUNGLASS_LENS]


def non_face(seed: int, face: Image.Image | None = None) -> Image.Image:
    """An image with no face in it: a plain background, shapes in the colours faces are drawn in, or `face`
    cut into tiles and shuffled (its parts all there, none in its place)."""
    rng = random.Random(f"non-face/{seed}")
    kind = rng.choice(("plain", "shapes", "shapes", "tiles", "tiles")) if face is not None else \
        rng.choice(("plain", "shapes", "shapes"))
    if kind == "tiles":
        return _shuffled_tiles(face, rng.choice((4, 4, 8)), rng)
    image = Image.new("RGB", (SIZE, SIZE), rng.choice(list(face_spec.BACKGROUNDS.values())))
    if kind == "shapes":
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(1, 8)):
            x, y = rng.uniform(0, SIZE), rng.uniform(0, SIZE)
            colour = rng.choice(FACE_COLOURS)
            if rng.random() < 0.6:
                w, h = rng.uniform(3, 44), rng.uniform(3, 44)
                draw.ellipse((x - w / 2, y - h / 2, x + w / 2, y + h / 2), fill=colour)
            else:
                end = (x + rng.uniform(-30, 30), y + rng.uniform(-30, 30))
                draw.line([(x, y), end], fill=colour, width=rng.randint(1, 6))
    return image


def _shuffled_tiles(face: Image.Image, grid: int, rng: random.Random) -> Image.Image:
    tile = SIZE // grid
    places = [(x, y) for y in range(0, SIZE, tile) for x in range(0, SIZE, tile)]
    order = list(range(len(places)))
    while sum(i == j for i, j in enumerate(order)) > len(order) // 4:  # at most a quarter left where they were
        rng.shuffle(order)
    image = Image.new("RGB", (SIZE, SIZE))
    for place, source in zip(places, order):
        x, y = places[source]
        image.paste(face.crop((x, y, x + tile, y + tile)), place)
    return image


# --- broken faces: each a pure function of (face, another face, rng) on (3, 64, 64) tensors in [-1, 1] ----------

def _pixel_grid() -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) row and column numbers of every pixel, as floats."""
    return torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                          indexing="ij")


def _resample(image: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """The pixel (x, y) of the result is `image` at (x + dx, y + dy); displacements (H, W) in pixels."""
    ys, xs = _pixel_grid()
    grid = torch.stack([(xs + dx) * 2 / (SIZE - 1) - 1, (ys + dy) * 2 / (SIZE - 1) - 1], dim=-1)  # (H, W, 2)
    return F.grid_sample(image[None], grid[None], mode="bilinear", padding_mode="border", align_corners=True)[0]


def _background(face: torch.Tensor) -> torch.Tensor:
    """(3, 1, 1): the colour of the bottom corners, which no head reaches."""
    return face[:, -1, [0, -1]].mean(dim=1)[:, None, None]


def _warp(face: torch.Tensor, other: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Elastic: a smooth random displacement of 4-9 pixels, varying over a 3×3 to 5×5 grid across the image."""
    coarse, amplitude = rng.choice((3, 4, 5)), rng.uniform(4.0, 9.0)
    generator = torch.Generator().manual_seed(rng.getrandbits(62))
    field = torch.randn(1, 2, coarse, coarse, generator=generator) * amplitude
    dx, dy = F.interpolate(field, size=(SIZE, SIZE), mode="bicubic", align_corners=True)[0]
    return _resample(face, dx, dy)


def _swirl(face: torch.Tensor, other: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """A whirl around a point near the face's centre: up to 1.5-3.5 radians at the centre, none at the edge."""
    cx, cy = rng.uniform(24, 40), rng.uniform(26, 42)
    radius, strength = rng.uniform(18, 34), rng.choice((-1, 1)) * rng.uniform(1.5, 3.5)
    ys, xs = _pixel_grid()
    u, v = xs - cx, ys - cy
    angle = strength * (1 - torch.sqrt(u**2 + v**2) / radius).clamp(min=0) ** 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    return _resample(face, cos * u - sin * v - u, sin * u + cos * v - v)


def _smear(face: torch.Tensor, other: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Motion blur 10-24 pixels long in one direction, or (streaks) a drag of part of the image along it."""
    length, angle = rng.uniform(10, 24), rng.uniform(0, math.pi)
    steps = torch.linspace(-0.5, 0.5, 16) * length
    samples = [_resample(face, torch.full((SIZE, SIZE), t * math.cos(angle)),
                         torch.full((SIZE, SIZE), t * math.sin(angle))) for t in steps.tolist()]
    smeared = torch.stack(samples).mean(dim=0)
    if rng.random() < 0.5:
        return smeared
    band = torch.zeros(SIZE, SIZE)  # streaks: only a band across the face is dragged
    start = rng.randint(8, 40)
    band[start : start + rng.randint(14, 24)] = 1
    band = band if rng.random() < 0.5 else band.T
    return band * smeared + (1 - band) * face


def _blend(face: torch.Tensor, other: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Two faces cross-faded, the second shifted so their features double."""
    shift = [rng.choice((-1, 1)) * rng.randint(3, 10) for _ in range(2)]
    moved = torch.roll(other, shifts=shift, dims=(1, 2))
    share = rng.uniform(0.35, 0.65)
    return share * face + (1 - share) * moved


def _halves(face: torch.Tensor, other: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """One face on one side of a line through the middle, another face (out of line with it) on the other."""
    shift = [rng.choice((-1, 1)) * rng.randint(4, 10) for _ in range(2)]
    moved = torch.roll(other, shifts=shift, dims=(1, 2))
    ys, xs = _pixel_grid()
    angle = rng.uniform(0, 2 * math.pi)
    side = (math.cos(angle) * (xs - 32) + math.sin(angle) * (ys - 34) + rng.uniform(-6, 6) > 0).float()
    return side * face + (1 - side) * moved


def _erased(face: torch.Tensor, other: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """A large part of the face painted over in the background: a half of it, or a blob 24-40 pixels across."""
    ys, xs = _pixel_grid()
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * math.pi)
        gone = math.cos(angle) * (xs - 32) + math.sin(angle) * (ys - 34) + rng.uniform(-4, 6) > 0
    else:
        cx, cy, r = rng.uniform(22, 42), rng.uniform(24, 44), rng.uniform(12, 20)
        gone = (xs - cx) ** 2 + (ys - cy) ** 2 < r**2
    return torch.where(gone, _background(face), face)


def _cut(face: torch.Tensor, other: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Cut: the face slid half out of the frame, or sliced across with one part slid 8-16 pixels sideways."""
    sign = rng.choice((-1, 1))
    if rng.random() < 0.5:
        shift = sign * rng.randint(20, 28)
        horizontal = rng.random() < 0.5
        moved = torch.roll(face, shifts=shift, dims=2 if horizontal else 1)
        ys, xs = _pixel_grid()
        position = xs if horizontal else ys
        wrapped = position < shift if shift > 0 else position >= SIZE + shift  # what came round the edge
        return torch.where(wrapped, _background(face), moved)
    cut_at = rng.randint(24, 40)
    sliced = face.clone()
    sliced[:, cut_at:] = torch.roll(face[:, cut_at:], shifts=sign * rng.randint(8, 16), dims=2)
    return sliced


BREAKS: dict[str, Callable[[torch.Tensor, torch.Tensor, random.Random], torch.Tensor]] = {
    "warp": _warp, "swirl": _swirl, "smear": _smear, "blend": _blend, "halves": _halves, "erased": _erased,
    "cut": _cut}


def broken_face(face: torch.Tensor, other: torch.Tensor, seed: int, kind: str | None = None) -> torch.Tensor:
    """`face` (3, 64, 64) broken in one of the BREAKS ways (`kind`, else one drawn from `seed`); `other` is
    the second face a blend or halves needs."""
    rng = random.Random(f"broken/{seed}")
    kind = kind or rng.choice(tuple(BREAKS))
    if kind not in BREAKS:
        raise JudgeError(f"broken face kind {kind!r}: choose one of {', '.join(BREAKS)}")
    return BREAKS[kind](face, other, rng).clamp(-1, 1)
