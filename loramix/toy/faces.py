"""Procedurally drawn cartoon faces: the training images for loramix's own tiny base model and its LoRAs.

The base model only ever sees plain faces; mustache, lipstick and glasses are what the LoRAs teach it. A face
is a `FaceSpec` sampled from one seed, drawn by `draw_face` and described by `caption`, so a dataset is
reproducible from the arguments of `write_dataset` alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter, PngImagePlugin

from loramix.choices import MASK_SUFFIX
from loramix.errors import FaceSpecError
from loramix.util.atomic import atomic_path

RGB = tuple[int, int, int]
Point = tuple[float, float]

# Skin tones and face shapes vary the faces but are not named in captions.
SKIN_TONES: dict[str, RGB] = {"pale": (255, 226, 204), "light": (242, 196, 162), "medium": (222, 168, 124),
                              "tan": (194, 138, 96), "brown": (158, 106, 70), "deep": (122, 80, 54)}
# (height / width, superellipse exponent, how much the jaw narrows towards the chin)
FACE_SHAPES = {"round": (1.04, 2.0, 0.0), "oval": (1.2, 2.0, 0.08), "square": (1.08, 3.2, 0.05),
               "heart": (1.12, 2.2, 0.3)}
HAIR_COLOURS: dict[str, RGB] = {"black": (40, 34, 34), "brown": (110, 68, 38), "blonde": (236, 200, 110),
                                "red": (192, 78, 36), "grey": (168, 168, 172)}
HAIR_STYLES = ("short", "long", "curly", "bun", "bald")
EYE_COLOURS: dict[str, RGB] = {"blue": (50, 120, 210), "brown": (112, 70, 36), "green": (50, 150, 70),
                               "grey": (120, 130, 142)}
EXPRESSIONS = ("smiling", "neutral", "surprised", "sad")
# Pale, and none red, pink or purple, so a plain image never holds a lipstick colour.
BACKGROUNDS: dict[str, RGB] = {"blue": (172, 206, 240), "green": (182, 226, 178), "yellow": (246, 232, 158),
                               "orange": (250, 202, 150), "grey": (206, 206, 210), "teal": (160, 218, 210)}
MUSTACHE_STYLES = ("chevron", "handlebar", "pencil")
MUSTACHE_COLOURS: dict[str, RGB] = {"black": (32, 26, 24), "brown": (92, 54, 28), "ginger": (206, 104, 36),
                                    "grey": (160, 160, 164)}
LIPSTICK_COLOURS: dict[str, RGB] = {"red": (214, 24, 44), "pink": (238, 84, 150), "purple": (128, 36, 132),
                                    "dark red": (122, 12, 30)}
GLASSES_STYLES = ("round", "square", "sunglasses")
GLASSES_COLOURS: dict[str, RGB] = {"black": (24, 24, 28), "brown": (104, 60, 30), "red": (200, 30, 40),
                                   "blue": (36, 76, 196)}
SUNGLASS_LENS: RGB = (34, 40, 52)

# Every word a caption can contain (commas aside), for building the tokenizer's vocabulary.
CAPTION_WORDS: tuple[str, ...] = tuple(sorted({
    word
    for names in (("a", "an", "face", "with", "hair", "in", "head", "and", "eyes", "on", "background", "mustache",
                   "wearing", "lipstick", "glasses"), HAIR_STYLES, HAIR_COLOURS, EYE_COLOURS, EXPRESSIONS,
                  BACKGROUNDS, MUSTACHE_STYLES, MUSTACHE_COLOURS, LIPSTICK_COLOURS, GLASSES_STYLES, GLASSES_COLOURS)
    for name in names for word in name.split()
}))

SUPERSAMPLE = 4  # drawn at 4x and box-averaged down: every edge gets 16 levels of coverage
FACE_WIDTHS = (0.44, 0.56)  # of the image width; with hair and ears a head spans 52-75% of it
MAX_OFFSET = (0.06, 0.04)  # how far the face centre may sit from its usual place, in image fractions
EYE_US, EYE_V = (-0.36, 0.36), -0.04  # where the eyes sit, in `_Head` units
# What a mustache or frame colour needs to stand out on a skin: a brightness (luma) this far apart, or a colour
# this far (RGB distance) apart. Measured through the toy VAE: ginger on the deepest skin or red frames on
# brown skin are nearly as bright as the skin and came back from the round trip all but gone.
MIN_LUMA_CONTRAST = 40.0
MIN_COLOUR_CONTRAST = 150.0
# How far an attribute's mask reaches past the pixels the attribute drew: the VAE's latents blur an edge over a
# pixel or two, and a mask that stopped at the edge would leave the attribute's own outline unlearnt.
MASK_GROWTH = 2


def _check(field: str, value: object, allowed: tuple | dict) -> None:
    if value not in allowed:
        raise FaceSpecError(f"{field}={value!r}: choose one of {', '.join(map(repr, allowed))}")


@dataclass(frozen=True)
class Mustache:
    style: str
    colour: str

    def __post_init__(self) -> None:
        _check("mustache style", self.style, MUSTACHE_STYLES)
        _check("mustache colour", self.colour, MUSTACHE_COLOURS)


@dataclass(frozen=True)
class Glasses:
    style: str
    colour: str

    def __post_init__(self) -> None:
        _check("glasses style", self.style, GLASSES_STYLES)
        _check("glasses colour", self.colour, GLASSES_COLOURS)


@dataclass(frozen=True)
class FaceSpec:
    """One face. Colours are names from the palettes above; sizes are fractions of the image."""

    skin: str
    shape: str
    face_width: float
    offset: Point  # of the face centre from its usual place, (x, y)
    hair_colour: str  # bald faces use it for the eyebrows and the hair above the ears
    hair_style: str
    eye_colour: str
    expression: str
    background: str
    mustache: Mustache | None = None
    lipstick: str | None = None
    glasses: Glasses | None = None

    def __post_init__(self) -> None:
        for field, allowed in (("skin", SKIN_TONES), ("shape", FACE_SHAPES), ("hair_colour", HAIR_COLOURS),
                               ("hair_style", HAIR_STYLES), ("eye_colour", EYE_COLOURS),
                               ("expression", EXPRESSIONS), ("background", BACKGROUNDS)):
            _check(field, getattr(self, field), allowed)
        if self.lipstick is not None:
            _check("lipstick", self.lipstick, LIPSTICK_COLOURS)
        if not FACE_WIDTHS[0] <= self.face_width <= FACE_WIDTHS[1]:
            raise FaceSpecError(f"face_width={self.face_width}: must be between {FACE_WIDTHS[0]} and {FACE_WIDTHS[1]}")
        if any(abs(o) > limit for o, limit in zip(self.offset, MAX_OFFSET)):
            raise FaceSpecError(f"offset={self.offset}: must be within ±{MAX_OFFSET[0]} (x) and ±{MAX_OFFSET[1]} (y)")


def sample_face(seed: int, mustache: bool = False, lipstick: bool = False, glasses: bool = False) -> FaceSpec:
    """The face for `seed`; the flags add attributes without changing anything else about it."""
    rng = random.Random(seed)
    skin = rng.choice(list(SKIN_TONES))
    face = FaceSpec(
        skin=skin, shape=rng.choice(list(FACE_SHAPES)), face_width=round(rng.uniform(*FACE_WIDTHS), 3),
        offset=(round(rng.uniform(-MAX_OFFSET[0], MAX_OFFSET[0]), 3),
                round(rng.uniform(-MAX_OFFSET[1], MAX_OFFSET[1]), 3)),
        hair_colour=rng.choice(list(HAIR_COLOURS)), hair_style=rng.choice(HAIR_STYLES),
        eye_colour=rng.choice(list(EYE_COLOURS)), expression=rng.choice(EXPRESSIONS),
        background=rng.choice(list(BACKGROUNDS)))
    # All three are drawn whatever the flags say, so one flag never changes what another one adds.
    drawn = {"mustache": Mustache(rng.choice(MUSTACHE_STYLES), rng.choice(_visible_on(skin, MUSTACHE_COLOURS))),
             "lipstick": rng.choice(list(LIPSTICK_COLOURS)),
             "glasses": Glasses(rng.choice(GLASSES_STYLES), rng.choice(_visible_on(skin, GLASSES_COLOURS)))}
    wanted = {"mustache": mustache, "lipstick": lipstick, "glasses": glasses}
    return dataclasses.replace(face, **{name: value for name, value in drawn.items() if wanted[name]})


def _visible_on(skin: str, palette: dict[str, RGB]) -> list[str]:
    """The colours that stand out on `skin`: a brown mustache on the deepest skin would all but vanish."""
    skin_colour = SKIN_TONES[skin]
    return [name for name, colour in palette.items()
            if abs(_luma(colour) - _luma(skin_colour)) >= MIN_LUMA_CONTRAST
            or math.dist(colour, skin_colour) >= MIN_COLOUR_CONTRAST]


def _luma(colour: RGB) -> float:
    """Brightness as the eye weighs it (Rec. 601)."""
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


def caption(spec: FaceSpec) -> str:
    """e.g. 'a smiling face with short red hair and blue eyes on a green background, wearing red lipstick'.

    The caption of a face with attributes starts with the caption of the same face without them.
    """
    hair = {"bald": "a bald head", "bun": f"{spec.hair_colour} hair in a bun"}.get(
        spec.hair_style, f"{spec.hair_style} {spec.hair_colour} hair")
    on = f"{'an' if spec.background[0] in 'aeiou' else 'a'} {spec.background} background"
    text = f"a {spec.expression} face with {hair} and {spec.eye_colour} eyes on {on}"
    if spec.mustache is not None:
        text += f", with a {spec.mustache.colour} {spec.mustache.style} mustache"
    worn = [f"{spec.lipstick} lipstick"] if spec.lipstick is not None else []
    if spec.glasses is not None:
        style, colour = spec.glasses.style, spec.glasses.colour
        worn.append(f"{colour} sunglasses" if style == "sunglasses" else f"{style} {colour} glasses")
    return text + (", wearing " + " and ".join(worn) if worn else "")


def draw_face(spec: FaceSpec, size: int = 64) -> Image.Image:
    """The face as a `size`×`size` RGB image; the same spec gives the same picture at every size."""
    _check_size(size)
    side = size * SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), BACKGROUNDS[spec.background])
    head = _Head.of(spec, side)
    skin, hair = SKIN_TONES[spec.skin], HAIR_COLOURS[spec.hair_colour]
    edge = head.px(0.045)
    _fill(canvas, [head.oval(u, 0.02, 0.14, 0.2) for u in (-0.97, 0.97)], skin, _shade(skin, 0.62), edge)  # ears
    hair_back, fringe = _hair_shapes(head, spec.hair_style)
    _fill(canvas, hair_back, hair, _shade(hair, 0.6), edge)
    _, exponent, taper = FACE_SHAPES[spec.shape]
    face = [head.ellipse(0, 0, 1, head.b / head.a, exponent, taper)]
    _fill(canvas, face, skin, _shade(skin, 0.62), edge)
    if fringe is not None:  # clipped to the face and its outline, so it covers the outline across the forehead
        _fill(canvas, [fringe], hair, _shade(hair, 0.6), edge, clip=_mask(side, face, grow=edge))
    else:  # bald: a shine on the head
        shine = head.ellipse(-0.3, -0.72, 0.2, 0.08, arc=(200, 290), steps=12)
        _stroke(canvas, shine, (255, 255, 255), head.px(0.05))
    _draw_eyes(canvas, head, spec.expression, EYE_COLOURS[spec.eye_colour], skin, hair)
    _stroke(canvas, head.ellipse(0, 0.2, 0.09, 0.07, arc=(20, 160), steps=16), _shade(skin, 0.7), edge)  # nose
    _draw_mouth(canvas, head, spec, skin)
    if spec.mustache is not None:
        colour = MUSTACHE_COLOURS[spec.mustache.colour]
        _fill(canvas, [_mustache_shape(head, spec.mustache.style)], colour, _shade(colour, 0.45), head.px(0.04))
    if spec.glasses is not None:
        _draw_glasses(canvas, head, spec.glasses)
    return canvas.resize((size, size), Image.Resampling.BOX)


def attribute_box(spec: FaceSpec, attribute: str, size: int = 64) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the pixels of a `size`×`size` `draw_face` image that `attribute` can touch."""
    head = _Head.of(spec, size)
    if attribute == "mustache" and spec.mustache is not None:
        points = _mustache_shape(head, spec.mustache.style)
    elif attribute == "lipstick" and spec.lipstick is not None:
        points = _mouth(head, spec.expression, full=True)[0]
    elif attribute == "glasses" and spec.glasses is not None:
        points = [point for shape in _glasses_shapes(head, spec.glasses.style) for point in shape]
    else:
        raise FaceSpecError(f"attribute={attribute!r}: not one this face has (mustache, lipstick or glasses)")
    xs, ys = [x for x, _ in points], [y for _, y in points]
    pad = head.px(0.06) + 1  # outlines and line widths reach past the shapes' points
    return (max(0, math.floor(min(xs)) - pad), max(0, math.floor(min(ys)) - pad),
            min(size, math.ceil(max(xs)) + pad), min(size, math.ceil(max(ys)) + pad))


