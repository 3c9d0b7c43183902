"""`loramix resize`: a LoRA at a lower rank, fixed or chosen per module."""

from __future__ import annotations

import click

from loramix.choices import DEFAULT_FORMAT, DTYPES, DYNAMIC_METHODS, FORMATS


@click.command()
@click.argument("source", type=click.Path(dir_okay=True))
@click.option("-o", "--output", type=click.Path(), required=True, help="Write the resized LoRA here.")
@click.option("--rank", type=click.IntRange(min=1),
              help="The new rank; with --dynamic, the most any module keeps (default: its own rank).")
@click.option("--dynamic", type=click.Choice(DYNAMIC_METHODS),
              help="Choose each module's rank from its singular values, as kohya's resize_lora.py does.")
@click.option("--dynamic-param", type=float,
              help="sv_ratio: largest σ over the smallest kept (e.g. 4); sv_fro / sv_cumulative: the share kept "
                   "(e.g. 0.9).")
@click.option("--format", "file_format", type=click.Choice(FORMATS), default=DEFAULT_FORMAT, show_default=True,
              help="Output naming (kohya loads in A1111, ComfyUI, kohya and diffusers).")
@click.option("--dtype", type=click.Choice(DTYPES), help="Output precision. Default: the input's.")
@click.option("--verbose", is_flag=True, help="Print every module's kept rank and Frobenius share.")
def resize(source, output, rank, dynamic, dynamic_param, file_format, dtype, verbose) -> None:
    """Lower a LoRA's rank: `loramix resize a.safetensors --rank 8 -o a8.safetensors`, or per module with
    `--dynamic sv_fro --dynamic-param 0.9`. α is rescaled so that the effect is unchanged but for the dropped
    singular values; each module's rank and retained Frobenius share are reported."""
    from loramix.formats.read import read_adapter
    from loramix.formats.write import write_adapter
    from loramix.jobs.compose_file import output_dtype
    from loramix.lora.resize import resize_adapter

    adapter = read_adapter(source)
    resized, report = resize_adapter(adapter, rank, dynamic, dynamic_param)
    out_dtype = output_dtype(dtype, [adapter])
    resized.modules = {key: module.to(out_dtype) for key, module in resized.modules.items()}
    write_adapter(resized, output, format=file_format)
    if verbose:
        for m in report.modules:
            click.echo(f"{m.key}: rank {m.old_rank} → {m.new_rank}, {m.fro_retained:.2%} of the Frobenius norm kept")
    worst = min(report.modules, key=lambda m: m.fro_retained)
    click.echo(f"wrote {output}: {len(resized.modules)} modules, rank {', '.join(map(str, resized.ranks))}; "
               f"Frobenius norm kept {report.mean_fro_retained:.2%} on average, {worst.fro_retained:.2%} at worst "
               f"({worst.key})")
