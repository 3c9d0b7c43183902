"""Does a single LoRA hold in words its captions never used? Each LoRA alone, at weight 1, on the phrasings of
bench/heldout.py, judged by the toy judge: how often its attribute shows, how often a face does, per phrasing
and in all, beside the base's own renders of the same prompts and seeds.

    python bench/bench_single.py mustache=runs/mustache/mustache.safetensors --set tune
    python bench/bench_single.py --set final             # trains the shipped recipes into build/loras first

--set tune (TUNE_SEEDS × TUNE phrasings) and held-out (HELD_OUT_SEEDS × HELD_OUT phrasings) are the sets recipe
choices have been made on; fresh (FRESH_SEEDS × FRESH phrasings) gave the figure once they were made, and final
(FINAL_SEEDS × FINAL phrasings) gives it after the mustache recipe was chosen again with fresh's figures in hand;
next (NEXT_SEEDS × NEXT phrasings) was written before the recipes' targets were tuned on tune and final; seventh
(SEVENTH_SEEDS × SEVENTH phrasings) before regularization images and caption dropout were tried on tune, final
and next; eighth (EIGHTH_SEEDS × EIGHTH phrasings) after seventh was read and the mustache's caption dropout taken
back on its figures; ninth (NINTH_SEEDS × NINTH phrasings) after eighth was read, before the mustache's UNet layers
were tried; tenth (TENTH_SEEDS × TENTH phrasings) after ninth was read, before the mustache's rank and blocks
were tried; eleventh (ELEVENTH_SEEDS × ELEVENTH phrasings) while tenth was read for the rank-16 mustache, before
its figures were seen; twelfth (TWELFTH_SEEDS × TWELFTH phrasings) before eleventh was read, at the start of a
round on the mustache's training faces; thirteenth (THIRTEENTH_SEEDS × THIRTEENTH phrasings) before twelfth was
read, at the start of a round on what the mustache's training does beside its faces; fourteenth
(FOURTEENTH_SEEDS × FOURTEENTH phrasings) before thirteenth was read, at the start of a round on the lipstick under
the mustache and the mustache's captions; fifteenth (FIFTEENTH_SEEDS × FIFTEENTH phrasings) after fourteenth was
read, at the start of a round on the regions' masks; sixteenth (SIXTEENTH_SEEDS × SIXTEENTH phrasings) after
fifteenth was read, at the start of a round on the triple's faces under the regions; seventeenth
(SEVENTEENTH_SEEDS × SEVENTEENTH phrasings) after sixteenth was read, at the start of a round on the single LoRAs'
training length.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from bench_methods import lora_file
from heldout import SETS, check_vocabulary
from PIL import Image

from loramix.cli.quiet import quiet_libraries
from loramix.lora.specs import WeightedFile
from loramix.models.load import load_pipeline
from loramix.models.loras import PipelineLoras
from loramix.render.loop import render_jobs
from loramix.render.prompts import ImageJob
from loramix.toy.base import DEFAULT_GUIDANCE, DEFAULT_STEPS
from loramix.toy.judge import ATTRIBUTES, SIZE, load_judge

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16


def rendered(pipeline, loras, files: tuple[WeightedFile, ...], prompts, seeds) -> list[Image.Image]:
    """Every prompt at every seed (prompt-major), at the toy base's default steps and guidance."""
    jobs = [ImageJob("", 0, prompt, "", seed, DEFAULT_STEPS, DEFAULT_GUIDANCE, SIZE, SIZE, files)
            for prompt in prompts for seed in seeds]
    return [image for batch in render_jobs(pipeline, loras, jobs, batch_size=BATCH) for image in batch.images]


def judged(pipeline, loras, files: tuple[WeightedFile, ...], prompts, seeds, judge) -> torch.Tensor:
    """(prompts, seeds, 4) verdicts of every image: face, mustache, lipstick, glasses."""
    images = rendered(pipeline, loras, files, prompts, seeds)
    return judge.verdicts(images).reshape(len(prompts), len(seeds), len(ATTRIBUTES)).float()


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("loras", nargs="*", help="ATTRIBUTE=FILE; unnamed attributes train their recipe")
    parser.add_argument("--set", choices=tuple(SETS), default="tune")
    parser.add_argument("--attributes", default="mustache,lipstick,glasses")
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--folder", type=Path, default=ROOT / "build" / "loras",
                        help="Where the recipes' LoRAs are trained, or found (bench_methods' folder too).")
    parser.add_argument("--per-phrasing", action="store_true", help="A row for every phrasing too.")
    parser.add_argument("--first", type=int, help="Only the set's first N seeds (the read sets' rounds used 64).")
    args = parser.parse_args()
    given = dict(item.split("=", 1) for item in args.loras)
    attributes = [a for a in args.attributes.split(",") if a in given] if given else args.attributes.split(",")
    phrasings, seeds = SETS[args.set]
    seeds = list(seeds)[:args.first]

    judge = load_judge()
    pipeline = load_pipeline("toy")
    split = check_vocabulary(pipeline.tokenizer)
    if split:
        print(f"note: not single tokens of the base's vocabulary: {', '.join(split)}")
    loras = PipelineLoras(pipeline)
    print(f"{args.set}: {len(seeds)} seeds × {len(phrasings[attributes[0]])} phrasings per attribute, "
          f"{DEFAULT_STEPS} steps, weight {args.weight:g}")
    print(f"{'LoRA':<34} {'attribute':>9} {'face':>6} {'both':>6} {'s/image':>8}")
    for attribute in attributes:
        prompts = phrasings[attribute]
        column = ATTRIBUTES.index(attribute)
        path = Path(given[attribute]) if attribute in given else lora_file(args.folder, attribute)
        rows = (("base", ()), (f"{attribute} ({path.name})", (WeightedFile(str(path), args.weight),)))
        for label, files in rows:
            start = time.perf_counter()
            verdicts = judged(pipeline, loras, files, prompts, seeds, judge)
            seconds = (time.perf_counter() - start) / verdicts[..., 0].numel()
            shows, face = verdicts[..., column], verdicts[..., 0]
            print(f"{label:<34} {shows.mean():>9.0%} {face.mean():>6.0%} {(shows * face).mean():>6.0%} "
                  f"{seconds:>8.3f}", flush=True)
            if args.per_phrasing and files:
                for prompt, p_shows, p_face in zip(prompts, shows, face):
                    print(f"    {prompt[:58]:<58} {p_shows.mean():>5.0%} {p_face.mean():>5.0%}")


if __name__ == "__main__":
    main()