def attribute_mask(spec: FaceSpec, size: int = 64, grow: int = MASK_GROWTH) -> Image.Image:
    """Where `spec`'s attributes drew, as a `size`×`size` greyscale image: white wherever its `draw_face` image
    differs from its plain twin's (the same face with no attribute), grown by `grow` pixels, black elsewhere."""
    plain = dataclasses.replace(spec, mustache=None, lipstick=None, glasses=None)
    difference = ImageChops.difference(draw_face(spec, size), draw_face(plain, size))
    red, green, blue = difference.split()
    changed = ImageChops.lighter(ImageChops.lighter(red, green), blue).point(lambda value: 255 if value else 0)
    return changed.filter(ImageFilter.MaxFilter(2 * grow + 1)) if grow else changed


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
                  glasses: bool = False, size: int = 64, masks: bool = False) -> list[Path]:
    """Write `count` faces as 0000.png + 0000.txt (its caption) …; returns the image paths. With `masks`, each
    face's `attribute_mask` too, as 0000.mask.png.

    Each file is written atomically, the caption first and the image last, so every image on disk has its
    caption (and mask). The face's seed and spec are kept in the PNG's text chunks. Equal arguments give
    byte-identical files.
    """
    if count < 0:
        raise FaceSpecError(f"count={count}: must be 0 or more")
    if masks and not (mustache or lipstick or glasses):
        raise FaceSpecError("masks: plain faces have no attribute to mask; add mustache, lipstick or glasses")
    _check_size(size)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(count):
        # Hashed rather than seed + index, so datasets with nearby seeds share no faces.
        face_seed = int.from_bytes(hashlib.sha256(f"{seed}/{index}".encode()).digest()[:8], "big")
        spec = sample_face(face_seed, mustache=mustache, lipstick=lipstick, glasses=glasses)
        stem = folder / f"{index:0{max(4, len(str(count - 1)))}d}"
        with atomic_path(stem.with_suffix(".txt")) as temp:
            temp.write_text(caption(spec) + "\n", encoding="utf-8")
        if masks:
            with atomic_path(stem.with_name(stem.name + MASK_SUFFIX)) as temp:
                attribute_mask(spec, size).save(temp, format="PNG")
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


