"""`loramix bake`: LoRAs added into a base checkpoint, written as a new one."""

from __future__ import annotations

import click

from loramix.lora.specs import parse_weight_spec


@click.command()
@click.argument("base", type=click.Path(dir_okay=True))
@click.argument("specs", nargs=-1, required=True, metavar="FILE[:WEIGHT[:lbw=…]]...")
@click.option("-o", "--output", type=click.Path(), required=True,
              help="The new checkpoint: a folder for a diffusers BASE, a .safetensors file for a single-file BASE.")
def bake(base, specs, output) -> None:
    """Add LoRAs into a checkpoint: `loramix bake base.safetensors a.safetensors:0.8 -o baked.safetensors`.
    BASE is a diffusers folder or a single original-layout .safetensors file; the output keeps its layout and
    dtype, and is written only once complete."""
    from loramix.formats.read import read_weighted
    from loramix.jobs.bake import bake as bake_checkpoint
    from loramix.render.regions import check_masks

    weighted_files = [parse_weight_spec(s) for s in specs]
    check_masks(weighted_files, "bake")
    report = bake_checkpoint(base, read_weighted(weighted_files), [wf.path for wf in weighted_files], output)
    click.echo(f"wrote {report.output}: {base} with {len(weighted_files)} LoRAs added into {report.modules} weights")
