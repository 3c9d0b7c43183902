"""`loramix build-base`: train the toy base (and its judge) from scratch."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click


@click.command("build-base")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              help="Pipeline folder to write. Default: the toy base inside the installed package.")
@click.option("--judge-output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the judge. Default: beside the toy base in the package.")
@click.option("--no-judge", is_flag=True, help="Skip training the judge.")
@click.option("--judge-only", is_flag=True, help="Only (re)train the judge, on the VAE of an existing base.")
@click.option("--images", type=int, help="Distinct training faces.")
@click.option("--vae-steps", type=int, help="VAE training steps.")
@click.option("--unet-steps", type=int, help="UNet and text-encoder training steps.")
@click.option("--seed", type=int, help="Seed of everything random in the build.")
def build_base(output, judge_output, no_judge, judge_only, images, vae_steps, unet_steps, seed) -> None:
    """Train the toy base: VAE on faces, then UNet + text encoder on its latents, then the judge."""
    from loramix.cli.quiet import quiet_libraries
    from loramix.models.load import bundled_base_path
    from loramix.toy.build import BuildConfig
    from loramix.toy.build import build_base as build

    quiet_libraries()

    overrides = {k: v for k, v in dict(images=images, vae_steps=vae_steps, unet_steps=unet_steps,
                                        seed=seed).items() if v is not None}
    config = BuildConfig(**overrides)
    output = output or bundled_base_path()
    if not no_judge:
        judge_output = judge_output or output.parent / "judge.safetensors"
    if judge_only:
        from loramix.models.load import load_pipeline
        from loramix.toy.build import vae_roundtrip
        from loramix.toy.judge import build_judge

        started = time.monotonic()
        figures = build_judge(judge_output, vae_roundtrip(load_pipeline(output).vae), steps=config.judge_steps,
                              seed=config.seed, progress=True)
        report_path = output / "build_report.json"
        if report_path.is_file():  # the base's report keeps its judge's figures
            report = json.loads(report_path.read_text())
            report.update(judge=figures, seconds_judge=time.monotonic() - started)
            report_path.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {judge_output}: {json.dumps(figures)}")
        return
    figures = build(output, config, judge_output=None if no_judge else judge_output, progress=True)
    losses = figures.pop("losses")
    (output / "build_report.json").write_text(json.dumps(figures, indent=2) + "\n")
    click.echo(f"wrote {output} in {figures['seconds_total'] / 60:.1f} min "
               f"(final losses: VAE {figures['vae_final_loss']:.4f}, UNet {figures['unet_final_loss']:.4f}, "
               f"{len(losses['unet'])} UNet steps)")
    if "judge" in figures:
        click.echo(f"judge: {json.dumps(figures['judge'])}")