def _check_size(size: int) -> None:
    if size < 32:
        raise FaceSpecError(f"size={size}: faces need at least 32 pixels to show their features")


@dataclass(frozen=True)
class _Head:
    """Where the face sits on a square canvas.

    Positions are (u, v): u runs -1..1 from cheek to cheek, v -1..1 from the top of the head to the chin, so
    features follow the face's proportions. Sizes are in half-widths (`a`), so circles stay round.
    """

    cx: float
    cy: float
    a: float  # half-width
    b: float  # half-height

    @classmethod
    def of(cls, spec: FaceSpec, side: int) -> _Head:
        a = spec.face_width * side / 2
        # A little below the centre: the hair above the face takes more room than the chin below it.
        return cls(side * (0.5 + spec.offset[0]), side * (0.53 + spec.offset[1]), a, a * FACE_SHAPES[spec.shape][0])

    def px(self, length: float) -> int:
        return max(1, round(length * self.a))

    def at(self, u: float, v: float) -> Point:
        return (self.cx + u * self.a, self.cy + v * self.b)

    def curve(self, points: list[Point]) -> list[Point]:
        return [self.at(u, v) for u, v in points]

    def ellipse(self, u: float, v: float, ru: float, rv: float, exponent: float = 2.0, taper: float = 0.0,
                arc: tuple[float, float] = (0, 360), steps: int = 96) -> list[Point]:
        """A superellipse centred at (u, v), radii in half-widths, `arc` in degrees clockwise from 3 o'clock;
        `taper` narrows its lower half towards the bottom, like a jaw."""
        x, y = self.at(u, v)
        points = []
        for t in (math.radians(arc[0] + (arc[1] - arc[0]) * i / steps) for i in range(steps + 1)):
            dy = math.copysign(abs(math.sin(t)) ** (2 / exponent), math.sin(t))
            dx = math.copysign(abs(math.cos(t)) ** (2 / exponent), math.cos(t)) * (1 - taper * max(dy, 0) ** 2)
            points.append((x + ru * self.a * dx, y + rv * self.a * dy))
        return points

    def oval(self, u: float, v: float, ru: float, rv: float) -> list[Point]:
        """An ellipse whose vertical radius is in half-heights, for shapes that scale with the head."""
        return self.ellipse(u, v, ru, rv * self.b / self.a)


