"""The toy base's quality bars, measured: what the judge sees in 64 images of "a face", and render speed.

    python bench/bench_base.py [--base toy] [--grid samples/base-grid.png]

Bars (issue: the embedded base): a face in ≥ 95% of seeds 0..63, each of mustache, lipstick, glasses in
≤ 5%; rendering 8 images at the default steps ≤ 2 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import time

import torch

from loramix.models.load import load_pipeline
from loramix.render.core import RenderSettings, render
from loramix.render.images import image_grid
from loramix.toy.base import DEFAULT_GUIDANCE, DEFAULT_STEPS
from loramix.toy.judge import load_judge, summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="toy")
    parser.add_argument("--prompt", default="a face")
    parser.add_argument("--grid", help="Also save a grid of the 64 images here.")
    args = parser.parse_args()

    pipeline = load_pipeline(args.base)
    judge = load_judge()
    settings = [RenderSettings(args.prompt, seed, DEFAULT_STEPS, DEFAULT_GUIDANCE, 64, 64) for seed in range(64)]
    render(pipeline, settings[:8])  # warm-up: first calls allocate
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        render(pipeline, settings[:8])
        timings.append(time.perf_counter() - start)
    images = [image for start in range(0, 64, 16) for image in render(pipeline, settings[start : start + 16])]
    fractions = summarize(judge.verdicts(images))
    print(f"base {args.base}, prompt {args.prompt!r}, {DEFAULT_STEPS} steps, guidance {DEFAULT_GUIDANCE}, "
          f"{torch.get_num_threads()} threads")
    for attribute, fraction in fractions.items():
        bar = "≥ 95%" if attribute == "face" else "≤ 5%"
        print(f"  {attribute:<9} {fraction:6.1%} of 64 images  (bar {bar})")
    print(f"  render 8 images: {min(timings):.2f} s best of 3, {sum(timings) / 3:.2f} s mean  (bar ≤ 2 s)")
    if args.grid:
        image_grid(images, columns=16, scale=2).save(args.grid)
        print(f"  grid: {args.grid}")


if __name__ == "__main__":
    main()
