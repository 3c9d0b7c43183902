"""The faces the toy base draws, as data: a `FaceSpec` sampled from one seed, its palettes and what a caption
says of it. Drawing is loramix.toy.face_drawing's; datasets are loramix.toy.faces'.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

from loramix.errors import FaceSpecError

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


def phrasings(spec: FaceSpec, count: int, seed: int) -> list[str]:
    """`count` captions of one face: `caption(spec)` first, then rephrasings drawn from `seed`: its details in
    another order, some left out, as a sentence, a comma list or the attribute alone. Each names every
    attribute the face wears, in the caption vocabulary only, so a LoRA learns the attribute, not one sentence.
    """
    rng = random.Random(f"phrasings/{seed}")
    found = [caption(spec)]
    for _ in range(20 * count):
        if len(found) == count:
            break
        text = _rephrase(spec, rng)
        if text not in found:
            found.append(text)
    return found


def _rephrase(spec: FaceSpec, rng: random.Random) -> str:
    worn = _attribute_phrases(spec, rng)
    face = rng.choice(("a face", f"a {spec.expression} face", f"{spec.expression} face"))
    hair = {"bald": "a bald head", "bun": f"{spec.hair_colour} hair in a bun"}.get(
        spec.hair_style, rng.choice((f"{spec.hair_style} {spec.hair_colour} hair", f"{spec.hair_colour} hair")))
    details = [d for d in (hair, f"{spec.eye_colour} eyes") if rng.random() < 0.5]
    background = f"{'an' if spec.background[0] in 'aeiou' else 'a'} {spec.background} background"
    form = rng.random()
    if form < 0.15 or not worn:  # the attribute alone, or a plain face's few words
        return " and ".join(worn) if worn else f"{face} on {background}"
    if form < 0.5:  # a comma list, in any order
        parts = [*worn, *details, face, *([background] if rng.random() < 0.5 else [])]
        rng.shuffle(parts)
        return ", ".join(parts)
    listed = [*details]
    for phrase in worn:
        listed.insert(rng.randrange(len(listed) + 1), phrase)
    joined = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]
    wearing = (spec.lipstick or spec.glasses) and not details and rng.random() < 0.5
    text = f"{face} {'wearing' if wearing else 'with'} {joined}"
    return text + (f" on {background}" if rng.random() < 0.4 else "")


def _attribute_phrases(spec: FaceSpec, rng: random.Random) -> list[str]:
    """Each attribute the face wears, its colour and style named or not."""
    worn = []
    if spec.mustache is not None:
        colour, style = spec.mustache.colour, spec.mustache.style
        worn.append(rng.choice((f"a {colour} {style} mustache", f"a {colour} mustache", f"a {style} mustache",
                                "a mustache")))
    if spec.lipstick is not None:
        worn.append(rng.choice((f"{spec.lipstick} lipstick", "lipstick")))
    if spec.glasses is not None:
        style, colour = spec.glasses.style, spec.glasses.colour
        named = f"{colour} sunglasses" if style == "sunglasses" else f"{style} {colour} glasses"
        worn.append(rng.choice((named, "sunglasses" if style == "sunglasses" else f"{colour} glasses", "glasses")))
    rng.shuffle(worn)
    return worn
