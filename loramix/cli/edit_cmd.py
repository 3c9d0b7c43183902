"""`loramix edit`: apply LoRAs one after another, each by img2img on the previous stage's image."""

from __future__ import annotations

from pathlib import Path

import click

from loramix.choices import IMAGE_SUFFIXES
from loramix.cli.options import dtype_option, image_size_options
from loramix.errors import LoramixError
from loramix.lora.specs import parse_weight_spec


@click.command()
@click.argument("arguments", nargs=-1, required=True, metavar="[IMAGE] FILE[:WEIGHT]...")
@click.option("--prompt", required=True, help="What every stage renders; each LoRA's trigger words go before it.")
@click.option("--strength", type=click.FloatRange(0, 1, min_open=True), default=0.75, show_default=True,
              help="Denoising strength of each img2img stage: near 0 keeps the image, 1 repaints it.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every stage's noise.")
@click.option("--steps", type=click.IntRange(min=1),
              help="Denoising steps at strength 1 (a stage runs steps × strength). Default: the base's.")
@click.option("--guidance", type=float, help="Classifier-free guidance scale. Default: the base's.")
@click.option("--negative-prompt", default="", help="What to steer away from.")
@click.option("--mask", type=click.Path(dir_okay=False, path_type=Path),
              help="Confine the edits: white is edited, black kept. The size of IMAGE (or the base's, without). "
                   "A LoRA with its own mask (FILE:WEIGHT#MASK.png) confines its stage to that one instead.")
@click.option("--trigger/--no-trigger", default=True, show_default=True,
              help="Put each LoRA's trigger words (from its metadata) before the prompt of its stage.")
@image_size_options
@click.option("--base", default="toy", show_default=True, help="'toy', a diffusers folder or a .safetensors file.")
@dtype_option
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for stage-<i>-<name>.png and strip.png.")
def edit(arguments, prompt, strength, seed, steps, guidance, negative_prompt, mask, trigger, width, height, base,
         dtype, output) -> None:
    """Edit IMAGE with each LoRA in turn: `loramix edit face.png a.safetensors:0.7 b.safetensors:0.5 -o out`.

    Stage i is img2img of stage i-1 with LoRA i alone at its weight, so the order matters; a weight may follow a
    step schedule over the stage's steps (`a.safetensors:0@0,1@0.5,1@1`, `a.safetensors:0.8@0.3-1`). IMAGE is the
    first argument when it is an image file (.png, .jpg, ...); it is resized to the base's native size.
    Without it, stage 0 is the base's text-to-image of the prompt.
    """
    from loramix.cli.quiet import quiet_libraries
    from loramix.cli.status import TerminalStatus
    from loramix.models.load import load_base
    from loramix.render.edit import edit_sequence, write_stages
    from loramix.render.regions import check_masks
    from loramix.util.imagefile import open_image

    image_path, specs = split_image(arguments)
    loras = [parse_weight_spec(s) for s in specs]
    check_masks(loras, "sequential")
    image = open_image(image_path, "image") if image_path else None
    mask_image = open_image(mask, "mask") if mask else None
    if image is not None and mask_image is not None and mask_image.size != image.size:
        raise LoramixError(f"mask {mask} is {mask_image.width}×{mask_image.height} but image {image_path} is "
                           f"{image.width}×{image.height}: they must be the same size")

    quiet_libraries()
    loaded = load_base(base, dtype, status=TerminalStatus())
    stages = edit_sequence(loaded.pipeline, loras, prompt, image, strength=strength, seed=seed,
                           steps=steps or loaded.steps, guidance=loaded.guidance if guidance is None else guidance,
                           negative_prompt=negative_prompt, mask=mask_image, width=width, height=height,
                           triggers=trigger)
    paths = write_stages(stages, output, loaded.name, loaded.sampler)
    size = stages[-1].image.size
    resized = f" (the input, {image.width}×{image.height}, resized to {size[0]}×{size[1]})" \
        if image is not None and image.size != size else ""
    click.echo(f"wrote {len(stages)} stages and strip.png to {output}{resized}: "
               + " > ".join(p.name for p in paths[:-1]))


def split_image(arguments: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """The IMAGE (the first argument, when it names an image file) and the LoRA specs after it."""
    first, *rest = arguments
    image = first if first.lower().endswith(IMAGE_SUFFIXES) else None
    specs = rest if image else [first, *rest]
    for spec in specs:
        if spec.lower().endswith(IMAGE_SUFFIXES):
            raise LoramixError(f"{spec}: an image can only be the first argument, before the LoRA files")
    if not specs:
        raise LoramixError(f"no LoRA after {image}: give at least one FILE[:WEIGHT] to edit it with")
    return image, specs
