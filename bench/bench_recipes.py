"""The training bars, measured: each shipped recipe's time, and what the judge sees with and without its LoRA.

    python bench/bench_recipes.py [recipes/mustache.toml ...] [--output build/bench-recipes] [--grid-dir docs]

For each recipe: train it (wall time; bar ≤ 5 min on a 2-core CPU), then render 64 images of its sample
prompt, seeds 0..63, on the full-precision base with the LoRA and without it. Bars: the judge finds the
attribute in ≥ 80% with the LoRA and ≤ 5% without, and a face in ≥ 95% with it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from loramix.models.load import load_pipeline
from loramix.render.core import RenderSettings, render
from loramix.render.images import image_grid
from loramix.toy.base import DEFAULT_GUIDANCE, DEFAULT_STEPS
from loramix.toy.judge import ATTRIBUTES, load_judge, summarize
from loramix.train.loop import train
from loramix.train.recipe import make_recipe

ROOT = Path(__file__).resolve().parents[1]


def judged(pipeline, prompt: str, judge) -> tuple[dict[str, float], list]:
    settings = [RenderSettings(prompt, seed, DEFAULT_STEPS, DEFAULT_GUIDANCE, 64, 64) for seed in range(64)]
    images = [image for start in range(0, 64, 16) for image in render(pipeline, settings[start : start + 16])]
    return summarize(judge.verdicts(images)), images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", type=Path,
                        default=[ROOT / "recipes" / f"{name}.toml" for name in ("mustache", "lipstick", "glasses")])
    parser.add_argument("--output", type=Path, default=ROOT / "build" / "bench-recipes")
    parser.add_argument("--grid-dir", type=Path, help="Also save a grid of 16 images with each LoRA here.")
    args = parser.parse_args()

    judge = load_judge()
    rows = []
    for path in args.recipes:
        recipe = make_recipe(path, {"output": str(args.output / path.stem)})
        attribute = path.stem
        start = time.perf_counter()
        result = train(recipe, progress=True)
        seconds = time.perf_counter() - start
        prompt = recipe.sample_prompts[0] if recipe.sample_prompts else recipe.trigger
        pipeline = load_pipeline("toy")
        without, _ = judged(pipeline, prompt, judge)
        pipeline.load_lora_weights(str(result.adapter), adapter_name=attribute)
        with_lora, images = judged(pipeline, prompt, judge)
        if args.grid_dir:
            args.grid_dir.mkdir(parents=True, exist_ok=True)
            image_grid(images[:16], columns=8, scale=2).save(args.grid_dir / f"lora-{attribute}.png")
        rows.append((attribute, prompt, seconds, result.steps, with_lora, without))
        print(f"{attribute}: trained {result.steps} steps in {seconds:.0f} s; with LoRA "
              + ", ".join(f"{a} {with_lora[a]:.0%}" for a in ATTRIBUTES) + "; base alone "
              + ", ".join(f"{a} {without[a]:.0%}" for a in ATTRIBUTES), flush=True)

    print("\n| LoRA | prompt | train time | steps | attribute with LoRA | attribute, base alone | face with LoRA |")
    print("|---|---|---|---|---|---|---|")
    for attribute, prompt, seconds, steps, with_lora, without in rows:
        print(f"| {attribute} | \"{prompt}\" | {seconds / 60:.1f} min | {steps} | {with_lora[attribute]:.0%} | "
              f"{without[attribute]:.0%} | {with_lora['face']:.0%} |")
    print("bars: train ≤ 5 min; attribute ≥ 80% with the LoRA, ≤ 5% without; face ≥ 95%")


if __name__ == "__main__":
    main()
