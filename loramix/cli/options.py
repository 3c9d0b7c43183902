"""Options that several commands share, spelled once (a helper, not a command)."""

from __future__ import annotations

import click

SIZE_HELP = "Default: the base's resolution (64 for the toy base, 512 for SD 1.5, 1024 for SDXL)."


def image_size_options(command):
    """`--width` and `--height`, each a multiple of 8 when given."""
    command = click.option("--height", type=click.IntRange(min=8), help=f"Image height. {SIZE_HELP}")(command)
    return click.option("--width", type=click.IntRange(min=8), help=f"Image width. {SIZE_HELP}")(command)


def check_image_size(width: int | None, height: int | None) -> None:
    if width is not None and width % 8 or height is not None and height % 8:
        raise click.BadParameter("width and height are multiples of 8", param_hint="--width/--height")
