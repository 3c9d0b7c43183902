"""`loramix generate`: render a prompt, or every row of a prompt file, reproducibly and resumably."""

from __future__ import annotations

from pathlib import Path

import click

from loramix.cli.options import SCHEDULE_HELP, TAGS_HELP, dtype_option, image_size_options, lora_folders_option


@click.command()
@click.option("--prompt", help="What to render; its images go straight into OUTPUT. " + TAGS_HELP)
@click.option("--prompts", "prompt_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A .txt (a prompt a line), .jsonl or .csv file of prompts; each row's images go into a "
                   "folder of OUTPUT named by its line and prompt. JSONL/CSV fields: prompt, negative_prompt, "
                   "seed, loras ('a.safetensors:0.7 b.safetensors:0.5'), steps, guidance, width, height, n.")
@click.option("-n", "--count", type=click.IntRange(min=1),
              help="Images per prompt (a row's n overrides it).  [default: 8 with --prompt, 1 with --prompts]")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of a prompt's first image (a row's seed overrides it); its k-th image uses seed+k.")
@click.option("--steps", type=click.IntRange(min=1), help="Denoising steps. Default: the base's.")
@click.option("--guidance", type=float, help="Classifier-free guidance scale. Default: the base's.")
@click.option("--negative-prompt", default="", help="What to steer away from.")
@image_size_options
@click.option("--lora", "lora_specs", multiple=True, metavar="FILE[:WEIGHT]",
              help="A LoRA on every prompt whose row names no loras (repeatable). " + SCHEDULE_HELP)
@lora_folders_option
@click.option("--base", default="toy", show_default=True, help="'toy', a diffusers folder or a .safetensors file.")
@dtype_option
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--strict", is_flag=True, help="A bad row in the prompt file is an error, before anything renders.")
@click.option("--grid/--no-grid", default=True, show_default=True, help="Write grid.png, a contact sheet.")
@click.option("--manifest/--no-manifest", default=True, show_default=True,
              help="Write manifest.jsonl, a row per image.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the PNGs, manifest.jsonl and grid.png.")
def generate(prompt, prompt_file, count, seed, steps, guidance, negative_prompt, width, height, lora_specs,
             lora_folders, base, dtype, batch_size, strict, grid, manifest, output) -> None:
    """Render images with their settings in every PNG (A1111's `parameters`), skipping those already there.

    Under `accelerate launch` the processes share the images."""
    from loramix.errors import LoramixError
    from loramix.lora.specs import parse_weight_spec
    from loramix.render.prompts import PromptRow, read_prompt_file, resolve_lora, with_prompt_tags

    if (prompt is None) == (prompt_file is None):
        raise click.UsageError("give --prompt or --prompts (one of them)")
    loras = tuple(resolve_lora(parse_weight_spec(spec), ".") for spec in lora_specs)
    if prompt is not None:
        rows, problems = [PromptRow(line=0, prompt=prompt)], []
    else:
        read = read_prompt_file(prompt_file)
        rows, problems = read.rows, read.problems
        if problems and strict:
            more = f" (and {len(problems) - 1} more bad rows)" if len(problems) > 1 else ""
            raise LoramixError(f"{problems[0]}{more}")
        if not rows:
            raise LoramixError(f"{prompt_file}: no prompts to render" + (f" ({problems[0]})" if problems else ""))
    rows = with_prompt_tags(rows, list(lora_folders) or ["."], str(prompt_file))

    from loramix.render.generate import launched_processes

    processes = launched_processes()
    if processes.is_main:
        for problem in problems:
            click.echo(f"Warning: {problem} (row skipped)", err=True)
    _run(rows, count or (8 if prompt is not None else 1), seed, steps, guidance, negative_prompt, width, height,
         loras, base, dtype, batch_size, grid, manifest, output,
         prompt is not None, processes)


def _run(rows, count, seed, steps, guidance, negative_prompt, width, height, loras, base, dtype, batch_size, grid,
         manifest, output, flat, processes) -> None:
    from loramix.cli.quiet import quiet_libraries
    from loramix.cli.status import TerminalStatus
    from loramix.models.load import load_base
    from loramix.models.loras import PipelineLoras
    from loramix.render.generate import generate as render_plan
    from loramix.render.prompts import Defaults, plan

    quiet_libraries()
    status = TerminalStatus(None if processes.is_main else False)
    loaded = load_base(base, dtype, device=processes.device, status=status)
    defaults = Defaults(steps=steps or loaded.steps, guidance=loaded.guidance if guidance is None else guidance,
                        width=width or loaded.size, height=height or loaded.size, n=count, seed=seed,
                        negative_prompt=negative_prompt, loras=loras)
    jobs = plan(rows, defaults, flat=flat)
    result = render_plan(loaded, jobs, output, batch_size=batch_size, loras=PipelineLoras(loaded.pipeline),
                         processes=processes, progress=True, grid=grid, manifest=manifest)
    if not processes.is_main:
        return
    written = "".join(f" and {p.name}" for p in (result.manifest, result.grid) if p is not None)
    click.echo(f"wrote {result.total} images{written} to {output} ({result.rendered} rendered, "
               f"{result.kept} kept)" + (f" by {processes.world} processes" if processes.world > 1 else ""))
    if result.seconds_per_image is not None:
        line = f"one image: {result.seconds_per_image:.3f} s"
        if result.switch_seconds:
            line += (f"; LoRA set switches: {len(result.switch_seconds)}, {result.seconds_per_switch:.3f} s each "
                     "(median, base not reloaded)")
        click.echo(line)