def _shade(colour: RGB, factor: float) -> RGB:
    return tuple(min(255, round(c * factor)) for c in colour)


def _mask(side: int, shapes: list[list[Point]], grow: int = 0) -> Image.Image:
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    for points in shapes:
        draw.polygon(points, fill=255)
        if grow:
            draw.line(points + points[:2], fill=255, width=2 * grow, joint="curve")
    return mask


def _fill(canvas: Image.Image, shapes: list[list[Point]], colour: RGB, outline: RGB | None = None,
          width: int = 0, clip: Image.Image | None = None) -> None:
    """Fill the union of `shapes`, outlined `width` pixels wide around the union (not around each shape)."""
    layers = [(outline, _mask(canvas.width, shapes, grow=width))] if outline else []
    for paint, mask in layers + [(colour, _mask(canvas.width, shapes))]:
        if clip is not None:
            mask = ImageChops.multiply(mask, clip)
        if (box := mask.getbbox()) is not None:  # pasting only there is what keeps drawing fast
            canvas.paste(paint, box, mask.crop(box))


def _stroke(canvas: Image.Image, points: list[Point], colour: RGB, width: int) -> None:
    """A line with round ends."""
    draw = ImageDraw.Draw(canvas)
    draw.line(points, fill=colour, width=width, joint="curve")
    for x, y in (points[0], points[-1]):
        draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=colour)


