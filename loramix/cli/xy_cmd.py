"""`loramix xy`: a labelled grid sweeping the weights of two LoRAs, to choose the weights to use."""

from __future__ import annotations

from pathlib import Path

import click

from loramix.cli.options import SCHEDULE_HELP, dtype_option, image_size_options


@click.command()
@click.option("--x", "x_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="LoRA swept across the columns.")
@click.option("--y", "y_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="LoRA swept down the rows.")
@click.option("--x-weights", default="0:1:0.25", show_default=True, help="Weights: 0,0.5,1 or start:stop:step.")
@click.option("--y-weights", default="0:1:0.25", show_default=True, help="Weights: 0,0.5,1 or start:stop:step.")
@click.option("--lora", "lora_specs", multiple=True, metavar="FILE[:WEIGHT]",
              help="A LoRA on in every cell at its weight (repeatable). " + SCHEDULE_HELP)
@click.option("--prompt", required=True, help="What to render.")
@click.option("--negative-prompt", default="", help="What to steer away from.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="The seed of every cell.")
@click.option("--steps", type=click.IntRange(min=1), help="Denoising steps. Default: the base's.")
@click.option("--guidance", type=float, help="Classifier-free guidance scale. Default: the base's.")
@image_size_options
@click.option("--base", default="toy", show_default=True, help="'toy', a diffusers folder or a .safetensors file.")
@dtype_option
@click.option("--scale", type=click.IntRange(min=1), default=2, show_default=True, help="Enlarge each cell this often.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The grid's PNG file.")
def xy(x_file, y_file, x_weights, y_weights, lora_specs, prompt, negative_prompt, seed, steps, guidance, width,
       height, base, dtype, scale, output) -> None:
    """Render PROMPT with every pair of weights of two LoRAs, one seed, as a grid labelled with the weights."""
    from loramix.lora.specs import WeightedFile, parse_weight_spec
    from loramix.render.prompts import resolve_lora
    from loramix.render.xy import XYSweep, parse_weights

    axes = [resolve_lora(WeightedFile(str(path), 1.0), ".").path for path in (x_file, y_file)]
    fixed = tuple(resolve_lora(parse_weight_spec(spec), ".") for spec in lora_specs)
    sweep = XYSweep(axes[0], axes[1], parse_weights(x_weights), parse_weights(y_weights), fixed)
    if output.suffix.lower() != ".png":
        raise click.BadParameter("the grid is a .png file", param_hint="--output")

    from loramix.cli.quiet import quiet_libraries
    from loramix.cli.status import TerminalStatus
    from loramix.models.load import load_base
    from loramix.models.loras import PipelineLoras
    from loramix.render.core import RenderSettings
    from loramix.render.images import save_png
    from loramix.render.xy import grid_parameters, render_xy

    quiet_libraries()
    output.parent.mkdir(parents=True, exist_ok=True)
    loaded = load_base(base, dtype, status=TerminalStatus())
    settings = RenderSettings(prompt, seed, steps or loaded.steps, loaded.guidance if guidance is None else guidance,
                              width or loaded.size, height or loaded.size, negative_prompt)
    loras = PipelineLoras(loaded.pipeline)
    result = render_xy(loaded.pipeline, loras, sweep, settings, scale=scale, progress=True)
    names = [WeightedFile(path, 1.0).name for path in (sweep.x, sweep.y)]
    save_png(result.grid.image, output, grid_parameters(sweep, settings, loaded.sampler, loaded.name, loras))
    switches = sorted(s for s in result.switch_seconds if s)
    image = sorted(result.image_seconds)[len(result.image_seconds) // 2]
    click.echo(f"wrote {output}: {len(sweep.y_weights)}×{len(sweep.x_weights)} cells ({names[1]} down, "
               f"{names[0]} across); one image {image:.3f} s, switching LoRA weights "
               f"{switches[len(switches) // 2] if switches else 0:.3f} s (median)")
