"""Does a mustache LoRA draw the colour the prompt names? The judge reads no colours, so this counts them: for
each read phrasing of bench/heldout.py that names a mustache colour, the colour that gains the most pixels in
the mustache's region (samples/regions/mustache.png) over the base's render of the same prompt and seed.

    python bench/bench_mustache_colour.py build/loras/mustache.safetensors [more.safetensors …] --seeds 24

It first runs the same count on the generator's own faces (each face with its mustache against its plain
twin), which says how far the count itself can be trusted. Also printed: how many renders have brown or deep
skin (the two darkest tones, read between the eyes and the mouth) beside the base's share.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from bench_single import rendered
from heldout import SETS
from PIL import Image

from loramix.cli.quiet import quiet_libraries
from loramix.lora.specs import WeightedFile
from loramix.models.load import load_pipeline
from loramix.models.loras import PipelineLoras
from loramix.toy.face_drawing import draw_face
from loramix.toy.face_spec import MUSTACHE_COLOURS, SKIN_TONES, sample_face
from loramix.toy.judge import SIZE

ROOT = Path(__file__).resolve().parents[1]
# The sets read before this bench was written; eleventh and later stay unread by it.
READ_SETS = ("tune", "held-out", "fresh", "final", "next", "seventh", "eighth", "ninth", "tenth")
NAMED = re.compile(r"(black|brown|ginger|grey)( (chevron|handlebar|pencil))? mustache")
NEAR = 45.0  # RGB distance within which a pixel counts as a palette colour (the VAE blurs colours this far)
LEAST_GAIN = 6  # pixels: fewer gained than this, and no colour was drawn
PALETTE = np.array(list(MUSTACHE_COLOURS.values()), dtype=float)
SKINS = np.array(list(SKIN_TONES.values()), dtype=float)
DARK_SKINS = {"brown", "deep"}


def colour_counts(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """How many of the region's pixels lie within NEAR of each mustache colour (nearest colour only)."""
    distances = np.linalg.norm(image[region][:, None, :] - PALETTE[None], axis=-1)
    nearest, near = distances.argmin(1), distances.min(1) < NEAR
    return np.array([(near & (nearest == k)).sum() for k in range(len(PALETTE))])


def drawn_colour(image: np.ndarray, plain: np.ndarray, region: np.ndarray) -> str | None:
    gained = colour_counts(image, region) - colour_counts(plain, region)
    return list(MUSTACHE_COLOURS)[int(gained.argmax())] if gained.max() >= LEAST_GAIN else None


def skin_tone(image: np.ndarray) -> str:
    """The tone nearest the median of two cheek patches."""
    patches = np.concatenate([image[34:38, 20:24].reshape(-1, 3), image[34:38, 40:44].reshape(-1, 3)])
    return list(SKIN_TONES)[int(np.linalg.norm(SKINS - np.median(patches, 0), axis=1).argmin())]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=float)


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("loras", nargs="+", type=Path)
    parser.add_argument("--seeds", type=int, default=24, help="Seeds per phrasing, from 40000.")
    args = parser.parse_args()
    region = np.asarray(Image.open(ROOT / "samples" / "regions" / "mustache.png")) > 127

    drawn = [(sample_face(seed, mustache=True), sample_face(seed)) for seed in range(300)]
    right = sum(drawn_colour(pixels(draw_face(m, SIZE)), pixels(draw_face(p, SIZE)), region) == m.mustache.colour
                for m, p in drawn)
    print(f"the count on 300 generator faces: names the drawn colour in {right / len(drawn):.0%}")

    named = sorted({(p, m.group(1)) for name in READ_SETS for p in SETS[name][0]["mustache"]
                    if (m := NAMED.search(p))})
    seeds = range(40000, 40000 + args.seeds)
    pipeline = load_pipeline("toy")
    loras = PipelineLoras(pipeline)

    prompts = [prompt for prompt, _ in named]
    wanted = [colour for _, colour in named for _ in seeds]

    def render(files) -> list[np.ndarray]:
        return [pixels(image) for image in rendered(pipeline, loras, files, prompts, seeds)]

    base = render(())
    base_dark = np.mean([skin_tone(image) in DARK_SKINS for image in base])
    print(f"{len(named)} read phrasings name a mustache colour; {len(seeds)} seeds each")
    for path in args.loras:
        images = render((WeightedFile(str(path), 1.0),))
        got = [drawn_colour(image, plain, region) for image, plain in zip(images, base)]
        shares = {c: sum(g == c for g in got) / len(got) for c in (*MUSTACHE_COLOURS, None)}
        dark = np.mean([skin_tone(image) in DARK_SKINS for image in images])
        print(f"{path}: the named colour {np.mean([g == w for g, w in zip(got, wanted)]):.0%}; drawn "
              + ", ".join(f"{c or 'none'} {s:.0%}" for c, s in shares.items())
              + f"; brown or deep skin {dark:.0%} (base {base_dark:.0%})", flush=True)


if __name__ == "__main__":
    main()