def _hair_shapes(head: _Head, style: str) -> tuple[list[list[Point]], list[Point] | None]:
    """The hair behind the head, and the region (to be clipped to the face) that the fringe covers."""
    us = [i / 12 for i in range(-13, 14)]
    fringe = [(u, -0.5 - 0.16 * u - 0.06 * (1 - u * u)) for u in us]  # swept to one side
    if style == "short":
        back = [head.oval(0, -0.3, 1.08, 0.82)]
    elif style == "bun":
        back = [head.oval(0, -0.3, 1.06, 0.8), head.ellipse(0, -1.12, 0.3, 0.26)]
    elif style == "long":
        # Falls past the jaw on both sides but rises to meet the chin, so none shows below it.
        side = [(-1.13 - 0.1 * t, -0.3 + 1.45 * t) for t in (i / 12 for i in range(13))]
        ends = [(1.23 * u, 1.15 - 0.3 * (1 - u * u) + 0.04 * math.cos(14 * u))
                for u in (i / 16 for i in range(-15, 16))]
        back = [head.oval(0, -0.28, 1.13, 0.84), head.curve(side + ends + [(-u, v) for u, v in side[::-1]])]
        fringe = [(u, -0.68 + 0.42 * abs(u) ** 1.6) for u in us]  # parted in the middle
    elif style == "curly":
        back = [head.oval(0, -0.28, 1.0, 0.78)] + [
            head.ellipse(1.02 * math.cos(t), -0.28 + 0.84 * math.sin(t), 0.24, 0.24)
            for t in (math.radians(d) for d in range(160, 390, 23))]
        fringe = [(u, -0.5 + 0.05 * math.cos(9 * u)) for u in us]
    else:  # bald: a little hair left above the ears
        return [head.oval(u, -0.12, 0.14, 0.2) for u in (-0.93, 0.93)], None
    return back, head.curve(fringe + [(1.2, -1.5), (-1.2, -1.5)])


