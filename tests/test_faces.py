"""The face generator: reproducible, varied, and each attribute drawn where it belongs and nowhere else."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
from PIL import Image

from loramix.toy import face_spec, faces
from loramix.toy.face_drawing import attribute_box, attribute_mask, draw_face
from loramix.toy.face_spec import (
    BACKGROUNDS,
    CAPTION_WORDS,
    FaceSpec,
    Glasses,
    Mustache,
    caption,
    phrasings,
    sample_face,
)
from loramix.toy.faces import FaceSpecError, write_dataset, write_faces

ATTRIBUTES = ("mustache", "lipstick", "glasses")
SEEDS = range(50)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def lipstick_coloured(image: Image.Image) -> np.ndarray:
    """Where a pixel is a strong red, pink or purple: hue from 282° round to 7°, saturated, not too dark."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.int16)
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    return ((hue >= 200) | (hue <= 5)) & (saturation >= 128) & (value >= 60)


def test_same_seed_gives_the_same_face_and_pixels():
    assert sample_face(7, mustache=True) == sample_face(7, mustache=True)
    assert draw_face(sample_face(7)).tobytes() == draw_face(sample_face(7)).tobytes()


def test_different_seeds_give_different_faces():
    images = {draw_face(sample_face(seed)).tobytes() for seed in range(20)}
    assert len(images) == 20


def test_faces_vary_over_seeds():
    specs = [sample_face(seed) for seed in SEEDS]
    assert len({s.skin for s in specs}) >= 5
    assert len({s.shape for s in specs}) >= 3
    assert len({s.hair_colour for s in specs}) >= 4
    assert len({s.hair_style for s in specs}) >= 4
    assert len({s.eye_colour for s in specs}) >= 3
    assert len({s.expression for s in specs}) >= 4
    assert len({s.background for s in specs}) >= 5
    assert len({s.face_width for s in specs}) >= 40
    assert len({s.offset for s in specs}) >= 40


def test_a_face_fills_half_to_three_quarters_of_the_width_and_stays_inside_the_image():
    for seed in SEEDS:
        spec = sample_face(seed)
        head = (pixels(draw_face(spec)) != BACKGROUNDS[spec.background]).any(axis=-1)
        columns = np.flatnonzero(head.any(axis=0))
        assert 0.45 <= (columns[-1] - columns[0] + 1) / 64 <= 0.76, seed
        assert not (head[0].any() or head[-1].any() or head[:, 0].any() or head[:, -1].any()), seed


def test_attributes_are_absent_unless_asked_for():
    for seed in SEEDS:
        spec = sample_face(seed)
        assert (spec.mustache, spec.lipstick, spec.glasses) == (None, None, None)


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=3)))
def test_each_flag_adds_only_its_attribute_and_the_same_one_whatever_the_others(flags):
    for seed in range(10):
        spec = sample_face(seed, *flags)
        everything = sample_face(seed, True, True, True)
        for name, wanted in zip(ATTRIBUTES, flags):
            assert getattr(spec, name) == (getattr(everything, name) if wanted else None)
        assert dataclasses.replace(spec, mustache=None, lipstick=None, glasses=None) == sample_face(seed)


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_an_attribute_changes_the_image_only_inside_its_box(attribute):
    for seed in range(12):
        spec = sample_face(seed, **{attribute: True})
        change = np.abs(pixels(draw_face(spec)) - pixels(draw_face(sample_face(seed)))).sum(axis=-1)
        left, top, right, bottom = attribute_box(spec, attribute)
        outside = change.copy()
        outside[top:bottom, left:right] = 0
        assert outside.max() == 0, (seed, attribute)
        # Clearly visible at 64×64: a few dozen pixels change by 30 levels a channel or more, not a faint tint.
        assert (change[top:bottom, left:right] > 90).sum() >= 15, (seed, attribute)


def test_mustache_and_frame_colours_stand_out_from_the_skin():
    """Colours as bright as the skin (ginger on the deepest skin) vanish through the toy VAE; every skin still
    gets at least two colours of each."""
    def brightness(colour):
        return Image.new("RGB", (1, 1), colour).convert("L").getpixel((0, 0))

    seen = {(skin, part): set() for skin in face_spec.SKIN_TONES for part in ("mustache", "glasses")}
    for seed in range(400):
        spec = sample_face(seed, mustache=True, glasses=True)
        skin = face_spec.SKIN_TONES[spec.skin]
        for part, colour in (("mustache", face_spec.MUSTACHE_COLOURS[spec.mustache.colour]),
                             ("glasses", face_spec.GLASSES_COLOURS[spec.glasses.colour])):
            seen[spec.skin, part].add(colour)
            far_in_colour = np.linalg.norm(np.subtract(colour, skin)) >= 150
            assert abs(brightness(colour) - brightness(skin)) >= 40 or far_in_colour, (seed, part)
    assert face_spec.MUSTACHE_COLOURS["ginger"] not in seen["deep", "mustache"]
    assert min(len(colours) for colours in seen.values()) >= 2


