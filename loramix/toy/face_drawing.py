"""Drawing a `FaceSpec`: the face as an image, and the boxes and masks of where its attributes drew.

Each part is a polygon in `_Head` units (the face's half-width is 1), filled at 4× and box-averaged down.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageDraw, ImageFilter

from loramix.errors import FaceSpecError
from loramix.toy.face_spec import (
    BACKGROUNDS,
    EYE_COLOURS,
    EYE_US,
    EYE_V,
    FACE_SHAPES,
    GLASSES_COLOURS,
    HAIR_COLOURS,
    LIPSTICK_COLOURS,
    MASK_GROWTH,
    MUSTACHE_COLOURS,
    RGB,
    SKIN_TONES,
    SUNGLASS_LENS,
    SUPERSAMPLE,
    FaceSpec,
    Glasses,
    Point,
)


def draw_face(spec: FaceSpec, size: int = 64) -> Image.Image:
    """The face as a `size`×`size` RGB image; the same spec gives the same picture at every size."""
    check_size(size)
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


def attribute_mask(spec: FaceSpec, size: int = 64, grow: int = MASK_GROWTH, attribute: str | None = None
                   ) -> Image.Image:
    """Where `spec`'s attributes drew, as a `size`×`size` greyscale image: white wherever its `draw_face` image
    differs from its plain twin's (the same face with no attribute), grown by `grow` pixels, black elsewhere.
    With `attribute`, where that one drew, as if the face wore nothing else."""
    plain = dataclasses.replace(spec, mustache=None, lipstick=None, glasses=None)
    if attribute is not None:
        spec = dataclasses.replace(plain, **{attribute: getattr(spec, attribute)})
    difference = ImageChops.difference(draw_face(spec, size), draw_face(plain, size))
    red, green, blue = difference.split()
    changed = ImageChops.lighter(ImageChops.lighter(red, green), blue).point(lambda value: 255 if value else 0)
    return changed.filter(ImageFilter.MaxFilter(2 * grow + 1)) if grow else changed


def check_size(size: int) -> None:
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
