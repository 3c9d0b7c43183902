"""`loramix extract`: the LoRA of a fine-tuned checkpoint's difference from its base."""

from __future__ import annotations

import click

from loramix.choices import DEFAULT_FORMAT, DTYPES, DYNAMIC_METHODS, FORMATS


@click.command()
@click.argument("tuned", type=click.Path(dir_okay=True))
@click.argument("base", type=click.Path(dir_okay=True))
@click.option("-o", "--output", type=click.Path(), required=True, help="Write the extracted LoRA here.")
@click.option("--rank", type=click.IntRange(min=1), default=32, show_default=True,
              help="Rank of each module; with --dynamic, the most any module keeps.")
@click.option("--conv-rank", type=click.IntRange(min=1),
              help="Also extract the UNet's resnet and sampler layers, 3×3 convs at this rank.")
@click.option("--dynamic", type=click.Choice(DYNAMIC_METHODS), help="Choose each module's rank as kohya does.")
@click.option("--dynamic-param", type=float, help="sv_ratio: e.g. 4; sv_fro / sv_cumulative: e.g. 0.9.")
@click.option("--clamp-quantile", type=click.FloatRange(0, 1, min_open=True), default=0.99, show_default=True,
              help="Clamp the factors' entries to this quantile of their magnitudes, as kohya does (1: no clamp).")
@click.option("--format", "file_format", type=click.Choice(FORMATS), default=DEFAULT_FORMAT, show_default=True,
              help="Output naming (kohya loads in A1111, ComfyUI, kohya and diffusers).")
@click.option("--dtype", type=click.Choice(DTYPES), default="fp16", show_default=True, help="Output precision.")
def extract(tuned, base, output, rank, conv_rank, dynamic, dynamic_param, clamp_quantile, file_format, dtype) -> None:
    """Extract a LoRA from a fine-tune: `loramix extract tuned.safetensors base.safetensors --rank 32 -o l.safetensors`.
    TUNED and BASE are single .safetensors checkpoints or diffusers folders of one architecture; one module at a
    time is read from them, so memory stays small."""
    from loramix.formats.write import write_adapter
    from loramix.jobs.extract import extract_lora
    from loramix.models.precision import BY_NAME

    adapter, report = extract_lora(tuned, base, rank, conv_rank, dynamic, dynamic_param, clamp_quantile)
    out_dtype = BY_NAME[dtype]
    adapter.modules = {key: module.to(out_dtype) for key, module in adapter.modules.items()}
    write_adapter(adapter, output, format=file_format)
    worst = min(report.modules, key=lambda m: m.fro_retained)
    click.echo(f"wrote {output}: {len(adapter.modules)} modules, rank {', '.join(map(str, adapter.ranks))}; "
               f"Frobenius norm of the difference kept {report.mean_fro_retained:.2%} on average, "
               f"{worst.fro_retained:.2%} at worst ({worst.key})"
               + (f"; {len(report.skipped)} unchanged layers left out" if report.skipped else ""))