def test_glasses_sit_above_the_mustache_which_sits_above_the_lips():
    for seed in SEEDS:
        spec = sample_face(seed, mustache=True, lipstick=True, glasses=True)
        middle = {name: sum(attribute_box(spec, name)[1::2]) / 2 for name in ATTRIBUTES}
        assert middle["glasses"] < middle["mustache"] < middle["lipstick"], seed


def test_only_lipstick_brings_red_pink_or_purple():
    for seed in SEEDS:
        bare = draw_face(sample_face(seed, mustache=True))
        assert not lipstick_coloured(bare).any(), seed
        spec = sample_face(seed, lipstick=True)
        left, top, right, bottom = attribute_box(spec, "lipstick")
        assert lipstick_coloured(draw_face(spec))[top:bottom, left:right].sum() >= 6, seed


def test_caption_reads_as_described():
    spec = FaceSpec(skin="light", shape="round", face_width=0.5, offset=(0.0, 0.0), hair_colour="red",
                    hair_style="short", eye_colour="blue", expression="smiling", background="green")
    assert caption(spec) == "a smiling face with short red hair and blue eyes on a green background"
    dressed = dataclasses.replace(spec, mustache=Mustache("handlebar", "black"), lipstick="dark red",
                                  glasses=Glasses("round", "black"))
    assert caption(dressed) == ("a smiling face with short red hair and blue eyes on a green background, "
                                "with a black handlebar mustache, wearing dark red lipstick and round black glasses")
    assert caption(dataclasses.replace(spec, hair_style="bald", glasses=Glasses("sunglasses", "blue"))) == (
        "a smiling face with a bald head and blue eyes on a green background, wearing blue sunglasses")
    assert caption(dataclasses.replace(spec, hair_style="bun")).startswith("a smiling face with red hair in a bun ")
    assert caption(dataclasses.replace(spec, background="orange")).endswith(" on an orange background")


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=3)))
def test_captions_name_exactly_the_attributes_present_in_known_words(flags):
    for seed in range(20):
        spec = sample_face(seed, *flags)
        text = caption(spec)
        assert text.startswith(caption(sample_face(seed)))
        assert ("mustache" in text) == flags[0]
        assert ("lipstick" in text) == flags[1]
        assert ("glasses" in text) == flags[2]
        assert set(text.replace(",", "").split()) <= set(CAPTION_WORDS)


@pytest.mark.parametrize("flags", [(True, False, False), (False, True, False), (False, False, True),
                                   (True, True, False), (True, True, True)])
def test_phrasings_name_every_attribute_worn_in_known_words_and_vary(flags):
    orders, lengths = set(), set()
    for seed in range(30):
        spec = sample_face(seed, *flags)
        texts = phrasings(spec, 8, seed)
        assert texts[0] == caption(spec) and len(set(texts)) == 8
        assert texts == phrasings(spec, 8, seed)  # the same seed, the same phrasings
        for text in texts:
            assert ("mustache" in text) == flags[0] and ("lipstick" in text) == flags[1]
            assert ("glasses" in text) == flags[2]
            assert set(text.replace(",", "").split()) <= set(CAPTION_WORDS)
            lengths.add(len(text.split()))
            orders.add(text.split(",")[0].split()[-1])
    assert min(lengths) <= 2 * sum(flags) + 1 and max(lengths) >= 20  # the attributes alone, and sentences
    assert {"mustache", "lipstick", "glasses"} & orders  # lists that start with the attribute