def _draw_eyes(canvas: Image.Image, head: _Head, expression: str, iris: RGB, skin: RGB, hair: RGB) -> None:
    height = {"smiling": 0.1, "neutral": 0.12, "surprised": 0.16, "sad": 0.11}[expression]
    # Heights (v) of each eyebrow's inner and outer end.
    inner, outer = {"smiling": (-0.34, -0.36), "neutral": (-0.32, -0.32), "surprised": (-0.46, -0.44),
                    "sad": (-0.4, -0.28)}[expression]
    # Half way from the hair colour to near black, so blonde and grey brows still show on pale skin.
    brow_colour = tuple(round((c + d) / 2) for c, d in zip(hair, (40, 28, 22)))
    for u in EYE_US:
        _fill(canvas, [head.ellipse(u, EYE_V, 0.17, height)], (255, 255, 255), _shade(skin, 0.4), head.px(0.035))
        _fill(canvas, [head.ellipse(u, EYE_V, 0.095, min(0.095, height))], iris)
        _fill(canvas, [head.ellipse(u, EYE_V, 0.045, 0.045)], (16, 16, 20))
        _fill(canvas, [head.ellipse(u + 0.03, EYE_V - 0.03, 0.02, 0.02)], (255, 255, 255))
        side = math.copysign(1, u)
        brow = head.curve([(side * 0.18, inner), (side * 0.35, min(inner, outer) - 0.04), (side * 0.52, outer)])
        _stroke(canvas, brow, brow_colour, head.px(0.07))


def _mouth(head: _Head, expression: str, full: bool) -> tuple[list[Point], list[Point]]:
    """The lips, and where they meet (a line, or the open inside of a surprised mouth).

    Lipstick draws the lips bold, as cartoons do: twice as tall and a little wider, mostly in the lower lip,
    which a mustache does not cover. Bare lips are under 2 pixels tall on a 64-pixel face, and the toy VAE's
    8x-downsampled latent cannot keep a colour on a part that thin.
    """
    if expression == "surprised":
        return head.ellipse(0, 0.68, 0.2 if full else 0.12, 0.25 if full else 0.15), head.ellipse(0, 0.68, 0.065, 0.09)
    bend = {"smiling": 0.14, "neutral": 0.02, "sad": -0.1}[expression]
    half_width, upper, lower = (0.34, 0.11, 0.2) if full else (0.27, 0.045, 0.065)
    x, y = head.at(0, 0.68)
    us = [i / 16 for i in range(-16, 17)]
    line = [(x + u * half_width * head.a, y + bend * head.a * (0.5 - u * u)) for u in us]
    # Both lips taper to the corners; the upper one dips in the middle (the cupid's bow).
    upper_edge = [(x, y - upper * head.a * math.sqrt(1 - u * u) * (1 - 0.35 * math.exp(-(u / 0.15) ** 2)))
                  for u, (x, y) in zip(us, line)]
    lower_edge = [(x, y + lower * head.a * math.sqrt(1 - u * u)) for u, (x, y) in zip(us, line)]
    return upper_edge + lower_edge[::-1], line


