"""Does the judge see a face on every kind of face the generator draws? Its face verdict on fresh generator faces,
drawn and through the toy base's VAE (as renders come out of it), by skin tone and by expression: where renders of
some kind fail more often than others, this says whether the judge could be the cause.

    python bench/bench_judge.py --faces 800 --wearing mustache
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from loramix.cli.quiet import quiet_libraries
from loramix.models.load import load_pipeline
from loramix.toy.build import vae_roundtrip
from loramix.toy.face_spec import sample_face
from loramix.toy.faces import draw_faces
from loramix.toy.judge import ATTRIBUTES, load_judge, to_tensor

WEARABLE = ATTRIBUTES[1:]  # the judge's attributes but the face itself
FIRST_SEED = 70_000  # the faces' seeds, FIRST_SEED on


def shares(verdicts: list[bool], kinds: list[str]) -> str:
    """'kind n/m' for each kind, in the order first met."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for verdict, kind in zip(verdicts, kinds):
        counts[kind][0] += verdict
        counts[kind][1] += 1
    return ", ".join(f"{kind} {seen}/{total}" for kind, (seen, total) in counts.items())


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=800)
    parser.add_argument("--wearing", default="", help="Comma-separated attributes every face wears, from "
                                                      f"{', '.join(WEARABLE)}.")
    args = parser.parse_args()
    wearing = [name for name in args.wearing.split(",") if name]
    unknown = [name for name in wearing if name not in WEARABLE]
    if unknown or args.faces < 1:
        parser.error(f"--wearing {args.wearing!r} / --faces {args.faces}: attributes from "
                     f"{', '.join(WEARABLE)}, at least one face")
    specs = [sample_face(FIRST_SEED + i, **dict.fromkeys(wearing, True)) for i in range(args.faces)]
    drawn = to_tensor(draw_faces(specs))
    roundtrip = vae_roundtrip(load_pipeline("toy", dtype=torch.float32).vae)
    with torch.no_grad():
        round_tripped = torch.cat([roundtrip(drawn[i:i + 64]) for i in range(0, len(drawn), 64)])
    judge = load_judge()
    print(f"{args.faces} generator faces wearing {', '.join(wearing) or 'nothing'}: the judge sees a face in")
    for label, images in (("drawn", drawn), ("through the VAE", round_tripped)):
        faces = judge.verdicts(images)[:, 0].tolist()
        print(f"  {label}: {sum(faces)}/{len(faces)}")
        print(f"    by skin: {shares(faces, [spec.skin for spec in specs])}")
        print(f"    by expression: {shares(faces, [spec.expression for spec in specs])}")


if __name__ == "__main__":  # draw_faces starts worker processes, which import this file
    main()
