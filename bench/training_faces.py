"""Training faces tried for the mustache's and the lipstick's recipes and not kept (docs/training.md, "What the
training faces wear, tried and not kept"): the same generator as `loramix faces`, other choices of what the
faces wear.

    python bench/training_faces.py even-colours build/faces/even 72 --seed 101
    python bench/training_faces.py wearing-others build/faces/mustache-others 72 --seed 101 --attribute mustache
    python bench/training_faces.py wearing-others build/faces/others-out 72 --seed 101 --mask-others-out
    python bench/training_faces.py wearing-others build/faces/lipstick-company 72 --seed 101 --others-from lipstick
    loramix train recipes/mustache.toml --dataset build/faces/even --seed 1 --output build/runs/even-1
    python bench/bench_single.py mustache=build/runs/even-1/mustache.safetensors --set tune --first 64

even-colours: every mustache colour equally often (face i takes colour i mod 4; a face whose skin would not
show it is drawn again), where `loramix faces` draws each face's colour from those its skin shows, so black
comes most. wearing-others: each face wears --attribute and, with probability --others each, the other two
attributes (or only those --others-from names), named in its caption; its mask covers --attribute alone, or
with --mask-others-out every pixel but the others' (trained with `masked_loss_weight = 0`, the face and the
attribute count and the others do not).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
from pathlib import Path

from PIL import ImageChops

from loramix.toy.face_drawing import attribute_mask
from loramix.toy.face_spec import MUSTACHE_COLOURS, sample_face
from loramix.toy.faces import MASK_SUFFIX, seed_of_face, write_faces
from loramix.util.atomic import atomic_path

ATTRIBUTES = ("mustache", "lipstick", "glasses")


def even_colours(count: int, seed: int) -> list:
    faces = []
    for index in range(count):
        wanted = list(MUSTACHE_COLOURS)[index % len(MUSTACHE_COLOURS)]
        attempt = 0
        while True:
            face_seed = seed_of_face(seed, index, attempt)
            spec = sample_face(face_seed, mustache=True)
            if spec.mustache.colour == wanted:
                break
            attempt += 1
        faces.append((face_seed, spec))
    return faces


def wearing_others(count: int, seed: int, attribute: str, others: float,
                   others_from: tuple[str, ...] = ATTRIBUTES) -> list:
    faces = []
    for index in range(count):
        face_seed = seed_of_face(seed, index)
        draw = random.Random(face_seed ^ 0x5EED)
        worn = {name: name == attribute or (name in others_from and draw.random() < others) for name in ATTRIBUTES}
        faces.append((face_seed, sample_face(face_seed, **worn)))
    return faces


def mask_others_out(images: list[Path], faces: list, attribute: str) -> None:
    """Write each face's mask white everywhere but where the other attributes drew (grown by a pixel), the
    attribute's own pixels white even where the others' reach them."""
    for image, (_, spec) in zip(images, faces):
        others_out = ImageChops.invert(attribute_mask(dataclasses.replace(spec, **{attribute: None}), grow=1))
        own = attribute_mask(spec, grow=0, attribute=attribute)
        with atomic_path(image.with_name(image.stem + MASK_SUFFIX)) as temp:
            ImageChops.lighter(others_out, own).save(temp, format="PNG")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("even-colours", "wearing-others"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("count", type=int)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--attribute", choices=ATTRIBUTES, default="mustache")
    parser.add_argument("--others", type=float, default=0.333)
    parser.add_argument("--others-from", default=",".join(ATTRIBUTES),
                        help="wearing-others: which others a face may wear, e.g. lipstick.")
    parser.add_argument("--mask-others-out", action="store_true",
                        help="wearing-others: masks white everywhere but on the other attributes' pixels.")
    args = parser.parse_args()
    if args.kind == "even-colours":
        faces, attribute = even_colours(args.count, args.seed), "mustache"
    else:
        others_from = tuple(args.others_from.split(","))
        if unknown := set(others_from) - set(ATTRIBUTES):
            parser.error(f"--others-from: {', '.join(sorted(unknown))} is not one of {', '.join(ATTRIBUTES)}")
        faces = wearing_others(args.count, args.seed, args.attribute, args.others, others_from)
        attribute = args.attribute
    images = write_faces(args.folder, faces, masks=not args.mask_others_out, mask_attribute=attribute)
    if args.mask_others_out:
        mask_others_out(images, faces, attribute)
    print(f"{len(faces)} faces in {args.folder}")


if __name__ == "__main__":
    main()