def _draw_mouth(canvas: Image.Image, head: _Head, spec: FaceSpec, skin: RGB) -> None:
    lips, inside = _mouth(head, spec.expression, full=spec.lipstick is not None)
    # Bare lips are the skin, darker: never a colour that a lipstick could be.
    colour = LIPSTICK_COLOURS[spec.lipstick] if spec.lipstick is not None else _shade(skin, 0.78)
    _fill(canvas, [lips], colour, _shade(colour, 0.7), head.px(0.03))
    if spec.expression == "surprised":
        _fill(canvas, [inside], _shade(skin, 0.3))
    else:
        _stroke(canvas, inside, _shade(skin, 0.3), head.px(0.04))


def _mustache_shape(head: _Head, style: str) -> list[Point]:
    """A band under the nose, from its half-width, centre line and thickness (in half-widths) along u."""
    if style == "chevron":
        half_width, centre, thickness = 0.4, lambda u: 0.05 * u * u, lambda u: 0.2 * (1 - abs(u) ** 6) ** 0.4
    elif style == "handlebar":  # thinning towards tips that curl up
        half_width = 0.62
        centre = lambda u: 0.04 * u * u - 1.4 * max(0.0, abs(u) - 0.6) ** 2  # noqa: E731
        thickness = lambda u: 0.03 + 0.15 * (1 - abs(u) ** 1.5) ** 0.8  # noqa: E731
    else:  # pencil: two thin strokes parted under the nose
        half_width, centre = 0.38, lambda u: 0.015 * u * u  # noqa: E731
        thickness = lambda u: 0.1 * (1 - u ** 8) ** 0.5 * min(1.0, abs(u) / 0.15)  # noqa: E731
    x, y = head.at(0, 0.45)
    us = [i / 24 for i in range(-24, 25)]
    top = [(x + u * half_width * head.a, y + (centre(u) - thickness(u) / 2) * head.a) for u in us]
    bottom = [(x + u * half_width * head.a, y + (centre(u) + thickness(u) / 2) * head.a) for u in us]
    return top + bottom[::-1]


def _glasses_shapes(head: _Head, style: str) -> list[list[Point]]:
    """The two lenses, then the bridge and the two arms (lines)."""
    if style == "round":
        reach, lenses = 0.25, [head.ellipse(u, EYE_V, 0.25, 0.25) for u in EYE_US]
    else:  # squarer lenses, or for sunglasses ones between round and square
        exponent = 4.0 if style == "square" else 2.6
        reach, lenses = 0.28, [head.ellipse(u, EYE_V + 0.02, 0.28, 0.21, exponent) for u in EYE_US]
    inner, outer = EYE_US[1] - reach, EYE_US[1] + reach
    bridge = head.curve([(-inner, -0.08), (0, -0.14), (inner, -0.08)])
    arms = [head.curve([(side * outer, -0.08), (side * 0.99, -0.1)]) for side in (-1, 1)]
    return lenses + [bridge] + arms


def _draw_glasses(canvas: Image.Image, head: _Head, glasses: Glasses) -> None:
    frame, width = GLASSES_COLOURS[glasses.colour], head.px(0.075)
    *lenses, bridge, left_arm, right_arm = _glasses_shapes(head, glasses.style)
    for u, lens in zip(EYE_US, lenses):
        if glasses.style == "sunglasses":
            _fill(canvas, [lens], SUNGLASS_LENS)
            glint = head.curve([(u + 0.1, EYE_V + 0.02), (u + 0.17, EYE_V - 0.07)])
            _stroke(canvas, glint, (200, 210, 230), head.px(0.04))
        ImageDraw.Draw(canvas).line(lens + lens[:2], fill=frame, width=width, joint="curve")
    for line in (bridge, left_arm, right_arm):
        _stroke(canvas, line, frame, width)