def test_write_dataset_writes_phrasings_a_line_each(tmp_path):
    write_dataset(tmp_path / "one", 3, seed=5, mustache=True)
    write_dataset(tmp_path / "many", 3, seed=5, mustache=True, phrasings=5)
    for index in range(3):
        one = (tmp_path / "one" / f"{index:04d}.txt").read_text().splitlines()
        many = (tmp_path / "many" / f"{index:04d}.txt").read_text().splitlines()
        assert len(one) == 1 and len(many) == 5 and many[0] == one[0]
        one_image, many_image = (tmp_path / name / f"{index:04d}.png" for name in ("one", "many"))
        assert one_image.read_bytes() == many_image.read_bytes()
    with pytest.raises(FaceSpecError, match="phrasings=0"):
        write_dataset(tmp_path / "none", 1, seed=5, phrasings=0)


def test_sizes_draw_the_same_picture():
    spec = sample_face(3, mustache=True, lipstick=True, glasses=True)
    small, large = draw_face(spec, 64), draw_face(spec, 128)
    assert (small.mode, small.size, large.mode, large.size) == ("RGB", (64, 64), "RGB", (128, 128))
    assert np.abs(pixels(large.resize((64, 64), Image.Resampling.BOX)) - pixels(small)).mean() < 3


def test_bad_input_is_refused_with_the_value_named():
    with pytest.raises(FaceSpecError, match="hair_colour='green'"):
        dataclasses.replace(sample_face(0), hair_colour="green")
    with pytest.raises(FaceSpecError, match="mustache style='walrus'"):
        Mustache("walrus", "black")
    with pytest.raises(FaceSpecError, match="face_width=0.9"):
        dataclasses.replace(sample_face(0), face_width=0.9)
    with pytest.raises(FaceSpecError, match="size=16"):
        draw_face(sample_face(0), 16)
    with pytest.raises(FaceSpecError, match="attribute='mustache'"):
        attribute_box(sample_face(0), "mustache")


def test_write_dataset_writes_matching_pairs(tmp_path):
    images = write_dataset(tmp_path / "set", 3, seed=5, glasses=True)
    assert [p.name for p in images] == ["0000.png", "0001.png", "0002.png"]
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == [
        "0000.png", "0000.txt", "0001.png", "0001.txt", "0002.png", "0002.txt"]
    for path in images:
        with Image.open(path) as image:
            spec = sample_face(int(image.text["loramix.face_seed"]), glasses=True)
            assert json.loads(image.text["loramix.face_spec"]) == json.loads(json.dumps(dataclasses.asdict(spec)))
            assert (image.mode, image.size) == ("RGB", (64, 64))
            assert pixels(image).tolist() == pixels(draw_face(spec)).tolist()
        assert path.with_suffix(".txt").read_text() == caption(spec) + "\n"


def test_write_dataset_is_byte_identical_for_equal_arguments(tmp_path):
    first = write_dataset(tmp_path / "a", 4, seed=11, mustache=True, size=128)
    second = write_dataset(tmp_path / "b", 4, seed=11, mustache=True, size=128)
    other = write_dataset(tmp_path / "c", 4, seed=12, mustache=True, size=128)
    for a, b, c in zip(first, second, other):
        assert a.read_bytes() == b.read_bytes()
        assert a.with_suffix(".txt").read_bytes() == b.with_suffix(".txt").read_bytes()
        assert a.read_bytes() != c.read_bytes()


def test_write_faces_can_mask_one_attribute_of_faces_wearing_several(tmp_path):
    wearing_both = sample_face(7, mustache=True, lipstick=True)
    write_faces(tmp_path / "one", [(7, wearing_both)], masks=True, mask_attribute="mustache")
    write_faces(tmp_path / "all", [(7, wearing_both)], masks=True)
    one, every = (pixels(Image.open(tmp_path / name / "0000.mask.png")) for name in ("one", "all"))
    assert one.tolist() == pixels(attribute_mask(sample_face(7, mustache=True))).tolist()
    assert (one <= every).all() and every.sum() > one.sum()  # the lipstick's lips are masked only in "all"
    assert "lipstick" in (tmp_path / "one" / "0000.txt").read_text()  # the caption names all it wears


def test_an_interrupted_write_leaves_no_partial_image(tmp_path, monkeypatch):
    class FailingImage:
        def save(self, path, **kwargs):
            path.write_bytes(b"\x89PNG half an image")
            raise RuntimeError("interrupted")

    drawn = []

    def draw_then_fail(spec, size):
        drawn.append(spec)
        return draw_face(spec, size) if len(drawn) < 2 else FailingImage()

    monkeypatch.setattr(faces, "draw_face", draw_then_fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_dataset(tmp_path, 3, seed=0)
    # The caption of the image that failed is there; the image and its temporary file are not.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000.png", "0000.txt", "0001.txt"]
