"""Composition methods compared by the judge: does the image show every LoRA's attribute, and is it a face?

    python bench/bench_methods.py [--loras build/loras] [--weights mustache=1,lipstick=1,glasses=1] [--count 64]
                                  [--grid docs/methods.png]

For the pair mustache + lipstick and for all three LoRAs (with glasses), renders `count` images (seeds
0..count-1) of a prompt naming every trigger, by each method: exact (Σ wᵢ·ΔWᵢ fused), merge-svd (its best
rank-8 approximation), ties and dare (peft's merges, density 0.5), switch (LoRAs take turns every step) and
composite (guided predictions averaged), plus the base alone. Prints a markdown table: % of images with each
attribute, % with all of them, % still a face, seconds per image.

The LoRAs are the shipped recipes' (`recipes/*.toml`); any missing from --loras is trained first (about
3 minutes each).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from loramix.cli.quiet import quiet_libraries
from loramix.models.load import load_pipeline
from loramix.models.loras import PipelineLoras
from loramix.render.core import RenderSettings, render
from loramix.render.images import labelled_grid
from loramix.render.multi import GENERATION_METHODS, render_multi
from loramix.specs import WeightedFile
from loramix.toy.base import DEFAULT_GUIDANCE, DEFAULT_STEPS
from loramix.toy.judge import ATTRIBUTES, load_judge

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("base", "exact", "merge-svd", "ties", "dare", "switch", "composite")
PROMPTS = {
    ("mustache", "lipstick"): "a face with a mustache and lipstick",
    ("mustache", "lipstick", "glasses"): "a face with a mustache and lipstick, wearing glasses",
}
BATCH = 16


def lora_file(folder: Path, name: str) -> Path:
    path = folder / f"{name}.safetensors"
    if not path.is_file():
        print(f"training {name} (recipes/{name}.toml) into {folder}", flush=True)
        run = folder / f"{name}-run"
        subprocess.run([sys.executable, "-m", "loramix", "train", str(ROOT / "recipes" / f"{name}.toml"),
                        "--output", str(run)], check=True)
        (run / f"{name}.safetensors").replace(path)
    return path


def rendered(pipeline, loras: PipelineLoras, files: list[WeightedFile], method: str, prompt: str, count: int):
    settings = [RenderSettings(prompt, seed, DEFAULT_STEPS, DEFAULT_GUIDANCE, 64, 64) for seed in range(count)]
    loras.apply([] if method in ("base", *GENERATION_METHODS) else files,
                method="exact" if method == "base" else method, rank=8 if method == "merge-svd" else None)
    start = time.perf_counter()
    images = []
    for first in range(0, count, BATCH):
        batch = settings[first : first + BATCH]
        images += (render_multi(pipeline, loras, files, batch, method) if method in GENERATION_METHODS
                   else render(pipeline, batch))
    return images, (time.perf_counter() - start) / count


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loras", type=Path, default=ROOT / "build" / "loras")
    parser.add_argument("--weights", default="mustache=1.0,lipstick=1.0,glasses=1.0",
                        help="Weight of each LoRA, the same for every method.")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--sets", default="2,3", help="Which sets: 2 (mustache + lipstick), 3 (all three).")
    parser.add_argument("--grid", type=Path, help="Save a grid: a row of 8 images per method, for the pair.")
    args = parser.parse_args()

    torch.manual_seed(0)
    weights = {name: float(value) for name, value in (item.split("=") for item in args.weights.split(","))}
    args.loras.mkdir(parents=True, exist_ok=True)
    judge = load_judge()
    pipeline = load_pipeline("toy")
    loras = PipelineLoras(pipeline)
    sets = [names for names in PROMPTS if str(len(names)) in args.sets.split(",")]
    for names in sets:
        files = [WeightedFile(str(lora_file(args.loras, name)), weights[name]) for name in names]
        prompt = PROMPTS[names]
        print(f"\n{' + '.join(f'{n}:{weights[n]:g}' for n in names)}, \"{prompt}\", {args.count} images, "
              f"{DEFAULT_STEPS} steps, guidance {DEFAULT_GUIDANCE:g}\n")
        print(f"| method | {' | '.join(names)} | all {len(names)} | face | s/image |")
        print("|---|" + "---|" * (len(names) + 3))
        grid_rows = []
        for method in args.methods.split(","):
            images, seconds = rendered(pipeline, loras, files, method, prompt, args.count)
            verdicts = judge.verdicts(images)  # (N, 4): face, mustache, lipstick, glasses
            columns = [ATTRIBUTES.index(name) for name in names]
            shown = [f"{verdicts[:, c].float().mean():.0%}" for c in columns]
            every = verdicts[:, columns].all(dim=1).float().mean()
            face = verdicts[:, 0].float().mean()
            print(f"| {method} | {' | '.join(shown)} | {every:.0%} | {face:.0%} | {seconds:.3f} |", flush=True)
            grid_rows.append((method, images[:8]))
        if args.grid and len(names) == 2:
            grid = labelled_grid([row for _, row in grid_rows], [f"seed {i}" for i in range(8)],
                                 [method for method, _ in grid_rows], scale=2, title=f'"{prompt}"')
            grid.image.save(args.grid)
    loras.apply([])


if __name__ == "__main__":
    main()
