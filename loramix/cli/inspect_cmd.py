"""`loramix inspect`: what an adapter file holds."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--base", help="Compare with a base: sd15, sdxl, a diffusers folder or a config .json.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def inspect(files: tuple[str, ...], base: str | None, as_json: bool) -> None:
    """Show format, targets, rank, alpha, size and metadata of LoRA FILES."""
    from loramix.formats.read import read_adapter
    from loramix.jobs.report import report_adapter
    from loramix.models.shapes import load_base_shapes

    base_shapes = load_base_shapes(base) if base else None
    reports = [report_adapter(f, read_adapter(f), base_shapes) for f in files]
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in reports], indent=2))
        return
    for i, report in enumerate(reports):
        if i:
            click.echo()
        click.echo(format_report(report))
    for report in reports:
        if report.nonfinite_modules:
            click.echo(f"warning: {report.path}: {len(report.nonfinite_modules)} modules have NaN or infinite "
                       f"values (first: {report.nonfinite_modules[0]}); compose refuses them unless "
                       "--allow-nonfinite", err=True)


def format_report(r) -> str:
    lines = [r.path]

    def row(label: str, value: str) -> None:
        lines.append(f"  {label:<11} {value}")

    row("format", r.format)
    row("made for", r.base_version)
    row("types", ", ".join(f"{kind} ×{count}" for kind, count in r.kinds.items()))
    row("components", ", ".join(r.components))
    for component, kinds in r.targets.items():
        kinds_text = ", ".join(f"{kind} ×{count}" for kind, count in kinds.items())
        row(component, f"{sum(kinds.values())} modules: {kinds_text}")
    row("rank", ", ".join(map(str, r.ranks)))
    row("alpha", ", ".join(f"{a:g}" for a in r.alphas) + f"   (scale α/r: {', '.join(f'{s:g}' for s in r.scales)})")
    row("parameters", f"{r.num_params:,}")
    if r.hashes:
        row("hashes", f"A1111 {r.hashes['a1111']}, AutoV2 {r.hashes['autov2']}, SHA-256 {r.hashes['sha256']}")
    row("size", f"{_bytes(r.bytes_on_disk)} on disk ({', '.join(r.dtypes)}); "
                f"{_bytes(r.bytes_fp16)} in fp16, {_bytes(r.bytes_fp32)} in fp32")
    fit = r.base_fit
    if fit is not None:
        row("base", f"{fit.base}: {fit.base_params:,} parameters; the adapter is {fit.fraction_of_base:.3%} of it")
        row("missing", f"{len(fit.missing_targets)} targets the base lacks" +
            (f": {', '.join(fit.missing_targets[:5])}" if fit.missing_targets else ""))
        if fit.shape_mismatches:
            row("mismatched", f"{len(fit.shape_mismatches)}: {'; '.join(fit.shape_mismatches[:3])}")
    if r.metadata:
        lines.append("  metadata")
        for key in sorted(r.metadata):
            value = _printable(r.metadata[key])
            lines.append(f"    {key}: {value[:100] + '…' if len(value) > 100 else value}")
    return "\n".join(lines)


def _bytes(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} GB"


def _printable(text: str) -> str:
    """Metadata as plain text on one line: control characters (newlines, ESC sequences a file could use to
    drive the terminal) become spaces or escapes."""
    return "".join(" " if c in "\n\t" else (c if c.isprintable() else ascii(c)[1:-1]) for c in text)
