"""Locality of masked-loss training: how much a LoRA changes the image outside its attribute's region.

    python bench/bench_locality.py [--attributes mustache,lipstick] [--loras build/locality] [--count 64]
                                   [--weights 1.0] [--grid docs/locality-mustache.png]

For each attribute, three LoRAs trained by its recipe (`recipes/<attribute>.toml`): plain (`--no-masked-loss`),
masked (the masked loss alone: `--masked-prior-preservation-weight 0`) and prior (as shipped: the masked loss
and masked prior preservation) render `count` images (seeds 0..count-1) of "a face with a mustache" (…) at each
weight; so does the base alone. Each LoRA's image is compared with the base's at the same seed, as mean
absolute differences in 0-255 levels per channel:

- outside: the pixels outside the attribute's region, and the ratio plain / each of that figure;
- inside: the pixels of the region (where the LoRA should change the image);
- top 40%: the hair, eyes and background, which neither LoRA should touch (the issue's figure).

The region is the union of the training set's masks (`samples/<attribute>/*.mask.png`, each the pixels the
attribute drew, grown by 2), grown by 2 pixels more: where the attribute lands on the faces the base draws,
whose placement varies as the training faces' does. The judge's attribute and face rates are printed too.
LoRAs missing from --loras are trained first (about 20 minutes each on a shared 2-core CPU).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from loramix.cli.quiet import quiet_libraries
from loramix.lora.specs import WeightedFile
from loramix.models.load import load_pipeline
from loramix.models.loras import PipelineLoras
from loramix.render.core import RenderSettings, render
from loramix.toy.base import DEFAULT_GUIDANCE, DEFAULT_STEPS
from loramix.toy.judge import ATTRIBUTES, load_judge

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = {"mustache": "a face with a mustache", "lipstick": "a face wearing lipstick",
           "glasses": "a face wearing glasses"}
REGION_GROWTH = 2  # pixels past the union of the dataset's masks
TOP = 0.4  # the top 40% of the image: hair, eyes, background
BATCH = 16


VARIANTS = {"plain": ["--no-masked-loss"], "masked": ["--masked-prior-preservation-weight", "0"], "prior": []}


def lora_file(folder: Path, attribute: str, kind: str) -> Path:
    path = folder / f"{attribute}-{kind}.safetensors"
    if not path.is_file():
        run = folder / f"{attribute}-{kind}-run"
        print(f"training {path.name} (recipes/{attribute}.toml {' '.join(VARIANTS[kind])})", flush=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "loramix", "train", str(ROOT / "recipes" / f"{attribute}.toml"),
                        "--output", str(run), "--name", attribute, *VARIANTS[kind]], check=True)
        (run / f"{attribute}.safetensors").replace(path)
        print(f"trained in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def attribute_region(attribute: str) -> np.ndarray:
    """(64, 64) bool: the union of the sample dataset's masks of `attribute`, grown by REGION_GROWTH."""
    masks = sorted((ROOT / "samples" / attribute).glob("*.mask.png"))
    if not masks:
        raise SystemExit(f"samples/{attribute} has no masks: run samples/make_datasets.sh")
    union = np.zeros((64, 64), dtype=bool)
    for path in masks:
        union |= np.asarray(Image.open(path).convert("L")) > 0
    grown = Image.fromarray(union.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * REGION_GROWTH + 1))
    return np.asarray(grown) > 0


def rendered(pipeline, loras: PipelineLoras, files: list[WeightedFile], prompt: str, count: int) -> list[Image.Image]:
    loras.apply(files)
    settings = [RenderSettings(prompt, seed, DEFAULT_STEPS, DEFAULT_GUIDANCE, 64, 64) for seed in range(count)]
    return [image for first in range(0, count, BATCH) for image in render(pipeline, settings[first : first + BATCH])]


def change(images: list[Image.Image], base: list[Image.Image], where: np.ndarray) -> float:
    """Mean absolute difference from the base renders over the pixels `where` (64, 64), in 0-255 levels."""
    differences = [np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))[where]
                   for a, b in zip(images, base)]
    return float(np.mean(differences))


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attributes", default="mustache")
    parser.add_argument("--loras", type=Path, default=ROOT / "build" / "locality")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--weights", default="1.0", help="Comma-separated LoRA weights to render at.")
    parser.add_argument("--grid", type=Path, help="Save base / plain / masked / prior rows of 8 images (first "
                                                  "weight).")
    args = parser.parse_args()

    torch.manual_seed(0)
    args.loras.mkdir(parents=True, exist_ok=True)
    judge = load_judge()
    pipeline = load_pipeline("toy")
    loras = PipelineLoras(pipeline)
    for attribute in args.attributes.split(","):
        files = {kind: lora_file(args.loras, attribute, kind) for kind in VARIANTS}
        region = attribute_region(attribute)
        top = np.zeros((64, 64), dtype=bool)
        top[: round(64 * TOP)] = True
        prompt = PROMPTS[attribute]
        base = rendered(pipeline, loras, [], prompt, args.count)
        column = ATTRIBUTES.index(attribute)
        base_rate = judge.verdicts(base)[:, column].float().mean()
        print(f"\n{attribute}: \"{prompt}\", {args.count} images (seeds 0-{args.count - 1}), {DEFAULT_STEPS} steps, "
              f"guidance {DEFAULT_GUIDANCE:g}; region: {region.mean():.1%} of the image; base shows it in "
              f"{base_rate:.0%}\n")
        print("| training | weight | outside region | inside region | top 40% | attribute | face |")
        print("|---|---|---|---|---|---|---|")
        grid_rows, ratios = [base[:8]], []
        for weight in (float(w) for w in args.weights.split(",")):
            outside = {}
            for kind in VARIANTS:
                images = rendered(pipeline, loras, [WeightedFile(str(files[kind]), weight)], prompt, args.count)
                verdicts = judge.verdicts(images)
                outside[kind] = change(images, base, ~region)
                print(f"| {kind} | {weight:g} | {outside[kind]:.2f} | "
                      f"{change(images, base, region):.2f} | {change(images, base, top):.2f} | "
                      f"{verdicts[:, column].float().mean():.0%} | {verdicts[:, 0].float().mean():.0%} |", flush=True)
                if len(grid_rows) < 1 + len(VARIANTS):
                    grid_rows.append(images[:8])
            ratios += [f"{attribute} at weight {weight:g}: outside its region, plain training changes the image "
                       f"{outside['plain'] / outside[kind]:.1f}× as much as {kind} training"
                       for kind in ("masked", "prior")]
        print("\n" + "\n".join(ratios))
        if args.grid:
            from loramix.render.images import labelled_grid

            seeds = [f"seed {i}" for i in range(len(base[:8]))]
            grid = labelled_grid(grid_rows, seeds, ["base", *VARIANTS], scale=2,
                                 title=f'"{prompt}", weight {args.weights.split(",")[0]}')
            grid.image.save(args.grid)
    loras.apply([])


if __name__ == "__main__":
    main()
