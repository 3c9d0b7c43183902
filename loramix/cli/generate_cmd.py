"""`loramix generate`: render images from a prompt on a base, reproducibly."""

from __future__ import annotations

import math
from pathlib import Path

import click


@click.command()
@click.option("--prompt", required=True, help="What to render.")
@click.option("-n", "--count", type=click.IntRange(min=1), default=8, show_default=True, help="Images to render.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first image; image i uses seed+i.")
@click.option("--steps", type=click.IntRange(min=1), help="Denoising steps. Default: the base's.")
@click.option("--guidance", type=float, help="Classifier-free guidance scale. Default: the base's.")
@click.option("--negative-prompt", default="", help="What to steer away from.")
@click.option("--base", default="toy", show_default=True, help="'toy' or a diffusers pipeline folder.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the PNGs and grid.png.")
def generate(prompt, count, seed, steps, guidance, negative_prompt, base, batch_size, output) -> None:
    """Render COUNT images of PROMPT, one seed each, with the settings stored in every PNG."""
    from tqdm import tqdm

    from loramix.cli.quiet import quiet_libraries
    from loramix.render import RenderSettings, a1111_parameters, image_grid, render, save_png
    from loramix.toybase import DEFAULT_GUIDANCE, DEFAULT_STEPS, load_pipeline

    quiet_libraries()

    output.mkdir(parents=True, exist_ok=True)
    pipeline = load_pipeline(base)
    settings = [RenderSettings(prompt, seed + i, steps or DEFAULT_STEPS, DEFAULT_GUIDANCE if guidance is None
                               else guidance, negative_prompt) for i in range(count)]
    paths = [output / f"{i:05d}-{s.seed}.png" for i, s in enumerate(settings)]
    todo = [i for i, path in enumerate(paths) if not path.exists()]
    sampler = type(pipeline.scheduler).__name__
    for start in tqdm(range(0, len(todo), batch_size), desc="rendering", unit="batch", disable=len(todo) <= batch_size):
        batch = todo[start : start + batch_size]
        for i, image in zip(batch, render(pipeline, [settings[i] for i in batch])):
            save_png(image, paths[i], a1111_parameters(settings[i], sampler, str(base)))
    from PIL import Image

    images = [Image.open(path).convert("RGB") for path in paths]
    grid = image_grid(images, columns=min(8, math.ceil(math.sqrt(count * 2))), scale=2)
    save_png(grid, output / "grid.png")
    click.echo(f"wrote {count} images and grid.png to {output} ({len(todo)} rendered, {count - len(todo)} kept)")
